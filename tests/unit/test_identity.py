"""Every trial's identity (tag, MLflow run key and name, method label, folder name) is its own and
reads back as its sweep point; a collision, or a value listed twice in another spelling, is an
error before anything starts; a name too long for a folder is shortened and stays unique."""

import pytest
import yaml

from adpo_ray import spec as specs
from adpo_ray import sweeps
from adpo_ray.cli import main
from adpo_ray.spec import SpecError, TrialSpec, parse_spec

from ..helpers.grid import LONG

BASE = {"name": "ident", "environments": ["PreferenceBandit"], "scenarios": ["clean"],
        "anchors": {"modes": ["dynamic"]}, "budget": {"iterations": 2}}


def test_close_values_get_distinct_exact_labels():
    spec = parse_spec({**BASE, "sweep": {"train.lr": [0.0030001, 0.0030004]}})
    a, b = spec.trials()
    assert a.tag == "PreferenceBandit_clean_adpo-dynamic_h64_s0_train.lr=0.0030001"
    assert b.tag == "PreferenceBandit_clean_adpo-dynamic_h64_s0_train.lr=0.0030004"
    assert (a.method, b.method) == ("adpo-dynamic (train.lr=0.0030001)", "adpo-dynamic (train.lr=0.0030004)")
    assert a.dirname == a.tag and b.dirname == b.tag


@pytest.mark.parametrize("value,label", [
    (0.5, "0.5"), (0.003, "0.003"), (2.0, "2"), (0.0030001, "0.0030001"), (1e-05, "1e-05"),
    (1 / 3, "0.3333333333333333"), (123456.789, "123456.789"), (1e16, "1e+16"), (4, "4"), (True, "True"),
])
def test_labels_read_back_as_their_value(value, label):
    assert sweeps.format_value(value) == label
    assert type(value)(float(label)) == value if not isinstance(value, bool) else label == "True"


@pytest.mark.parametrize("sweep,both", [
    ({"adpo.beta_q": [1, 1.0]}, "(1 and 1.0"),
    ({"train.lr": [0.001, "1e-3"]}, "(0.001 and '1e-3'"),
    ({"adpo.q_center": [True, 1]}, "(True and 1"),
    ({"bandit.num_items": [8, 8.0]}, "(8 and 8.0"),
    ({"anchors.params.dynamic.every": [1, True]}, "(1 and True"),
])
def test_one_value_written_two_ways_is_listed_twice(sweep, both):
    with pytest.raises(SpecError) as e:
        parse_spec({**BASE, "sweep": sweep})
    (path,) = sweep
    assert e.value.errors == [f"sweep.{path}: a value is listed twice {both} are the same value for this "
                              "knob); list each value once"]


COLLIDING = {**BASE, "sweep": {"anchors.params.dynamic.every": [2, "2"]}}
COLLISION = ("sweep: two trials would have the same name "
             "'PreferenceBandit_clean_adpo-dynamic_h64_s0_anchors.params.dynamic.every=2': the points "
             "(anchors.params.dynamic.every=2) and (anchors.params.dynamic.every='2')")


def test_two_trials_with_one_identity_are_an_error_naming_both():
    with pytest.raises(SpecError) as e:
        parse_spec(COLLIDING)
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith(COLLISION), e.value.errors


def test_validate_and_dry_run_refuse_a_collision(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(COLLIDING))
    assert main(["validate", str(f)]) == 2
    assert COLLISION in capsys.readouterr().err
    assert main(["grid", "--config", str(f), "--dry-run", "--storage-path", str(tmp_path / "r")]) == 2
    assert COLLISION in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_check_identities_names_both_trials_of_one_folder_name():
    t = TrialSpec("PreferenceBandit", "clean", "adpo", "dynamic", 64, 0)
    with pytest.raises(ValueError, match=r"same name .*\(no sweep\) and \(no sweep\)"):
        specs.check_identities([t, TrialSpec(**t.as_dict())])
    specs.check_identities([t, TrialSpec(**{**t.as_dict(), "seed": 1})])


def test_a_long_sweep_validates_and_its_folder_names_are_short_and_unique(tmp_path, capsys):
    spec = parse_spec({**BASE, "sweep": {**LONG, "bandit.problem_seed": [0, 1]}})
    a, b = spec.trials()
    assert len(a.tag) == 331 and a.tag.endswith("bandit.problem_seed=0") and b.tag.endswith("bandit.problem_seed=1")
    # the two tags differ only past the cut: the digest of the whole tag keeps the names apart
    assert a.dirname != b.dirname and a.dirname[:183] == b.dirname[:183] == a.tag[:183]
    for t in (a, b):
        assert len(t.dirname.encode()) == specs.MAX_DIRNAME_BYTES <= 255
        assert t.dirname[183] == "_" and len(t.dirname[184:]) == 16
    assert TrialSpec.from_config({"trial": a.as_dict()}).dirname == a.dirname  # stable across processes
    f = tmp_path / "long.yaml"
    f.write_text(yaml.safe_dump({**BASE, "sweep": LONG}))
    assert main(["validate", str(f)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok, 1 trials")


def test_folder_names_hold_no_path_characters():
    t = TrialSpec("PreferenceBandit", "clean", "adpo", "ema", 64, 0, (("anchors.params.ema.rate", "a/b c"),))
    u = TrialSpec("PreferenceBandit", "clean", "adpo", "ema", 64, 0, (("anchors.params.ema.rate", "a_b_c"),))
    assert "/" not in t.dirname and " " not in t.dirname and t.dirname.startswith(
        "PreferenceBandit_clean_adpo-ema_h64_s0_anchors.params.ema.rate=a_b_c_")
    assert t.dirname != u.dirname == u.tag


def test_summary_metric_names_are_ones_mlflow_takes_and_stay_distinct():
    from mlflow.utils.validation import validate_param_and_metric_name

    from adpo_ray.orchestration.tracking import launch_summary, method_names

    long_a = parse_spec({**BASE, "sweep": {**LONG, "bandit.problem_seed": [0, 1]}}).trials()
    methods = [t.method for t in long_a] + ["adpo-dynamic (train.lr=1e+16)", "adpo-ema (anchors.params.ema.rate=a b)"]
    names = method_names(methods)
    assert len(names) == len(methods) and set(names.values()) == set(methods)
    summary = launch_summary([("PreferenceBandit", m, {"eval/winmass": 0.5}) for m in methods])
    assert len(summary) == 3 * len(methods)  # mean, IQM and n of one trial each (no CI)
    for key in summary:
        assert validate_param_and_metric_name(key) and len(key) <= 250, key
