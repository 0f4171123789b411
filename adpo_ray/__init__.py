"""adpo-ray: Anchored Direct Preference Optimization experiments on Ray (RLlib, Tune, MLflow)."""

__version__ = "0.1.0"
