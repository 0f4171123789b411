"""Two launches that need one clean-env PPO policy train it once (real MLflow, sqlite): the
claim each launch makes is judged against every claim that is training or trained, read in one
query."""

from __future__ import annotations

import dataclasses

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.policies import TEACHER_TAG, claim_policy, find_policy
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
