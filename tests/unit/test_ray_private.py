"""Private Ray names (RLlib, Tune, Ray core) are used only in the adapters
(:mod:`adpo_ray.rllib._ray_private`, :mod:`adpo_ray.orchestration._ray_private`), in the package
and in its tests alike, and the adapters check the Ray they run on.

What counts as a private Ray name, read from the source with ``ast``:

* an import from ``ray`` of a private module or name (``from ray.tune.registry import _x``);
* an attribute ``obj._x`` (or ``getattr(obj, "_x")``) where ``_x`` is one the adapters list
  (:data:`PRIVATE_NAMES`: caught even where the project has a name spelled alike), or a name the
  project itself never defines (a method, class, function, module-level name or ``self._x = ...``
  assignment): the project's own private names are its business, anything else is someone
  else's, and the only library whose objects the package reaches into is Ray.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from adpo_ray.orchestration import _ray_private as orchestration_adapter
from adpo_ray.rllib import _ray_private as rllib_adapter

PKG = Path(__file__).resolve().parents[2] / "adpo_ray"
TESTS = PKG.parent / "tests"
ADAPTERS = {PKG / "rllib" / "_ray_private.py": rllib_adapter, PKG / "orchestration" / "_ray_private.py": orchestration_adapter}
PRIVATE_NAMES = rllib_adapter.PRIVATE_NAMES | orchestration_adapter.PRIVATE_NAMES
ACCESSORS = ("getattr", "hasattr", "setattr", "delattr")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_private_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, assigned names and ``self._x`` /
    ``cls._x`` attributes (a plain or annotated assignment: ``+=`` needs the attribute already)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
                    elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"):
                        names.add(sub.attr)
    return {n for n in names if is_private(n)}


def private_ray_uses(tree: ast.AST, own: set[str]) -> list[tuple[int, str, str]]:
    """``(line, private name, the code using it)`` for every use of a private Ray name in ``tree``
    (see the module docstring); ``own``: the project's own private names."""
    found = []

    def foreign(name: str) -> bool:
        return is_private(name) and (name in PRIVATE_NAMES or name not in own)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for part in parts if parts[0] == "ray" else ():
                    if is_private(part):
                        found.append((node.lineno, part, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            parts = node.module.split(".")
            for alias in node.names:
                for part in (*parts, alias.name):
                    if is_private(part):
                        found.append((node.lineno, part, f"from {node.module} import {alias.name}"))
        elif isinstance(node, ast.Attribute) and foreign(node.attr):
            found.append((node.lineno, node.attr, f"{ast.unparse(node)}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ACCESSORS
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and foreign(node.args[1].value)):
            found.append((node.lineno, node.args[1].value, ast.unparse(node)))
    return found


def parsed_modules() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text()) for p in sorted(PKG.rglob("*.py"))}


def project_private_names(trees: dict[Path, ast.AST]) -> set[str]:
    """The project's own private names (the adapters' reach into Ray does not make a name the project's)."""
    return set().union(*(defined_private_names(t) for p, t in trees.items() if p not in ADAPTERS))


def test_private_ray_names_only_in_the_adapters():
    """The package and its tests (whose own private names, a helper's ``self._x``, are theirs):
    a test that reached into Ray itself would break on another Ray where the adapters are
    reviewed, and say nothing of why."""
    trees = parsed_modules()
    tests = {p: ast.parse(p.read_text()) for p in sorted(TESTS.rglob("*.py"))}
    own = project_private_names(trees) | set().union(*(defined_private_names(t) for t in tests.values()))
    bad = [f"{p.relative_to(PKG.parent)}:{line}: {what}"
           for p, tree in {**trees, **tests}.items() if p not in ADAPTERS
           for line, _, what in private_ray_uses(tree, own)]
    assert not bad, "private Ray names outside adpo_ray/*/_ray_private.py:\n" + "\n".join(bad)


def test_each_adapter_lists_exactly_the_private_names_it_uses():
    trees = parsed_modules()
    for path, adapter in ADAPTERS.items():
        used = {name for _, name, _ in private_ray_uses(trees[path], set())}
        assert used == set(adapter.PRIVATE_NAMES), f"{path.name}: uses {sorted(used)}, lists {sorted(adapter.PRIVATE_NAMES)}"
    # a listed name the project also defined for itself would hide nothing, but would be confusing
    assert not PRIVATE_NAMES & project_private_names(trees)


@pytest.mark.parametrize("source", [
    "def f(algo):\n    return algo.learner_group._learner\n",
    "def f(algo):\n    return algo.env_runner._env_to_module\n",
    "def f(c):\n    return getattr(c, '_filters', None)\n",
    "from ray.tune.registry import _global_registry\n",
    "import ray._private.worker\n",
    "from ray._private import utils\n",
    "class C:\n    def validate(self):\n        self._value_error('x')\n",
    "def f(tuner):\n    return tuner._some_attribute_ray_adds_later\n",
])
def test_the_check_finds_private_ray_uses(source):
    tree = ast.parse(source)
    assert private_ray_uses(tree, project_private_names(parsed_modules()) | defined_private_names(tree))


@pytest.mark.parametrize("source", [
    "class C:\n    def build(self):\n        self._schedules = {}\n        return self._schedules\n",
    "def _helper():\n    pass\n\ndef f():\n    return _helper()\n",
    "from adpo_ray.rllib import _ray_private as rp\n\ndef f(g):\n    return rp.local_learner(g)\n",
    "def f(x):\n    return x.__class__\n",
])
def test_the_projects_own_private_names_pass(source):
    tree = ast.parse(source)
    assert private_ray_uses(tree, defined_private_names(tree)) == []


def test_the_adapters_warn_on_another_ray():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rllib_adapter.check_ray_version(rllib_adapter.RAY_VERSION) is True
    with pytest.warns(rllib_adapter.RayVersionWarning) as caught:
        assert rllib_adapter.check_ray_version("2.61.0") is False
    message = str(caught[0].message)
    assert f"written for Ray {rllib_adapter.RAY_VERSION}" in message and "Ray 2.61.0 is running" in message
    assert "adpo_ray/rllib/_ray_private.py" in message and "adpo_ray/orchestration/_ray_private.py" in message


def test_the_adapters_were_written_for_the_pinned_ray():
    pyproject = (PKG.parent / "pyproject.toml").read_text()
    assert f'"ray[default,tune,rllib]=={rllib_adapter.RAY_VERSION}"' in pyproject
