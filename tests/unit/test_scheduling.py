"""ASHA's decision record (no Ray started): a restored scheduler has the first attempt's rungs and
repeats its decisions for replayed iterations."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from adpo_ray.orchestration._ray_private import AshaState
from adpo_ray.orchestration.scheduling import RecordedASHA


def asha(record) -> RecordedASHA:
    return RecordedASHA(time_attr="training_iteration", metric="m", mode="max", max_t=8, grace_period=1,
                        reduction_factor=2, record=str(record))


def result(iteration: int, value: float) -> dict:
    return {"training_iteration": iteration, "m": value}


def test_restored_asha_keeps_rungs_and_repeats_recorded_decisions(tmp_path):
    record = tmp_path / "asha.jsonl"
    first = asha(record)
    t0, t1, t2, t3 = (SimpleNamespace(trial_id=f"t{i}") for i in range(4))
    for t in (t0, t1, t2):
        first.on_trial_add(None, t)
    assert first.on_trial_result(None, t0, result(1, 0.9)) == TrialScheduler.CONTINUE
    assert first.on_trial_result(None, t1, result(1, 0.1)) == TrialScheduler.STOP  # below the median 0.9
    first.on_trial_complete(None, t1, result(1, 0.1))
    assert first.on_trial_result(None, t2, result(1, 0.5)) == TrialScheduler.CONTINUE  # the median of 0.9, 0.1
    assert first.on_trial_result(None, t2, result(2, 0.2)) == TrialScheduler.CONTINUE  # the rung's first value

    # the driver dies; Tune restores the three trials (t2 from an older checkpoint) into a fresh
    # scheduler (Tune keeps none of its state) that reads the same record
    again = asha(record)
    for t in (t0, t1, t2):
        again.on_trial_add(None, t)
    assert [sorted(r.items()) for _, r in AshaState(again).rungs(0)] == \
        [sorted(r.items()) for _, r in AshaState(first).rungs(0)]
    # t2's iterations 1 and 2 again, with other values (RLlib need not replay bit for bit): the
    # decisions taken the first time, the rungs untouched
    assert again.on_trial_result(None, t2, result(1, 0.0)) == TrialScheduler.CONTINUE
    assert again.on_trial_result(None, t2, result(2, -1.0)) == TrialScheduler.CONTINUE
    assert AshaState(again).rungs(0)[-1][1] == {"t0": 0.9, "t1": 0.1, "t2": 0.5}
    # a new sample meets the first attempt's cutoff (0.5 at iteration 1): Tune's own ASHA, restored
    # with empty rungs, would let it go on
    again.on_trial_add(None, t3)
    assert again.on_trial_result(None, t3, result(1, 0.3)) == TrialScheduler.STOP
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines[-1] == {"trial": "t3", "t": 1, "value": 0.3, "action": "STOP"}
    assert sum(line.get("trial") == "t2" and line.get("t") == 1 for line in lines) == 1  # replays add nothing


def test_a_torn_last_line_is_a_decision_never_taken(tmp_path):
    record = tmp_path / "asha.jsonl"
    first = asha(record)
    t0 = SimpleNamespace(trial_id="t0")
    first.on_trial_add(None, t0)
    first.on_trial_result(None, t0, result(1, 0.9))
    with open(record, "a") as f:
        f.write('{"trial": "t0", "t": 2, "val')  # the driver died mid-write
    again = asha(record)
    again.on_trial_add(None, t0)
    assert AshaState(again).rungs(0)[-1][1] == {"t0": 0.9}
    assert again.on_trial_result(None, t0, result(2, 0.4)) == TrialScheduler.CONTINUE
    third = asha(record)  # the decision after the torn line is read back whole
    third.on_trial_add(None, t0)
    assert AshaState(third).rungs(0)[-2][1] == {"t0": 0.4}
