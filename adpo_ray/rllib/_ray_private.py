"""Every use of a private RLlib / Tune name by the RLlib layer, one small function each.

RLlib's new API stack leaves some things this project needs without a public accessor (the local
learner of a learner group, an env runner's env-to-module pipeline, the observation filter's
statistics, the Learner internals the fused update mirrors). They are reached here and nowhere
else (``tests/unit/test_ray_private.py`` fails on a private Ray name used outside the adapters),
so that moving to another Ray means reviewing this module and
:mod:`adpo_ray.orchestration._ray_private` (Tune and Ray core: that layer's own adapter), not the
whole package.

Every function was written against Ray :data:`RAY_VERSION` (the version ``pyproject.toml`` pins).
Importing this module with another Ray warns (:class:`RayVersionWarning`) rather than raises: the
pin already keeps an ordinary install on that version, a renamed attribute fails loudly at its
call site, and the integration tests that compare the fused update with RLlib's own loop catch a
changed meaning; raising would also stop commands that never reach these functions.
"""

from __future__ import annotations

import warnings
from typing import Any

import ray

__all__ = [
    "RAY_VERSION", "RayVersionWarning", "check_ray_version", "PRIVATE_NAMES",
    "config_value_error", "forward_train", "local_learner", "env_to_module",
    "mean_std_filters", "single_agent_filter", "updates_filter_stats", "registered_env_creator",
    "builds_own_filters", "built_filters",
    "has_lr_schedulers", "has_grad_scalers", "compiles_complete_update", "check_is_built",
    "next_weights_seq_no", "weights_seq_no", "multi_agent_batch", "learner_connector",
    "seed_next_reset", "take_initial_reset_seed", "count_sampled", "log_values", "env_to_module_override",
]

#: The Ray release every adapter here (and in :mod:`adpo_ray.orchestration._ray_private`) was
#: written for.
RAY_VERSION = "2.60.0"

#: The private Ray names reached here (tests/unit/test_ray_private.py rejects them anywhere but in
#: the adapters, even where the project has a name of its own spelled alike).
PRIVATE_NAMES = frozenset({
    "_value_error", "_forward_train", "_learner", "_env_to_module", "_filters",
    "_init_new_filters", "_multi_agent", "_update_stats", "_global_registry",
    "_lr_scheduler_classes", "_grad_scalers", "_torch_compile_complete_update",
    "_check_is_built", "_weights_seq_no", "_make_batch_if_necessary", "_learner_connector",
    "_needs_initial_reset", "_seed", "_increase_sampled_metrics", "_get_key",
})


class RayVersionWarning(UserWarning):
    """The running Ray is not the one the private-API adapters were written for."""


def check_ray_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the running ``ray.__version__``) is :data:`RAY_VERSION`;
    if not, a :class:`RayVersionWarning` naming both versions and the adapter modules to review."""
    version = ray.__version__ if version is None else version
    if version == RAY_VERSION:
        return True
    warnings.warn(
        f"adpo_ray reaches private RLlib/Tune attributes written for Ray {RAY_VERSION}, but Ray "
        f"{version} is running; review adpo_ray/rllib/_ray_private.py and "
        f"adpo_ray/orchestration/_ray_private.py, or install ray=={RAY_VERSION}",
        RayVersionWarning,
        stacklevel=2,
    )
    return False


check_ray_version()


# -- AlgorithmConfig ----------------------------------------------------------------------------
def config_value_error(config, message: str) -> None:
    """``AlgorithmConfig._value_error`` (Ray 2.60.0): raise ``ValueError(message)`` from
    ``validate()`` (RLlib's wording and its ``experimental(_validate_config=False)`` opt-out,
    which logs the message instead)."""
    config._value_error(message)


# -- RLModule -----------------------------------------------------------------------------------
def forward_train(module, batch: dict[str, Any]) -> dict[str, Any]:
    """``RLModule._forward_train`` (Ray 2.60.0): the module's training forward pass without the
    public ``forward_train``'s per-call ``train()`` switch (the caller put it in train mode)."""
    return module._forward_train(batch)


