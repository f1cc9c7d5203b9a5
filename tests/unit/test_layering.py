"""What the daemons ship does not import the test harness, the demo or the camera simulator:
those are packaged apart (fitsflow-demo), and a daemon host need not install them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemons" / "fitsflow"
#: Sub-packages that only the demo, the benchmarks and the tests use.
NOT_SHIPPED_WITH_DAEMONS = ("fitsflow.testing", "fitsflow.camera_sim")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-local imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_production_code_does_not_import_the_harness() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module.startswith(NOT_SHIPPED_WITH_DAEMONS):
            continue
        bad = sorted(m for m in imported_modules(path)
                     if m in NOT_SHIPPED_WITH_DAEMONS or m.startswith(tuple(f"{p}." for p in NOT_SHIPPED_WITH_DAEMONS)))
        if bad:
            offenders.append(f"{module}: {', '.join(bad)}")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_an_import() -> None:
    """The scan itself finds a harness import where there is one (it cannot pass vacuously)."""
    demo = PACKAGE / "testing" / "demo.py"
    assert "fitsflow.testing.broker" in imported_modules(demo)
