"""How the project's AlgorithmConfigs take their own settings, the way RLlib's do."""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import NotProvided


def set_provided(config, **values) -> None:
    """Set each of ``values`` on ``config`` unless it is RLlib's ``NotProvided`` (the default of
    every keyword of a ``training(...)`` call, so that a call changes only what it names)."""
    for name, value in values.items():
        if value is not NotProvided:
            setattr(config, name, value)
