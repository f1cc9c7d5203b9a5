"""The README's main job, small: every daemon as its own process, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_runs_clean_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fitsflow.testing.demo", "--images", "4", "--rows", "256", "--cols", "256",
           "--workdir", str(work), "--timeout", "120"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = first.stdout
    assert first.returncode == 0, out[-3000:] + first.stderr[-3000:]
    assert "whole in OODS 4; whole in archive 4; ingest failures 0" in out
    assert "images lost: 0" in out and "dead-lettered messages: 0; files left between daemons: 0" in out
    # The recorder (a daemon of the demo) saw the same: every image in the archive, every
    # other daemon's last state OFF (they stopped cleanly, before the recorder).
    status = subprocess.run([sys.executable, "-m", "fitsflow", "status", "--json", "--config", str(work / "fitsflow.toml")],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert [i["stage"] for i in doc["images"]] == ["in archive"] * 4, doc["images"]
    states = {d["daemon"]: d["state"] for d in doc["daemons"]}
    assert len(states) == 8 and "recorder@r1" in states, status.stdout  # the demo runs 8 daemons
    assert {s for d, s in states.items() if d != "recorder@r1"} == {"OFF"}, states
    # A second run works without cleanup and leaves no daemon behind.
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:]
    assert processes_with_env(f"FITSFLOW_CONFIG={work}".encode()) == []


def processes_with_env(needle: bytes) -> list[int]:
    """PIDs whose environment contains ``needle`` (the demo passes its config by environment)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found
