"""Every use of a private Tune / Ray-core name by the orchestration layer, one small function
each. This layer has its own adapter because these uses (restoring a Tuner, reading the
autoscaler's status) are launching concerns that do not belong in the RLlib layer below, whose
adapter is :mod:`adpo_ray.rllib._ray_private`. Both were written for the same Ray,
:data:`~adpo_ray.rllib._ray_private.RAY_VERSION`; importing that module checks the running one."""

from __future__ import annotations

from adpo_ray.rllib._ray_private import RAY_VERSION  # noqa: F401 - the import checks the running Ray

__all__ = ["PRIVATE_NAMES", "autoscaling_status", "tuner_run_config"]

#: The private Ray names reached here (see :data:`adpo_ray.rllib._ray_private.PRIVATE_NAMES`).
PRIVATE_NAMES = frozenset({"_internal_kv_get", "_local_tuner"})


def autoscaling_status() -> bytes | None:
    """The autoscaler monitor's status record (JSON bytes with ``monitor_pid``), read from the
    connected Ray's internal KV (``ray.experimental.internal_kv._internal_kv_get``, key
    ``__autoscaling_status``; Ray 2.60.0), or ``None`` when no monitor wrote one."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get("__autoscaling_status")


def tuner_run_config(tuner):
    """The ``RunConfig`` of a restored ``tune.Tuner`` (``Tuner._local_tuner.get_run_config()``,
    Ray 2.60.0: Tune has no public way to reach the callbacks it restored)."""
    return tuner._local_tuner.get_run_config()
