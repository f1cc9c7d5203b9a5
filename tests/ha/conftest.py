"""Print the HA scenarios' failover figures at the end of the run."""

from __future__ import annotations

import pytest

from .report import RESULTS, lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section("HA lab: failover figures")
        for line in lines():
            terminalreporter.write_line(line)