# -- LearnerGroup, EnvRunner, connectors --------------------------------------------------------
def local_learner(learner_group):
    """``LearnerGroup._learner`` (Ray 2.60.0): the learner living in this process (``None``
    with remote learners, ``num_learners > 0``)."""
    return learner_group._learner


def seed_next_reset(env_runner) -> None:
    """Make the env runner's next ``sample()`` reset every env with the runner's seed, as each
    ``sample(num_episodes=...)`` call leaves it (``SingleAgentEnvRunner._needs_initial_reset``,
    Ray 2.60.0): an evaluation by timesteps then starts from the episodes a solo trial's
    evaluation by episodes starts from."""
    env_runner._needs_initial_reset = True


def take_initial_reset_seed(env_runner) -> tuple[bool, int | None]:
    """Whether the env runner's next reset is its first, seeded one, and that seed
    (``SingleAgentEnvRunner._needs_initial_reset`` and ``_seed``, Ray 2.60.0); marks it taken, as
    the runner's own reset does."""
    needed = bool(env_runner._needs_initial_reset)
    env_runner._needs_initial_reset = False
    return needed, env_runner._seed


def count_sampled(env_runner, num_steps: int, num_episodes: int) -> None:
    """Log ``num_steps`` env (agent, module) steps and ``num_episodes`` finished episodes sampled,
    per call and over the runner's lifetime, under RLlib's own names
    (``SingleAgentEnvRunner._increase_sampled_metrics``, Ray 2.60.0)."""
    env_runner._increase_sampled_metrics(num_steps, num_episodes)


def log_values(metrics, key: str | tuple[str, ...], values: list, **kwargs: Any) -> None:
    """``metrics.log_value(key, value, **kwargs)`` for each of ``values`` in order: the first
    through ``log_value`` (which makes the key's Stats as ``kwargs`` say), the others pushed onto
    that Stats (``MetricsLogger._get_key``, Ray 2.60.0), as ``log_value`` pushes them after its
    per-call key lookup, which cost about 10 us a value (a bandit pack logs thousands a sample)."""
    if not values:
        return
    metrics.log_value(key, values[0], **kwargs)
    stats = metrics._get_key(key)
    for value in values[1:]:
        stats.push(value)


def env_to_module_override(factory) -> dict:
    """Keywords of ``AlgorithmConfig.overrides`` (e.g. an ``evaluation_config``) that set the
    env-to-module connector ``factory`` (``env, spaces, device -> connector(s)``): the config's
    ``_env_to_module_connector`` (Ray 2.60.0), which ``env_runners(env_to_module_connector=...)``
    sets and ``overrides`` can reach only by that name."""
    return {"_env_to_module_connector": factory}


def env_to_module(env_runner):
    """``SingleAgentEnvRunner._env_to_module`` (Ray 2.60.0): the runner's env-to-module
    connector pipeline (it holds the observation filter)."""
    return env_runner._env_to_module


def mean_std_filters(connector) -> dict | None:
    """``MeanStdFilter._filters`` (Ray 2.60.0): the connector's filters by agent id (``None``
    for an agent-less single-agent env), or ``None`` when ``connector`` is no filter or has seen
    no observation yet."""
    return getattr(connector, "_filters", None)


def single_agent_filter(connector):
    """The single-agent filter of a ``MeanStdFilter`` connector (``_filters[None]``, created
    first by ``_init_new_filters`` as its first call does; Ray 2.60.0), or ``None`` for a
    multi-agent one (``_multi_agent``)."""
    if connector._filters is None:
        connector._init_new_filters()
    if connector._multi_agent:
        return None
    return connector._filters.get(None)


