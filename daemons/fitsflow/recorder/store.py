"""The recorder's tables (SQLAlchemy Core, in the site database, prefixed ``rec_``).

- ``rec_messages``: every fitsflow message once (its MsgId is the key), with its body.
- ``rec_images``: per image, when it reached each stage of its life cycle.
- ``rec_files``: per image and sensor, when its file was delivered, handed off, ingested.
- ``rec_daemons``: per daemon instance, host, current and target state, status line and
  when it was last heard of.

Every write is idempotent: a message recorded twice changes nothing the second time, and
stage times keep their first value (``COALESCE``), so a redelivery after a crash is harmless.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import (Boolean, Column, Float, Integer, MetaData, String, Table, Text, delete, func,
                        bindparam, select, update)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from fitsflow.core.db import make_engine
from fitsflow.core.messages import Message
from fitsflow.core.migrations import migrate

metadata = MetaData()

messages_t = Table(
    "rec_messages", metadata,
    Column("msg_id", String(64), primary_key=True),
    Column("type", String(40), nullable=False, index=True),
    Column("destination", String(200), nullable=False),
    Column("image", String(80), index=True),
    Column("sender", String(200), nullable=False),
    Column("sent", String(40), nullable=False),
    Column("received_at", Float, nullable=False, index=True),
    Column("body", Text, nullable=False),
)

images_t = Table(
    "rec_images", metadata,
    Column("image", String(80), primary_key=True),
    Column("group_id", String(64)),
    Column("sensors_expected", Integer),
    Column("started_at", Float),         # START_INTEGRATION
    Column("end_readout_at", Float),     # END_READOUT: the camera sent the last packet
    Column("readout_at", Float),         # READOUT_COMPLETE
    Column("missing", Integer, nullable=False, default=0),
    Column("header_at", Float),          # HEADER_READY
    Column("header_partial", Boolean),
    Column("updated_at", Float, nullable=False, index=True),
)

files_t = Table(
    "rec_files", metadata,
    Column("image", String(80), primary_key=True),
    Column("sensor", String(40), primary_key=True),   # RAFT_SENSOR
    Column("delivered_at", Float),       # FILE_DELIVERED
    Column("oods_requested_at", Float),  # INGEST_REQUEST to the OODS: handed off
    Column("archive_requested_at", Float),
    Column("oods_at", Float),            # IMAGE_IN_OODS
    Column("oods_status", Integer),
    Column("archive_at", Float),         # IMAGE_IN_ARCHIVE
    Column("archive_status", Integer),
    Column("rucio_at", Float),           # IMAGE_IN_RUCIO (with [rucio] enabled)
    Column("rucio_status", Integer),
)

daemons_t = Table(
    "rec_daemons", metadata,
    Column("ident", String(200), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("target", String(16), nullable=False),
    Column("status", Text, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

#: Life-cycle stages in order, as shown by ``fitsflow status`` and the page.
STAGES = ("started", "readout", "header", "delivered", "handed off", "in OODS", "in archive", "in Rucio")


def _sensor(data: dict[str, Any]) -> str | None:
    data_id = data.get("data_id")
    if isinstance(data_id, dict) and data_id.get("raft") and data_id.get("sensor"):
        return f"{data_id['raft']}_{data_id['sensor']}"
    return None


@dataclass
class Recorded:
    """What recording one message did (for the daemon's counters)."""

    new: bool
    stage: str | None = None


class RecorderStore:
    """See the module docstring. Thread-safe (one engine); the daemon calls it from threads."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """``create=False`` for readers (``fitsflow status``): they must not change the schema."""
        self.engine: Engine = make_engine(url)
        if create:
            migrate(self.engine)
        # The writes are built once, with bound parameters: SQLAlchemy then compiles each
        # statement once and only binds values per message. (Building a statement per
        # message cost more CPU than SQLite's work: 1.9 ms per message, measured.) The
        # dialect's INSERT has ON CONFLICT (SQLite and PostgreSQL, the site databases): no
        # savepoint and no exception per repeated key.
        self._insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        self._add_message = self._insert(messages_t).on_conflict_do_nothing()
        # Whether the row was new: psycopg reports no row count for ON CONFLICT DO NOTHING
        # (-1), so PostgreSQL is asked with RETURNING, which EL9's SQLite (3.34) lacks.
        self._returning = self.engine.dialect.name == "postgresql"
        if self._returning:
            self._add_message = self._add_message.returning(messages_t.c.msg_id)
        add_image = self._insert(images_t)
        self._add_image = add_image.on_conflict_do_update(
            index_elements=[images_t.c.image], set_={"updated_at": add_image.excluded.updated_at})
        put_daemon = self._insert(daemons_t)
        self._put_daemon = put_daemon.on_conflict_do_update(
            index_elements=[daemons_t.c.ident],
            set_={k: put_daemon.excluded[k] for k in ("host", "state", "target", "status", "last_seen")})
        self._touch = update(daemons_t).where(daemons_t.c.ident == bindparam("k_ident")).values(
            last_seen=bindparam("k_now"))
        self._set_missing = update(images_t).where(images_t.c.image == bindparam("k_image")).values(
            missing=bindparam("k_missing"))
        self._image_stmts: dict[tuple[str, ...], Any] = {}
        self._file_stmts: dict[str, Any] = {}

    def close(self) -> None:
        self.engine.dispose()

    # -- writing -----------------------------------------------------------------------

    def record(self, msg: Message, destination: str, now: float) -> Recorded:
        """Persist ``msg`` and apply it to the life cycle; a second call with the same
        message changes nothing."""
        return self.record_many([(msg, destination, now)])[0]

    def record_many(self, items: Sequence[tuple[Message, str, float]]) -> list[Recorded]:
        """Record each ``(message, destination, received_at)`` as :meth:`record` does, all in
        one transaction (one commit): all of them are recorded, or none."""
        with self.engine.begin() as conn:
            out = []
            for msg, destination, now in items:
                result = conn.execute(self._add_message, dict(
                    msg_id=msg.id, type=msg.type, destination=destination, image=msg.image, sender=msg.sender,
                    sent=msg.sent, received_at=now, body=msg.encode()))
                new = result.first() is not None if self._returning else result.rowcount == 1
                out.append(Recorded(new=True, stage=self._apply(conn, msg, destination, now)) if new
                           else Recorded(new=False))
            return out

    def _apply(self, conn: Connection, msg: Message, destination: str, now: float) -> str | None:
        d = dict(msg.data)
        t = msg.type
        if t == "DAEMON_STATE":
            self._daemon(conn, d, now)
            return None
        if t == "FORWARDER_HEARTBEAT":
            conn.execute(self._touch, {"k_ident": f"forwarder@{d.get('forwarder', msg.sender)}", "k_now": now})
            return None
        if not msg.image:
            return None
        image = msg.image
        conn.execute(self._add_image, {"image": image, "updated_at": now, "missing": 0})
        if t == "START_INTEGRATION":
            self._image_first(conn, image, now, started_at=now, group_id=str(d.get("group", "")),
                              sensors_expected=len(d.get("sensors") or []) or None)
            return "started"
        if t == "END_READOUT":
            self._image_first(conn, image, now, end_readout_at=now)
            return None
        if t == "READOUT_COMPLETE":
            self._image_first(conn, image, now, readout_at=now)
            conn.execute(self._set_missing, {"k_image": image, "k_missing": len(d.get("missing") or [])})
            return "readout"
        if t == "HEADER_READY":
            self._image_first(conn, image, now, header_at=now, header_partial=bool(d.get("partial")))
            return "header"
        if t in ("FILE_DELIVERED", "INGEST_REQUEST"):  # one entry per file in ``files``
            if t == "FILE_DELIVERED":
                column, stage = "delivered_at", "delivered"
            else:
                column = "archive_requested_at" if ".archive." in destination else "oods_requested_at"
                stage = "handed off"
            sensors = [s for s in map(_sensor, d.get("files") or []) if s is not None]
            for sensor in sensors:
                self._file_first(conn, image, sensor, column, now)
            return stage if sensors else None
        sensor = _sensor(d)
        if sensor is None:
            return None
        if t in ("IMAGE_IN_OODS", "IMAGE_IN_ARCHIVE", "IMAGE_IN_RUCIO"):
            prefix, stage = {"IMAGE_IN_OODS": ("oods", "in OODS"), "IMAGE_IN_ARCHIVE": ("archive", "in archive"),
                             "IMAGE_IN_RUCIO": ("rucio", "in Rucio")}[t]
            self._file_first(conn, image, sensor, f"{prefix}_at", now, status=int(d.get("status", 1)))
            return stage
        return None

    def _image_first(self, conn: Connection, image: str, now: float, **values: Any) -> None:
        """Set these stage columns of an image unless they are set already (first value kept)."""
        columns = tuple(sorted(values))
        stmt = self._image_stmts.get(columns)
        if stmt is None:
            stmt = self._image_stmts[columns] = update(images_t).where(images_t.c.image == bindparam("k_image")).values(
                updated_at=bindparam("k_now"),
                **{k: func.coalesce(images_t.c[k], bindparam(f"k_{k}")) for k in columns})
        conn.execute(stmt, {"k_image": image, "k_now": now, **{f"k_{k}": v for k, v in values.items()}})

    def _file_first(self, conn: Connection, image: str, sensor: str, column: str, now: float,
                    status: int | None = None) -> None:
        """A file's stage time (first value kept) and, for an ingest's answer, its status
        (``<stage>_status``, the latest answer)."""
        key = column if status is None else f"{column}+status"
        stmt = self._file_stmts.get(key)
        if stmt is None:
            ins = self._insert(files_t)
            update_set = {column: func.coalesce(files_t.c[column], ins.excluded[column])}
            if status is not None:
                status_column = column.replace("_at", "_status")
                update_set[status_column] = ins.excluded[status_column]
            stmt = self._file_stmts[key] = ins.on_conflict_do_update(
                index_elements=[files_t.c.image, files_t.c.sensor], set_=update_set)
        params: dict[str, Any] = {"image": image, "sensor": sensor, column: now}
        if status is not None:
            params[column.replace("_at", "_status")] = status
        conn.execute(stmt, params)

    def _daemon(self, conn: Connection, d: dict[str, Any], now: float) -> None:
        conn.execute(self._put_daemon, dict(
            ident=str(d["daemon"]), host=str(d.get("host", "")), state=str(d.get("state", "")),
            target=str(d.get("target") or d.get("state", "")), status=str(d.get("status", ""))[:2000],
            first_seen=now, last_seen=now))

    def prune(self, older_than: float) -> int:
        """Forget messages and finished images older than ``older_than`` (epoch seconds)."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(messages_t).where(messages_t.c.received_at < older_than)).rowcount
            old = select(images_t.c.image).where(images_t.c.updated_at < older_than)
            conn.execute(delete(files_t).where(files_t.c.image.in_(old)))
            conn.execute(delete(images_t).where(images_t.c.updated_at < older_than))
        return int(n)

    # -- reading (fitsflow status, the status page) ------------------------------------

    def snapshot(self, now: float, *, images: int = 20, events: int = 20, late_after_s: float = 15.0,
                 down_after_s: float = 60.0, flow_window_s: float = 600.0) -> dict[str, Any]:
        """Everything the status views show, as plain JSON-able data."""
        with self.engine.connect() as conn:
            return {
                "time": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                "daemons": [self._daemon_view(r, now, late_after_s, down_after_s)
                            for r in conn.execute(select(daemons_t).order_by(daemons_t.c.ident)).mappings()],
                "images": self._images_view(conn, images),
                "events": [self._event_view(r) for r in conn.execute(
                    select(messages_t).where(messages_t.c.type.in_(("PANIC", "ALERT")))
                    .order_by(messages_t.c.received_at.desc()).limit(events)).mappings()],
                "flows": [{"type": t, "destination": dest, "count": n} for t, dest, n in conn.execute(
                    select(messages_t.c.type, messages_t.c.destination, func.count())
                    .where(messages_t.c.received_at >= now - flow_window_s)
                    .group_by(messages_t.c.type, messages_t.c.destination))],
                "flow_window_s": flow_window_s,
                "recorded": conn.execute(select(func.count()).select_from(messages_t)).scalar_one(),
                "last_recorded": conn.execute(select(func.max(messages_t.c.received_at))).scalar_one(),
            }

    @staticmethod
    def _daemon_view(r: Any, now: float, late_after_s: float, down_after_s: float) -> dict[str, Any]:
        age = now - r["last_seen"]
        if r["state"] == "OFF" or age > down_after_s:
            availability = "down"
        elif age > late_after_s:
            availability = "late"
        else:
            availability = "up"
        return {"daemon": r["ident"], "host": r["host"], "state": r["state"], "target": r["target"],
                "availability": availability, "last_seen_s": round(age, 1), "status": r["status"]}

    @staticmethod
    def _images_view(conn: Connection, limit: int) -> list[dict[str, Any]]:
        rows = list(conn.execute(select(images_t).order_by(images_t.c.updated_at.desc()).limit(limit)).mappings())
        out = []
        for r in rows:
            files = list(conn.execute(select(files_t).where(files_t.c.image == r["image"])).mappings())
            expected = r["sensors_expected"] or len(files) or None

            def done(column: str) -> int:
                return sum(1 for f in files if f[column] is not None)

            def last(column: str) -> float | None:
                values = [f[column] for f in files if f[column] is not None]
                return max(values) if values and expected and len(values) >= expected else None

            counts = {"delivered": done("delivered_at"), "handed off": done("oods_requested_at"),
                      "in OODS": done("oods_at"), "in archive": done("archive_at"), "in Rucio": done("rucio_at")}
            stage = "seen"
            for name, column in (("started", "started_at"), ("readout", "readout_at"), ("header", "header_at")):
                if r[column] is not None:
                    stage = name
            for name, n in counts.items():
                if expected and n >= expected:
                    stage = name
            t0 = r["end_readout_at"] or r["readout_at"]
            in_oods = last("oods_at")
            out.append({
                "image": r["image"], "stage": stage, "sensors": expected, "missing": r["missing"],
                "header_partial": r["header_partial"], **{f"n_{k.replace(' ', '_')}": v for k, v in counts.items()},
                "failed": sum(1 for f in files if any((f[f"{p}_status"] or 0) != 0 for p in ("oods", "archive", "rucio"))),
                "readout_to_oods_s": round(in_oods - t0, 3) if in_oods and t0 else None,
                "readout_to_archive_s": round(last("archive_at") - t0, 3) if last("archive_at") and t0 else None,
                "updated": dt.datetime.fromtimestamp(r["updated_at"], dt.timezone.utc).isoformat(),
            })
        return out

    @staticmethod
    def _event_view(r: Any) -> dict[str, Any]:
        data = json.loads(r["body"]).get("data", {})
        return {"type": r["type"], "time": dt.datetime.fromtimestamp(r["received_at"], dt.timezone.utc).isoformat(),
                "sender": r["sender"], "severity": data.get("severity", "panic" if r["type"] == "PANIC" else ""),
                "message": str(data.get("message", ""))[:500]}
