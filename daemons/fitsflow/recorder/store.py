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
from typing import Any

from sqlalchemy import (Boolean, Column, Float, Integer, MetaData, String, Table, Text, delete, func,
                        insert, select, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

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
STAGES = ("started", "readout", "header", "delivered", "handed off", "in OODS", "in archive")


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

    def close(self) -> None:
        self.engine.dispose()

    # -- writing -----------------------------------------------------------------------

    def record(self, msg: Message, destination: str, now: float) -> Recorded:
        """Persist ``msg`` and apply it to the life cycle; a second call with the same
        message changes nothing."""
        # One transaction: if applying fails, the message is not recorded either, and the
        # handler's retry does both again.
        with self.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(insert(messages_t).values(
                        msg_id=msg.id, type=msg.type, destination=destination, image=msg.image, sender=msg.sender,
                        sent=msg.sent, received_at=now, body=msg.encode()))
            except IntegrityError:
                return Recorded(new=False)
            return Recorded(new=True, stage=self._apply(conn, msg, destination, now))

    def _apply(self, conn: Connection, msg: Message, destination: str, now: float) -> str | None:
        d = dict(msg.data)
        t = msg.type
        if t == "DAEMON_STATE":
            self._daemon(conn, d, now)
            return None
        if t == "FORWARDER_HEARTBEAT":
            self._touch_daemon(conn, str(d.get("forwarder", msg.sender)), now)
            return None
        if not msg.image:
            return None
        image = msg.image
        self._ensure_image(conn, image, now)
        if t == "START_INTEGRATION":
            self._image_first(conn, image, now, started_at=now, group_id=str(d.get("group", "")),
                              sensors_expected=len(d.get("sensors") or []) or None)
            return "started"
        if t == "END_READOUT":
            self._image_first(conn, image, now, end_readout_at=now)
            return None
        if t == "READOUT_COMPLETE":
            self._image_first(conn, image, now, readout_at=now)
            conn.execute(update(images_t).where(images_t.c.image == image)
                         .values(missing=len(d.get("missing") or [])))
            return "readout"
        if t == "HEADER_READY":
            self._image_first(conn, image, now, header_at=now, header_partial=bool(d.get("partial")))
            return "header"
        sensor = _sensor(d)
        if sensor is None:
            return None
        if t == "FILE_DELIVERED":
            self._file_first(conn, image, sensor, delivered_at=now)
            return "delivered"
        if t == "INGEST_REQUEST":
            column = "archive_requested_at" if ".archive." in destination else "oods_requested_at"
            self._file_first(conn, image, sensor, **{column: now})
            return "handed off"
        if t in ("IMAGE_IN_OODS", "IMAGE_IN_ARCHIVE"):
            prefix = "oods" if t == "IMAGE_IN_OODS" else "archive"
            self._file_first(conn, image, sensor, **{f"{prefix}_at": now})
            conn.execute(update(files_t).where(files_t.c.image == image, files_t.c.sensor == sensor)
                         .values(**{f"{prefix}_status": int(d.get("status", 1))}))
            return "in OODS" if prefix == "oods" else "in archive"
        return None

    def _ensure_image(self, conn: Connection, image: str, now: float) -> None:
        try:
            with conn.begin_nested():
                conn.execute(insert(images_t).values(image=image, updated_at=now, missing=0))
        except IntegrityError:
            conn.execute(update(images_t).where(images_t.c.image == image).values(updated_at=now))

    def _image_first(self, conn: Connection, image: str, now: float, **values: Any) -> None:
        conn.execute(update(images_t).where(images_t.c.image == image).values(
            updated_at=now, **{k: func.coalesce(images_t.c[k], v) for k, v in values.items()}))

    def _file_first(self, conn: Connection, image: str, sensor: str, **values: float) -> None:
        try:
            with conn.begin_nested():
                conn.execute(insert(files_t).values(image=image, sensor=sensor, **values))
        except IntegrityError:
            conn.execute(update(files_t).where(files_t.c.image == image, files_t.c.sensor == sensor)
                         .values(**{k: func.coalesce(files_t.c[k], v) for k, v in values.items()}))

    def _daemon(self, conn: Connection, d: dict[str, Any], now: float) -> None:
        ident = str(d["daemon"])
        values = dict(host=str(d.get("host", "")), state=str(d.get("state", "")),
                      target=str(d.get("target") or d.get("state", "")), status=str(d.get("status", ""))[:2000],
                      last_seen=now)
        if conn.execute(update(daemons_t).where(daemons_t.c.ident == ident).values(**values)).rowcount == 0:
            conn.execute(insert(daemons_t).values(ident=ident, first_seen=now, **values))

    def _touch_daemon(self, conn: Connection, ident: str, now: float) -> None:
        """A forwarder heartbeat counts as a sign of life of its forwarder daemon."""
        conn.execute(update(daemons_t).where(daemons_t.c.ident == f"forwarder@{ident}").values(last_seen=now))

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
                      "in OODS": done("oods_at"), "in archive": done("archive_at")}
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
                "failed": sum(1 for f in files if (f["oods_status"] or 0) != 0 or (f["archive_status"] or 0) != 0),
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
