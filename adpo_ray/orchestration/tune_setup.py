"""What Tune is given for a grid: the parameter space, the search space and search settings, the
progress table, trial names, and the process settings a launch and a resume run under."""

from __future__ import annotations

import logging
import os
from typing import Any

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metrics import ENV_STEPS, EVAL_RETURN, EVAL_WINMASS, TRAINING_ITERATION
from adpo_ray.spec import ExperimentSpec, unit_name


def param_space(spec: ExperimentSpec, tracking_uri: str, distill_runs: dict[str, str] | None = None,
                init_runs: dict[str, str] | None = None) -> dict[str, Any]:
    """Tune's ``param_space`` of ``spec``: the spec itself (every trial reads it), the trials as a
    grid (or one base trial and the sweep a search samples), and where the trials find their
    pinned teachers, datasets (``distill_runs``: env -> MLflow run id) and starting policies
    (``init_runs``), at ``tracking_uri``."""
    from ray import tune

    space: dict[str, Any] = {"spec": spec.model_dump(mode="json", by_alias=True)}
    if packed(spec):  # one Tune trial per pack (or trial left alone): PackedGridTrainable's config
        space["trials"] = tune.grid_search([[t.as_dict() for t in pack] for pack in spec.packs()])
    elif spec.search is None:
        space["trial"] = tune.grid_search([t.as_dict() for t in spec.trials()])
    else:  # one base trial; the search algorithm samples its sweep point
        (base,) = spec.trials()
        space["trial"] = base.as_dict()
        space["sweep"] = search_space(spec)
    if spec.distill is not None:  # students find their pinned teacher and its datasets there
        space["tracking_uri"] = tracking_uri
        space["distill_runs"] = dict(distill_runs or {})
    if init_runs:  # trials find their pinned pretrained starting policy there
        space["tracking_uri"] = tracking_uri
        space["init_runs"] = dict(init_runs)
    return space


def packed(spec: ExperimentSpec) -> bool:
    """Whether ``spec`` launches through trial packs: ``resources.pack`` other than 1, without a
    search. Then every Tune trial's config holds ``trials`` (its members) and
    :class:`~adpo_ray.orchestration.pack_trainable.PackedGridTrainable` runs them."""
    return spec.resources.pack != 1 and spec.search is None


def grid_trainable(spec: ExperimentSpec):
    """The Tune trainable of ``spec``'s grid: solo trials, or packs and solo trials (:func:`packed`)."""
    if packed(spec):
        from adpo_ray.orchestration.pack_trainable import PackedGridTrainable

        return PackedGridTrainable
    from adpo_ray.orchestration.trainable import GridTrainable

    return GridTrainable


def search_space(spec: ExperimentSpec) -> dict[str, Any]:
    """The sweep as Tune's search space: grid axes stay grids for Tune's own generator (every
    axis value, ``num_samples`` times each) and become categorical for Optuna."""
    from ray import tune

    out: dict[str, Any] = {}
    for path, value in spec.sweep.items():
        if isinstance(value, list):
            out[path] = tune.choice(value) if spec.search.algorithm == "optuna" else tune.grid_search(value)
        elif value.kind == "uniform":
            out[path] = tune.uniform(*value.uniform)
        elif value.kind == "loguniform":
            out[path] = tune.loguniform(*value.loguniform)
        elif value.kind == "randint":
            out[path] = tune.randint(value.randint[0], value.randint[1] + 1)  # Tune excludes the upper end
        else:
            out[path] = tune.choice(list(value.choice))
    return out


def search_config(spec: ExperimentSpec, record: str | None = None) -> dict[str, Any]:
    """TuneConfig arguments of a search: metric, mode, samples, search algorithm, scheduler.
    ``record``: where ASHA writes its decisions (see :mod:`~adpo_ray.orchestration.scheduling`);
    without one, Tune's own ASHA, whose rungs a resume does not restore."""
    from adpo_ray.orchestration.trainable import search_key

    search = spec.search
    if search is None:
        return {}
    kwargs: dict[str, Any] = {"metric": search_key(search.metric), "mode": search.mode,
                              "num_samples": search.num_samples}
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        kwargs["search_alg"] = OptunaSearch(seed=search.seed)
    elif search.seed is not None:
        from ray.tune.search import BasicVariantGenerator

        kwargs["search_alg"] = BasicVariantGenerator(random_state=search.seed)
    if search.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        from adpo_ray.orchestration.scheduling import RecordedASHA

        asha = dict(time_attr=TRAINING_ITERATION, max_t=max_iterations(spec),
                    grace_period=search.asha.grace_period, reduction_factor=search.asha.reduction_factor)
        kwargs["scheduler"] = RecordedASHA(**asha, record=record) if record else ASHAScheduler(**asha)
    return kwargs


