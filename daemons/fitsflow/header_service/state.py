"""The header service's state on disk (site.state_dir/header-service-<instance>/state.sqlite):
one record per open image and the recent telemetry history, so a restart in the middle of an
image resumes it with what was already collected.

SQLite in WAL mode with ``synchronous=FULL``: every change is one append to the log and one
fsync, durable before the message that caused it is acknowledged. (The first version wrote a
JSON file per change, temp + fsync + rename + directory fsync, and rewrote the whole telemetry
history on every sample: 2.4 headers/s in a backlog; see bench/header.py.) Callers use it from
the event loop; the writes run in worker threads, one at a time on the connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fitsflow.core.layout import check_name
from fitsflow.core.poison import POISON_ERRORS, set_aside_row
from fitsflow.header_service.builder import ImageRecord, Sample, add_sample, parse_time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    image TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    t REAL NOT NULL,
    sample TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_topic_t ON samples (topic, t);
"""


def _record(text: str) -> ImageRecord:
    """A record from its JSON, checked as the handlers would have checked its message."""
    rec = ImageRecord(**json.loads(text))
    check_name(rec.image)
    for event, timestamp in rec.events.items():
        parse_time(timestamp)  # the deadlines are computed from these
    float(rec.exptime)
    return rec


def _row(rec: ImageRecord) -> tuple[str, str]:
    """A record as its database row (image, JSON)."""
    return check_name(rec.image), json.dumps(asdict(rec))


class HeaderState:
    def __init__(self, directory: Path, history_per_topic: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history_per_topic = history_per_topic
        self.records: dict[str, ImageRecord] = {}
        self.history: dict[str, list[Sample]] = {}
        #: What could not be read at start (set aside; the daemon raises an ALERT for each).
        self.rejected: list[str] = []
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.dir / "state.sqlite", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._import_json_state()
        self._load()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _load(self) -> None:
        """Read the state; a row that does not make a valid record or sample is set aside
        (core.poison) and the service starts with the rest."""
        for image, text in list(self._db.execute("SELECT image, record FROM records")):
            try:
                rec = _record(text)
            except POISON_ERRORS as exc:
                set_aside_row(self.dir, "record", {"image": image, "record": text}, f"{type(exc).__name__}: {exc}",
                              self.rejected)
                self._db.execute("DELETE FROM records WHERE image = ?", (image,))
                continue
            self.records[rec.image] = rec
        for seq, topic, text in list(self._db.execute("SELECT seq, topic, sample FROM samples ORDER BY seq")):
            try:
                sample = Sample(**json.loads(text))
            except POISON_ERRORS as exc:
                set_aside_row(self.dir, "sample", {"topic": topic, "sample": text}, f"{type(exc).__name__}: {exc}",
                              self.rejected)
                self._db.execute("DELETE FROM samples WHERE seq = ?", (seq,))
                continue
            add_sample(self.history.setdefault(topic, []), sample, self.history_per_topic)

    def _import_json_state(self) -> None:
        """Take over the state of the first version (a JSON file per open image and one for
        the telemetry history), so an upgrade in the middle of the night loses nothing."""
        old_images = sorted((self.dir / "images").glob("*.json"))
        old_history = self.dir / "telemetry.json"
        if not old_images and not old_history.exists():
            return
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for path in old_images:
                rec = ImageRecord(**json.loads(path.read_text()))
                self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?)", _row(rec))
            if old_history.exists():
                for topic, samples in json.loads(old_history.read_text()).items():
                    for s in samples:
                        sample = Sample(**s)
                        self._db.execute("INSERT INTO samples (topic, t, sample) VALUES (?, ?, ?)",
                                         (topic, sample.t, json.dumps(s)))
        for path in old_images:
            path.unlink()
        old_history.unlink(missing_ok=True)

    def record(self, image: str) -> ImageRecord:
        check_name(image)
        return self.records.setdefault(image, ImageRecord(image=image))

    async def save(self, rec: ImageRecord) -> None:
        """Persist ``rec``: encoded here, in the event loop where records change (encoding in the
        writer thread raced with the next message's changes), written in a thread."""
        await asyncio.to_thread(self._write, "INSERT OR REPLACE INTO records VALUES (?, ?)", [_row(rec)])

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    async def set_aside(self, rec: ImageRecord, reason: str) -> None:
        """A record found unusable while running: kept under rejected/ with the reason, forgotten."""
        set_aside_row(self.dir, "record", asdict(rec), reason, self.rejected)
        await self.forget(rec.image)

    async def forget(self, image: str) -> None:
        self.records.pop(image, None)
        await asyncio.to_thread(self._write, "DELETE FROM records WHERE image = ?", [(image,)])

    def add_sample(self, topic: str, sample: Sample) -> None:
        """Add to the in-memory history (at once, in message order: call from the event loop)."""
        add_sample(self.history.setdefault(topic, []), sample, self.history_per_topic)

    async def save_sample(self, topic: str, sample: Sample, changed: list[ImageRecord]) -> None:
        """Persist a sample and the records it completed, in one transaction (one fsync), and
        drop the topic's samples beyond the history's length. Encoded in the event loop, like
        :meth:`save`."""
        text = json.dumps({"timestamp": sample.timestamp, "values": sample.values})
        records = [_row(rec) for rec in changed]
        await asyncio.to_thread(self._write_sample, topic, sample.t, text, records)

    def _write_sample(self, topic: str, t: float, text: str, records: list[tuple[str, str]]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO samples (topic, t, sample) VALUES (?, ?, ?)", (topic, t, text))
            self._db.execute("DELETE FROM samples WHERE topic = ? AND seq NOT IN "
                             "(SELECT seq FROM samples WHERE topic = ? ORDER BY t DESC LIMIT ?)",
                             (topic, topic, self.history_per_topic))
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)", records)
