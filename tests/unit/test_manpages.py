"""Every installed program has a man page built from its own argparse parser
(rpm/build-manpages, as the RPM build runs it), and groff renders each one without a warning
(but "cannot adjust line": a long usage line is a matter of taste)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def console_scripts() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return sorted(line.split("=", 1)[0].strip() for line in entry_points["console_scripts"])


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    subprocess.run([str(REPO / "rpm" / "build-manpages"), sys.executable, str(out), "0.1.0"], check=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "daemons")})
    return out


def test_one_page_per_program(pages: Path) -> None:
    assert sorted(p.stem for p in pages.glob("*.1")) == console_scripts()


@pytest.mark.parametrize("program", console_scripts())
def test_the_page_renders_and_documents_every_option(pages: Path, program: str) -> None:
    page = pages / f"{program}.1"
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-Wbreak", "-z", str(page)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = page.read_text()
    assert f"{program.replace('-', chr(92) + '-')} \\- " in text  # NAME: "prog \- what it does"
    if program.startswith("fitsflow-") and program not in ("fitsflow-wrap", "fitsflow-camera-sim", "fitsflow-demo"):
        for option in ("config", "instance", "log-level"):  # every daemon's options are listed
            assert f"\\fB\\-\\-{option.replace('-', chr(92) + '-')}\\fR" in text, (program, option)