def built_filters(connector) -> dict:
    """A ``MeanStdFilter`` connector's filters by key (``_filters``, Ray 2.60.0), built first by
    its ``_init_new_filters`` hook if it has seen no observation yet (as its first call does)."""
    if connector._filters is None:
        connector._init_new_filters()
    return connector._filters


def builds_own_filters(cls):
    """Class decorator for a ``MeanStdFilter`` subclass with filters of its own keys: RLlib builds a
    connector's per-agent filters in its private hook ``_init_new_filters`` (Ray 2.60.0; called by
    ``__call__``, ``get_state``, ``set_state``, ``reset_state`` and ``merge_states``). The hook
    becomes RLlib's own build followed by ``cls.build_filters(self, solo)``, whose result (a dict of
    RLlib ``_MeanStdFilter`` objects by key) replaces RLlib's; ``solo`` is the single-agent filter
    RLlib built (its shape and settings), so RLlib's state handling works for any keys.

    Raises (when the hook runs):
        ValueError: for a multi-agent env (single-agent observations only).
    """
    from ray.rllib.connectors.env_to_module import MeanStdFilter

    def _init_new_filters(self) -> None:
        MeanStdFilter._init_new_filters(self)
        if self._multi_agent or set(self._filters) != {None}:
            raise ValueError(f"{cls.__name__} takes single-agent observations only")
        self._filters = self.build_filters(self._filters[None])

    cls._init_new_filters = _init_new_filters
    return cls


def updates_filter_stats(connector) -> bool:
    """``MeanStdFilter._update_stats`` (Ray 2.60.0): whether the connector updates its running
    statistics (false on evaluation runners' synced copies)."""
    return bool(connector._update_stats)


def registered_env_creator(name: str):
    """The env creator registered with Tune under ``name`` (``ray.tune.registry._global_registry``,
    Ray 2.60.0), or ``None``."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if not _global_registry.contains(ENV_CREATOR, name):
        return None
    return _global_registry.get(ENV_CREATOR, name)


# -- Learner internals mirrored by the fused update (adpo_ray.rllib.fused) ----------------------
def has_lr_schedulers(learner) -> bool:
    """``TorchLearner._lr_scheduler_classes is not None`` (Ray 2.60.0): torch LR schedulers set."""
    return learner._lr_scheduler_classes is not None


def has_grad_scalers(learner) -> bool:
    """``TorchLearner._grad_scalers is not None`` (Ray 2.60.0): mixed-precision grad scalers set."""
    return learner._grad_scalers is not None


def compiles_complete_update(learner) -> bool:
    """``TorchLearner._torch_compile_complete_update`` (Ray 2.60.0): RLlib compiles its whole
    update step."""
    return bool(learner._torch_compile_complete_update)


def check_is_built(learner) -> None:
    """``Learner._check_is_built()`` (Ray 2.60.0): a ``ValueError`` unless ``build()`` ran."""
    learner._check_is_built()


def next_weights_seq_no(learner) -> int:
    """Count one more weights update, as ``Learner.update`` does (``_weights_seq_no += 1``,
    Ray 2.60.0); returns the new number."""
    learner._weights_seq_no += 1
    return learner._weights_seq_no


def weights_seq_no(learner) -> int:
    """``Learner._weights_seq_no`` (Ray 2.60.0): the learner's weights update count."""
    return learner._weights_seq_no


def multi_agent_batch(learner, training_data):
    """``Learner._make_batch_if_necessary`` (Ray 2.60.0): ``training_data`` (batch or episodes)
    as a ``MultiAgentBatch``, episodes through the learner connector (GAE, value targets)."""
    return learner._make_batch_if_necessary(training_data=training_data)


def learner_connector(learner):
    """``Learner._learner_connector`` (Ray 2.60.0): the learner's connector pipeline (episodes ->
    train batch; PPO's learner appends its GAE piece to it in ``build``)."""
    return learner._learner_connector
