"""The archive controller daemon: wiring, then event handlers and the assignment loop."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy.exc import SQLAlchemyError

from fitsflow.archive_controller.book import Assignment, Book, HandOffRow
from fitsflow.archive_controller.catchup import CatchUp
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.archive_controller.handoff import HandOffError, redelivered_copy, run_handoff, verify
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.db import make_engine
from fitsflow.core.errors import Reject, Requeue, Retry, UnsafePath
from fitsflow.core.failpoints import failpoint
from fitsflow.core.faults import is_environmental, retry_delay
from fitsflow.core import schemas
from fitsflow.core.layout import sensor_file_name, within
from fitsflow.core.messages import Message, destination_of, make
from fitsflow.core.runtime import Daemon

_log = logging.getLogger(__name__)
HANDOFF_FAULT = "hand-off"
POOL_FAULT = "forwarder pool empty"


class ArchiveControllerDaemon(Daemon):
    name = "archive-controller"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.acfg: ArchiveControllerConfig = cfg.section("archive_controller")
        paths = cfg.paths.resolved()
        self.incoming, self.oods_staging, self.archive_staging = paths.incoming, paths.oods_staging, paths.archive_staging
        self.quarantine = paths.quarantine
        # One engine (one connection pool) for everything this daemon keeps in the database.
        self.engine = make_engine(cfg.site.database_url)
        self.book = Book(self.engine)
        #: forwarder → (last heartbeat, monotonic), load, capacity
        self.forwarders: dict[str, tuple[float, int, int]] = {}
        self.started = time.monotonic()
        self.handoffs_done = 0
        #: delivered files whose checksum was trusted (written here, unchanged) / read in full
        self.checksums_trusted = self.checksums_read = 0
        self.reassignments = 0
        self._locks: dict[str, asyncio.Lock] = {}
        bus.subscribe("/topic/fitsflow.readout", self.on_readout_complete, name="controller-readout", durable=True)
        bus.subscribe("/topic/fitsflow.forwarder.heartbeat", self.on_heartbeat, name="controller-heartbeats")
        bus.subscribe(destination_of("FILE_DELIVERED"), self.on_file_delivered, name="controller-delivered",
                      concurrency=4)
        self.catchup = CatchUp(self.acfg, self.engine, bus, self.ident, self.raise_panic, spawn=self.spawn,
                               sensor_states=self.book.sensor_states, redrive_ingest=self._redrive_ingest) \
            if self.acfg.catchup else None
        self.roles = [self.catchup] if self.catchup else []

    async def start(self) -> None:
        await super().start()
        await self._resume_handoffs()  # a restart: finish them first
        self.spawn(self._assign_loop(), "assignments", forever=True)
        self.spawn(self._resume_loop(), "hand-off resumer", forever=True)

    async def stop(self) -> None:
        await super().stop()
        self.book.close()
        self.engine.dispose()

    def status(self) -> str:
        live = len(self.live_forwarders())
        return (f"{live} forwarders live, {self.handoffs_done} hand-offs ({self.checksums_read} files read to "
                f"verify, {self.checksums_trusted} written here and trusted), {self.reassignments} reassignments; "
                + (f"{self.catchup.status()}; " if self.catchup else "") + self.bus.describe())

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"handoffs": (self.handoffs_done, "Delivered files handed off to the OODS and the archive"),
                "reassignments": (self.reassignments, "Sensors reassigned from a silent forwarder"),
                "checksums_read": (self.checksums_read, "Delivered files read in full to check their checksum"),
                "checksums_trusted": (self.checksums_trusted, "Delivered files written on this host, not read back")}

    # -- forwarders --------------------------------------------------------------------

    async def on_heartbeat(self, msg: Message) -> None:
        name = str(msg.data["forwarder"])
        if name not in self.forwarders:
            _log.info("forwarder %s is live", name)
        self.forwarders[name] = (time.monotonic(), int(msg.data["load"]), int(msg.data["capacity"]))

    def live_forwarders(self) -> list[str]:
        now = time.monotonic()
        return sorted(f for f, (seen, _l, _c) in self.forwarders.items() if now - seen < self.acfg.liveness_timeout_s)

    def _plan(self, image: str, sensors: list[str]) -> list[Assignment]:
        """Spread sensors over live forwarders, least loaded first (one assignment each)."""
        live = self.live_forwarders()
        if not live:
            return [Assignment(f"{image}-{uuid.uuid4().hex[:8]}", image, None, sensors, "open", False)]
        live.sort(key=lambda f: self.forwarders[f][1] / max(1, self.forwarders[f][2]))
        share: dict[str, list[str]] = {}
        for sensor, forwarder in zip(sensors, itertools.cycle(live)):
            share.setdefault(forwarder, []).append(sensor)
        return [Assignment(f"{image}-{f}-{uuid.uuid4().hex[:8]}", image, f, s, "open", False)
                for f, s in share.items()]

    # -- event handlers ----------------------------------------------------------------

    async def on_readout_complete(self, msg: Message) -> None:
        """Assign the sensors stored and not yet assigned or delivered. Sent again after a
        re-send by the camera (catch-up), it assigns what was missing or is now whole."""
        body: schemas.ReadoutComplete = msg.body  # names checked at the door (core.schemas)
        image, present, partial = msg.image or "", list(body.present), set(body.partial)
        known = await asyncio.to_thread(self.book.sensor_states, image)
        defer = [] if not self.acfg.partial_grace_s else \
            [s for s in present if s in partial and s not in known]
        ready = [s for s in present if s not in partial or not self.acfg.partial_grace_s]
        ready = [s for s in ready if known.get(s) in (None, "deferred")]
        if ready:
            await asyncio.to_thread(self.book.supersede_deferred, image, set(ready))
            plan = self._plan(image, ready)
            await asyncio.to_thread(self.book.add_assignments, plan)
            await self._send_assignments(plan)
        if defer:
            _log.info("%s: %d partial sensors wait %.0f s for a re-send", image, len(defer), self.acfg.partial_grace_s,
                      extra={"IMAGE": image})
            await asyncio.to_thread(self.book.add_assignments, [
                Assignment(f"{image}-deferred-{uuid.uuid4().hex[:8]}", image, None, defer, "deferred", False)])

    async def _send_assignments(self, plan: list[Assignment]) -> None:
        for a in plan:
            if a.forwarder is None:
                await self._pool_empty(a.image)
                continue
            await self.bus.send(make("FORWARD_IMAGE", a.image, sensors=a.sensors, assignment=a.assignment,
                                     sender=self.ident), destination_of("FORWARD_IMAGE", forwarder=a.forwarder))
            await asyncio.to_thread(self.book.set_assignment, a.assignment, sent=True)
            _log.info("%s: %d sensors to %s (%s)", a.image, len(a.sensors), a.forwarder, a.assignment,
                      extra={"IMAGE": a.image, "MSGTYPE": "FORWARD_IMAGE"})

    def listening(self) -> bool:
        """True once the controller has been subscribed long enough to have heard every live
        forwarder's heartbeat: liveness_timeout_s since its start or its last reconnect, plus
        the bus's reconnect_max_s (a forwarder that lost the broker when the controller did
        retries within that). Heartbeats are not durable: after a reconnect, the backlog of
        readouts arrives before the first heartbeat, and judging the pool then would cry wolf."""
        since = max(self.started, self.bus.last_connected_at or self.started)
        return self.bus.listening and \
            time.monotonic() - since >= self.acfg.liveness_timeout_s + self.bus.cfg.reconnect_max_s

    async def _pool_empty(self, image: str) -> None:
        """An assignment found no live forwarder: it waits (the assign loop sends it once one
        is heard); the pool is declared empty only when the controller has been listening
        for the whole liveness timeout — one episode, cleared when a forwarder is back."""
        if self.listening() and not self.live_forwarders():
            self.faults.report(POOL_FAULT, f"no live forwarder heard for {self.acfg.liveness_timeout_s:.0f} s: "
                                           f"{image} and later images wait for one")

    async def _assign_loop(self) -> None:
        while True:
            await asyncio.sleep(self.acfg.assign_interval_s)
            live = self.live_forwarders()
            if live and POOL_FAULT in self.faults.active:
                self.faults.clear(POOL_FAULT)
            grace = not self.listening()  # hear everyone first (after a start or a reconnect)
            if self.acfg.partial_grace_s and live:
                # Partial sensors the camera did not re-send in time: forward them as they are.
                cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self.acfg.partial_grace_s)
                for a in await asyncio.to_thread(self.book.deferred_assignments, cutoff):
                    plan = self._plan(a.image, a.sensors)
                    await asyncio.to_thread(self.book.reassign, a.assignment, plan)
                    await self._send_assignments(plan)
            for a in await asyncio.to_thread(self.book.open_assignments):
                delivered = await asyncio.to_thread(self.book.delivered_sensors, a.image)
                left = [s for s in a.sensors if s not in delivered]
                if not left:
                    await asyncio.to_thread(self.book.set_assignment, a.assignment, state="done")
                elif a.forwarder is None or (a.forwarder not in live and not grace):
                    if not live:
                        if a.forwarder is None:
                            await self._pool_empty(a.image)
                        continue
                    plan = self._plan(a.image, left)
                    if a.forwarder is not None:
                        self.reassignments += 1
                        _log.warning("forwarder %s is silent: %d sensors of %s reassigned", a.forwarder, len(left),
                                     a.image, extra={"IMAGE": a.image})
                    await asyncio.to_thread(self.book.reassign, a.assignment, plan)
                    await self._send_assignments(plan)
                elif not a.sent:
                    await self._send_assignments([a])

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
            await self._error(f"FILE_DELIVERED {d.get('path')!r} refused: {exc}")
            raise Reject(f"FILE_DELIVERED refused: {exc}") from None
        key = f"{image}/{raft}_{sensor}"
        try:
            await self._record_delivery(key, image, raft, sensor, day, src, d, data_id)
        except (OSError, SQLAlchemyError) as exc:
            if not is_environmental(exc):
                raise
            n = self.faults.report(HANDOFF_FAULT, f"{key}: {exc}")
            raise Requeue(f"{key}: {exc}", delay=retry_delay(n)) from None  # waits out the fault, never dead
        await self._advance(key)
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
                    local = d.get("identity") if d.get("written_on") == self.host and self.acfg.trust_local_writes \
                        else None
                    inode = await asyncio.to_thread(verify, src, int(d["size"]), str(d["checksum"]),
                                                    self.acfg.verify_checksum, local)
                    if self.acfg.verify_checksum:
                        self.checksums_trusted += inode == local
                        self.checksums_read += inode != local
                except HandOffError as exc:
                    # After a reassignment two forwarders deliver the same sensor under one name:
                    # the later file may replace the earlier before its announcement is read. The
                    # other announcement hands the file off; this one then finds the sensor done.
                    # A file that stays wrong is dead-lettered after max_attempts (a panic).
                    raise Retry(f"{image} {raft}_{sensor}: {exc}; another delivery of this sensor may "
                                "have replaced the file") from None
                row = HandOffRow(key, image, str(src), str(self.oods_staging / day / src.name),
                                 str(self.archive_staging / day / src.name), int(d["size"]), str(d["checksum"]),
                                 inode, data_id, "verified")
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
        await self._error(f"{key}: another version of a sensor already handed off was delivered; kept as {target}")

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _advance(self, key: str) -> None:
        """Take a recorded hand-off to its end. Under the file's lock and from the state read
        inside it: the start-up resume and a redelivered FILE_DELIVERED never both run steps."""
        async with self._lock(key):
            row = await asyncio.to_thread(self.book.handoff, key)
            if row is None or row.state == "requested":
                return
            try:
                with self.stage("handoff", "One file's hand-off: links, unlink, INGEST_REQUESTs (from verified)").time():
                    await run_handoff(self.book, row, self._request, self.acfg.staging_dir_mode, asyncio.to_thread)
            except (HandOffError, OSError, SQLAlchemyError) as exc:
                if is_environmental(exc):
                    # The machine, not the file: the hand-off is recorded at its last step and
                    # the resumer takes it on when the fault clears (one ALARM episode).
                    self.faults.report(HANDOFF_FAULT, f"{row.key} stopped at {row.state}: {exc}")
                    return
                if not isinstance(exc, HandOffError):
                    raise
                await self._error(f"{row.key}: hand-off stopped at {row.state}: {exc}")
                raise Reject(f"hand-off of {row.key} failed: {exc}") from None
            self.handoffs_done += 1
            if HANDOFF_FAULT in self.faults.active:
                self.faults.clear(HANDOFF_FAULT)

    async def _resume_handoffs(self) -> None:
        """Take every recorded, unfinished hand-off on (at start, and then periodically: one
        stopped by a fault of the machine completes once the fault clears)."""
        for row in await asyncio.to_thread(self.book.unfinished_handoffs):
            try:
                await self._advance(row.key)
            except Reject:
                pass  # reported; the row stays for an operator

    async def _resume_loop(self) -> None:
        attempt = 0
        while True:
            attempt = attempt + 1 if HANDOFF_FAULT in self.faults.active else 0
            await asyncio.sleep(retry_delay(attempt, first=2.0))
            try:
                await self._resume_handoffs()
            except (OSError, SQLAlchemyError) as exc:
                if not is_environmental(exc):
                    raise
                self.faults.report(HANDOFF_FAULT, f"cannot read the hand-off book: {exc}")

    async def _redrive_ingest(self, image: str, sensors: list[str]) -> int:
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
        # Both at once: each waits for the broker's receipt of a persistent message, and
        # neither depends on the other (a repeat after a failure is dropped by the ingests).
        await asyncio.gather(*(self.bus.send(make("INGEST_REQUEST", row.image, path=path, data_id=row.data_id,
                                                  checksum=row.checksum, verified=row.inode, sender=self.ident),
                                             destination_of("INGEST_REQUEST", target=target))
                               for target, path in (("oods", row.oods), ("archive", row.archive))))
        _log.info("%s handed off to the OODS and the archive", Path(row.oods).name, extra={"IMAGE": row.image})

    async def _error(self, problem: str) -> None:
        """A refused delivery or hand-off (it also ends in a dead letter, which panics)."""
        _log.error(problem)
        await self.bus.send(make("ALERT", severity="error", source=self.ident, message=problem, sender=self.ident))
