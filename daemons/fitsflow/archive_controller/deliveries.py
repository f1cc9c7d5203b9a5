"""Role: delivered files handed off. FILE_DELIVERED → the file verified and its hand-off
recorded (handoff.py: verified → linked → unlinked → requested, each step committed), a
re-delivery of a sensor already handed off dropped or set aside; hand-offs stopped by a
fault of the machine resumed at start and then periodically; catch-up's re-drive of the
ingests."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

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
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)
HANDOFF_FAULT = "hand-off"


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
        d = msg.data
        body: schemas.FileDelivered = msg.body  # names and types checked at the door (core.schemas)
        data_id = dict(d["data_id"])
        image, raft, sensor = body.data_id.image, body.data_id.raft, body.data_id.sensor
        try:
            if body.data_id.obs_day is None or body.data_id.instrument is None:
                raise UnsafePath(f"data ID {data_id} lacks its obs_day or instrument")
            day = body.data_id.obs_day
            src = within(self.incoming, body.path)  # the path is the sender's: it must be ours
            if src.parent != self.incoming.resolve():
                raise UnsafePath(f"{src} is not directly in {self.incoming}")
            if src.name != sensor_file_name(body.data_id.instrument, image, raft, sensor):
                raise UnsafePath(f"file name {src.name} does not match data ID {data_id}")
        except UnsafePath as exc:
            await self.error(f"FILE_DELIVERED {d.get('path')!r} refused: {exc}")
            raise Reject(f"FILE_DELIVERED refused: {exc}") from None
        key = f"{image}/{raft}_{sensor}"
        try:
            await self._record_delivery(key, image, raft, sensor, day, src, d, data_id)
        except (OSError, SQLAlchemyError) as exc:
            if not is_environmental(exc):
                raise
            n = self.faults.report(HANDOFF_FAULT, f"{key}: {exc}")
            raise Requeue(f"{key}: {exc}", delay=retry_delay(n)) from None  # waits out the fault, never dead
        await self.advance(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]  # done: the book remembers it

    async def _record_delivery(self, key: str, image: str, raft: str, sensor: str, day: str, src: Path,
                               d: Mapping[str, Any], data_id: dict[str, Any]) -> None:
        """Verify a delivered file and record its hand-off (or drop a re-delivery)."""
        async with self._lock(key):
            if await asyncio.to_thread(self.book.handoff, key) is None:
                try:
                    # A file this host's forwarder wrote, unchanged since: its checksum is trusted.
                    local = d.get("identity") if d.get("written_on") == self.host and self.cfg.trust_local_writes \
                        else None
                    inode = await asyncio.to_thread(verify, src, int(d["size"]), str(d["checksum"]),
                                                    self.cfg.verify_checksum, local)
                    if self.cfg.verify_checksum:
                        self.checksums_trusted += inode == local
                        self.checksums_read += inode != local
                except HandOffError as exc:
                    # After a reassignment two forwarders deliver the same sensor under one name:
                    # the later file may replace the earlier before its announcement is read. The
                    # other announcement hands the file off; this one then finds the sensor done.
                    # A file that stays wrong is dead-lettered after max_attempts (a panic).
                    raise Retry(f"{image} {raft}_{sensor}: {exc}; another delivery of this sensor may "
                                "have replaced the file") from None
                staged = {target: str(staging / day / src.name) for target, staging in self.targets.items()}
                oods, archive = staged.pop("oods"), staged.pop("archive")
                row = HandOffRow(key, image, str(src), oods, archive, int(d["size"]), str(d["checksum"]), inode,
                                 data_id, "verified", staged, d.get("adler32"))
                await asyncio.to_thread(self.book.start_handoff, row)
                failpoint("handoff.verified")
            else:
                await self._drop_redelivery(key, src)

    async def _drop_redelivery(self, key: str, src: Path) -> None:
        """The sensor was handed off already; a second delivery (a reassignment after a
        forwarder hang, a forwarder restarted mid-assignment) left an identical copy at the
        incoming name: remove it, or refuse it if it is not identical."""
        row = await asyncio.to_thread(self.book.handoff, key)
        if row is None or row.state not in ("unlinked", "requested") or not src.exists():
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

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def advance(self, key: str) -> None:
        """Take a recorded hand-off to its end. Under the file's lock and from the state read
        inside it: the start-up resume and a redelivered FILE_DELIVERED never both run steps."""
        async with self._lock(key):
            row = await asyncio.to_thread(self.book.handoff, key)
            if row is None or row.state == "requested":
                return
            try:
                with self._stage("handoff", "One file's hand-off: links, unlink, INGEST_REQUESTs (from verified)").time():
                    await run_handoff(self.book, row, self._request, self.cfg.staging_dir_mode, asyncio.to_thread)
            except (HandOffError, OSError, SQLAlchemyError) as exc:
                if is_environmental(exc):
                    # The machine, not the file: the hand-off is recorded at its last step and
                    # the resumer takes it on when the fault clears (one ALARM episode).
                    self.faults.report(HANDOFF_FAULT, f"{row.key} stopped at {row.state}: {exc}")
                    return
                if not isinstance(exc, HandOffError):
                    raise
                await self.error(f"{row.key}: hand-off stopped at {row.state}: {exc}")
                raise Reject(f"hand-off of {row.key} failed: {exc}") from None
            self.done += 1
            if HANDOFF_FAULT in self.faults.active:
                self.faults.clear(HANDOFF_FAULT)

    async def resume(self) -> None:
        """Take every recorded, unfinished hand-off on (at start, and then periodically: one
        stopped by a fault of the machine completes once the fault clears)."""
        for row in await asyncio.to_thread(self.book.unfinished_handoffs):
            try:
                await self.advance(row.key)
            except Reject:
                pass  # reported; the row stays for an operator

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
        asked = 0
        for sensor in sensors:
            row = await asyncio.to_thread(self.book.handoff, f"{image}/{sensor}")
            if row is not None and row.state == "requested":
                await self._request(row)
                asked += 1
        return asked

    async def _request(self, row: HandOffRow) -> None:
        # All at once: each waits for the broker's receipt of a persistent message, and
        # none depends on another (a repeat after a failure is dropped by the ingests).
        staged = row.staged()
        carried = {"adler32": row.adler32} if row.adler32 else {}
        await asyncio.gather(*(self.bus.send(make("INGEST_REQUEST", row.image, path=path, data_id=row.data_id,
                                                  checksum=row.checksum, verified=row.inode, sender=self.ident,
                                                  **carried),
                                             destination_of("INGEST_REQUEST", target=target))
                               for target, path in staged.items()))
        _log.info("%s handed off to %s", Path(row.oods).name, ", ".join(staged), extra={"IMAGE": row.image})

    async def error(self, problem: str) -> None:
        """A refused delivery or hand-off (it also ends in a dead letter, which panics)."""
        _log.error(problem)
        await self.bus.send(make("ALERT", severity="error", source=self.ident, message=problem, sender=self.ident))
