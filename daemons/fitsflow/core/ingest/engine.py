"""The ingester: a staged file → verified → placed in the repository → registered → announced.

Each path is handled by one task at a time, whatever found it (inotify, a scan, an
INGEST_REQUEST): a second trigger for a path in progress waits for the first one's result.
Every step is idempotent, so a crash between any two is finished by the next attempt:

1. verify and read the data ID (``verify.inspect``); a bad file goes to quarantine, keeping
   its path relative to staging, and is announced with status 1 or 2;
2. hard-link into the repository (``link_into``: "already there" if it is the same file);
3. register the data ID (a second file for a registered data ID: same checksum → a duplicate,
   nothing changes; another checksum → a conflict, quarantined);
4. unlink the staged name; announce status 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from fitsflow.core.handoff import fsync_dir, link_into
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.ingest.verify import (STATUS_INGEST_FAILURE, STATUS_OK, BadFile, Inspected, inspect)
from fitsflow.core.faults import is_environmental
from fitsflow.core.layout import IMAGE_NAME, entry_within, inside
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)

#: announce(status, description, path, data_id or None, image)
Announce = Callable[[int, str, str, "dict[str, Any] | None", str], Awaitable[None]]
#: repository path of a file, relative to the repository root, from its data ID and name
Placement = Callable[[dict[str, Any], str], str]


@dataclass
class IngestStats:
    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: int = 0
    #: files whose CRC-32 was not read again (the inode the controller checked)
    trusted: int = 0


#: How long a file found by inotify or a rescan waits for its announcement (see Ingester.found).
FOUND_DELAY_S = 2.0


class Ingester:
    """Role: consumes paths found in ``staging``; ``concurrency`` files at once."""

    def __init__(self, *, name: str, staging: Path, repo: Path, quarantine: Path, registry: Registry,
                 placement: Placement, announce: Announce, spawn: Spawn, concurrency: int = 2,
                 storage_failed: Callable[[str], object] = lambda detail: None,
                 storage_ok: Callable[[], None] = lambda: None) -> None:
        """``storage_failed(detail)`` / ``storage_ok()``: a file could not be ingested because of
        the machine (full, unwritable) / one was (the daemon's fault episode opens and closes)."""
        self._spawn = spawn
        self.storage_failed = storage_failed
        self.storage_ok = storage_ok
        self.name = name
        self.staging, self.repo, self.quarantine = Path(staging), Path(repo), Path(quarantine)
        self.registry = registry
        self.placement = placement
        self.announce = announce
        self.concurrency = concurrency
        self.stats = IngestStats()
        self._queue: asyncio.Queue[Path] = asyncio.Queue()
        self._queued: set[Path] = set()
        self._busy: dict[Path, asyncio.Future[int]] = {}
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._workers = [self._spawn(self._worker(), f"{self.name} ingest {i}", forever=True)
                         for i in range(self.concurrency)]

    async def stop(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    @property
    def busy_paths(self) -> set[Path]:
        return set(self._busy)

    def found(self, path: Path) -> None:
        """A trigger saw ``path`` (called from the watcher; never blocks). Queued after
        FOUND_DELAY_S: the controller's INGEST_REQUEST for a file it just linked usually
        follows within milliseconds and carries the CRC-32 that spares the FITS checksum pass
        (verify.inspect); the path is gone by then and the delayed entry does nothing."""
        if path not in self._queued:
            self._queued.add(path)
            asyncio.get_running_loop().call_later(FOUND_DELAY_S, self._queue.put_nowait, path)

    async def _worker(self) -> None:
        while True:
            path = await self._queue.get()
            self._queued.discard(path)
            try:
                await self.ingest(path)
            except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the others
                self.stats.errors += 1
                if is_environmental(exc):  # one ALARM episode (storage_failed), not a traceback per file
                    _log.debug("%s: ingesting %s waits: %s", self.name, path, exc)
                else:
                    _log.exception("%s: ingesting %s failed; the next rescan retries it", self.name, path)

    async def ingest(self, path: Path, expected_checksum: str | None = None, verified: str | None = None,
                     adler32: str | None = None) -> int:
        """Ingest one staged path; returns the announced status (or -1 if the path is gone).
        ``expected_checksum``/``verified``/``adler32``: the announced CRC-32, the identity of
        the file the controller checked it for (verify.inspect) and the writer's Adler-32.
        Raises UnsafePath for a path outside the staging tree."""
        path = entry_within(self.staging, path)
        running = self._busy.get(path)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._busy[path] = fut
        try:
            try:
                status = await self._ingest(path, expected_checksum, verified, adler32)
            except Exception as exc:
                if is_environmental(exc):
                    self.storage_failed(f"{path}: {exc}")
                raise
            self.storage_ok()
            fut.set_result(status)
            return status
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs it twice
            raise
        finally:
            del self._busy[path]

    async def _ingest(self, path: Path, expected_checksum: str | None, verified: str | None = None,
                      adler32: str | None = None) -> int:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return -1  # ingested meanwhile by another trigger
        if not stat.S_ISREG(st.st_mode):  # never followed, never retried: quarantined once
            await self._quarantine(path, STATUS_INGEST_FAILURE, f"not a regular file: {_kind(path, st)}", None)
            return STATUS_INGEST_FAILURE
        try:
            info = await asyncio.to_thread(inspect, path, expected_checksum, verified, adler32)
            self.stats.trusted += info.trusted
        except BadFile as bad:
            await self._quarantine(path, bad.status, bad.reason, None)
            return bad.status
        existing = await asyncio.to_thread(self.registry.find, info.data_id)
        if existing is not None and existing.checksum != info.checksum:
            await self._quarantine(path, STATUS_INGEST_FAILURE,
                                   f"conflict: {existing.path} is registered for this data ID with checksum "
                                   f"{existing.checksum}, this file has {info.checksum}", info.data_id)
            return STATUS_INGEST_FAILURE
        rel = self.placement(info.data_id, path.name)
        target = inside(self.repo, rel)
        await asyncio.to_thread(self._place, path, target, info, existing is None)
        if existing is None:
            self.stats.ingested += 1
        else:
            self.stats.duplicates += 1
        await self.announce(STATUS_OK, "ingested" if existing is None else "already ingested", str(target),
                            info.data_id, info.data_id["image"])
        return STATUS_OK

    def _place(self, path: Path, target: Path, info: Inspected, new: bool) -> None:
        for attempt in range(3):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                link_into(path, target)  # idempotent: the same file there already is fine
                break
            except FileNotFoundError:
                # The expiry cleaner removes empty repository directories: it may take the one
                # just made before the link lands in it (seen in CI). Make it again.
                if attempt == 2 or not path.exists():
                    raise
        fsync_dir(target.parent)
        if new:
            self.registry.add(info.data_id, str(target.relative_to(self.repo)), info.size, info.checksum, info.adler32)
        os.unlink(path)
        fsync_dir(path.parent)

    async def _quarantine(self, path: Path, status: int, reason: str, data_id: dict[str, Any] | None) -> None:
        rel = path.relative_to(self.staging)
        target = self.quarantine / rel
        await asyncio.to_thread(_move, path, target)
        self.stats.quarantined += 1
        _log.error("%s: %s quarantined to %s: %s", self.name, rel, target, reason)
        image = (data_id or {}).get("image") or _image_from_name(path.name)
        await self.announce(status, reason, str(target), data_id, image)


def _kind(path: Path, st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"a symbolic link to {os.readlink(path)}"
        except OSError:
            return "a symbolic link"
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(st.st_mode):
            return name
    return f"file type {stat.S_IFMT(st.st_mode):o}"


def _move(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):  # something quarantined before under this name: keep both
        n = 1
        while os.path.lexists(target.with_name(f"{target.name}.{n}")):
            n += 1
        target = target.with_name(f"{target.name}.{n}")
    os.rename(path, target)
    fsync_dir(target.parent)
    fsync_dir(path.parent)


def _image_from_name(name: str) -> str:
    """Best guess of the image of a file too broken to read: ``<instr>_<image>_<raft>_<sensor>.fits``."""
    parts = name.rsplit(".", 1)[0].split("_")
    guess = "_".join(parts[1:-2]) if len(parts) > 3 else ""
    return guess if IMAGE_NAME.fullmatch(guess) else "unknown"

