"""What the archive ingest has registered in Rucio (``rucio_registrations``, site database).

One row per archived file (``archive_files.id``), made when the registrar first takes the
file on, with its Rucio names and the checksums Rucio gets (adler32, carried from the
file's write; md5 if the site asks for it, '' otherwise):

    pending     not yet confirmed by Rucio (new, or Rucio was unreachable): retried
    registered  the replica exists in Rucio with these checksums and is in its dataset
    conflict    Rucio has the name with other content (or the file is gone): set aside for
                a person (a panic), never retried by itself
    retake      a person asked for it again (``fitsflow archive rucio-retry``): the
                checksums are read again and it is pending

Files of ``archive_files`` that have no row yet are found by a join, so a file archived
while the registrar was down, or just before a crash, is taken on at the next look: there
is no step between archiving and the registration's start that could be lost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (BigInteger, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text, func,
                        insert, select, update)
from fitsflow.core.db import SiteStore
from fitsflow.core.ingest.registry import files_table

metadata = MetaData()
archive_files = files_table(metadata, "archive_files")

registrations = Table(
    "rucio_registrations", metadata,
    Column("file_id", Integer, ForeignKey("archive_files.id", ondelete="CASCADE"), primary_key=True),
    Column("scope", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("dataset", String(255), nullable=False),
    Column("container", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("adler32", String(8), nullable=False),
    Column("md5", String(32), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("registered_at", DateTime(timezone=True)),
)

STATES = ("pending", "registered", "conflict", "retake")


@dataclass
class Registration:
    file_id: int
    scope: str
    name: str
    dataset: str
    container: str
    size: int
    adler32: str
    md5: str
    state: str
    path: str                 # relative to the archive repository
    data_id: dict[str, Any]

    @property
    def did(self) -> str:
        return f"{self.scope}:{self.name}"


@dataclass(frozen=True)
class Unregistered:
    """An archived file the registrar has not taken on yet."""

    file_id: int
    path: str
    size: int
    data_id: dict[str, Any]
    #: as the file's writer summed it (archive_files.adler32), None if unknown
    adler32: str | None = None


def _data_id(r: Any) -> dict[str, Any]:
    return {"instrument": r.instrument, "image": r.image, "group": r.group_id, "snap": r.snap, "raft": r.raft,
            "sensor": r.sensor, "obs_day": r.obs_day}


class RucioBook(SiteStore):
    """Blocking (call through to_thread)."""

    def unregistered(self, limit: int, after_id: int = 0) -> list[Unregistered]:
        """Archived files without a registration row, oldest first; ``after_id``: only files
        archived after that one (the archive grows by rows with higher ids: the registrar
        looks at the new ones, and at the whole table now and then, not at every look)."""
        a, r = archive_files, registrations
        stmt = (select(a).outerjoin(r, r.c.file_id == a.c.id).where(r.c.file_id.is_(None), a.c.id > after_id)
                .order_by(a.c.id).limit(limit))
        with self.engine.connect() as c:
            return [Unregistered(row.id, row.path, row.size, _data_id(row), row.adler32) for row in c.execute(stmt)]

    def start(self, rows: list[Registration]) -> None:
        """Record registrations as pending (their checksums computed): one commit."""
        now = dt.datetime.now(dt.timezone.utc)
        with self.engine.begin() as c:
            c.execute(insert(registrations), [
                {"file_id": x.file_id, "scope": x.scope, "name": x.name, "dataset": x.dataset,
                 "container": x.container, "size": x.size, "adler32": x.adler32, "md5": x.md5, "state": x.state,
                 "attempts": 0, "last_error": "", "created_at": now} for x in rows])

    def pending(self, limit: int) -> list[Registration]:
        return self._select(registrations.c.state == "pending", limit)

    def in_state(self, state: str, limit: int = 1000) -> list[Registration]:
        return self._select(registrations.c.state == state, limit)

    def _select(self, where: Any, limit: int) -> list[Registration]:
        a, r = archive_files, registrations
        stmt = select(r, a.c.path, a.c.instrument, a.c.image, a.c.group_id, a.c.snap, a.c.raft, a.c.sensor,
                      a.c.obs_day).join(a, a.c.id == r.c.file_id).where(where).order_by(r.c.file_id).limit(limit)
        with self.engine.connect() as c:
            return [Registration(row.file_id, row.scope, row.name, row.dataset, row.container, row.size, row.adler32,
                                 row.md5, row.state, row.path, _data_id(row)) for row in c.execute(stmt)]

    def set_state(self, file_ids: list[int], state: str, error: str = "") -> None:
        values: dict[str, Any] = {"state": state, "last_error": error[:4000]}
        if state == "registered":
            values["registered_at"] = dt.datetime.now(dt.timezone.utc)
        with self.engine.begin() as c:
            c.execute(update(registrations).where(registrations.c.file_id.in_(file_ids)).values(**values))

    def failed_attempt(self, file_ids: list[int], error: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(registrations).where(registrations.c.file_id.in_(file_ids))
                      .values(attempts=registrations.c.attempts + 1, last_error=error[:4000]))

    def image_rank(self, instrument: str, obs_day: str, image: str) -> int:
        """How many of the night's images were archived before ``image`` (by the first file of
        each): its place, which later images cannot change (ids only grow)."""
        a = archive_files
        first = (select(func.min(a.c.id)).where(a.c.instrument == instrument, a.c.image == image)
                 .scalar_subquery())
        firsts = (select(func.min(a.c.id).label("first")).where(a.c.instrument == instrument, a.c.obs_day == obs_day)
                  .group_by(a.c.image).subquery())
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(firsts).where(firsts.c.first < first)).scalar_one())

    def counts(self) -> dict[str, int]:
        """Registrations per state, and ``unregistered``: archived files not yet taken on."""
        a, r = archive_files, registrations
        with self.engine.connect() as c:
            out = {state: 0 for state in STATES}
            out.update({s: n for s, n in c.execute(select(r.c.state, func.count()).group_by(r.c.state))})
            out["unregistered"] = c.execute(select(func.count()).select_from(a.outerjoin(r, r.c.file_id == a.c.id))
                                            .where(r.c.file_id.is_(None))).scalar_one()
        return out

    def retry_set_aside(self, **filters: Any) -> int:
        """Mark the set-aside registrations of these files (data ID parts; none: all) to be
        taken on afresh (``retake``: checksums read again, then registered) once a person
        has fixed Rucio's entry or the file. Returns how many."""
        a, r = archive_files, registrations
        files = select(a.c.id)
        for key, value in filters.items():
            if value is not None:
                files = files.where(a.c["group_id" if key == "group" else key] == value)
        with self.engine.begin() as c:
            return int(c.execute(update(r).where(r.c.state == "conflict", r.c.file_id.in_(files))
                                 .values(state="retake", attempts=0)).rowcount)

    def set_sums(self, rows: list[Registration]) -> None:
        """Checksums read again, and the state that follows (pending, or conflict)."""
        with self.engine.begin() as c:
            for x in rows:
                c.execute(update(registrations).where(registrations.c.file_id == x.file_id)
                          .values(adler32=x.adler32, md5=x.md5, state=x.state, last_error=""))

    def by_path(self) -> dict[str, tuple[str, str]]:
        """Archive path → (state, DID), for ``fitsflow archive ls``."""
        a, r = archive_files, registrations
        with self.engine.connect() as c:
            return {row.path: (row.state, f"{row.scope}:{row.name}") for row in
                    c.execute(select(a.c.path, r.c.state, r.c.scope, r.c.name).join(r, r.c.file_id == a.c.id))}
