"""docs/design.md is the design: what it cites exists, and nothing cites a design elsewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
SAGAKIT = ROOT / "shared" / "sagakit"
# Text the repository ships; generated, installed and cached trees are not its own.
SKIPPED = {".git", ".venv", "node_modules", "var", "__pycache__", ".hypothesis"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".txt", ".cfg", ".sh", ""}
ENFORCED_ROW = re.compile(r"^\| (\d) \| `([^`]+)` \| (.+) \|$", re.MULTILINE)


def _defined_names(path: Path) -> set[str]:
    """Top-level classes, functions and assignments, and ``Class.member`` for members."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}.{member.name}"
                for member in node.body
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
            )
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _shipped_text_files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED or part.endswith("_cache") for part in relative.parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.name != "uv.lock":
            found.append(path)
    return found


def test_every_rule_has_the_places_that_enforce_it() -> None:
    rows = ENFORCED_ROW.findall(DESIGN.read_text(encoding="utf-8"))
    assert {rule for rule, _, _ in rows} == {"1", "2", "3", "4", "5"}


@pytest.mark.parametrize(
    ("rule", "module", "names"),
    ENFORCED_ROW.findall(DESIGN.read_text(encoding="utf-8")),
    ids=lambda value: str(value)[:40],
)
def test_each_enforcing_name_exists_where_the_design_says(
    rule: str, module: str, names: str
) -> None:
    path = SAGAKIT / module
    assert path.is_file(), f"rule {rule}: {module} is not in shared/sagakit"
    cited = re.findall(r"`([\w.]+)`", names)
    assert cited, f"rule {rule}: no name cited for {module}"
    missing = sorted(set(cited) - _defined_names(path))
    assert missing == [], f"rule {rule}: not defined in {module}"


def test_every_path_the_design_cites_exists() -> None:
    cited = re.findall(r"`([\w./-]+/[\w./-]*)`", DESIGN.read_text(encoding="utf-8"))
    paths = [c for c in cited if "." in c.rsplit("/", 1)[-1] or c.endswith("/")]
    assert paths
    missing = [p for p in paths if not (ROOT / p).exists() and not (SAGAKIT / p).exists()]
    assert missing == []


def test_nothing_cites_a_design_outside_the_repository() -> None:
    outside = re.compile(r"DESIGN\.md|/work/")
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _shipped_text_files()
        if path != Path(__file__).resolve()
        for number, line in enumerate(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        )
        if outside.search(line)
    ]
    assert citing == [], "cite docs/design.md, and no path outside the repository"
