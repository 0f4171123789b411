"""A trial pack's learner: K members' updates as one batched update, each equal to its solo trial's.

:class:`PackedLearner` runs on the fused update path only (``learner_update: fused``; its loop is
:func:`adpo_ray.core.packed.stacked_update`). Per member, as the member's solo trial does:

* advantages and value targets: GAE on the member's own episodes, values from the member's own
  value network, advantages standardised over the member's own rows (:class:`PackedGAE`, which
  replaces RLlib's batch-wide standardisation in the learner connector);
* the minibatch plan: :func:`~adpo_ray.core.minibatches.minibatch_plan` over the member's rows
  (in batch order, the solo batch's order), its shuffles drawn from a generator of the member's
  own, started where the solo learner's process generator stands after it built its module
  (seeded with the member's seed; see :mod:`adpo_ray.rllib.pack_module`): ``fused_shuffle:
  device`` draws ``torch.randperm`` from a torch generator, ``rllib`` ``permutation`` from a numpy
  ``RandomState``. A solo trial whose learner shares its process with an env runner
  (``num_env_runners: 0``) also draws its exploration noise from that generator, so its shuffles
  depend on its sampling: no pack reproduces those; the member's own stream is then the solo's
  as if nothing else drew from it;
* the loss terms, the gradient clip, Adam with the member's lr (one
  :class:`~adpo_ray.core.packed.StackedAdam`), and for ADPO the member's anchor schedule, fed the
  member's mean KL(policy || anchor) of the update and its own env steps so far (the rows it
  trained on, its solo trial's sampled lifetime steps), and its refresh (one
  :func:`~adpo_ray.core.packed.polyak_stacked_` at the members' rates);
* for ``ppo_kl``, the member's KL coefficient beta (one ``(K,)`` tensor, ``Knobs.kl_beta``),
  adapted after each update by :func:`~adpo_ray.core.kl_penalty.adapt_kl_beta` on the member's
  mean KL(pi_old || pi_new) over its minibatches with its own ``kl_target``, as its solo learner
  (:class:`~adpo_ray.rllib.fused.FusedPPOKLTorchLearner`) adapts its own;
* the metrics: the solo learner's names under ``learners/default_policy/member/<k>/``.

A member whose gradient is not finite on a minibatch (a NaN in its rows) skips that step; the
others are exactly as without it. A frozen member (:meth:`PackedLearner.freeze_members`: one past
its budget while its pack-mates train on) takes no step at all: its parameters, anchor, Adam
state, schedule, shuffle generator, ``ppo_kl`` beta and env-step count stay as they are. The learner state (``get_state`` / ``set_state``) carries the
stacked Adam moments and step counts, the schedules, the shuffle generators and ``ppo_kl``'s betas.

Members' knobs come from ``config.learner_config_dict[PACK_MEMBERS]`` (one dict per member, see
:func:`member_knobs`) and ``[PACK_ALGORITHM]`` (``adpo``, ``dpo``, ``ppo`` or ``ppo_kl``); the
shared ones (network, batch, epochs, lists, loss variant, ``kl_adaptive``) from the config as for
a solo trial.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_CURR_KL_COEFF_KEY, LEARNER_RESULTS_KL_KEY
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.common.numpy_to_tensor import NumpyToTensor
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

from adpo_ray.core.anchors import make_schedule
from adpo_ray.core.kl_penalty import adapt_kl_beta
from adpo_ray.core.minibatches import minibatch_plan, num_minibatches
from adpo_ray.core.packed import (
    POLICY_INPUTS,
    Knobs,
    StackedAdam,
    adpo_terms,
    member_values,
    polyak_stacked_,
    ppo_kl_terms,
    ppo_terms,
    stacked_update,
)
from adpo_ray.metrics import (
    ANCHOR_KL,
    ANCHOR_REFRESHES,
    ENTROPY,
    LAST_REFRESH_KL,
    LAST_REFRESH_STEP,
    LOSS_ADPO,
    LOSS_VF,
    MEMBER_GROUP,
)
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.bandit_runner import BanditColumns
from adpo_ray.rllib.connectors import LIST_SIGNAL
from adpo_ray.rllib.distill import loss_variants_of
from adpo_ray.rllib.fused import FusedUpdateMixin
from adpo_ray.rllib.learner import kl_from_logits
from adpo_ray.rllib.pack_module import PackedTorchRLModule, group_rows
from adpo_ray.rllib.packed import MEMBER
from adpo_ray.spec.packs import PACK_ALGORITHMS

#: ``learner_config_dict`` keys: the members' knobs and the pack's method.
PACK_MEMBERS = "pack_members"
PACK_ALGORITHM = "pack_algorithm"
#: The per-member knobs a member dict holds (``None``: off / not the method's).
MEMBER_KNOBS = ("seed", "lr", "grad_clip", "entropy_coeff", "vf_loss_coeff", "clip_param", "tau_anc", "beta_q",
                "anchor_mode", "anchor_params", "kl_beta", "kl_target")
_STATE_KEY = "adpo_pack"
_GRAD_NORM_KEY = "gradients_default_optimizer_global_norm"  # the solo learner's (RLlib's) name


def member_knobs(*, seed: int, lr: float, grad_clip: float | None, entropy_coeff: float, vf_loss_coeff: float,
                 clip_param: float | None = None, tau_anc: float | None = None, beta_q: float | None = None,
                 anchor_mode: str | None = None, anchor_params: dict | None = None, kl_beta: float | None = None,
                 kl_target: float | None = None, anchor_kl_coeff: float | None = None) -> dict[str, Any]:
    """One member's entry of ``learner_config_dict[PACK_MEMBERS]`` (its solo trial's values;
    ``kl_beta``: ``ppo_kl``'s initial beta; ``anchor_kl_coeff``: ADPO's KL penalty to the anchor,
    None or 0 for none)."""
    return {"seed": int(seed), "lr": lr, "grad_clip": grad_clip, "entropy_coeff": entropy_coeff,
            "vf_loss_coeff": vf_loss_coeff, "clip_param": clip_param, "tau_anc": tau_anc, "beta_q": beta_q,
            "anchor_mode": anchor_mode, "anchor_params": dict(anchor_params or {}), "kl_beta": kl_beta,
            "kl_target": kl_target, "anchor_kl_coeff": anchor_kl_coeff}


def member_gae(values: np.ndarray, rewards: np.ndarray, terminateds: np.ndarray, truncateds: np.ndarray,
               member: np.ndarray, *, gamma: float, lambda_: float) -> tuple[np.ndarray, np.ndarray]:
    """``(value targets, advantages)``, each ``(B,)`` like ``values``: RLlib's GAE
    (``compute_value_targets``) over each member's rows alone, in batch order, and the
    advantages standardised over that member's rows, as RLlib standardises a solo batch's."""
    targets, advantages = np.empty_like(values), np.empty_like(values)
    for k in np.unique(member):
        # the member's rows in batch order are its solo batch (its episodes, in order): GAE runs
        # over them alone, as RLlib's runs over the solo batch (an episode's artificial last step
        # reads the row after it, which must be the member's own)
        rows = np.flatnonzero(member == k)
        t = compute_value_targets(values=values[rows], rewards=rewards[rows], terminateds=terminateds[rows],
                                  truncateds=truncateds[rows], gamma=gamma, lambda_=lambda_)
        a = t - values[rows]
        targets[rows] = t
        advantages[rows] = (a - a.mean()) / max(1e-4, a.std())
    return targets, advantages


class PackedGAE(ConnectorV2):
    """RLlib's ``GeneralAdvantageEstimation`` for a pack: values from each row's own member's value
    network (the ``member`` column), GAE over each member's rows alone, as RLlib computes it over
    the member's solo batch, and the advantages standardised per member, over that member's rows
    only (RLlib standardises over the whole batch, which would mix the members). Single-agent,
    feed-forward modules."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, gamma: float, lambda_: float,
                 **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.gamma, self.lambda_ = gamma, lambda_
        self._to_tensor = None

    def __call__(self, *, rl_module, episodes, batch: dict[str, Any], **kwargs):
        device = None
        results = {}
        for module_id, module_batch in batch.items():
            if module_id not in rl_module or not isinstance(rl_module[module_id].unwrapped(), ValueFunctionAPI):
                continue
            if MEMBER not in module_batch:
                raise KeyError(f"PackedGAE needs the {MEMBER!r} column (AddMemberColumn, set by configure_pack)")
            values = rl_module[module_id].compute_values(module_batch)
            device = values.device
            values = convert_to_numpy(values)
            rewards, terminateds, truncateds = (convert_to_numpy(module_batch[c]) for c in (
                Columns.REWARDS, Columns.TERMINATEDS, Columns.TRUNCATEDS))
            member = convert_to_numpy(module_batch[MEMBER])
            targets, advantages = member_gae(values, rewards, terminateds, truncateds, member,
                                             gamma=self.gamma, lambda_=self.lambda_)
            results[module_id] = {Columns.ADVANTAGES: advantages, Columns.VALUE_TARGETS: targets}
        if self._to_tensor is None:
            self._to_tensor = NumpyToTensor(as_learner_connector=True, device=device)
        for module_id, tensors in self._to_tensor(rl_module=rl_module, batch=results, episodes=episodes).items():
            batch[module_id].update(tensors)
        return batch


