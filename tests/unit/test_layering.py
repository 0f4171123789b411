"""Layering (README, "Layout"): every module imports only its own package or the layers below it,
the lower layers import no Ray, and no import cycle exists between modules (imports inside
functions count too). Each Ray-using layer reaches private Ray names through its own adapter
(``_ray_private``), which sits at the bottom of its package so that any module there can use it.
In the tests, no module imports a test module: what tests share lives in ``tests/helpers``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "adpo_ray"

#: Bottom to top. A module may import its own package and anything in a lower layer.
LAYERS = [
    {"adpo_ray", "adpo_ray.core"},
    {"adpo_ray.envs"},
    {"adpo_ray.metrics", "adpo_ray.sweeps"},
    {"adpo_ray.spec"},
    {"adpo_ray.rllib", "adpo_ray.report"},
    {"adpo_ray.orchestration"},
    {"adpo_ray.cli"},
]
#: Packages that run without Ray (pure math, envs, the spec, the registry, the report).
RAY_FREE = {"adpo_ray.core", "adpo_ray.envs", "adpo_ray.spec", "adpo_ray.metrics", "adpo_ray.sweeps", "adpo_ray.report"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def unit(module: str) -> str:
    """The layering unit of a module: its subpackage (``adpo_ray.rllib``) or top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer(module: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit(module) in units)


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return names


def internal(path: Path) -> set[str]:
    """The project's modules that ``path`` imports."""
    return {n for n in imports(path) if n in MODULES} - {module_name(path)}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)  # StopIteration names a module no layer holds


def test_imports_go_down_or_stay_in_the_package():
    bad = []
    for module, path in MODULES.items():
        for target in internal(path):
            if unit(target) != unit(module) and layer(target) >= layer(module):
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_lower_layers_import_no_ray():
    for module, path in MODULES.items():
        if unit(module) in RAY_FREE:
            ray = sorted(n for n in imports(path) if n == "ray" or n.startswith("ray."))
            assert not ray, f"{module} imports {ray}"


def test_the_spec_cli_status_and_report_load_without_torch():
    """`adpo-ray validate` (a spec's whole validation) and `adpo-ray scenarios` run, and the
    modules of `status`, the launch and the report import, without importing torch: it costs
    about 2.5 s of CPU per process. Checked in a fresh interpreter, where imports inside the
    commands' functions count too; the math still loads on first use."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from adpo_ray.cli import main\n"
        "import adpo_ray.orchestration.status, adpo_ray.orchestration.launch, adpo_ray.report.build\n"
        "from adpo_ray.core import LOSSES, TARGETS, TAU_MIN, DISTILL_METHODS, TWELVE\n"
        "assert main(['validate', 'tune_configs/bandit_paper.yaml']) == 0\n"
        "assert main(['scenarios']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from adpo_ray.core import adpo_loss, polyak_\n"
        "assert 'torch' in sys.modules and callable(adpo_loss) and callable(polyak_)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> imported modules) as a path, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycles():
    graph = {m: internal(p) for m, p in MODULES.items()}
    # a package's __init__ re-exporting its children is no edge back into the package
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for m, ts in graph.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # the cycle this layering once had: tracking -> distill -> tracking
    assert find_cycle({"t": {"d", "s"}, "d": {"t"}, "s": set()}) == ["d", "t", "d"]


#: The private-Ray adapters (tests/unit/test_ray_private.py) and the project modules each may import.
ADAPTERS = {
    "adpo_ray.rllib._ray_private": set(),
    "adpo_ray.orchestration._ray_private": {"adpo_ray.rllib._ray_private"},
}


def test_the_adapters_sit_at_the_bottom_of_their_layer():
    for module, allowed in ADAPTERS.items():
        assert module in MODULES, f"{module} is missing"
        assert internal(MODULES[module]) <= allowed, f"{module} imports {sorted(internal(MODULES[module]) - allowed)}"


def test_new_rllib_modules_have_the_rllib_layer():
    # the modules that took over facts written twice: one home each, in the RLlib layer
    for module in ("adpo_ray.rllib._ray_private", "adpo_ray.rllib.rollout", "adpo_ray.rllib.settings"):
        assert module in MODULES and layer(module) == layer("adpo_ray.rllib")
    assert layer("adpo_ray.orchestration._ray_private") == layer("adpo_ray.orchestration")


#: The spec package's modules, one concern each.
SPEC_MODULES = {"adpo_ray.spec", *(f"adpo_ray.spec.{m}" for m in (
    "sections", "experiment", "trials", "knobs", "identity", "devices", "loading", "packs"))}


def test_the_spec_package_is_one_ray_free_layer_and_every_file_is_checked():
    found = {m for m in MODULES if unit(m) == "adpo_ray.spec"}
    assert found == SPEC_MODULES, found ^ SPEC_MODULES
    assert {layer(m) for m in found} == {layer("adpo_ray.spec")} and "adpo_ray.spec" in RAY_FREE
    # its modules import within the package or below it: the checks above cover each file
    assert all(internal(MODULES[m]) for m in found - {"adpo_ray.spec"})
    # the hardware measurements left the pure-math floor for the spec, whose knobs need them
    assert "adpo_ray.core.devices" not in MODULES


TESTS = PKG.parent / "tests"


def imports_from_tests(module: str, source: str) -> set[str]:
    """What a module of the tests (dotted name ``module``, ``source`` its text) imports from a
    ``test_*`` module (or imports as a ``test_*`` name), relative imports resolved against its
    package. What tests share lives in ``tests/helpers``, never in a test module."""
    package = module.split(".")[:-1]  # ``tests.helpers.__init__``: the package ``tests.helpers``
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package[:len(package) - node.level + 1] if node.level else []
            parent = ".".join([*parts, *([node.module] if node.module else [])])
            names = {f"{parent}.{a.name}" for a in node.names}  # `from pkg import test_module`
        else:
            continue
        found |= {n for n in names if any(part.startswith("test_") for part in n.split("."))}
    return found


def test_no_test_module_imports_another():
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        bad += [f"{module} imports {name}" for name in sorted(imports_from_tests(module, path.read_text()))]
    assert not bad, "move what tests share into tests/helpers:\n" + "\n".join(bad)


def test_the_test_import_check_finds_every_spelling():
    here = "tests.integration.test_here"
    for source, name in [
        ("from .test_distill import DISTILL", "tests.integration.test_distill.DISTILL"),
        ("from ..unit.test_packed_env import N", "tests.unit.test_packed_env.N"),
        ("from . import test_grid", "tests.integration.test_grid"),
        ("from ..unit import test_identity", "tests.unit.test_identity"),
        ("import tests.integration.test_grid", "tests.integration.test_grid"),
        ("from tests.unit.test_identity import LONG", "tests.unit.test_identity.LONG"),
        ("def test_x():\n    from .test_distill import DISTILL", "tests.integration.test_distill.DISTILL"),
    ]:
        assert imports_from_tests(here, source) == {name}, source
    assert imports_from_tests("tests.helpers.__init__", "from . import test_x") == {"tests.helpers.test_x"}
    ok = "import pytest\nfrom ..helpers.grid import ROOT\nfrom .raycluster import x\nfrom adpo_ray.spec import parse_spec"
    assert imports_from_tests(here, ok) == set()
