"""core.db: the site database's engine (SQLite pragmas)."""

from __future__ import annotations

import sqlite3

import pytest

from fitsflow.core.db import _wal


class LockedCursor:
    """Answers "database is locked" ``times`` times, as SQLite does to the daemons that lose
    the race to switch a new database to WAL."""

    def __init__(self, times: int, message: str = "database is locked") -> None:
        self.left = times
        self.message = message
        self.calls = 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise sqlite3.OperationalError(self.message)


def test_wal_switch_waits_for_the_daemon_that_won_the_race() -> None:
    cur = LockedCursor(3)
    _wal(cur)  # type: ignore[arg-type]
    assert cur.calls == 4


def test_wal_switch_gives_up_after_its_patience_and_other_errors_at_once() -> None:
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _wal(LockedCursor(10**9), patience_s=0.2)  # type: ignore[arg-type]
    other = LockedCursor(1, "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _wal(other)  # type: ignore[arg-type]
    assert other.calls == 1