def max_iterations(spec: ExperimentSpec) -> int:
    """The most iterations a trial of ``spec`` trains (its budget in iterations)."""
    import math

    (trial,) = spec.trials()[:1]
    knobs = spec.knobs(trial)
    if knobs.iterations:
        return knobs.iterations
    return math.ceil(knobs.env_steps / (knobs.train_batch_size or 1))


def progress_reporter(spec: ExperimentSpec):
    """The progress table printed while a grid runs (every 20 s at most, and at the end; at most 30
    rows, chosen fairly across states): each trial's coordinates (and sweep point), its
    iteration, env steps and the eval metric of its env kind (and the search metric). A trial
    pack is shown as its members, one row each, as their solo trials would be
    (:class:`~adpo_ray.orchestration.progress.GridReporter`); the trial counts above the table
    count members."""
    from adpo_ray.orchestration.progress import GridReporter

    metrics = {TRAINING_ITERATION: "iter", ENV_STEPS: "env steps"}
    kinds = {ENVIRONMENTS[e]["kind"] for e in spec.environments}
    if "bandit" in kinds:
        metrics[EVAL_WINMASS] = "WinMass"
    if "mujoco" in kinds:
        metrics[EVAL_RETURN] = "eval return"
    columns = {
        "trial/env": "env",
        "trial/scenario": "scenario",
        "trial/algorithm": "algo",
        "trial/anchor_mode": "anchor",
        "trial/hidden_size": "hidden",
        "trial/seed": "seed",
    }
    if spec.search is not None:
        from adpo_ray.orchestration.trainable import search_key

        metrics[search_key(spec.search.metric)] = f"{spec.search.metric} (search)"
        columns.update({f"sweep/{path}": path for path in spec.sweep})
    elif spec.sweep:
        columns["trial/sweep"] = "sweep"
    return GridReporter(
        members=len(spec.trials()) if packed(spec) else None,
        metric_columns=metrics,
        parameter_columns=columns,
        max_report_frequency=20,
        # the table at every report (Tune's default: at verbose 3 only; a grid runs at 1)
        print_intermediate_tables=True,
        max_progress_rows=30,
        max_error_rows=10,
        sort_by_metric=False,
    )


def trial_name(trial) -> str:
    """Tune's name and folder of a trial: its tag, shortened where a folder name could not hold it
    (:attr:`TrialSpec.dirname`); a pack's, :func:`~adpo_ray.spec.pack_dirname`."""
    return unit_name(trial.config, trial.trial_id)


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# One instance each: addFilter adds it once however often tuner_env runs.
#: Tune's advice to resume an interrupted run with ``Tuner.restore``: a grid resumes with
#: `adpo-ray resume RUN_DIR`, which the CLI prints instead.
_NO_RESTORE_HINT = _DropMessages("Tuner.restore(")
#: TensorBoard's warning that a trial pack's ``members`` (each member's result, a list no
#: TensorBoard plot takes) is an invalid value: each member's curves are in its own MLflow run and
#: in the pack's ``progress.csv``; TensorBoard plots the pack's own scalars.
_NO_MEMBERS_HISTOGRAM = _DropMessages("invalid value (ray/tune/members=")


def tuner_env() -> None:
    """Settings of this process for Tune, set before a launch or a resume (the values already in
    the environment win)."""
    logging.getLogger("ray.tune.tune").addFilter(_NO_RESTORE_HINT)
    logging.getLogger("ray.tune.logger.tensorboardx").addFilter(_NO_MEMBERS_HISTOGRAM)
    # The compact progress table (legacy reporter) and frequent experiment snapshots, so a
    # killed driver resumes close to where it was.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
