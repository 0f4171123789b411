"""The Tune trainable of a trial pack: K grid trials of one shape as ONE RLlib algorithm
(:func:`adpo_ray.rllib.pack_factory.build_pack_config`) in one process.

``config = {"spec": <spec dict>, "trials": [<TrialSpec dict>, ...]}``: the spec and the members'
coordinates, as :class:`~adpo_ray.orchestration.trainable.GridTrainable`'s config holds one trial.
Each result holds ``members``: member ``k``'s result exactly as its solo trial's
:meth:`GridTrainable.step` reports it (the curated metrics, ``timesteps_total``, ``training_iteration``
and, in a search,
its ``search/<metric>``), read from the pack's ``member/<k>/`` entries, plus the pack's own env
steps (``env_steps``: all members together). Each member runs to its own budget (iterations,
or its own env steps) and stops there, as its solo trial does, while its pack-mates train on;
the pack evaluates each member on its clean env on the solo schedule and checkpoints as a solo
trial does. Members of a grid with ``anchors.init`` start,
as their solo trials do, from their pretrained policy (``init_runs``, ``tracking_uri``: as a solo
trial's config holds them). Tune reserves the placement group RLlib asks for the pack's
algorithm: a solo trial's, for K members.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ray.tune import PlacementGroupFactory

from adpo_ray.metrics import (
    ENV_STEPS,
    EVAL_GROUP,
    EVAL_METRICS,
    EVAL_RETURN,
    MEMBER_GROUP,
    MEMBERS,
    MODULE,
    TRAINING_ITERATION,
    curate,
)
from adpo_ray.orchestration.trainable import (
    AlgorithmTrainable,
    GridTrainable,
    resource_alike,
    search_key,
    trial_from_config,
)
from adpo_ray.spec import ExperimentSpec, TrialKnobs, TrialSpec


def pack_from_config(config: dict[str, Any]) -> tuple[ExperimentSpec, list[TrialSpec]]:
    """The spec and the members' trials of a pack's Tune config. Raises ``ValueError`` for a
    config without a non-empty ``trials`` list, or a distillation spec (packs are online)."""
    trials = config.get("trials")
    if not isinstance(trials, list) or not trials:
        raise ValueError(f"a pack's config needs 'trials': a non-empty list of trial dicts, got {trials!r}")
    spec, first = trial_from_config({**config, "trial": trials[0]})
    if spec.distill is not None:
        raise ValueError("a pack runs online trials (adpo, dpo, ppo); this spec is a distillation grid")
    return spec, [first, *(TrialSpec.from_config({"trial": t}) for t in trials[1:])]


def pack_algo_config(config: dict[str, Any]):
    """The pack's RLlib config, from each member's ``spec.knobs(trial)``."""
    from adpo_ray.rllib.pack_factory import build_pack_config

    spec, trials = pack_from_config(config)
    return build_pack_config([spec.knobs(t) for t in trials])


@lru_cache(maxsize=1024)
def _request(knobs: tuple[TrialKnobs, ...]) -> PlacementGroupFactory:
    from adpo_ray.rllib.pack_factory import build_pack_config

    algo_config = build_pack_config(list(knobs))
    # RLlib's own placement group, as a solo trial's: the main process and learner in bundle 0,
    # each env runner in a bundle of its own (RLlib places runner i in bundle i)
    return algo_config.algo_class.default_resource_request(algo_config)


def member_result(raw: dict[str, Any], k: int) -> dict[str, Any]:
    """Member ``k``'s view of a pack's RLlib result, shaped as a solo trial's (what
    :func:`adpo_ray.metrics.curate` reads): its episode metrics and env steps, learner metrics,
    WinMass and evaluation."""
    key = str(k)
    out = {name: value for name, value in raw.items() if name not in ("env_runners", "learners", "evaluation",
                                                                         EVAL_GROUP)}
    runners = raw.get("env_runners") or {}
    out["env_runners"] = dict((runners.get(MEMBER_GROUP) or {}).get(key) or {})
    out.pop("num_env_steps_sampled_lifetime", None)  # the pack's; the member's own is in env_runners
    learner = ((raw.get("learners") or {}).get(MODULE) or {}).get(MEMBER_GROUP) or {}
    out["learners"] = {MODULE: dict(learner.get(key) or {})}
    winmass = ((raw.get(EVAL_GROUP) or {}).get(MEMBER_GROUP) or {}).get(key)
    if winmass is not None:
        out[EVAL_GROUP] = dict(winmass)
    evaluation = (((raw.get("evaluation") or {}).get("env_runners") or {}).get(MEMBER_GROUP) or {}).get(key)
    if evaluation is not None:
        out["evaluation"] = {"env_runners": dict(evaluation)}
    return out


class PackTrainable(AlgorithmTrainable):
    """``config = {"spec": <spec dict>, "trials": [<TrialSpec dict>, ...]}``, with
    ``"tracking_uri"`` and ``"init_runs"`` for a grid starting from pretrained policies (see the
    module docstring)."""

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> PlacementGroupFactory:
        """The pack's RLlib algorithm's placement group (main process and learner with its GPU
        share, then one bundle per env runner), as a solo trial asks."""
        spec, trials = pack_from_config(config)
        # cached by the members' knobs with their scenarios and seeds left out, as a solo
        # trial's: the paper grid's 366 packs ask for a handful of RLlib configs, not 366
        return _request(tuple(resource_alike(spec.knobs(t)) for t in trials))

    def setup(self, config: dict[str, Any]) -> None:
        self.pin_torch_threads()
        self.spec, self.trials = pack_from_config(config)
        envs = {t.env for t in self.trials}
        if len(envs) != 1:
            raise ValueError(f"trials: every member of a pack must share its env, got {sorted(envs)}")
        # budget and checkpoint interval are pack keys: every member's knobs hold the same
        self.knobs = self.spec.knobs(self.trials[0])
        self.algo = pack_algo_config(config).build_algo()
        from adpo_ray.orchestration.policies import init_checkpoint

        starts = [init_checkpoint(self.spec, t, config.get("tracking_uri"), config.get("init_runs"))
                  for t in self.trials]
        if any(s is not None for s in starts):  # a restore from the pack's own checkpoint overwrites all of it
            from adpo_ray.rllib.init import start_pack_from_checkpoints

            start_pack_from_checkpoints(self.algo, starts)
        self._last: dict[str, Any] = {}

    @property
    def num_members(self) -> int:
        return len(self.trials)

    def _budget_reached(self, member_steps: float) -> bool:
        k = self.knobs
        return bool((k.iterations and self.algo.iteration >= k.iterations)
                    or (k.env_steps and member_steps >= k.env_steps))

    def step(self) -> dict[str, Any]:
        """One iteration of every member not past its budget. A member that reaches its budget
        (its own env steps, or the iterations) ends there as its solo trial does: with a clean
        evaluation if this iteration had none, ``done`` in its result, then frozen
        (:func:`~adpo_ray.rllib.pack_factory.freeze_members`) while its pack-mates train on, its
        result repeated unchanged. The pack is done when every member is."""
        from adpo_ray.rllib.pack_factory import EVALUATED_MEMBERS, freeze_members

        last_members = self._last.get(MEMBERS) or [{}] * self.num_members
        ended = [bool(m.get("done")) for m in last_members]
        if self._last and (all(ended) or self._budget_reached(min(m.get(ENV_STEPS, 0) for m in last_members))):
            return {**self._last, "done": True}  # restored from its final checkpoint
        if any(ended):  # again after each restore: the learner and the env runners' filters
            freeze_members(self.algo, ended)
        raw = self.algo.train()
        evaluated = self._evaluated_this_iteration()
        members, newly = [], []
        for k in range(self.num_members):
            if ended[k]:
                members.append(last_members[k])  # as it ended: its solo trial's last result
                continue
            result = curate(member_result(raw, k))
            if not evaluated:
                for key in EVAL_METRICS:
                    result.pop(key, None)  # RLlib repeats the last evaluation's numbers
            result["timesteps_total"] = int(result.get(ENV_STEPS, 0))
            result[TRAINING_ITERATION] = self.iteration + 1  # as Tune numbers a solo trial's result
            search = self.spec.search
            if search is not None:
                key = search_key(search.metric)
                worst = float("-inf") if search.mode == "max" else float("inf")
                result[key] = float(result[search.metric]) if search.metric in result \
                    else last_members[k].get(key, worst)
            if self._budget_reached(result.get(ENV_STEPS, 0)):
                result["done"] = True
                newly.append(k)
            members.append(result)
        unevaluated = [k for k in newly if EVAL_RETURN not in members[k]]
        if unevaluated and self.algo.config.evaluation_interval:
            # each member ends with a clean evaluation; the evaluation waits for and logs only
            # theirs (the others' evaluation metrics stay those of their solo trials' schedule)
            before = getattr(self.algo, EVALUATED_MEMBERS, None)
            setattr(self.algo, EVALUATED_MEMBERS, unevaluated)
            try:
                final = self.algo.evaluate()
            finally:
                setattr(self.algo, EVALUATED_MEMBERS, before)
            for k in unevaluated:
                view = curate(member_result({"evaluation": final}, k))
                members[k].update({key: v for key, v in view.items() if key in EVAL_METRICS})
        out: dict[str, Any] = {}
        if all(m.get("done") for m in members):
            out["done"] = True
        elif self.algo.iteration % self.knobs.checkpoint_every == 0:
            out["should_checkpoint"] = True
        pack_steps = curate(raw).get(ENV_STEPS, 0)
        out.update({MEMBERS: members, ENV_STEPS: pack_steps, "timesteps_total": int(pack_steps)})
        self._last = {k: v for k, v in out.items() if k not in ("done", "should_checkpoint")}
        return out

    def _evaluated_this_iteration(self) -> bool:
        interval = self.algo.config.evaluation_interval
        return bool(interval) and self.algo.iteration % interval == 0


def solo_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """A one-member ``trials`` config as its solo trial's (``trial``, for :class:`GridTrainable`);
    None for a pack of several."""
    trials = config.get("trials")
    if trials is None:
        return config
    if len(trials) != 1:
        return None
    out = {k: v for k, v in config.items() if k != "trials"}
    out["trial"] = trials[0]
    return out


class PackedGridTrainable(AlgorithmTrainable):
    """The trainable of a grid launched with ``resources.pack`` other than 1: every Tune trial's
    config holds ``trials`` (:meth:`ExperimentSpec.packs`); one member runs as its solo trial
    (:class:`GridTrainable`, exactly), several as a pack (:class:`PackTrainable`). Each call goes
    to the kind's own method, on this trainable's state."""

    @staticmethod
    def _kind(config: dict[str, Any]) -> tuple[type[AlgorithmTrainable], dict[str, Any]]:
        solo = solo_config(config)
        return (GridTrainable, solo) if solo is not None else (PackTrainable, config)

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> PlacementGroupFactory:
        kind, config = cls._kind(config)
        return kind.default_resource_request(config)

    def setup(self, config: dict[str, Any]) -> None:
        self._as, config = self._kind(config)
        self._as.setup(self, config)

    def step(self) -> dict[str, Any]:
        return self._as.step(self)

    # what the kinds' step and setup call on ``self``
    def _budget_reached(self, steps: float) -> bool:
        return self._as._budget_reached(self, steps)

    def _evaluated_this_iteration(self) -> bool:
        return self._as._evaluated_this_iteration(self)

    @property
    def num_members(self) -> int:
        return len(self.trials)
