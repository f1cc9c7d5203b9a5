"""Schema migrations of the site database (core/migrations): a fresh database, a database
fitsflow 0.1.0 created (before migrations existed) with its rows, several daemons upgrading
at once, and the Table definitions in step with the newest revision."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from fitsflow.archive_controller import book, catchup
from fitsflow.archive_controller.book import Book
from fitsflow.archive_ingest import rucio_book
from fitsflow.core.db import make_engine
from fitsflow.core.ingest.registry import Registry, files_table
from fitsflow.core.migrations import TABLES_0_1_0, VERSION_TABLE, current, head, migrate
from fitsflow.recorder import store

SCHEMA_0_1_0 = Path(__file__).resolve().parents[1] / "data" / "schema-0.1.0.sql"


def models() -> MetaData:
    """Every table the code defines, as the newest revision must have them."""
    md = MetaData()
    for m in (book.metadata, catchup.metadata, store.metadata, rucio_book.metadata):
        for t in m.tables.values():
            t.to_metadata(md)
    files_table(md, "oods_files")  # archive_files comes with rucio_book's, which refers to it
    return md


def test_a_fresh_database_gets_the_newest_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'site.db'}")
    assert migrate(engine) == head()
    assert set(TABLES_0_1_0) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert current(conn) == head()
    assert migrate(engine) == head()  # again: nothing to do
    engine.dispose()


def test_the_code_and_the_newest_revision_agree(tmp_path: Path) -> None:
    """A Table changed without a migration (or the reverse) fails here."""
    engine = make_engine(f"sqlite:///{tmp_path / 'site.db'}")
    migrate(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = [d for d in compare_metadata(ctx, models())
                if not (d[0] == "remove_table" and d[1].name in (VERSION_TABLE, "fitsflow_schema_lock"))]
    assert diff == []
    engine.dispose()


def test_a_0_1_0_database_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "site.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_0_1_0.read_text())
    db.execute("INSERT INTO controller_handoffs VALUES ('IMG/R22_S00', 'IMG', '/in/a.fits', '/o/a.fits', '/a/a.fits',"
               " '2880', 'crc32:00000001', '1:2:3', '{}', 'linked', '2026-11-20 00:00:00')")
    db.commit()
    db.close()
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert current(conn) is None  # 0.1.0 had no version row
    b = Book(engine)  # what the controller does at start: migrate, then read
    assert [r.key for r in b.unfinished_handoffs()] == ["IMG/R22_S00"]
    with engine.connect() as conn:
        assert current(conn) == head()
    indexes = {i["name"] for i in inspect(engine).get_indexes("controller_handoffs")}
    assert "ix_controller_handoffs_state" in indexes  # revision 0002 applied
    b.close()
    engine.dispose()


def test_daemons_starting_at_once_upgrade_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    errors: list[BaseException] = []

    def start(table: str) -> None:
        try:
            Registry(url, table).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(t,)) for t in ("oods_files", "archive_files") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
        assert current(conn) == head()
        assert conn.execute(text("SELECT count(*) FROM fitsflow_schema_lock")).scalar() == 0
    engine.dispose()
