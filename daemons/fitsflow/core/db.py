"""The SQL database of a site (``site.database_url``): one engine factory for every daemon."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine


def engine_for(database: str | Engine) -> tuple[Engine, bool]:
    """(engine, owned): a daemon passes its one engine to each of its stores, which then must
    not dispose of it; a tool passes a URL and the store owns the engine it makes."""
    if isinstance(database, Engine):
        return database, False
    return make_engine(database), True


class SiteStore:
    """Base of a store whose tables are in the site database: given the daemon's engine (shared
    by its stores) or a URL (the store then owns, and disposes of, its engine); the schema is
    brought to the newest revision before the first query (core.migrations)."""

    def __init__(self, database: str | Engine) -> None:
        from fitsflow.core.migrations import migrate  # Alembic: only for what opens a database

        self.engine, self._owned = engine_for(database)
        migrate(self.engine)

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL (readers never block the writer), a durable
    commit and a busy timeout, since several daemons may share one file on a small site."""
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=10000")
            _wal(cur)
            cur.execute("PRAGMA synchronous=FULL")  # a registry row is a promise to a pipeline
            cur.close()
    return engine


def _wal(cur: sqlite3.Cursor, patience_s: float = 10.0) -> None:
    """Switch a SQLite database to WAL (a no-op once it is). On a new database, daemons
    starting at once race to switch it, and SQLite answers the losers "database is locked"
    at once, without its busy timeout (seen in CI): they try again until it is done."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
