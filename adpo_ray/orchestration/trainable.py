"""The Tune trainable of every grid trial: one RLlib algorithm per trial (ADPO, DPO or PPO online;
an ADPO, KD or BC student offline).

Every trial reads its settings from one record, its :class:`~adpo_ray.spec.TrialKnobs` (budget,
checkpoint interval, resources, the RLlib config). Tune reserves the algorithm's own placement
group (main process, env runners, learners) through :meth:`GridTrainable.default_resource_request`,
sized from the trial's own knobs; results are reduced to the curated metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from ray import tune

from adpo_ray.metrics import ENV_STEPS, EVAL_METRICS, EVAL_RETURN, curate
from adpo_ray.spec import ExperimentSpec, TrialKnobs, TrialSpec


def search_key(metric: str) -> str:
    """The result key a search optimises: its metric, reported in every result."""
    return f"search/{metric}"


#: The trial's last curated result, saved with each checkpoint.
LAST_RESULT = "adpo_last_result.json"


@lru_cache(maxsize=8)
def _spec(spec_json: str) -> ExperimentSpec:
    return ExperimentSpec.model_validate_json(spec_json)


def trial_from_config(config: dict[str, Any], trial_id: str = "") -> tuple[ExperimentSpec, TrialSpec]:
    """The trial's spec and coordinates (with a search's sampled sweep point). Every trial of a
    grid carries the same spec: it is validated once per process, not once per trial (a
    paper-scale spec takes ~35 ms)."""
    return _spec(json.dumps(config["spec"], sort_keys=True)), TrialSpec.from_config(config, trial_id)


def algo_config_from(config: dict[str, Any], knobs: TrialKnobs):
    """The RLlib config of the trial of a Tune ``config`` with ``knobs`` (a student's with its
    pinned teacher's dataset)."""
    from adpo_ray.rllib.factory import build_algo_config, build_distill_config

    spec, trial = trial_from_config(config)
    if spec.distill is None:
        return build_algo_config(knobs)
    from adpo_ray.orchestration.datasets import student_inputs

    teacher = config["distill_runs"][trial.env]
    return build_distill_config(knobs, **student_inputs(spec, trial, config["tracking_uri"], teacher))


@lru_cache(maxsize=4096)
def _resources(spec_json: str, trial_json: str):
    """A trial's placement group, from its own knobs (its sweep point included: a swept minibatch
    or network size can move its learner to a GPU). Tune asks on the driver for every trial, so
    answers are cached by the trial's identity, and the RLlib config behind them by its knobs with
    the scenario and seed left out (they never change what a trial asks for)."""
    spec = _spec(spec_json)
    return _request(resource_alike(spec.knobs(TrialSpec(**json.loads(trial_json)))), spec.distill is not None)


def resource_alike(knobs: TrialKnobs) -> TrialKnobs:
    """``knobs`` with the trial's scenario and seed set to ``clean`` and 0: a cache key for what
    the trial asks of the cluster, which they never change."""
    return dataclasses.replace(knobs, trial=dataclasses.replace(knobs.trial, scenario="clean", seed=0))


@lru_cache(maxsize=1024)
def _request(knobs: TrialKnobs, distill: bool):
    from adpo_ray.rllib.factory import build_algo_config, build_distill_config

    algo_config = build_distill_config(knobs) if distill else build_algo_config(knobs)
    return algo_config.algo_class.default_resource_request(algo_config)


def torch_threads(trial_resources) -> int | None:
    """torch's intra-op threads for a trial whose placement group is ``trial_resources`` (Tune's
    ``PlacementGroupFactory``; None outside Tune): the CPUs of its first bundle, where its process
    and its local learner run (at least 1); None where there is no placement group."""
    bundles = getattr(trial_resources, "bundles", None)
    if not bundles:
        return None
    return max(1, int(bundles[0].get("CPU", 1)))


class AlgorithmTrainable(tune.Trainable):
    """A Tune trainable around one RLlib algorithm (``self.algo``) whose last curated result
    (``self._last``) is saved with each checkpoint: a trial, or a trial pack, restored from its
    final checkpoint knows it is done."""

    def pin_torch_threads(self) -> None:
        """Run torch on as many threads as the trial has CPUs (:func:`torch_threads`), whatever
        ``OMP_NUM_THREADS`` the node's environment holds: Ray sets it to an actor's CPUs only where
        it is unset, so on a node started with ``OMP_NUM_THREADS=8`` every 1-CPU trial would run
        its update on 8 threads, 8 trials oversubscribing 8 cores 8 times. Outside Tune: as is."""
        threads = torch_threads(self.trial_resources)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.algo.save_to_path(checkpoint_dir)
        with open(os.path.join(checkpoint_dir, LAST_RESULT), "w") as f:
            json.dump(self._last, f)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.algo.restore_from_path(checkpoint_dir)
        path = os.path.join(checkpoint_dir, LAST_RESULT)
        self._last = json.loads(Path(path).read_text()) if os.path.exists(path) else {}

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Take the next trial in this process (Tune's ``reuse_actors``): the algorithm is stopped
        and a new one built from ``new_config`` as in a new process; only the process start and
        the imports of torch and RLlib (about 4 s of CPU per trial) are saved."""
        self.algo.stop()
        self.setup(new_config)
        return True

    def cleanup(self) -> None:
        self.algo.stop()


class GridTrainable(AlgorithmTrainable):
    """``config = {"spec": <spec dict>, "trial": <TrialSpec dict>}`` (distillation grids add
    ``"tracking_uri"`` and ``"distill_runs"``: the teacher run per env, pinned at launch; grids
    starting from pretrained policies ``"init_runs"``: the run per env and network size)."""

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]):
        trial = TrialSpec.from_config(config)  # a search's sampled point included
        key = json.dumps({**trial.as_dict(), "sample": ""}, sort_keys=True, default=str)
        return _resources(json.dumps(config["spec"], sort_keys=True), key)

    def setup(self, config: dict[str, Any]) -> None:
        self.pin_torch_threads()
        self.spec, self.trial = trial_from_config(config, self.trial_id)
        self.knobs = self.spec.knobs(self.trial)
        self.algo = algo_config_from(config, self.knobs).build_algo()
        from adpo_ray.orchestration.policies import init_checkpoint

        start = init_checkpoint(self.spec, self.trial, config.get("tracking_uri"), config.get("init_runs"))
        if start is not None:  # a restore from the trial's own checkpoint overwrites all of it
            from adpo_ray.rllib.init import start_from_checkpoint

            start_from_checkpoint(self.algo, start)
        self._last: dict[str, Any] = {}

    def _budget_reached(self, steps: float) -> bool:
        k = self.knobs
        return bool((k.iterations and self.algo.iteration >= k.iterations) or (k.env_steps and steps >= k.env_steps))

    def step(self) -> dict[str, Any]:
        if self._last and self._budget_reached(self._last.get(ENV_STEPS, 0)):
            # restored from its final checkpoint (e.g. a retry after the trial's last result):
            # the trial is done, and trains no iteration past its budget
            return {**self._last, "done": True}
        raw = self.algo.train()
        result = curate(raw)
        if not self._evaluated_this_iteration():
            for key in EVAL_METRICS:
                result.pop(key, None)  # RLlib repeats the last evaluation's numbers
        it = self.algo.iteration
        if self._budget_reached(result.get(ENV_STEPS, 0)):
            result["done"] = True  # the trial's own budget: bandit and MuJoCo trials differ
            if EVAL_RETURN not in result and self.spec.distill is None and self.algo.config.evaluation_interval:
                # every trial ends with a clean evaluation of its final policy
                final = curate({"evaluation": self.algo.evaluate()})
                result.update({k: v for k, v in final.items() if k in EVAL_METRICS})
        elif it % self.knobs.checkpoint_every == 0:
            result["should_checkpoint"] = True
        # Tune's TensorBoard logger plots against `timesteps_total`: env steps, as MLflow does
        result["timesteps_total"] = int(result.get(ENV_STEPS, 0))
        search = self.spec.search
        if search is not None:
            # a search's scheduler and searcher read its metric in every result: between
            # evaluations the last value is carried (before the first, the worst possible);
            # under its own key, so MLflow still records each evaluation once
            key = search_key(search.metric)
            worst = float("-inf") if search.mode == "max" else float("inf")
            result[key] = float(result[search.metric]) if search.metric in result else self._last.get(key, worst)
        self._last = {k: v for k, v in result.items() if k not in ("done", "should_checkpoint")}
        return result

    def _evaluated_this_iteration(self) -> bool:
        """RLlib evaluates on iterations that are multiples of the interval; in between its result
        repeats the last evaluation's numbers (and its episode counters lag by one iteration)."""
        if self.spec.distill is not None:  # students evaluate themselves, on a known iteration
            return self.algo.last_eval_iteration == self.algo.iteration
        interval = self.algo.config.evaluation_interval
        return bool(interval) and self.algo.iteration % interval == 0
