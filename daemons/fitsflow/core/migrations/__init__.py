"""Schema migrations of the site database (Alembic; scripts in ``versions/``).

Every store that keeps tables in the site database (the controller's book and catch-up, the
registries, the recorder) calls :func:`migrate` on its engine before its first query, so
whichever daemon starts first after an upgrade of the packages brings the schema to the
newest revision, and the others find it done. Several daemons may start at once on one
database: the upgrade runs under a lock (PostgreSQL: an advisory lock; SQLite: the database's
write lock, taken by a row in ``fitsflow_schema_lock``) and looks again once it holds it.

A database that fitsflow 0.1.0 created (its tables, no version row) is stamped at revision
0001, the 0.1.0 schema, then upgraded. The version row lives in
``fitsflow_alembic_version``, so a site database shared with other Alembic users is fine.

Adding a change: a new script in ``versions/`` (``down_revision`` = the previous head) and
the same change in the Table definitions; tests/unit/test_migrations.py fails while the two
disagree.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

VERSION_TABLE = "fitsflow_alembic_version"
#: The revision that is fitsflow 0.1.0's schema.
FIRST = "0001"
#: Tables of the 0.1.0 schema: one of them without a version row is a 0.1.0 database.
TABLES_0_1_0 = ("controller_assignments", "controller_handoffs", "controller_expected", "oods_files",
                "archive_files", "rec_messages", "rec_images", "rec_files", "rec_daemons")
_PG_LOCK_KEY = 0x66697473  # "fits": pg_advisory_xact_lock's key for fitsflow's schema


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    return cfg


def head() -> str:
    """The newest revision this fitsflow knows."""
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


#: Engines already brought to the newest revision in this process (a daemon's stores share
#: one engine: the first store migrates, the others need not ask the database again).
_MIGRATED: weakref.WeakSet[Engine] = weakref.WeakSet()


def migrate(engine: Engine) -> str:
    """Bring the site database to :func:`head` (a no-op when it is there); returns it."""
    newest = head()
    if engine in _MIGRATED:
        return newest
    with engine.connect() as conn:
        if current(conn) == newest:
            _MIGRATED.add(engine)
            return newest
    with engine.begin() as conn:
        _lock(conn)
        found = current(conn)  # again, under the lock: another daemon may have done it
        if found != newest:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            if found is None and any(inspect(conn).has_table(t) for t in TABLES_0_1_0):
                command.stamp(cfg, FIRST)
            command.upgrade(cfg, "head")
        _unlock(conn)
    _MIGRATED.add(engine)
    return newest


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # DDL alone does not open a transaction in Python's sqlite3; this row does, and holds
        # the write lock (others wait, busy_timeout) until the upgrade commits.
        conn.execute(text("CREATE TABLE IF NOT EXISTS fitsflow_schema_lock (holder INTEGER)"))
        conn.execute(text("INSERT INTO fitsflow_schema_lock VALUES (1)"))


def _unlock(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(text("DELETE FROM fitsflow_schema_lock"))
