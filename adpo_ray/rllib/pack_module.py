"""A trial pack's RLModule: K members' RLlib default actor-critics stacked in one module.

The parameters are :class:`adpo_ray.core.packed.StackedActorCritic`'s ``(K, P)`` matrix, held as
the module buffer ``theta``; ADPO's anchor (the members' policies, ``(K, policy_size)``) is the
buffer ``anchor``, made by :meth:`PackedTorchRLModule.make_target_networks` on the learner only
(RLlib's TargetNetworkAPI pattern, as :class:`~adpo_ray.rllib.module.ADPOTorchRLModule`): it is
part of the learner's module state, so checkpoints carry it, and inference-only copies on the
env runners drop it. Weight sync and checkpoints are RLlib's ``get_state`` / ``set_state`` of
those buffers (``load_state_dict`` copies in place, so the stacked views stay valid).

Each member starts from exactly the weights of its solo trial's learner module: RLlib seeds the
learner's process with the trial seed and then builds the module, so member ``k``'s network is a
``DefaultPPOTorchRLModule`` built right after seeding torch and numpy with member ``k``'s seed
(the process's own generators are left as they were). :attr:`PackedTorchRLModule.member_rng_states`
keeps the generators' states right after each such build: where a solo learner's shuffles start.

Rows: an env runner's batch has one row per sub-env, row ``i`` from sub-env ``i`` (member
``i // N``; see :mod:`adpo_ray.rllib.packed`), so its forward pass is one batched call over
``(K, N)`` rows. A batch with the ``member`` column (the learner's) is grouped by that column.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical, TorchDiagGaussian
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, TargetNetworkAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from adpo_ray.core.packed import StackedActorCritic
from adpo_ray.rllib.module import ANCHOR_DIST_INPUTS
from adpo_ray.rllib.packed import MEMBER

#: ``model_config`` key: the members' trial seeds, in member order (the rest is the solo trials'
#: ``DefaultModelConfig``).
MEMBER_SEEDS = "pack_member_seeds"


def pack_model_config(solo_model_config, member_seeds: list[int]) -> dict[str, Any]:
    """The pack module's ``model_config``: the solo trials' model config (a ``DefaultModelConfig``
    or dict) plus the members' seeds."""
    solo = dataclasses.asdict(solo_model_config) if dataclasses.is_dataclass(solo_model_config) \
        else dict(solo_model_config)
    return {**solo, MEMBER_SEEDS: [int(s) for s in member_seeds]}


