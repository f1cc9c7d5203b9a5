"""The archive controller's bookkeeping, in its database (SQLAlchemy; site.database_url), so a
restarted or failed-over instance continues where the last one stopped."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, Text, select, update, insert
from sqlalchemy.exc import IntegrityError

from fitsflow.core.db import SiteStore

metadata = MetaData()
assignments = Table(
    "controller_assignments", metadata,
    Column("assignment", String(200), primary_key=True),
    Column("image", String(80), nullable=False, index=True),
    Column("forwarder", String(64), nullable=True),  # NULL: waiting for a live forwarder
    Column("sensors", Text, nullable=False),          # JSON list
    Column("state", String(16), nullable=False),      # open | done | reassigned | deferred | superseded
    Column("sent", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
handoffs = Table(
    "controller_handoffs", metadata,
    Column("key", String(120), primary_key=True),     # image/raft_sensor
    Column("image", String(80), nullable=False, index=True),
    Column("incoming", String(512), nullable=False),
    Column("oods", String(512), nullable=False),
    Column("archive", String(512), nullable=False),
    Column("size", String(20), nullable=False),
    Column("checksum", String(80), nullable=False),
    Column("inode", String(80), nullable=False),      # "dev:ino:mtime_ns" of the verified incoming file
    Column("data_id", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),  # verified | linked | unlinked | requested
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("extra_targets", Text, nullable=True),     # JSON {target: staged path} beyond oods/archive
    Column("adler32", String(8), nullable=True),      # as the forwarder summed it (NULL: unknown)
)


@dataclass
class Assignment:
    assignment: str
    image: str
    forwarder: str | None
    sensors: list[str]
    state: str
    sent: bool


@dataclass
class HandOffRow:
    key: str
    image: str
    incoming: str
    oods: str
    archive: str
    size: int
    checksum: str
    inode: str
    data_id: dict[str, Any]
    state: str
    #: targets beyond the OODS and the archive (paths.extra_staging when it was recorded)
    extra: dict[str, str] = field(default_factory=dict)
    #: the file's Adler-32 (8 hex digits) as its writer summed it, None if not announced
    adler32: str | None = None

    def staged(self) -> dict[str, str]:
        """Every target's staged path, by target name."""
        return {"oods": self.oods, "archive": self.archive, **self.extra}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Book(SiteStore):
    """All methods are blocking; call them through asyncio.to_thread."""

    # -- assignments -------------------------------------------------------------------

    def sensor_states(self, image: str) -> dict[str, str]:
        """Each sensor of ``image`` the controller knows: "delivered", "open" (assigned, on
        its way) or "deferred" (partial, waiting for the camera's re-send)."""
        with self.engine.connect() as c:
            rows = c.execute(select(assignments.c.sensors, assignments.c.state).where(
                assignments.c.image == image, assignments.c.state.in_(("open", "deferred")))).all()
            keys = c.execute(select(handoffs.c.key).where(handoffs.c.image == image)).all()
        states = {s: r.state for r in rows for s in json.loads(r.sensors)}
        states.update({k.key.split("/", 1)[1]: "delivered" for k in keys})
        return states

    def deferred_assignments(self, older_than: dt.datetime) -> list[Assignment]:
        with self.engine.connect() as c:
            rows = c.execute(select(assignments).where(assignments.c.state == "deferred",
                                                       assignments.c.updated_at < older_than)).all()
        return [Assignment(r.assignment, r.image, r.forwarder, json.loads(r.sensors), r.state, r.sent) for r in rows]

    def supersede_deferred(self, image: str, sensors: set[str]) -> list[str]:
        """Take ``sensors`` out of ``image``'s deferred assignments (they are being assigned
        now); what stays deferred gets a new deferred row. Returns the sensors taken."""
        taken: list[str] = []
        with self.engine.begin() as c:
            for r in c.execute(select(assignments).where(assignments.c.image == image,
                                                         assignments.c.state == "deferred")).all():
                held = json.loads(r.sensors)
                mine = [x for x in held if x in sensors]
                if not mine:
                    continue
                taken += mine
                c.execute(update(assignments).where(assignments.c.assignment == r.assignment)
                          .values(state="superseded", updated_at=_now()))
                rest = [x for x in held if x not in sensors]
                if rest:
                    c.execute(insert(assignments).values(assignment=f"{r.assignment}+", image=image, forwarder=None,
                                                         sensors=json.dumps(rest), state="deferred", sent=False,
                                                         updated_at=r.updated_at))
        return taken

    def add_assignments(self, items: list[Assignment]) -> None:
        with self.engine.begin() as c:
            for a in items:
                c.execute(insert(assignments).values(assignment=a.assignment, image=a.image, forwarder=a.forwarder,
                                                     sensors=json.dumps(a.sensors), state=a.state, sent=a.sent,
                                                     updated_at=_now()))

    def open_assignments(self) -> list[Assignment]:
        with self.engine.connect() as c:
            rows = c.execute(select(assignments).where(assignments.c.state == "open")).all()
        return [Assignment(r.assignment, r.image, r.forwarder, json.loads(r.sensors), r.state, r.sent) for r in rows]

    def set_assignment(self, assignment: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(update(assignments).where(assignments.c.assignment == assignment)
                      .values(updated_at=_now(), **values))

    def reassign(self, old: str, new: list[Assignment]) -> None:
        """Retire ``old`` and create its replacements in one transaction."""
        with self.engine.begin() as c:
            c.execute(update(assignments).where(assignments.c.assignment == old)
                      .values(state="reassigned", updated_at=_now()))
            for a in new:
                c.execute(insert(assignments).values(assignment=a.assignment, image=a.image, forwarder=a.forwarder,
                                                     sensors=json.dumps(a.sensors), state=a.state, sent=a.sent,
                                                     updated_at=_now()))

    # -- hand-offs ---------------------------------------------------------------------

    def handoff(self, key: str) -> HandOffRow | None:
        with self.engine.connect() as c:
            r = c.execute(select(handoffs).where(handoffs.c.key == key)).first()
        return _row(r) if r is not None else None

    def delivered_sensors(self, image: str) -> set[str]:
        with self.engine.connect() as c:
            rows = c.execute(select(handoffs.c.key).where(handoffs.c.image == image)).all()
        return {r.key.split("/", 1)[1] for r in rows}

    def start_handoff(self, row: HandOffRow) -> bool:
        """Record a verified delivery; False if it was recorded already."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(handoffs).values(**_columns(row)))
            return True
        except IntegrityError:
            return False

    def handoffs(self, keys: list[str]) -> dict[str, HandOffRow]:
        """The recorded hand-offs among ``keys``, by key."""
        with self.engine.connect() as c:
            rows = c.execute(select(handoffs).where(handoffs.c.key.in_(keys))).all()
        return {r.key: _row(r) for r in rows}

    def start_handoffs(self, rows: list[HandOffRow]) -> None:
        """Record verified deliveries, in one transaction (the caller checked none is
        recorded yet; one that is after all is left as it is)."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(handoffs), [_columns(row) for row in rows])
        except IntegrityError:  # another instance recorded one meanwhile (a fail-over): one by one
            for row in rows:
                self.start_handoff(row)

    def set_handoff_state(self, key: str, state: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(update(handoffs).where(handoffs.c.key == key).values(state=state, updated_at=_now(), **values))

    def set_handoff_states(self, rows: list[HandOffRow], state: str) -> None:
        """Record that ``rows`` reached ``state`` (and each row's inode), in one transaction."""
        with self.engine.begin() as c:
            for row in rows:
                c.execute(update(handoffs).where(handoffs.c.key == row.key)
                          .values(state=state, inode=row.inode, updated_at=_now()))

    def unfinished_handoffs(self) -> list[HandOffRow]:
        with self.engine.connect() as c:
            rows = c.execute(select(handoffs).where(handoffs.c.state != "requested")).all()
        return [_row(r) for r in rows]


def _columns(row: HandOffRow) -> dict[str, Any]:
    """A hand-off row as the table's columns."""
    return dict(key=row.key, image=row.image, incoming=row.incoming, oods=row.oods, archive=row.archive,
                size=str(row.size), checksum=row.checksum, inode=row.inode, data_id=json.dumps(row.data_id),
                state=row.state, extra_targets=json.dumps(row.extra) if row.extra else None, adler32=row.adler32,
                updated_at=_now())


def _row(r: Any) -> HandOffRow:
    return HandOffRow(r.key, r.image, r.incoming, r.oods, r.archive, int(r.size), r.checksum, r.inode,
                      json.loads(r.data_id), r.state, json.loads(r.extra_targets) if r.extra_targets else {},
                      r.adler32)
