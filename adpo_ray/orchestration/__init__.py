"""Orchestration: spec -> Tune param space, Tuner run/restore, MLflow tracking."""
