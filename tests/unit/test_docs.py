"""The documentation site builds strict: a broken link, a missing page or an API reference that
no longer matches the code fails the suite."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("mkdocs", path=os.path.dirname(sys.executable)) is None,
                    reason="mkdocs is installed by `make test` (the dev extra)")
def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable))
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("listwise_loss") >= 1


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages and {p for p in pages if p not in nav} == set()


def test_the_layout_table_names_every_module():
    """docs/development.md's layout table names every module of the package, each in its
    folder's row (a module added, moved or deleted without the table fails here)."""
    text = (ROOT / "docs" / "development.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(adpo_ray/[^`]*)` \| (.*) \|$", text, re.M)}
    missing = []
    for path in sorted((ROOT / "adpo_ray").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":
            continue
        if rel in rows:  # a row of its own (cli.py, metrics.py...)
            continue
        if f"`{path.name}`" not in rows.get(rel.rsplit("/", 1)[0] + "/", ""):
            missing.append(rel)
    assert not missing, f"docs/development.md's layout table does not name: {missing}"
    named = {name for row in rows.values() for name in re.findall(r"`(\w+\.py)`", row)}
    modules = {p.name for p in (ROOT / "adpo_ray").rglob("*.py")} | {p.name for p in ROOT.glob("*.py")}
    assert named <= modules, f"the layout table names modules that do not exist: {sorted(named - modules)}"


def test_readme_is_a_front_door():
    """At most 250 lines; every link into docs/ resolves; no figure that speaks from one machine."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).exists(), target
    assert not re.search(r"\b(this machine|here, on|on this 2-core)\b", text)


def test_results_pages_say_how_they_were_made():
    for page in (ROOT / "docs" / "results").glob("*.md"):
        if page.name == "index.md":
            continue
        text = page.read_text()
        for field in ("| date |", "| commit |", "| command |", "| machine |"):
            assert field in text, f"{page.name} lacks {field}"
