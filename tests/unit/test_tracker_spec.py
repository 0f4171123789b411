"""The tracker validates the launch's spec once per process (every new trial reads it), and the
validated spec never travels with the pickled Tuner (its dict does). No Ray start."""

from __future__ import annotations

import pickle

from adpo_ray.orchestration.tracking import MLflowTracker
from adpo_ray.spec import ExperimentSpec, parse_spec

SPEC = {"name": "t", "environments": ["PreferenceBandit"], "scenarios": ["clean"], "budget": {"iterations": 2}}


def test_the_tracker_validates_the_spec_once_and_does_not_pickle_it(tmp_path, monkeypatch):
    tracker = MLflowTracker(parse_spec(SPEC), f"sqlite:///{tmp_path / 'm.db'}", None, str(tmp_path), "launch")
    calls = []
    validate = ExperimentSpec.model_validate
    monkeypatch.setattr(ExperimentSpec, "model_validate", classmethod(
        lambda cls, *a, **k: calls.append(1) or validate.__func__(cls, *a, **k)))
    first = tracker.spec
    assert tracker.spec is first and tracker.spec.trials() == first.trials()
    assert len(calls) == 1
    state = tracker.__getstate__()
    assert state["_spec"] is None and state["spec_dict"] == tracker.spec_dict
    again = pickle.loads(pickle.dumps(tracker))
    assert again.spec.model_dump() == first.model_dump() and len(calls) == 2  # once in the new process
