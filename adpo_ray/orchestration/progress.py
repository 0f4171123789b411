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
    (:func:`member_rows`): the trial counts above the table count members, and the parameter and
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


class MemberRow:
    """Member ``k`` of a trial pack as a row of Tune's progress table: its own name (its solo
    trial's, :attr:`TrialSpec.dirname`), coordinates (``config["trial"]``) and result (the pack
    result's ``members[k]``, with the pack's node and pid); the pack's state, error and folder. The
    pack's error is listed once, on its first member's row."""

    def __init__(self, pack, k: int):
        self._pack = pack
        member = pack.config["trials"][k]
        self.config = {"trial": _shown(member)}
        result = pack.last_result or {}
        members = result.get(MEMBERS) or []
        self.last_result = {**{key: result[key] for key in (NODE_IP, PID) if key in result},
                            **(members[k] if k < len(members) else {})}
        self.trial_id = f"{pack.trial_id}_{k:05d}"  # a pack's members sort together, in order
        self._k = k
        self._name = TrialSpec(**member).dirname

    @property
    def error_file(self) -> str | None:
        return self._pack.error_file if self._k == 0 else None

    def __getattr__(self, name: str):  # status, local_path, run_metadata...: the pack's
        return getattr(self._pack, name)

    def __str__(self) -> str:
        return self._name


class SoloRow:
    """A solo trial as a row of Tune's progress table: the trial itself, its sweep point shown as
    its label (:func:`_shown`)."""

    def __init__(self, trial):
        self._trial = trial
        self.config = {**trial.config, "trial": _shown(trial.config["trial"])}

    def __getattr__(self, name: str):
        return getattr(self._trial, name)

    def __str__(self) -> str:
        return str(self._trial)


def _shown(trial: dict) -> dict:
    """A trial's config (:meth:`TrialSpec.as_dict`) as the table shows it: its grid sweep point
    as its label (``adpo.beta_q=0.5``; the pairs it is stored as would be cut to 20 characters)."""
    return {**trial, "sweep": sweep_label(trial["sweep"])} if trial.get("sweep") else trial


def member_rows(trials: list) -> list:
    """``trials`` (Tune's trials) with each trial pack replaced by its members' rows
    (:class:`MemberRow`), in order, and each solo trial of a grid by its :class:`SoloRow`."""
    rows = []
    for trial in trials:
        packed_members = trial.config.get("trials")
        if packed_members is not None:
            rows.extend(MemberRow(trial, k) for k in range(len(packed_members)))
        elif "trial" in trial.config:
            rows.append(SoloRow(trial))
        else:
            rows.append(trial)
    return rows