class PackedLearner(FusedUpdateMixin, PPOTorchLearner):
    """The learner of a trial pack (see the module docstring). Its module is a
    :class:`~adpo_ray.rllib.pack_module.PackedTorchRLModule`; RLlib's torch optimizer is replaced
    by one :class:`~adpo_ray.core.packed.StackedAdam` (:attr:`optimizer`)."""

    def build(self) -> None:
        super().build()
        cfg = self.config
        pipeline = rp.learner_connector(self)
        pipeline.remove("GeneralAdvantageEstimation")
        pipeline.append(PackedGAE(gamma=cfg.gamma, lambda_=cfg.lambda_))
        module = self.pack_module
        members = list(cfg.learner_config_dict.get(PACK_MEMBERS) or [])
        k = module.num_members
        if len(members) != k:
            raise ValueError(f"learner_config_dict[{PACK_MEMBERS!r}]: need one knobs dict per member ({k}), "
                             f"got {len(members)}")
        self.algorithm = cfg.learner_config_dict.get(PACK_ALGORITHM)
        if self.algorithm not in PACK_ALGORITHMS:
            raise ValueError(f"learner_config_dict[{PACK_ALGORITHM!r}]={self.algorithm!r}; allowed: "
                             f"{', '.join(PACK_ALGORITHMS)}")
        self.members = members
        device = module.theta.device

        def each(name):
            return [m[name] for m in members]

        adpo = self.algorithm in ("adpo", "dpo")
        kl_penalty = self.algorithm == "ppo_kl"
        self.list_actions = adpo and cfg.list_source == "actions"
        self.knobs = Knobs.of(
            k, vf_clip_param=cfg.vf_clip_param, vf_loss_coeff=each("vf_loss_coeff"),
            entropy_coeff=each("entropy_coeff"), clip_param=each("clip_param") if self.algorithm == "ppo" else None,
            tau_anc=each("tau_anc") if adpo else None, beta_q=each("beta_q") if adpo else None,
            kl_beta=each("kl_beta") if kl_penalty else None,
            # None (DPO) or absent (a pack config saved before the knob) is no penalty
            anchor_kl_coeff=[m.get("anchor_kl_coeff") or 0.0 for m in members] if adpo else None,
            list_size=cfg.list_size if adpo and not self.list_actions else 0,
            adpo=dict(loss=cfg.adpo_loss, target=cfg.adpo_target, **loss_variants_of(cfg)) if adpo else None,
            dtype=module.theta.dtype, device=device)
        self.grad_clip = member_values("grad_clip", each("grad_clip"), k, off_is=math.inf,
                                       dtype=module.theta.dtype, device=device)
        self.optimizer = StackedAdam(module.theta, each("lr"))
        self.schedules = []
        if adpo:
            module.make_target_networks()
            self.schedules = [make_schedule(m["anchor_mode"], **(m["anchor_params"] or {})) for m in members]
        self.shuffles = [self._new_generator(k_, rng) for k_, rng in enumerate(module.member_rng_states)]
        self._anchor_kl = torch.zeros(k, dtype=torch.float64)
        if kl_penalty:
            self.kl_targets = member_values("kl_target", each("kl_target"), k, dtype=torch.float64).tolist()
            self.kl_adaptive = bool(cfg.kl_adaptive)
        #: ppo_kl: each member's mean KL(pi_old || pi_new) over its minibatches of the last update
        self._update_kl: list[float] = []
        #: each member's env steps trained on so far: its solo trial's sampled lifetime steps
        self.member_env_steps = np.zeros(k, dtype=np.int64)
        #: members past their budget (:meth:`freeze_members`)
        self.frozen = np.zeros(k, dtype=bool)

    def freeze_members(self, frozen: list[bool]) -> None:
        """From the next update on, member ``k`` takes no step where ``frozen[k]`` (a member that
        reached its budget before its pack-mates, kept as its solo trial ends); False thaws it.
        Raises ``ValueError`` for a length other than the pack's members."""
        frozen = np.asarray(frozen, dtype=bool)
        if frozen.shape != self.frozen.shape:
            raise ValueError(f"frozen: need one flag per member ({len(self.frozen)}), got {frozen.tolist()}")
        self.frozen = frozen.copy()

    @property
    def pack_module(self) -> PackedTorchRLModule:
        module = self.module[DEFAULT_MODULE_ID].unwrapped()
        if not isinstance(module, PackedTorchRLModule):
            raise TypeError(f"PackedLearner needs a PackedTorchRLModule, got {type(module).__name__}")
        return module

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        """No torch optimizer: :meth:`build` makes the pack's :class:`StackedAdam`."""

    # -- shuffles ----------------------------------------------------------------------------
    def _new_generator(self, k: int, rng_state: dict):
        if self.config.fused_shuffle == "rllib":
            gen = np.random.RandomState()
            gen.set_state(rng_state["numpy"])
            return gen
        device = self.pack_module.theta.device
        gen = torch.Generator(device=device)
        if device.type == "cpu":
            gen.set_state(rng_state["torch"])
        else:  # building the module on the CPU drew nothing from the device's generator
            gen.manual_seed(self.members[k]["seed"])
        return gen

    def seed_shuffles(self, seeds: list[int]) -> None:
        """Set member ``k``'s shuffle generator as ``torch.manual_seed(seeds[k])`` and
        ``numpy.random.seed(seeds[k])`` set a solo learner's (e.g. to compare with one)."""
        if len(seeds) != len(self.shuffles):
            raise ValueError(f"seeds: need one per member ({len(self.shuffles)}), got {len(seeds)}")
        for gen, seed in zip(self.shuffles, seeds, strict=True):
            if isinstance(gen, np.random.RandomState):
                gen.seed(int(seed))
            else:
                gen.manual_seed(int(seed))

    def _permute(self, k: int):
        gen = self.shuffles[k]
        if isinstance(gen, np.random.RandomState):
            return gen.permutation
        return lambda n: torch.randperm(n, generator=gen, device=gen.device)

    # -- the train batch -------------------------------------------------------------------------
    def fused_train_batch(self, training_data):
        """RLlib's train batch, or, for a bandit pack's columns
        (:class:`~adpo_ray.rllib.bandit_runner.BanditColumns`), :meth:`columns_batch`."""
        episodes = training_data.episodes
        if episodes and all(isinstance(e, BanditColumns) for e in episodes):
            return self.columns_batch(episodes)
        return super().fused_train_batch(training_data)

    def columns_batch(self, samples: list[BanditColumns]) -> MultiAgentBatch:
        """The train batch RLlib's learner pipeline makes from ``samples``' steps as one-step
        episodes, in their order: per step its row and the artificial, masked row PPO's learner
        adds to each episode (the next observation, reward 0, the action and its outputs
        repeated, not done), the ``member`` column, and GAE per member (:func:`member_gae`) with
        values from each member's value network."""
        c = {f: np.concatenate([getattr(x, f) for x in samples]) for f in (
            "obs", "next_obs", "actions", "rewards", "terminated", "action_logp", "action_dist_inputs",
            "list_signal", "member")}

        def pair(real: np.ndarray, artificial: np.ndarray) -> np.ndarray:
            out = np.empty((2 * len(real), *real.shape[1:]), dtype=real.dtype)
            out[0::2], out[1::2] = real, artificial
            return out

        done = c["terminated"]
        cols = {
            Columns.OBS: pair(c["obs"], c["next_obs"]), Columns.ACTIONS: pair(c["actions"], c["actions"]),
            Columns.REWARDS: pair(c["rewards"], np.zeros_like(c["rewards"])),
            Columns.TERMINATEDS: pair(done, np.zeros_like(done)), Columns.TRUNCATEDS: pair(~done, np.zeros_like(done)),
            Columns.LOSS_MASK: pair(np.ones_like(done), np.zeros_like(done)),
            Columns.ACTION_LOGP: pair(c["action_logp"], c["action_logp"]),
            Columns.ACTION_DIST_INPUTS: pair(c["action_dist_inputs"], c["action_dist_inputs"]),
            MEMBER: pair(c["member"], c["member"]),
        }
        if self.list_actions:
            cols[LIST_SIGNAL] = pair(c["list_signal"], c["list_signal"])
        module = self.module[DEFAULT_MODULE_ID]
        device = self.pack_module.theta.device
        tensors = {k: torch.from_numpy(v).to(device) for k, v in cols.items()}
        with torch.no_grad():
            values = convert_to_numpy(module.compute_values({Columns.OBS: tensors[Columns.OBS], MEMBER: tensors[MEMBER]}))
        targets, advantages = member_gae(values, cols[Columns.REWARDS], cols[Columns.TERMINATEDS],
                                         cols[Columns.TRUNCATEDS], cols[MEMBER], gamma=self.config.gamma,
                                         lambda_=self.config.lambda_)
        tensors[Columns.VALUE_TARGETS] = torch.from_numpy(targets).to(device)
        tensors[Columns.ADVANTAGES] = torch.from_numpy(advantages).to(device)
        return MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(tensors)}, env_steps=len(cols[Columns.ACTIONS]))

    # -- the update ----------------------------------------------------------------------------
    def update(self, *args, data_iterators=None, num_total_minibatches=0, **kwargs):
        if data_iterators or num_total_minibatches or not self.fused_applies():
            raise ValueError(
                "a trial pack runs only on the fused learner update (learner_update: fused, one local "
                "learner, no learning-rate schedule, no grad scaler, no RLlib-compiled update, "
                "grad_clip_by: global_norm) with whole batches (no data iterators)")
        return super().update(*args, data_iterators=data_iterators, num_total_minibatches=num_total_minibatches,
                              **kwargs)

    def _fused_update_module(self, module_id, module_batch, *, env_steps, num_epochs, minibatch_size, shuffle):
        module = self.pack_module
        net, k, device = module.net, module.num_members, module.theta.device
        data = {name: v for name, v in module_batch.items() if isinstance(v, torch.Tensor)}
        index, valid, counts = group_rows(data[MEMBER].to(device), k)
        sizes = counts.tolist()
        if min(sizes) == 0:
            raise ValueError(f"a pack's train batch needs rows of every member, got {sizes} rows per member")
        frozen = self.frozen
        if frozen.all():
            raise ValueError("every member of the pack is frozen: nothing to update")
        # a frozen member draws no shuffle and takes no minibatch (stacked_update's count 0)
        plans = [torch.zeros(1, minibatch_size, dtype=torch.long, device=device) if frozen[m] else
                 minibatch_plan(n, minibatch_size, num_epochs, shuffle=shuffle, permute=self._permute(m),
                                device=device) for m, n in enumerate(sizes)]
        counts_mb = [0 if frozen[m] else num_minibatches(n, minibatch_size, num_epochs) for m, n in enumerate(sizes)]
        m_max = max(counts_mb)
        plans = torch.stack([torch.cat([p, p.new_zeros(m_max - len(p), minibatch_size)]) for p in plans])

        rows = {"obs": data[Columns.OBS][index].to(module.theta.dtype), "actions": data[Columns.ACTIONS][index]}
        mask = data[Columns.LOSS_MASK][index] & valid if Columns.LOSS_MASK in data else valid
        rows["loss_mask"] = mask
        # real steps (not the artificial last ones)
        self.member_env_steps += np.where(frozen, 0, mask.sum(1).cpu().numpy())
        for name, col in (("advantages", Columns.ADVANTAGES), ("value_targets", Columns.VALUE_TARGETS)):
            rows[name] = data[col][index].to(module.theta.dtype)
        if self.algorithm in ("ppo", "ppo_kl"):
            loss_fn = ppo_terms
            rows["action_logp"] = data[Columns.ACTION_LOGP][index].to(module.theta.dtype)
            if self.algorithm == "ppo_kl":
                loss_fn = ppo_kl_terms
                rows["old_inputs"] = data[Columns.ACTION_DIST_INPUTS][index].to(module.theta.dtype)
        else:
            loss_fn = adpo_terms
            with torch.no_grad():  # the anchor only moves after the update
                anchor_inputs = net.policy(rows["obs"], theta=module.anchor)
                if self.list_actions:
                    rows["list_signal"] = data[LIST_SIGNAL][index].to(module.theta.dtype)
                    rows["anchor_logp"] = torch.log_softmax(anchor_inputs, dim=-1)
                else:
                    rows["anchor_logp"] = net.logp_entropy(anchor_inputs, rows["actions"])[0]
            rows["anchor_inputs"] = anchor_inputs

        active_mb = torch.tensor(counts_mb, device=device)
        kl_sum = torch.zeros(k, dtype=torch.float64, device=device)
        dist_cls = module.action_dist_cls

        def anchor_kl(i: int, batch: dict[str, torch.Tensor]) -> None:
            if "anchor_inputs" not in batch:
                return
            with torch.no_grad():
                kl = kl_from_logits(dist_cls, batch[POLICY_INPUTS], batch["anchor_inputs"])
                m = batch["loss_mask"]
                per = torch.where(m, kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum(1) / m.sum(1)
                kl_sum.add_(torch.where(i < active_mb, per.double(), torch.zeros((), dtype=torch.float64,
                                                                                   device=device)))

        module.train()
        means, skipped = stacked_update(net, self.optimizer, loss_fn, self.knobs, rows, plans, self.grad_clip,
                                        num_minibatches=active_mb, on_minibatch=anchor_kl)
        self._anchor_kl = (kl_sum / active_mb.clamp(min=1).double()).cpu()
        self._log_members(module_id, means.cpu().tolist(), skipped.cpu().tolist())
        self._fused_log_steps(module_id, data, num_minibatches=sum(counts_mb), minibatch_size=minibatch_size,
                              env_steps=env_steps)

    def _log_members(self, module_id, means: list[list[float]], skipped: list[int]) -> None:
        grad_clip = [m["grad_clip"] for m in self.members]
        self._update_kl = []
        for k, (total, norm, policy, vf, entropy, *extra) in enumerate(means):
            values = {self.TOTAL_LOSS_KEY: total, POLICY_LOSS_KEY: policy, VF_LOSS_KEY: vf, ENTROPY_KEY: entropy,
                      "skipped_steps": skipped[k]}
            if self.algorithm in ("adpo", "dpo"):
                values.update({LOSS_ADPO: policy, LOSS_VF: vf, ENTROPY: entropy})
            if self.algorithm == "ppo_kl":  # ppo_kl_terms' fourth term: the minibatches' mean KL
                values[LEARNER_RESULTS_KL_KEY] = extra[0]
                self._update_kl.append(extra[0])
            if grad_clip[k]:
                values[_GRAD_NORM_KEY] = norm
            self.metrics.log_dict(values, key=(module_id, MEMBER_GROUP, str(k)), window=1)
        self.metrics.log_value((module_id, self.TOTAL_LOSS_KEY), float(np.mean([m[0] for m in means])), window=1)

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        if self.algorithm == "ppo_kl":
            self._adapt_kl_betas()
        if not self.schedules:
            return
        module = self.pack_module
        kls = self._anchor_kl.tolist()
        # a solo schedule gets its trial's sampled lifetime env steps: the member's own count;
        # a frozen member's schedule does not step and its anchor stays (rate 0)
        rates = [0.0 if frozen else schedule.step(kl, timestep=int(step)) for schedule, kl, step, frozen
                 in zip(self.schedules, kls, self.member_env_steps, self.frozen, strict=True)]
        policy = module.theta[:, :module.net.policy_size]
        polyak_stacked_([module.anchor], [policy], torch.tensor(rates, dtype=torch.float64, device=policy.device))
        for m, (schedule, kl) in enumerate(zip(self.schedules, kls, strict=True)):
            self.metrics.log_dict({ANCHOR_KL: kl, ANCHOR_REFRESHES: schedule.refreshes,
                                   LAST_REFRESH_STEP: schedule.last_refresh_step,
                                   LAST_REFRESH_KL: schedule.last_refresh_kl},
                                  key=(DEFAULT_MODULE_ID, MEMBER_GROUP, str(m)), window=1)

    def _adapt_kl_betas(self) -> None:
        """Each member's beta after an update, as its solo learner's ``_update_module_kl_coeff``:
        the paper's rule on the member's mean KL of the update (unless ``kl_adaptive`` is off),
        then logged as RLlib's ``curr_kl_coeff`` under the member's key."""
        betas = self.knobs.kl_beta
        if self.kl_adaptive and self._update_kl:
            new = [b if frozen else adapt_kl_beta(b, kl, target) for b, kl, target, frozen
                   in zip(betas.tolist(), self._update_kl, self.kl_targets, self.frozen, strict=True)]
            betas.copy_(torch.tensor(new, dtype=torch.float64))
        for m, beta in enumerate(betas.tolist()):
            self.metrics.log_value((DEFAULT_MODULE_ID, MEMBER_GROUP, str(m), LEARNER_RESULTS_CURR_KL_COEFF_KEY),
                                   beta, window=1)

    def _update_module_kl_coeff(self, *, module_id, config, kl_loss) -> None:
        """Not RLlib's one module-wide coefficient: a pack's betas are per member
        (:meth:`_adapt_kl_betas`)."""

    # -- state ---------------------------------------------------------------------------------
    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        opt = self.optimizer
        state[_STATE_KEY] = {
            "exp_avg": opt.exp_avg.cpu().numpy().copy(), "exp_avg_sq": opt.exp_avg_sq.cpu().numpy().copy(),
            "steps": opt.steps.cpu().numpy().copy(), "member_env_steps": self.member_env_steps.copy(),
            "schedules": [s.state_dict() for s in self.schedules],
            "shuffles": [g.get_state() if isinstance(g, np.random.RandomState) else g.get_state().numpy()
                         for g in self.shuffles],
        }
        if self.knobs.kl_beta is not None:
            state[_STATE_KEY]["kl_beta"] = self.knobs.kl_beta.cpu().numpy().copy()
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        own = state.get(_STATE_KEY)
        if own is None:
            return
        opt = self.optimizer
        with torch.no_grad():
            opt.exp_avg.copy_(torch.as_tensor(own["exp_avg"]))
            opt.exp_avg_sq.copy_(torch.as_tensor(own["exp_avg_sq"]))
            opt.steps.copy_(torch.as_tensor(own["steps"]))
        self.member_env_steps[:] = own["member_env_steps"]
        for schedule, s in zip(self.schedules, own["schedules"], strict=True):
            schedule.load_state_dict(s)
        for gen, s in zip(self.shuffles, own["shuffles"], strict=True):
            if isinstance(gen, np.random.RandomState):
                gen.set_state(s)
            else:
                gen.set_state(torch.as_tensor(s, dtype=torch.uint8))
        if "kl_beta" in own:
            with torch.no_grad():
                self.knobs.kl_beta.copy_(torch.as_tensor(own["kl_beta"]))
