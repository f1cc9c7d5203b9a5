"""The RPM spec and setup.py agree on every runtime dependency and its lower bound: an admin's
`dnf install` must pull what `pip install` would (issue 20 found them drifted apart)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: setup.py requirements the spec satisfies otherwise (none today); name -> why.
NOT_IN_SPEC: dict[str, str] = {}


def normalized(name: str) -> str:
    """PEP 503 names, as python3dist() spells them (stomp.py -> stomp-py)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_requirements() -> dict[str, str]:
    """{name: lower bound or ""} of setup.py's install_requires, read without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    reqs = next(k.value for k in call.keywords if k.arg == "install_requires")
    out = {}
    for item in ast.literal_eval(reqs):
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9.]+))?", item)
        assert m, f"setup.py: {item!r} is not 'name' or 'name>=version' (extend this test for it)"
        out[normalized(m.group(1))] = m.group(2) or ""
    return out


def spec_requirements() -> dict[str, list[str]]:
    """{name: [lower bound or "", ...]} of every runtime Requires: python3dist(...) in the spec."""
    out: dict[str, list[str]] = {}
    for line in (REPO / "rpm" / "fitsflow.spec").read_text().splitlines():
        m = re.match(r"Requires:\s*python3dist\(([^)]+)\)\s*(?:>=\s*([0-9.]+))?\s*$", line)
        if m:
            out.setdefault(normalized(m.group(1)), []).append(m.group(2) or "")
    return out


def test_every_runtime_dependency_is_in_the_spec_with_the_same_bound() -> None:
    setup, spec = setup_requirements(), spec_requirements()
    assert setup, "no install_requires found in setup.py"
    missing = sorted(set(setup) - set(spec) - set(NOT_IN_SPEC))
    assert not missing, f"in setup.py, not required by any package of rpm/fitsflow.spec: {missing}"
    differ = {name: (bound, spec[name]) for name, bound in setup.items()
              if name in spec and any(b != bound for b in spec[name])}
    assert not differ, f"lower bounds differ (setup.py, spec): {differ}"
    extra = sorted(set(spec) - set(setup))
    assert not extra, f"required by the spec, not by setup.py: {extra}"
