"""One source of MuJoCo knobs: every preset's MuJoCo trials train on ``KIND_DEFAULTS`` unless the
preset says, knob by knob, in ``departs_from_defaults``, that and why it departs."""

from pathlib import Path

import pytest

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.spec import KIND_DEFAULTS, ADPOParams, TrainParams, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "tune_configs").glob("*.yaml"))
KNOBS = {"train": [f.alias or n for n, f in TrainParams.model_fields.items()],
         "adpo": [f.alias or n for n, f in ADPOParams.model_fields.items()]}


def _departures(spec) -> dict[str, set[str]]:
    """``{"train": knobs, "adpo": knobs, "ppo": knobs}`` where the spec's MuJoCo trials differ
    from the defaults (``ppo``: PPO trials' train knobs)."""
    bare = spec.model_copy(update={"train": type(spec.train)(), "adpo": type(spec.adpo)(), "ppo": {},
                                   "env_overrides": {}})
    out: dict[str, set[str]] = {"train": set(), "adpo": set(), "ppo": set()}
    for env in spec.environments:
        if ENVIRONMENTS[env]["kind"] != "mujoco":
            continue
        for section, knobs, layered in (("train", KNOBS["train"], lambda s, e: s.train_for(e, "adpo")),
                                        ("ppo", KNOBS["train"], lambda s, e: s.train_for(e, "ppo")),
                                        ("adpo", KNOBS["adpo"], lambda s, e: s.adpo_for(e))):
            got = layered(spec, env).model_dump(by_alias=True)
            want = layered(bare, env).model_dump(by_alias=True)
            out[section] |= {k for k in knobs if got[k] != want[k]}
    return out


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_use_the_mujoco_defaults_or_say_why_not(path):
    spec = load_spec(path)
    found = _departures(spec)
    said = {(p.split(".", 1)[0], p.split(".", 1)[1]) for p in spec.departs_from_defaults}
    silent = sorted(f"{a}.{k}" for a, knobs in found.items() for k in knobs
                    if (a, k) not in said and not (a == "ppo" and ("train", k) in said))
    assert not silent, f"{path.name}: MuJoCo knobs differ from KIND_DEFAULTS without departs_from_defaults: {silent}"
    stale = sorted(p for p in spec.departs_from_defaults
                   if p.split(".", 1)[1] not in found[p.split(".", 1)[0]] | found["train"])
    assert not stale, f"{path.name}: departs_from_defaults lists knobs that equal the defaults: {stale}"


def test_the_paper_scale_presets_run_mujoco_tuned():
    for name in ("twelve_scenarios", "mujoco_online"):
        spec = load_spec(ROOT / "tune_configs" / f"{name}.yaml")
        for env in ("HalfCheetah-v5", "Hopper-v5"):
            adpo, train, ppo = spec.adpo_for(env), spec.train_for(env, "adpo"), spec.train_for(env, "ppo")
            for k, v in KIND_DEFAULTS["mujoco"]["adpo"].items():
                assert getattr(adpo, k) == v, (name, env, k)
            for k, v in KIND_DEFAULTS["mujoco"]["train"].items():
                assert getattr(train, k) == v, (name, env, k)
            assert ppo.lr == KIND_DEFAULTS["mujoco"]["ppo"]["lr"]


def test_the_drift_check_catches_a_silent_change():
    base = {"name": "d", "environments": ["Hopper-v5"], "budget": {"env_steps": 1000}}
    assert _departures(parse_spec(base)) == {"train": set(), "adpo": set(), "ppo": set()}
    drift = parse_spec({**base, "adpo": {"tau_anc": 1.0}, "train": {"gamma": 0.9}, "ppo": {"lr": 0.001}})
    assert _departures(drift) == {"train": {"gamma"}, "adpo": {"tau_anc"}, "ppo": {"gamma", "lr"}}
    # a knob set to its default is no departure
    assert _departures(parse_spec({**base, "adpo": {"beta_q": 2.0}})) == {"train": set(), "adpo": set(), "ppo": set()}


def test_layers_spec_over_kind_over_global_defaults():
    spec = parse_spec({"name": "d", "environments": ["PreferenceBandit", "Hopper-v5"], "algorithms": ["adpo", "ppo"],
                       "budget": {"iterations": 2}, "adpo": {"beta_q": 0.7},
                       "env_overrides": {"Hopper-v5": {"train": {"lr": 0.002}}}})

    def knobs(s, env):
        return s.adpo_for(env), s.train_for(env, "adpo")

    (bandit, bandit_train), (hopper, hopper_train) = knobs(spec, "PreferenceBandit"), knobs(spec, "Hopper-v5")
    assert (bandit.beta_q, bandit_train.lr, bandit.tau_anc, bandit_train.train_batch_size) == (0.7, 3e-4, 1.0, 512)
    assert (hopper.beta_q, hopper_train.lr, hopper.tau_anc, hopper_train.train_batch_size) == (0.7, 0.002, 0.5, 2048)
    assert spec.train_for("Hopper-v5", "ppo").lr == 3e-4 and spec.train_for("PreferenceBandit", "ppo").lr == 3e-4
    # the spec round-trips through JSON (Tune's config, the grid file) with the same knobs
    again = type(spec).model_validate_json(spec.model_dump_json(by_alias=True))
    assert knobs(again, "Hopper-v5") == (hopper, hopper_train)
    assert knobs(again, "PreferenceBandit") == (bandit, bandit_train)


@pytest.mark.parametrize("bad,msg", [
    ({"departs_from_defaults": {"adpo.nope": "x"}}, "departs_from_defaults.adpo.nope: not a knob"),
    ({"departs_from_defaults": {"train.lr": ""}}, "departs_from_defaults.train.lr"),
    ({"departs_from_defaults": {"adpo.tau_anc": ""}}, "departs_from_defaults.adpo.tau_anc"),
    ({"departs_from_defaults": {"train.tau_anc": "x"}}, "departs_from_defaults.train.tau_anc: not a knob"),
])
def test_departures_are_validated(bad, msg):
    from adpo_ray.spec import SpecError

    with pytest.raises(SpecError, match=msg.replace(".", r"\.")):
        parse_spec({"name": "d", "environments": ["Hopper-v5"], "budget": {"env_steps": 1000}, **bad})