@contextmanager
def seeded(seed: int):
    """Run a block with torch's CPU generator and numpy's global generator seeded with ``seed``
    (as RLlib seeds a learner's process), restoring both afterwards."""
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def group_rows(member: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows grouped by member: ``(index, valid, counts)`` with ``index`` ``(K, n_max)`` row numbers
    (member ``k``'s rows in batch order, padded with row 0), ``valid`` ``(K, n_max)`` bool and
    ``counts`` ``(K,)``. Raises ``ValueError`` for a member outside ``0 .. K-1``."""
    member = member.reshape(-1).long()
    if member.numel() and (int(member.min()) < 0 or int(member.max()) >= k):
        raise ValueError(f"member column: values must be in 0..{k - 1}, got {member.unique().tolist()}")
    counts = torch.bincount(member, minlength=k)
    order = torch.argsort(member, stable=True)
    n_max = int(counts.max()) if member.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n_max, device=member.device).unsqueeze(0)
    valid = slot < counts.unsqueeze(1)
    pos = torch.where(valid, starts.unsqueeze(1) + slot, torch.zeros((), dtype=torch.long, device=member.device))
    index = torch.where(valid, order[pos], torch.zeros((), dtype=torch.long, device=member.device))
    return index, valid, counts


class PackedTorchRLModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """K members' actor-critics (RLlib's default PPO network, separate policy and value MLPs) in
    one module; ``model_config`` is :func:`pack_model_config`'s. Flat Box observations; Discrete
    (categorical) or Box (diagonal Gaussian, ``free_log_std=False``) actions."""

    def setup(self) -> None:
        config = dict(self.model_config)
        seeds = config.pop(MEMBER_SEEDS, None)
        if not seeds:
            raise ValueError(f"model_config[{MEMBER_SEEDS!r}]: need the members' seeds (pack_model_config)")
        if isinstance(self.action_space, gym.spaces.Discrete):
            self.action_dist_cls, kind = TorchCategorical, "categorical"
        elif isinstance(self.action_space, gym.spaces.Box):
            self.action_dist_cls, kind = TorchDiagGaussian, "gaussian"
        else:
            raise ValueError(f"a pack needs a Discrete or Box action space, got {self.action_space}")
        states, self.member_rng_states = [], []
        for seed in seeds:
            with seeded(int(seed)):
                solo = DefaultPPOTorchRLModule(observation_space=self.observation_space,
                                               action_space=self.action_space, model_config=config)
                self.member_rng_states.append({"torch": torch.get_rng_state(), "numpy": np.random.get_state()})
            states.append({n: t.detach() for n, t in solo.state_dict().items()})
        net = StackedActorCritic.from_state_dicts(states, kind)
        self.member_seeds = [int(s) for s in seeds]
        self.register_buffer("theta", net.theta)
        self._layout = (net.layout, net.policy_size, kind, net.log_std_clip, net.buffers, net.names)
        self._bind()

    def _bind(self) -> None:
        """(Re)build the stacked views over the current ``theta`` storage."""
        layout, policy_size, kind, clip, buffers, names = self._layout
        self.net = StackedActorCritic(self.theta, layout, policy_size, kind, clip.to(self.theta.device),
                                      buffers, names)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)  # .to(device) may replace the buffers
        if getattr(self, "_layout", None) is not None:
            self._bind()
        return out

    @property
    def num_members(self) -> int:
        return self.theta.shape[0]

    # -- rows -> members --------------------------------------------------------------------
    def by_member(self, fn, x: torch.Tensor, member: torch.Tensor | None) -> torch.Tensor:
        """``fn`` (``(K, n, d) -> (K, n, ...)``) applied to rows ``x`` ``(B, d)``: by ``member``
        (``(B,)``) if given, else rows in sub-env order (``B`` a multiple of K, row ``i`` member
        ``i // (B / K)``). Returns ``(B, ...)``. Raises ``ValueError`` otherwise."""
        k = self.num_members
        x = x.to(self.theta.dtype)
        if member is None:
            if x.shape[0] % k:
                raise ValueError(f"a pack batch without a {MEMBER!r} column needs K={k} equal blocks of rows "
                                 f"(row i from sub-env i), got {x.shape[0]} rows")
            out = fn(x.reshape(k, -1, *x.shape[1:]))
            return out.reshape(x.shape[0], *out.shape[2:])
        member = torch.as_tensor(member, device=x.device)
        index, valid, _ = group_rows(member, k)
        out = fn(x[index])
        result = out.new_empty((x.shape[0], *out.shape[2:]))
        result[index[valid]] = out[valid]
        return result

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.by_member(self.net.policy, batch[Columns.OBS], batch.get(MEMBER))}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """Each row's value under its member's value network, ``(B,)``."""
        return self.by_member(self.net.value, batch[Columns.OBS], batch.get(MEMBER))

    def member_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Every member's distribution inputs on its own observations: ``obs`` ``(K, n, d)`` ->
        ``(K, n, D)``, one batched call."""
        return self.net.policy(obs.to(self.theta.dtype))

    # -- the anchor (TargetNetworkAPI) -------------------------------------------------------
    def make_target_networks(self) -> None:
        self.register_buffer("anchor", self.net.anchor())

    def get_target_network_pairs(self):
        """``[(policy part of theta, anchor)]``: stacked tensors, ``(K, policy_size)`` each."""
        return [(self.theta[:, :self.net.policy_size], self.anchor)]

    def forward_target(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        def anchor_policy(x):
            return self.net.policy(x, theta=self.anchor)

        return {ANCHOR_DIST_INPUTS: self.by_member(anchor_policy, batch[Columns.OBS], batch.get(MEMBER))}

    def get_non_inference_attributes(self) -> list[str]:
        return ["anchor"]

    # -- solo views ------------------------------------------------------------------------
    def member_module(self, k: int) -> DefaultPPOTorchRLModule:
        """Member ``k`` as its solo trial's network: a ``DefaultPPOTorchRLModule`` (policy and value,
        on the CPU) holding a copy of the member's parameters, so that its forward pass is the solo
        module's, row for row. Raises ``ValueError`` for ``k`` outside ``0 .. K-1``."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_members:
            raise ValueError(f"member: must be an int in 0..{self.num_members - 1} (the pack has "
                             f"{self.num_members} members), got {k!r}")
        config = {n: v for n, v in dict(self.model_config).items() if n != MEMBER_SEEDS}
        with seeded(self.member_seeds[k]):  # its fresh weights are overwritten; the process's generators stay
            solo = DefaultPPOTorchRLModule(observation_space=self.observation_space,
                                           action_space=self.action_space, model_config=config)
        state = self.member_state_dicts()[k]
        solo.load_state_dict({n: state[n] for n in solo.state_dict()})
        return solo

    def member_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """The K members as solo ``DefaultPPOTorchRLModule`` state dicts (copies), each with its
        anchor under ADPO's module names if the anchor exists."""
        out = self.net.state_dicts()
        if hasattr(self, "anchor"):
            policy_names = [n for n, _ in self.net.layout][:self.net.n_policy]
            views = self.net.views(self.anchor)
            for k, sd in enumerate(out):
                for name, v in zip(policy_names, views, strict=True):
                    # ADPOTorchRLModule's anchor copies the actor encoder and the policy head
                    anchor_name = "_anchor_encoder." + name.split("actor_encoder.", 1)[1] \
                        if name.startswith("encoder.") else "_anchor_" + name
                    sd[anchor_name] = (v[k].t() if name.endswith(".weight") else v[k].reshape(-1)).clone()
                for name, buf in self.net.buffers.items():  # the policy head's constants
                    if name.startswith("pi."):
                        sd["_anchor_" + name] = buf[k].clone()
        return out
