"""The shipped Prometheus alert rules are valid and fire on the series that should page
(promtool check rules / test rules: tests/prometheus/fitsflow-alerts.test.yml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "etc" / "prometheus" / "fitsflow-alerts.yml"
RULE_TESTS = REPO / "tests" / "prometheus" / "fitsflow-alerts.test.yml"


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("promtool not found: ./dev.sh setup fetches it from Debian's prometheus package")
    return found


def test_the_alert_rules_are_valid() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_fire_when_they_should() -> None:
    done = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
