"""Role: delivered files handed off. FILE_DELIVERED → the file verified and its hand-off
recorded (handoff.py: verified → linked → unlinked → requested, each step committed), a
re-delivery of a sensor already handed off dropped or set aside; hand-offs stopped by a
fault of the machine resumed at start and then periodically; catch-up's re-drive of the
ingests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from fitsflow.archive_controller.book import Book, HandOffRow
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.archive_controller.handoff import HandOffError, redelivered_copy, run_handoff, verify
from fitsflow.core import schemas
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import PathsConfig
from fitsflow.core.errors import Reject, Requeue, Retry, UnsafePath
from fitsflow.core.failpoints import failpoint
from fitsflow.core.faults import FaultEpisodes, is_environmental, retry_delay
from fitsflow.core.layout import sensor_file_name, within
from fitsflow.core.messages import Message, destination_of, make
from fitsflow.core.schemas import MAX_FILES
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)
HANDOFF_FAULT = "hand-off"


@dataclass(frozen=True)
class _Delivery:
    """A delivered file whose path was accepted: its hand-off key and where it is."""

    key: str  # image/raft_sensor
    image: str
    day: str  # obs_day: the staging subdirectory
    src: Path
    file: schemas.DeliveredFile
    data_id: dict[str, Any]


class Deliveries:
    def __init__(self, cfg: ArchiveControllerConfig, paths: PathsConfig, bus: MessageBus, book: Book, *,
                 ident: str, host: str, faults: FaultEpisodes, stage: Callable[[str, str], Any],
                 spawn: Spawn) -> None:
        """``stage(name, text)``: the daemon's latency histogram of a stage (core.metrics)."""
        self.cfg = cfg
        self.incoming = paths.incoming
        #: staging directory by hand-off target: oods, archive, then paths.extra_staging
        self.targets = paths.handoff_targets()
        self.quarantine = paths.quarantine
        self.bus = bus
        self.book = book
        self.ident = ident
        self.host = host
        self.faults = faults
        self._stage = stage
        self._spawn = spawn
        #: hand-offs completed since start
        self.done = 0
        #: delivered files whose checksum was trusted (written here, unchanged) / read in full
        self.checksums_trusted = self.checksums_read = 0
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        await self.resume()  # a restart: finish them first
        self._spawn(self._resume_loop(), "hand-off resumer", forever=True)

    async def stop(self) -> None:
        pass  # its task belongs to the daemon's supervisor

    def status(self) -> str:
        return (f"{self.done} hand-offs ({self.checksums_read} files read to verify, {self.checksums_trusted} "
                "written here and trusted)")

    async def on_file_delivered(self, msg: Message) -> None:
        """Hand off the files of one delivery together. Each file keeps its own hand-off (its
        own row and retries): a file refused, replaced or unlinkable does not hold the others
        back; the message is retried or dead-lettered for it after the others are done."""
        body: schemas.FileDelivered = msg.body  # names and types checked at the door (core.schemas)
        deliveries: list[_Delivery] = []
        refused: list[str] = []
        for f in body.files:
            try:
                deliveries.append(self._accept(f))
            except UnsafePath as exc:
                refused.append(f"{f.path!r}: {exc}")
                await self.error(f"FILE_DELIVERED {f.path!r} refused: {exc}")
        keys = [d.key for d in deliveries]
        local = body.written_on == self.host and self.cfg.trust_local_writes
        try:
            replaced = await self._record_deliveries(deliveries, local)
        except (OSError, SQLAlchemyError) as exc:
            if not is_environmental(exc):
                raise
            n = self.faults.report(HANDOFF_FAULT, f"{msg.image} ({', '.join(keys)}): {exc}")
            raise Requeue(f"{msg.image}: {exc}", delay=retry_delay(n)) from None  # waits out the fault, never dead
        try:
            await self.advance(keys)
        finally:
            for key in keys:
                lock = self._locks.get(key)
                if lock is not None and not lock.locked():
                    del self._locks[key]  # done: the book remembers it
        if replaced:
            # After a reassignment two forwarders deliver the same sensor under one name: the
            # later file may replace the earlier before its announcement is read. The other
            # announcement hands the file off; this one then finds the sensor done. A file
            # that stays wrong is dead-lettered after max_attempts (a panic).
            raise Retry("; ".join(replaced) + "; another delivery of these sensors may have replaced the files")
        if refused:
            raise Reject(f"FILE_DELIVERED refused: {'; '.join(refused)}")

    def _accept(self, f: schemas.DeliveredFile) -> _Delivery:
        """A delivered file's hand-off key and incoming path, if its path is ours and names
        its data ID; raises UnsafePath otherwise."""
        data_id = msgspec.to_builtins(f.data_id)
        image, raft, sensor = f.data_id.image, f.data_id.raft, f.data_id.sensor
        if f.data_id.obs_day is None or f.data_id.instrument is None:
            raise UnsafePath(f"data ID {data_id} lacks its obs_day or instrument")
        src = within(self.incoming, f.path)  # the path is the sender's: it must be ours
        if src.parent != self.incoming.resolve():
            raise UnsafePath(f"{src} is not directly in {self.incoming}")
        if src.name != sensor_file_name(f.data_id.instrument, image, raft, sensor):
            raise UnsafePath(f"file name {src.name} does not match data ID {data_id}")
        return _Delivery(f"{image}/{raft}_{sensor}", image, f.data_id.obs_day, src, f, data_id)

    async def _record_deliveries(self, deliveries: list[_Delivery], local: bool) -> list[str]:
        """Verify the delivered files and record their hand-offs in one transaction; drop
        re-deliveries of sensors handed off already. Returns why files could not be verified."""
        keys = [d.key for d in deliveries]
        async with self._locked(keys):
            known = await asyncio.to_thread(self.book.handoffs, keys)
            fresh = [d for d in deliveries if d.key not in known]
            checked = await asyncio.to_thread(self._verify, fresh, local)
            rows, replaced = [], []
            for d, inode in zip(fresh, checked):
                if isinstance(inode, HandOffError):
                    replaced.append(f"{d.key}: {inode}")
                    continue
                if self.cfg.verify_checksum:
                    trusted = local and inode == d.file.identity
                    self.checksums_trusted += trusted
                    self.checksums_read += not trusted
                staged = {target: str(staging / d.day / d.src.name) for target, staging in self.targets.items()}
                oods, archive = staged.pop("oods"), staged.pop("archive")
                rows.append(HandOffRow(d.key, d.image, str(d.src), oods, archive, d.file.size, d.file.checksum, inode,
                                       d.data_id, "verified", staged, d.file.adler32))
            if rows:
                await asyncio.to_thread(self.book.start_handoffs, rows)
                failpoint("handoff.verified")
            for d in deliveries:
                if d.key in known:
                    await self._drop_redelivery(known[d.key], d.src)
        return replaced

    def _verify(self, deliveries: list[_Delivery], local: bool) -> list[str | HandOffError]:
        """Each file's identity once its size (and checksum) is checked, or why not. A file
        this host's forwarder wrote, unchanged since, has its checksum trusted (not read)."""
        out: list[str | HandOffError] = []
        for d in deliveries:
            try:
                out.append(verify(d.src, d.file.size, d.file.checksum, self.cfg.verify_checksum,
                                  d.file.identity if local else None))
            except HandOffError as exc:
                out.append(exc)
        return out

    async def _drop_redelivery(self, row: HandOffRow, src: Path) -> None:
        """The sensor was handed off already (``row``, read under its lock); a second delivery
        (a reassignment after a forwarder hang, a forwarder restarted mid-assignment) left an
        identical copy at the incoming name: remove it, or refuse it if it is not identical."""
        key = row.key
        if row.state not in ("unlinked", "requested") or not src.exists():
            return
        if await asyncio.to_thread(redelivered_copy, row):
            await asyncio.to_thread(src.unlink)
            _log.info("%s: identical re-delivery removed", key, extra={"IMAGE": row.image})
            return
        # Not identical: the same pixels with another header (the first copy was written with
        # a minimal header at the join timeout, the second with the real one). The first is
        # registered; keep the second for a person, out of the pipeline's way.
        target = self.quarantine / "redelivered" / f"{src.name}.{int(time.time() * 1000)}"
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(os.rename, src, target)
        await self.error(f"{key}: another version of a sensor already handed off was delivered; kept as {target}")

    @contextlib.asynccontextmanager
    async def _locked(self, keys: list[str]) -> AsyncIterator[None]:
        """Hold the locks of these files' hand-offs (taken in one order: no deadlock between
        two deliveries that share files)."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self._locks.setdefault(key, asyncio.Lock()))
            yield

    async def advance(self, keys: list[str]) -> None:
        """Take these recorded hand-offs to their end, together. Under the files' locks and
        from the states read inside them: the start-up resume and a redelivered
        FILE_DELIVERED never both run steps. Raises Reject, after the others are done, for
        files whose hand-off cannot succeed."""
        async with self._locked(keys):
            rows = [r for r in (await asyncio.to_thread(self.book.handoffs, keys)).values() if r.state != "requested"]
            if not rows:
                return
            began = time.monotonic()
            try:
                failed = await run_handoff(self.book, rows, self._request, self.cfg.staging_dir_mode,
                                           asyncio.to_thread)
            except (HandOffError, OSError, SQLAlchemyError) as exc:
                if is_environmental(exc):
                    # The machine, not the files: each hand-off is recorded at its last step
                    # and the resumer takes them on when the fault clears (one ALARM episode).
                    self.faults.report(HANDOFF_FAULT, f"{', '.join(r.key for r in rows)} stopped: {exc}")
                    return
                raise
            self.done += len(rows) - len(failed)
            # One observation per file, as before files were handed off together: each file's
            # hand-off took the batch's time.
            took = self._stage("handoff", "One file's hand-off: links, unlink, INGEST_REQUESTs (from verified)")
            elapsed = time.monotonic() - began
            for _ in range(len(rows) - len(failed)):
                took.observe(elapsed)
            if HANDOFF_FAULT in self.faults.active:
                self.faults.clear(HANDOFF_FAULT)
            for row, exc in failed:
                await self.error(f"{row.key}: hand-off stopped at {row.state}: {exc}")
            if failed:
                raise Reject("hand-off failed: " + "; ".join(f"{row.key}: {exc}" for row, exc in failed))

    async def resume(self) -> None:
        """Take every recorded, unfinished hand-off on (at start, and then periodically: one
        stopped by a fault of the machine completes once the fault clears), image by image."""
        by_image: dict[str, list[str]] = {}
        for row in await asyncio.to_thread(self.book.unfinished_handoffs):
            by_image.setdefault(row.image, []).append(row.key)
        for keys in by_image.values():
            try:
                await self.advance(keys)
            except Reject:
                pass  # reported; the rows stay for an operator

    async def _resume_loop(self) -> None:
        attempt = 0
        while True:
            attempt = attempt + 1 if HANDOFF_FAULT in self.faults.active else 0
            await asyncio.sleep(retry_delay(attempt, first=2.0))
            try:
                await self.resume()
            except (OSError, SQLAlchemyError) as exc:
                if not is_environmental(exc):
                    raise
                self.faults.report(HANDOFF_FAULT, f"cannot read the hand-off book: {exc}")

    async def redrive_ingest(self, image: str, sensors: list[str]) -> int:
        """Catch-up: INGEST_REQUEST again for these sensors if their hand-off is complete
        (ingest is idempotent); returns how many were asked."""
        rows = await asyncio.to_thread(self.book.handoffs, [f"{image}/{s}" for s in sensors])
        done = [r for r in rows.values() if r.state == "requested"]
        if done:
            await self._request(done)
        return len(done)

    async def _request(self, rows: list[HandOffRow]) -> None:
        """One INGEST_REQUEST per target for the files of each image (MAX_FILES at most). All
        sent at once: each waits for the broker's receipt of a persistent message, and none
        depends on another (a repeat after a failure is dropped by the ingests)."""
        by_target: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            carried = {"adler32": row.adler32} if row.adler32 else {}
            for target, path in row.staged().items():
                by_target.setdefault((row.image, target), []).append(dict(
                    path=path, data_id=row.data_id, checksum=row.checksum, verified=row.inode, **carried))
        await asyncio.gather(*(self.bus.send(make("INGEST_REQUEST", image, files=files[i:i + MAX_FILES],
                                                  sender=self.ident),
                                             destination_of("INGEST_REQUEST", target=target))
                               for (image, target), files in by_target.items()
                               for i in range(0, len(files), MAX_FILES)))
        for image in {row.image for row in rows}:
            names = [Path(row.oods).name for row in rows if row.image == image]
            targets = sorted(target for img, target in by_target if img == image)
            _log.info("%s handed off to %s", ", ".join(names), ", ".join(targets), extra={"IMAGE": image})

    async def error(self, problem: str) -> None:
        """A refused delivery or hand-off (it also ends in a dead letter, which panics)."""
        _log.error(problem)
        await self.bus.send(make("ALERT", severity="error", source=self.ident, message=problem, sender=self.ident))
