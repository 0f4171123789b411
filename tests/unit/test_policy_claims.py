"""Two launches that need one clean-env PPO policy train it once (real MLflow, sqlite): the
claim each launch makes is judged against every claim that is training or trained, read in one
query; and a claim whose launch was killed mid-training (no heartbeat for ``STALE_S``) is
released and claimed again rather than waited for."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.policies import (
    HEARTBEAT_TAG,
    STALE_S,
    TEACHER_TAG,
    claim_policy,
    find_policy,
    heartbeat,
    wait_for_teacher,
)
from adpo_ray.spec import CleanPPO

STAGE = CleanPPO(env="PreferenceBandit", env_steps=256, hidden_size=16, seed=9, experiment="teachers",
                 key="PreferenceBandit_ppo_256steps_h16_s9")


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One store for the module (creating an sqlite store takes seconds); each test its own key."""
    return f"sqlite:///{tmp_path_factory.mktemp('claims') / 'mlflow.db'}"


def _statuses(client: MlflowClient, stage: CleanPPO) -> list[str]:
    exp = client.get_experiment_by_name(stage.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TEACHER_TAG}` = '{stage.key}'")
    return sorted(r.info.status for r in runs)


def test_the_later_of_two_claims_waits_for_the_earlier(uri, tmp_path):
    client, stage = MlflowClient(uri), dataclasses.replace(STAGE, key=STAGE.key + "_a")
    first, mine = claim_policy(client, stage, str(tmp_path / "art"))
    assert mine
    again, mine_again = claim_policy(client, stage, str(tmp_path / "art"))
    assert (again, mine_again) == (first, False)  # seen RUNNING before claiming: no claim made
    assert _statuses(client, stage) == ["RUNNING"]


def test_a_claim_that_finished_meanwhile_is_used_not_trained_again(uri, tmp_path):
    """Launch B checks for a RUNNING claim (none yet); launch A then claims the policy, trains it
    and finishes (a small teacher takes seconds) before B's own claim is compared with the others.
    B must take A's FINISHED run: judged against RUNNING claims alone, B found itself the only
    claim and trained the policy a second time (seen in a fresh-clone run of
    ``test_two_launches_needing_one_teacher_train_it_once``)."""
    launch_a, real = MlflowClient(uri), MlflowClient(uri)
    trained_by_a = []

    class LaunchB:  # B's MLflow client: A claims and finishes just before B creates its claim
        def __getattr__(self, name):
            return getattr(real, name)

        def create_run(self, *args, **kwargs):
            if not trained_by_a:
                run_id, mine = claim_policy(launch_a, STAGE, str(tmp_path / "art"))
                assert mine
                launch_a.set_terminated(run_id, "FINISHED")
                trained_by_a.append(run_id)
            return real.create_run(*args, **kwargs)

    run_id, mine = claim_policy(LaunchB(), STAGE, str(tmp_path / "art"))
    assert (run_id, mine) == (trained_by_a[0], False)
    assert _statuses(real, STAGE) == ["FINISHED", "KILLED"]  # B's claim withdrawn, A's policy the one
    assert find_policy(real, STAGE).info.run_id == trained_by_a[0]


def _orphan(client: MlflowClient, stage: CleanPPO, silent_s: float, beat_s: float | None = None) -> str:
    """A RUNNING claim of ``stage`` created ``silent_s`` ago (a launch killed mid-training), with
    a heartbeat ``beat_s`` ago if given."""
    from adpo_ray.orchestration.mlflow_store import experiment_id

    now = time.time()
    tags = {TEACHER_TAG: stage.key, "env": stage.env}
    if beat_s is not None:
        tags[HEARTBEAT_TAG] = f"{now - beat_s:.0f}"
    run = client.create_run(experiment_id(client, stage.experiment, None), start_time=int((now - silent_s) * 1000),
                            run_name=stage.key, tags=tags)
    return run.info.run_id


def test_a_claim_silent_too_long_is_released_and_claimed_again(uri, tmp_path):
    client, stage = MlflowClient(uri), dataclasses.replace(STAGE, key=STAGE.key + "_orphan")
    orphan = _orphan(client, stage, silent_s=STALE_S + 60)
    run_id, mine = claim_policy(client, stage, None)
    assert mine and run_id != orphan
    released = client.get_run(orphan)
    assert released.info.status == "FAILED" and "no heartbeat" in released.data.tags["adpo_ray.abandoned"]
    assert _statuses(client, stage) == ["FAILED", "RUNNING"]


def test_a_claim_with_a_recent_heartbeat_is_waited_for(uri, tmp_path):
    """Claimed long ago, but its launch beat a minute ago: it is training, not abandoned."""
    client, stage = MlflowClient(uri), dataclasses.replace(STAGE, key=STAGE.key + "_alive")
    alive = _orphan(client, stage, silent_s=3 * STALE_S, beat_s=60)
    assert claim_policy(client, stage, None) == (alive, False)
    assert _statuses(client, stage) == ["RUNNING"]


def test_a_waiter_releases_a_claim_that_falls_silent(uri):
    client, stage = MlflowClient(uri), dataclasses.replace(STAGE, key=STAGE.key + "_silent")
    orphan = _orphan(client, stage, silent_s=STALE_S + 1)
    told: list[str] = []
    assert wait_for_teacher(client, orphan, told.append, poll_s=0.01, timeout_s=30) is None
    assert client.get_run(orphan).info.status == "FAILED" and "claiming it again" in told[-1]


def test_heartbeat_refreshes_every_claim_while_the_block_runs(uri):
    client, stage = MlflowClient(uri), dataclasses.replace(STAGE, key=STAGE.key + "_beat")
    runs = [_orphan(client, stage, silent_s=STALE_S - 1) for _ in range(2)]
    before = time.time()
    with heartbeat(client, runs, period_s=0.05):
        deadline = time.time() + 20
        while time.time() < deadline and not all(HEARTBEAT_TAG in client.get_run(r).data.tags for r in runs):
            time.sleep(0.05)
    for r in runs:
        assert float(client.get_run(r).data.tags[HEARTBEAT_TAG]) >= before - 1
    # the thread stops with the block (a beat in flight finishes first; the block waits a period)
    deadline = time.time() + 20
    while time.time() < deadline and any(t.name == "policy-heartbeat" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "policy-heartbeat" for t in threading.enumerate())
