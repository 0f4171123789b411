"""ASHA early stopping that a resumed search repeats exactly.

Tune 2.60 snapshots the searcher with the experiment but not the scheduler: a restored ASHA has
empty rungs, and a killed driver's last results (newer than Tune's snapshot) are replayed from an
older checkpoint, where RLlib need not reproduce them bit for bit. :class:`RecordedASHA` writes
every decision to an append-only record (flushed and fsynced before Tune acts on it). A resumed
launch rebuilds each restored trial's bracket and rung values from that record, and a result for
an iteration the record already holds gets the recorded decision, so rungs, cutoffs and stops are
those of the first attempt.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from adpo_ray.orchestration._ray_private import AshaState

#: The record, next to the grid's other state: one JSON object per line.
RECORD_FILE = "adpo_asha_record.jsonl"


def record_path(run_dir: str, launch_name: str) -> str:
    """Where a launch keeps its ASHA record: in its results folder; for results on remote
    storage (no appends), next to the launch's spool on the driver's machine."""
    from adpo_ray.orchestration import storage
    from adpo_ray.orchestration.tracking import spool_folder

    if storage.is_uri(run_dir):
        return spool_folder(run_dir, launch_name) + "-" + RECORD_FILE
    return os.path.join(run_dir, RECORD_FILE)


class RecordedASHA(ASHAScheduler):
    """Tune's ASHA (same arguments) plus ``record``: the path of its decision record (see the
    module docstring). Record lines: ``{"trial", "bracket"}`` when a trial is first added;
    ``{"trial", "t", "value", "action"}`` for each result ASHA judged (``value`` is the metric
    signed so that higher is better, ``action`` ``"CONTINUE"``/``"STOP"``, or ``"COMPLETE"`` for
    the trial's last result)."""

    def __init__(self, *args, record: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = record
        self._past: dict[str, list[dict[str, Any]]] | None = None
        self._torn = False
        self.asha = AshaState(self)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_past"] = None  # read again from the record by the process that uses it
        return state

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        if self._past is None:
            self._past = {}
            if os.path.exists(self.record):
                with open(self.record) as f:
                    for line in f:
                        self._torn = not line.endswith("\n")
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # a line cut short by a kill: that decision was never acted on
                        self._past.setdefault(entry["trial"], []).append(entry)
        return self._past

    def _write(self, entry: dict[str, Any]) -> None:
        self._read().setdefault(entry["trial"], []).append(entry)
        os.makedirs(os.path.dirname(os.path.abspath(self.record)), exist_ok=True)
        with open(self.record, "a") as f:
            f.write(("\n" if self._torn else "") + json.dumps(entry) + "\n")  # never onto a torn line
            self._torn = False
            f.flush()
            os.fsync(f.fileno())

    def _recorded(self, trial_id: str, t: int, actions: tuple[str, ...]) -> dict[str, Any] | None:
        return next((e for e in self._read().get(trial_id, ())
                     if e.get("t") == t and e.get("action") in actions), None)

    def on_trial_add(self, tune_controller, trial) -> None:
        past = self._read().get(trial.trial_id)
        if not past:
            super().on_trial_add(tune_controller, trial)
            asha = self.asha
            self._write({"trial": trial.trial_id, "bracket": asha.brackets.index(asha.trial_bracket[trial.trial_id])})
            return
        bracket = self.asha.brackets[next((e["bracket"] for e in past if "bracket" in e), 0)]
        self.asha.trial_bracket[trial.trial_id] = bracket
        for entry in past:  # its rung values, as first recorded
            if "t" in entry:
                bracket.on_result(trial, entry["t"], entry["value"])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self.asha
        if asha.time_attr not in result or asha.metric not in result:
            return TrialScheduler.CONTINUE
        t = int(result[asha.time_attr])
        done = self._recorded(trial.trial_id, t, ("CONTINUE", "STOP"))
        if done is not None:  # a replayed iteration: the decision taken the first time
            return done["action"]
        action = super().on_trial_result(tune_controller, trial, result)
        self._write({"trial": trial.trial_id, "t": t, "value": float(asha.metric_op * result[asha.metric]),
                     "action": action})
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        asha = self.asha
        if asha.time_attr in result and asha.metric in result:
            t = int(result[asha.time_attr])
            if self._recorded(trial.trial_id, t, ("CONTINUE", "STOP", "COMPLETE")) is not None:
                asha.trial_bracket.pop(trial.trial_id, None)  # its rung values are in already
                return
            self._write({"trial": trial.trial_id, "t": t, "value": float(asha.metric_op * result[asha.metric]),
                         "action": "COMPLETE"})
        super().on_trial_complete(tune_controller, trial, result)
