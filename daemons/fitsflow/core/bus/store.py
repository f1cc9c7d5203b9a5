"""The bus's durable local state, one SQLite file per daemon instance (under site.state_dir).

- **outbox**: every message from the moment it is sent until its broker's receipt (write-ahead),
  in send order; those a broker could not take yet stay until the flusher sends them. A
  message is in the outbox only once SQLite has fsynced it (``synchronous=FULL``), so
  "accepted by ``send``" means "on a broker or on this disk" at every instant.
- **refused**: messages the broker refused (an identity may not write that destination).
  Kept, not retried in a loop; put back into the outbox at the next start, so they flow
  once an operator has fixed the broker's authorization map and restarted the daemon.
- **processed**: ids of messages whose handler finished, per subscription, so a redelivery
  (which after a broker crash carries no ``redelivered`` flag) is acked without a second run.
- **attempts**: handler failures per message, so the dead-letter limit holds across
  restarts of a daemon that a poison message keeps crashing.

Only the bus's event-loop thread uses a store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    headers TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    seq INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    headers TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS processed (
    subscription TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    done_at REAL NOT NULL,
    PRIMARY KEY (subscription, msg_id)
);
CREATE INDEX IF NOT EXISTS processed_age ON processed (done_at);
CREATE TABLE IF NOT EXISTS attempts (
    subscription TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (subscription, msg_id)
);
"""


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    destination: str
    headers: Mapping[str, str]
    body: str


class BusStore:
    """See the module docstring."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # Two connections to one file: the outbox commits with synchronous=FULL (an accepted
        # message must survive a power cut); processed ids and attempts with NORMAL (losing
        # the last few only means a redelivered message is handled again, which handlers
        # tolerate by design).
        self._db = self._connect("FULL")
        self._db.executescript(_SCHEMA)
        self._seen = self._connect("NORMAL")

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        return db

    def close(self) -> None:
        self._seen.close()
        self._db.close()

    # -- outbox ------------------------------------------------------------------------

    def outbox_put(self, destination: str, headers: Mapping[str, str], body: str) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (destination, headers, body, queued_at) VALUES (?, ?, ?, ?)",
            (destination, json.dumps(dict(headers)), body, time.time()))
        return int(cur.lastrowid)

    def outbox_head(self, limit: int = 100) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT seq, destination, headers, body FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [OutboxEntry(seq, dest, json.loads(h), body) for seq, dest, h, body in rows]

    def outbox_remove(self, seq: int) -> None:
        """A message the broker confirmed leaves the outbox. Not fsynced (the NORMAL
        connection): if a power cut undoes the removal, the message is sent once more and
        its consumers drop the copy by id."""
        self._seen.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def refuse(self, destination: str, headers: Mapping[str, str], body: str, reason: str,
               seq: int | None = None) -> None:
        """Keep a message the broker refused; ``seq`` moves it out of the outbox."""
        with self._db:
            self._db.execute("BEGIN")
            if seq is not None:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._db.execute("INSERT INTO refused (destination, headers, body, queued_at, reason) "
                             "VALUES (?, ?, ?, ?, ?)", (destination, json.dumps(dict(headers)), body, time.time(), reason))

    def refused_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])

    def requeue_refused(self) -> int:
        """Move every refused message back to the end of the outbox; returns how many."""
        with self._db:
            self._db.execute("BEGIN")
            n = self._db.execute("INSERT INTO outbox (destination, headers, body, queued_at) "
                                 "SELECT destination, headers, body, queued_at FROM refused ORDER BY seq").rowcount
            self._db.execute("DELETE FROM refused")
        return int(n)

    # -- processed ids -----------------------------------------------------------------

    def is_processed(self, subscription: str, msg_id: str) -> bool:
        row = self._seen.execute("SELECT 1 FROM processed WHERE subscription = ? AND msg_id = ?",
                               (subscription, msg_id)).fetchone()
        return row is not None

    def mark_processed(self, subscription: str, msg_id: str) -> None:
        with self._seen:
            self._seen.execute("BEGIN")
            self._seen.execute("INSERT OR IGNORE INTO processed VALUES (?, ?, ?)", (subscription, msg_id, time.time()))
            self._seen.execute("DELETE FROM attempts WHERE subscription = ? AND msg_id = ?", (subscription, msg_id))

    def forget_processed(self, older_than_s: float) -> int:
        """Drop processed ids older than this; a redelivery after that long is not expected."""
        cur = self._seen.execute("DELETE FROM processed WHERE done_at < ?", (time.time() - older_than_s,))
        return cur.rowcount

    # -- attempts ----------------------------------------------------------------------

    def record_failure(self, subscription: str, msg_id: str, error: str) -> int:
        """Count one more failed attempt; returns the count so far."""
        self._seen.execute(
            "INSERT INTO attempts VALUES (?, ?, 1, ?) ON CONFLICT (subscription, msg_id) "
            "DO UPDATE SET count = count + 1, last_error = excluded.last_error",
            (subscription, msg_id, error[:4000]))
        return int(self._seen.execute("SELECT count FROM attempts WHERE subscription = ? AND msg_id = ?",
                                    (subscription, msg_id)).fetchone()[0])
