"""The shipped Prometheus alert rules are valid and fire on the series that should page
(promtool check rules / test rules: tests/prometheus/fitsflow-alerts.test.yml); the Grafana
dashboard's queries are valid PromQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "etc" / "prometheus" / "fitsflow-alerts.yml"
RULE_TESTS = REPO / "tests" / "prometheus" / "fitsflow-alerts.test.yml"
DASHBOARD = REPO / "etc" / "grafana" / "fitsflow-dashboard.json"


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


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every query of the Grafana dashboard parses (checked as recording rules by promtool)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"fitsflow:dashboard:q{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
