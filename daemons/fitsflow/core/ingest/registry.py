"""A file registry (SQLAlchemy): one row per data ID, so re-ingesting the same data is a no-op.

SQLite by default, PostgreSQL supported: the URL comes from ``site.database_url``. The OODS
and the archive keep separate tables in the same database (``oods_files``, ``archive_files``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from sqlalchemy import (Boolean, Column, DateTime, Integer, MetaData, String, Table, UniqueConstraint, delete, func,
                        insert, select, update)
from sqlalchemy.exc import IntegrityError

from sqlalchemy.engine import Engine

from fitsflow.core.db import SiteStore

DATA_ID_KEYS = ("instrument", "image", "group", "snap", "raft", "sensor", "obs_day")


def files_table(metadata: MetaData, name: str) -> Table:
    return Table(
        name, metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("instrument", String(32), nullable=False),
        Column("image", String(80), nullable=False),
        Column("group_id", String(64), nullable=False),
        Column("snap", Integer, nullable=False),
        Column("raft", String(16), nullable=False),
        Column("sensor", String(16), nullable=False),
        Column("obs_day", String(8), nullable=False, index=True),
        Column("path", String(512), nullable=False),
        Column("size", Integer, nullable=False),
        Column("checksum", String(80), nullable=False),
        Column("ingested_at", DateTime(timezone=True), nullable=False, index=True),
        Column("protected", Boolean, nullable=False, default=False),
        Column("adler32", String(8), nullable=True),  # as the file's writer summed it (NULL: unknown)
        UniqueConstraint("instrument", "image", "raft", "sensor", name=f"{name}_data_id"),
    )


@dataclass(frozen=True)
class Entry:
    data_id: dict[str, Any]
    path: str
    size: int
    checksum: str
    ingested_at: dt.datetime
    protected: bool
    adler32: str | None = None


class Registry(SiteStore):
    """Rows of one files table. All methods are blocking (call them through to_thread)."""

    def __init__(self, database: str | Engine, table: str) -> None:
        """``database``: the daemon's engine, or a URL (this registry then owns its engine)."""
        super().__init__(database)
        self.metadata = MetaData()
        self.table = files_table(self.metadata, table)

    def find(self, data_id: dict[str, Any]) -> Entry | None:
        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.instrument == data_id["instrument"], t.c.image == data_id["image"],
                                               t.c.raft == data_id["raft"], t.c.sensor == data_id["sensor"])).first()
        return _entry(row) if row is not None else None

    def add(self, data_id: dict[str, Any], path: str, size: int, checksum: str, adler32: str | None = None) -> bool:
        """Record a file (``adler32``: 8 hex digits, if known); False if its data ID is there
        already (nothing changed)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.table).values(**_row(data_id, path, size, checksum, adler32)))
            return True
        except IntegrityError:
            return False

    def add_many(self, files: Sequence[tuple[dict[str, Any], str, int, str, str | None]]) -> list[bool]:
        """Record files, each as :meth:`add` takes them, in one transaction (one commit, one
        fsync); per file False if its data ID was there already. If one was (another ingest
        got there between look-up and insert), each is recorded on its own instead."""
        if not files:
            return []
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.table), [_row(*f) for f in files])
            return [True] * len(files)
        except IntegrityError:
            return [self.add(*f) for f in files]

    def query(self, **filters: Any) -> Iterator[Entry]:
        t = self.table
        stmt = select(t).order_by(t.c.obs_day, t.c.image, t.c.raft, t.c.sensor)
        for key, value in filters.items():
            if value is not None:
                stmt = stmt.where(getattr(t.c, "group_id" if key == "group" else key) == value)
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                yield _entry(row)

    def set_protected(self, data_id: dict[str, Any], protected: bool) -> int:
        t = self.table
        with self.engine.begin() as conn:
            return conn.execute(update(t).where(t.c.instrument == data_id["instrument"], t.c.image == data_id["image"],
                                                t.c.raft == data_id["raft"], t.c.sensor == data_id["sensor"])
                                .values(protected=protected)).rowcount

    def expired(self, older_than: dt.datetime) -> list[Entry]:
        t = self.table
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.ingested_at < older_than, t.c.protected.is_(False))).all()
        return [_entry(r) for r in rows]

    def remove(self, data_id: dict[str, Any]) -> None:
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.instrument == data_id["instrument"], t.c.image == data_id["image"],
                                         t.c.raft == data_id["raft"], t.c.sensor == data_id["sensor"]))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())


def _row(data_id: dict[str, Any], path: str, size: int, checksum: str, adler32: str | None) -> dict[str, Any]:
    return {"instrument": data_id["instrument"], "image": data_id["image"], "group_id": data_id["group"],
            "snap": int(data_id["snap"]), "raft": data_id["raft"], "sensor": data_id["sensor"],
            "obs_day": data_id["obs_day"], "path": path, "size": size, "checksum": checksum, "adler32": adler32,
            "ingested_at": dt.datetime.now(dt.timezone.utc), "protected": False}


def _entry(row: Any) -> Entry:
    m = row._mapping
    data_id = {"instrument": m["instrument"], "image": m["image"], "group": m["group_id"], "snap": m["snap"],
               "raft": m["raft"], "sensor": m["sensor"], "obs_day": m["obs_day"]}
    ingested = m["ingested_at"]
    if ingested.tzinfo is None:  # SQLite returns naive datetimes
        ingested = ingested.replace(tzinfo=dt.timezone.utc)
    return Entry(data_id, m["path"], m["size"], m["checksum"], ingested, bool(m["protected"]), m["adler32"])
