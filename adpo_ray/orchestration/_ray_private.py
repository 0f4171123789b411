"""Every use of a private Tune / Ray-core name by the orchestration layer, one small function
each. This layer has its own adapter because these uses (restoring a Tuner, reading the
autoscaler's status) are launching concerns that do not belong in the RLlib layer below, whose
adapter is :mod:`adpo_ray.rllib._ray_private`. Both were written for the same Ray,
:data:`~adpo_ray.rllib._ray_private.RAY_VERSION`; importing that module checks the running one."""

from __future__ import annotations

from adpo_ray.rllib._ray_private import RAY_VERSION  # noqa: F401 - the import checks the running Ray

__all__ = ["PRIVATE_NAMES", "autoscaling_status", "tuner_run_config", "tuner_scheduler",
           "newest_experiment_state", "driver_staging_copies", "follow_moved_folder", "AshaState",
           "prepared_cluster_config"]

#: The private Ray names reached here (see :data:`adpo_ray.rllib._ray_private.PRIVATE_NAMES`).
PRIVATE_NAMES = frozenset({"_internal_kv_get", "_local_tuner", "_tune_config",
                           "_find_newest_experiment_checkpoint", "_brackets", "_trial_info",
                           "_time_attr", "_metric", "_metric_op", "_rungs", "_private"})


def autoscaling_status() -> bytes | None:
    """The autoscaler monitor's status record (JSON bytes with ``monitor_pid``), read from the
    connected Ray's internal KV (``ray.experimental.internal_kv._internal_kv_get``, key
    ``__autoscaling_status``; Ray 2.60.0), or ``None`` when no monitor wrote one."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get("__autoscaling_status")


def prepared_cluster_config(config: dict) -> dict:
    """A cluster launcher config (the parsed ``cluster/*.yaml``) as ``ray up`` would use it: Ray's
    own defaults filled in and validated, offline, no cloud call
    (``ray.autoscaler._private.util.prepare_config`` then ``validate_config``, Ray 2.60.0).
    ``config`` is not modified. Raises ``jsonschema.ValidationError`` or ``ValueError`` where Ray
    would refuse it."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def tuner_run_config(tuner):
    """The ``RunConfig`` of a restored ``tune.Tuner`` (``Tuner._local_tuner.get_run_config()``,
    Ray 2.60.0: Tune has no public way to reach the callbacks it restored)."""
    return tuner._local_tuner.get_run_config()


def tuner_scheduler(tuner):
    """The trial scheduler of a restored ``tune.Tuner`` (``Tuner._local_tuner._tune_config.scheduler``,
    Ray 2.60.0): the object unpickled with the Tuner, which Tune does not snapshot."""
    return tuner._local_tuner._tune_config.scheduler


def driver_staging_copies(experiment: str, filename: str) -> list[str]:
    """Tune's own copies of an experiment's state file ``filename`` on this machine, newest
    first: Tune 2.60 writes its snapshot and search state atomically into the driver's staging
    folder, ``<Ray temp dir>/session_*/artifacts/<timestamp>/<experiment>/driver_artifacts``, and
    only copies them into the results folder (not atomically) with each snapshot."""
    import glob
    import os
    import tempfile

    root = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
    sessions = [s for s in glob.glob(os.path.join(glob.escape(root), "session_*"))
                if not os.path.islink(s)]  # ``session_latest`` moves with every new Ray session
    dated = []
    for session in sessions:
        for path in glob.glob(os.path.join(glob.escape(session), "artifacts", "*", glob.escape(experiment),
                                           "driver_artifacts", glob.escape(filename))):
            try:
                dated.append((os.path.getmtime(path), path))
            except OSError:  # its session was cleaned up meanwhile
                continue
    return [path for _, path in sorted(dated, reverse=True)]


def newest_experiment_state(run_dir: str) -> str | None:
    """The path of the newest ``experiment_state-*.json`` in ``run_dir`` — the snapshot
    ``Tuner.restore`` reads (``ray.tune.execution.experiment_state._find_newest_experiment_checkpoint``,
    Ray 2.60.0) — or ``None`` before the first."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    return _find_newest_experiment_checkpoint(str(run_dir))


def follow_moved_folder(state: dict, storage_fs_path: str, experiment_dir_name: str) -> bool:
    """Point the trials a restored search state has yet to create at the results folder where it
    is now: ``<storage_fs_path>/<experiment_dir_name>``.

    ``state`` is the loaded dict of a ``basic-variant-state-*.json`` (a grid's
    ``BasicVariantGenerator``: each of its ``_iterators`` holds the experiment spec and the resolved
    specs it creates trials from) or a ``search_gen_state-*.json`` (a search's ``SearchGenerator``: its ``experiment``).
    Tune 2.60.0 moves the storage of the trials in its snapshot when a folder moved
    (``TuneController._restore_trials``), but not the storage these specs hold, so a trial created
    after a resume in a moved folder would write to the old one and fail at its first checkpoint.

    Returns:
        Whether anything was changed (the state is changed in place).
    """
    specs = []
    for iterator in state.get("_iterators", []):
        specs.append(iterator.unresolved_spec)
        if iterator.variants is not None:  # the resolved specs not yet made trials, with copies of its storage
            specs.extend(spec for _, spec in iterator.variants.iterable)
    if state.get("experiment") is not None:
        specs.append(state["experiment"].spec)  # its ``storage`` is ``experiment.storage`` itself
    changed = False
    for spec in specs:
        storage = spec.get("storage")
        if storage is not None and (storage.storage_fs_path, storage.experiment_dir_name) != (
                storage_fs_path, experiment_dir_name):
            storage.storage_fs_path, storage.experiment_dir_name = storage_fs_path, experiment_dir_name
            changed = True
    return changed


class AshaState:
    """ASHA's bookkeeping (``AsyncHyperBandScheduler`` in Ray 2.60.0: its brackets, the bracket of
    each trial, its time attribute and its metric with the sign that makes higher better), for a
    subclass that records and replays its decisions."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    @property
    def brackets(self) -> list:
        return self.scheduler._brackets

    def rungs(self, bracket: int = 0) -> list[tuple[float, dict]]:
        """The rungs of bracket ``bracket``, as ``(milestone, {trial id: metric value})`` from
        the last milestone to the first (``_Bracket._rungs``)."""
        return self.brackets[bracket]._rungs

    @property
    def trial_bracket(self) -> dict:
        """Trial id -> its bracket."""
        return self.scheduler._trial_info

    @property
    def time_attr(self) -> str:
        return self.scheduler._time_attr

    @property
    def metric(self) -> str:
        return self.scheduler._metric

    @property
    def metric_op(self) -> float:
        return self.scheduler._metric_op
