"""Layering: the core is pure math (no Ray import), layers import only downwards, and the
report reads records without importing Ray or RLlib."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "adpo_ray"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_and_envs_import_no_ray_and_no_upper_layer():
    for sub in ("core", "envs"):
        for f in (PKG / sub).rglob("*.py"):
            for name in _imports(f):
                assert not name.startswith("ray"), f"{f} imports {name}"
                assert not name.startswith(("adpo_ray.rllib", "adpo_ray.orchestration", "adpo_ray.report")), (
                    f"{f} imports {name}"
                )
                if sub == "core":
                    assert not name.startswith("adpo_ray.envs"), f"{f} imports {name}"


def test_report_needs_no_ray():
    for f in (PKG / "report").rglob("*.py"):
        for name in _imports(f):
            assert not name.startswith(("ray", "adpo_ray.rllib", "adpo_ray.orchestration")), f"{f} imports {name}"
