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
from typing import Any, Awaitable, Callable, Sequence

from fitsflow.core.handoff import fsync_dir, link_into
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.ingest.verify import (STATUS_INGEST_FAILURE, STATUS_OK, BadFile, Inspected, inspect)
from fitsflow.core.faults import is_environmental
from fitsflow.core.errors import UnsafePath
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


@dataclass(frozen=True)
class Staged:
    """A staged file to ingest, with what its INGEST_REQUEST carried (verify.inspect)."""
    path: Path
    checksum: str | None = None
    verified: str | None = None
    adler32: str | None = None


@dataclass(frozen=True)
class _Placing:
    """A verified staged file and its place in the repository (``new``: not registered)."""
    path: Path
    target: Path
    info: Inspected
    new: bool


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
        outcome = (await self.ingest_many([Staged(path, expected_checksum, verified, adler32)]))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def ingest_many(self, files: Sequence[Staged]) -> list[int | Exception]:
        """Ingest staged paths together (one INGEST_REQUEST's): each is verified on its own —
        a bad one is quarantined, a path outside staging fails alone with UnsafePath — and
        the good ones are placed in one go: one fsync per directory and one registry
        transaction for all, where each file alone cost its own (the registry's write lock
        was the ingest's largest wait). Then each is announced. Returns, in order, each
        path's announced status (-1 if it is gone) or the exception it met."""
        loop = asyncio.get_running_loop()
        outcomes: list[int | Exception | None] = [None] * len(files)
        mine: dict[int, tuple[Path, asyncio.Future[int]]] = {}
        theirs: dict[int, asyncio.Future[int]] = {}
        for i, f in enumerate(files):
            try:
                path = entry_within(self.staging, f.path)
            except UnsafePath as exc:
                outcomes[i] = exc
                continue
            running = self._busy.get(path)
            if running is not None:  # another trigger (or this batch) has it: its result is ours
                theirs[i] = running
                continue
            fut: asyncio.Future[int] = loop.create_future()
            self._busy[path] = fut
            mine[i] = (path, fut)
        try:
            results = await self._ingest_together({i: (path, files[i]) for i, (path, _) in mine.items()})
        except BaseException as exc:  # cancelled: whoever waits on these paths hears it
            for path, fut in mine.values():
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters re-raise it, nobody logs it twice
                del self._busy[path]
            raise
        faults = [f"{mine[i][0]}: {r}" for i, r in results.items() if isinstance(r, Exception) and is_environmental(r)]
        if faults:
            self.storage_failed("; ".join(faults))
        elif any(not isinstance(r, Exception) for r in results.values()):
            self.storage_ok()
        for i, (path, fut) in mine.items():
            result = results[i]
            if isinstance(result, Exception):
                fut.set_exception(result)
                fut.exception()
            else:
                fut.set_result(result)
            del self._busy[path]
            outcomes[i] = result
        for i, running in theirs.items():
            try:
                outcomes[i] = await asyncio.shield(running)
            except Exception as exc:  # noqa: BLE001 - that path's outcome, reported as its own
                outcomes[i] = exc
        assert all(o is not None for o in outcomes)  # every index is set above
        return outcomes  # type: ignore[return-value]

    async def _ingest_together(self, files: dict[int, tuple[Path, Staged]]) -> dict[int, int | Exception]:
        """Verify each file, place the good ones together, announce them: outcome per index."""
        keys = list(files)
        prepared = await asyncio.gather(*(self._prepare(*files[k]) for k in keys), return_exceptions=True)
        results: dict[int, int | Exception] = {}
        placing: dict[int, _Placing] = {}
        for k, p in zip(keys, prepared):
            if isinstance(p, _Placing):
                placing[k] = p
            elif isinstance(p, BaseException) and not isinstance(p, Exception):
                raise p  # cancelled
            else:
                results[k] = p
        if not placing:
            return results
        errors = await asyncio.to_thread(self._place_all, list(placing.values()))
        placed = []
        for (k, p), error in zip(placing.items(), errors):
            if error is not None:
                results[k] = error
                continue
            placed.append(k)
            if p.new:
                self.stats.ingested += 1
            else:
                self.stats.duplicates += 1
        announced = await asyncio.gather(*(self.announce(STATUS_OK, "ingested" if placing[k].new else "already ingested",
                                                         str(placing[k].target), placing[k].info.data_id,
                                                         placing[k].info.data_id["image"]) for k in placed),
                                         return_exceptions=True)
        for k, outcome in zip(placed, announced):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
            results[k] = outcome if isinstance(outcome, Exception) else STATUS_OK
        return results

    async def _prepare(self, path: Path, f: Staged) -> int | _Placing:
        """Verify one staged file: where it goes, or its final status (-1: gone; quarantined)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return -1  # ingested meanwhile by another trigger
        if not stat.S_ISREG(st.st_mode):  # never followed, never retried: quarantined once
            await self._quarantine(path, STATUS_INGEST_FAILURE, f"not a regular file: {_kind(path, st)}", None)
            return STATUS_INGEST_FAILURE
        try:
            info = await asyncio.to_thread(inspect, path, f.checksum, f.verified, f.adler32)
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
        target = inside(self.repo, self.placement(info.data_id, path.name))
        return _Placing(path, target, info, existing is None)

    def _place_all(self, placing: list[_Placing]) -> list[Exception | None]:
        """Link each file into the repository, fsync each directory once, register the new
        ones in one transaction, unlink the staged names, fsync their directories: the same
        order of steps as for one file, so a crash between any two is finished by the next
        attempt. Returns each file's error (None: placed). A link is one file's failure; a
        failing fsync or registry is every linked file's."""
        errors: list[Exception | None] = [None] * len(placing)
        for n, p in enumerate(placing):
            try:
                self._link(p.path, p.target)
            except OSError as exc:
                errors[n] = exc
        linked = [n for n, e in enumerate(errors) if e is None]
        try:
            for directory in dict.fromkeys(placing[n].target.parent for n in linked):
                fsync_dir(directory)
            self.registry.add_many([(p.info.data_id, str(p.target.relative_to(self.repo)), p.info.size,
                                     p.info.checksum, p.info.adler32) for p in (placing[n] for n in linked) if p.new])
        except Exception as exc:  # noqa: BLE001 - the machine or the database: every linked file waits
            for n in linked:
                errors[n] = exc
            return errors
        for n in linked:
            try:
                os.unlink(placing[n].path)
            except FileNotFoundError:
                pass  # gone already: placed and registered, which is all that matters
            except OSError as exc:
                errors[n] = exc
        try:
            for directory in dict.fromkeys(placing[n].path.parent for n in linked if errors[n] is None):
                fsync_dir(directory)
        except OSError as exc:
            for n in linked:
                errors[n] = errors[n] or exc
        return errors

    def _link(self, path: Path, target: Path) -> None:
        for attempt in range(3):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                link_into(path, target)  # idempotent: the same file there already is fine
                return
            except FileNotFoundError:
                # The expiry cleaner removes empty repository directories (not recent ones):
                # it may take one between the mkdirs of its parents or before the link lands
                # in it (seen in CI). Make them again.
                if attempt == 2 or not path.exists():
                    raise

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

