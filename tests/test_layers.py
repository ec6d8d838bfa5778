"""The house's walls: no module imports one above it (docs/architecture.md, "The layers").

Read from the source with ``ast``: imports under ``if TYPE_CHECKING:`` are for the type
checker only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "supervisor"


def runtime_imports(path: Path) -> set[str]:
    """The ``supervisor.*`` modules ``path`` imports when it runs (anywhere in the file)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("supervisor"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("supervisor"))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): runtime_imports(p) for p in PACKAGE.rglob("*.py")}


def importers_of(target: str) -> set[str]:
    return {
        name
        for name, imports in MODULES.items()
        if name != target and any(i == target or i.startswith(target + ".") for i in imports)
    }


def test_the_modules_were_read() -> None:
    assert {"supervisor.daemon", "supervisor.deployment", "supervisor.cli"} <= set(MODULES)
    assert "supervisor.deployment" in MODULES["supervisor.daemon"]


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("supervisor.cli", {"supervisor.__main__"}),
        ("supervisor.daemon", {"supervisor.cli"}),
        ("supervisor.deployment", {"supervisor.daemon"}),
    ],
)
def test_the_top_is_imported_only_from_above(target: str, allowed: set[str]) -> None:
    assert importers_of(target) <= allowed


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("supervisor.control", ("supervisor.cli", "supervisor.daemon", "supervisor.deployment")),
        ("supervisor.demo", ("supervisor.cli", "supervisor.daemon")),
        ("supervisor.alerts", ("supervisor.guard", "supervisor.rollout")),
        ("supervisor.guard", ("supervisor.rollout", "supervisor.pipeline", "supervisor.control")),
        ("supervisor.arbiter", ("supervisor.rollout", "supervisor.pipeline", "supervisor.guard")),
        ("supervisor.children", ("supervisor.pipeline", "supervisor.rollout", "supervisor.guard")),
        ("supervisor.agent", ("supervisor.daemon", "supervisor.deployment", "supervisor.control")),
    ],
)
def test_no_module_imports_a_layer_above_it(layer: str, forbidden: tuple[str, ...]) -> None:
    for name, imports in MODULES.items():
        if name == layer or name.startswith(layer + "."):
            above = {i for i in imports if i.startswith(forbidden)}
            assert not above, f"{name} imports {sorted(above)}"
