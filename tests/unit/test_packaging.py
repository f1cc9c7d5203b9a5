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


def runtime_pins() -> dict[str, str]:
    """{name: pinned version} of EL9's fitsflow-runtime lock (rpm/runtime/el9-requirements.txt)."""
    text = (REPO / "rpm" / "runtime" / "el9-requirements.txt").read_text()
    return {normalized(m.group(1)): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", text, re.MULTILINE)}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def test_el9_runtime_pins_every_dependency_within_setup_py_bounds_and_the_spec_bundles_them() -> None:
    """EL9 gets its dependencies only from fitsflow-runtime: its lock must hold every
    install_requires at a version setup.py accepts, every pin hash-checked, and the runtime
    spec's bundled() Provides must say the same versions (what an admin audits)."""
    pins, setup = runtime_pins(), setup_requirements()
    missing = sorted(set(setup) - set(pins))
    assert not missing, f"in setup.py, not in rpm/runtime/el9-requirements.txt: {missing}"
    low = {name: (pins[name], bound) for name, bound in setup.items()
           if bound and version_tuple(pins[name]) < version_tuple(bound)}
    assert not low, f"pinned below setup.py's bound (pin, bound): {low}"
    lock = (REPO / "rpm" / "runtime" / "el9-requirements.txt").read_text()
    assert lock.count("--hash=sha256:") == len(pins), "every pin needs its hash (pip download --require-hashes)"
    spec = (REPO / "rpm" / "deps" / "fitsflow-runtime.spec").read_text()
    bundled = {normalized(m.group(1)): m.group(2)
               for m in re.finditer(r"^Provides:\s*bundled\(python3\.11dist\(([^)]+)\)\)\s*=\s*(\S+)", spec, re.MULTILINE)}
    assert bundled == pins, "rpm/deps/fitsflow-runtime.spec's bundled() Provides and the lock differ"


def test_el10_dependency_specs_package_what_setup_py_accepts_from_checked_sources() -> None:
    """What fitsflow's repository adds to EL10 (rpm/deps/python-*.spec): each a dependency of
    setup.py at a version its bound accepts, its sdist named in rpm/deps/sources with a SHA-256."""
    setup = setup_requirements()
    sources = (REPO / "rpm" / "deps" / "sources").read_text()
    specs = sorted((REPO / "rpm" / "deps").glob("python-*.spec"))
    assert specs
    for spec in specs:
        text = spec.read_text()
        pypi_name = re.search(r"^%global pypi_name (\S+)", text, re.MULTILINE).group(1)
        version = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE).group(1)
        name = normalized(pypi_name)
        assert name in setup, f"{spec.name}: {name} is not in setup.py's install_requires"
        assert version_tuple(version) >= version_tuple(setup[name] or "0"), (spec.name, version, setup[name])
        line = rf"^SHA256 \({re.escape(pypi_name)}-{re.escape(version)}\.tar\.gz\) = [0-9a-f]{{64}}$"
        assert re.search(line, sources, re.MULTILINE), f"{spec.name}: no SHA256 line for its sdist in rpm/deps/sources"
