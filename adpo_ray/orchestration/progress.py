"""Tune's progress table for grids whose trials may be trial packs: a pack is shown as its members,
one row each, as their solo trials would be shown."""

from __future__ import annotations

from ray.tune import CLIReporter
from ray.tune.result import NODE_IP, PID

from adpo_ray.metrics import MEMBERS
from adpo_ray.spec import TrialSpec
from adpo_ray.sweeps import sweep_label


class GridReporter(CLIReporter):
    """Tune's :class:`~ray.tune.CLIReporter` with each trial pack replaced by its members' rows
    (:func:`member_rows`, :class:`TableRow`): the trial counts above the table count members, and the parameter and
    metric columns read each member's own coordinates and result. A grid sweep's point shows as
    its label (``adpo.beta_q=0.5``), not as the pairs it is stored as.

    :param members: how many trials (pack members and solo trials) the grid has; Tune's own total
        counts its trials, one per pack. ``None``: Tune's total (a grid without packs).
    :param kwargs: :class:`~ray.tune.CLIReporter`'s arguments.
    """

    def __init__(self, *, members: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.members = members

    def set_total_samples(self, total_samples: int) -> None:
        super().set_total_samples(self.members if self.members and total_samples else total_samples)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        # The last table is as long as the others (``max_progress_rows``), not one row per trial
        # of a 5,000-trial grid: the grid's own summary table follows it.
        super().report(member_rows(trials), False, *sys_info)


class TableRow:
    """A trial as a row of Tune's progress table. Member ``k`` of a trial pack: its own name (its
    solo trial's, :attr:`TrialSpec.dirname`), coordinates (``config["trial"]``) and result (the
    pack result's ``members[k]``, with the pack's node and pid), with the pack's state, error and
    folder; the pack's error is listed once, on its first member's row. A solo trial (``k`` None):
    the trial itself. Either way a grid sweep's point shows as its label (:func:`_shown`)."""

    def __init__(self, trial, k: int | None = None):
        self._trial = trial
        self._name: str | None = None  # a solo trial's own name (str of the trial)
        if k is None:
            self.config = {**trial.config, "trial": _shown(trial.config["trial"])}
            return
        member = trial.config["trials"][k]
        self.config = {"trial": _shown(member)}
        result = trial.last_result or {}
        members = result.get(MEMBERS) or []
        self.last_result = {**{key: result[key] for key in (NODE_IP, PID) if key in result},
                            **(members[k] if k < len(members) else {})}
        self.trial_id = f"{trial.trial_id}_{k:05d}"  # a pack's members sort together, in order
        self.error_file = trial.error_file if k == 0 else None
        self._name = TrialSpec(**member).dirname

    def __getattr__(self, name: str):  # what the row does not set (status, local_path...): the trial's
        return getattr(self._trial, name)

    def __str__(self) -> str:
        return self._name or str(self._trial)


def _shown(trial: dict) -> dict:
    """A trial's config (:meth:`TrialSpec.as_dict`) as the table shows it: its grid sweep point
    as its label (``adpo.beta_q=0.5``; the pairs it is stored as would be cut to 20 characters)."""
    return {**trial, "sweep": sweep_label(trial["sweep"])} if trial.get("sweep") else trial


def member_rows(trials: list) -> list:
    """``trials`` (Tune's trials) as the table's rows (:class:`TableRow`), in order: a trial pack
    as its members' rows, a grid's solo trial as its own."""
    rows = []
    for trial in trials:
        packed_members = trial.config.get("trials")
        if packed_members is not None:
            rows.extend(TableRow(trial, k) for k in range(len(packed_members)))
        else:
            rows.append(TableRow(trial) if "trial" in trial.config else trial)
    return rows
