"""The header service daemon: wiring, then event handlers."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
from pathlib import Path

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.errors import Reject, Requeue, UnsafePath
from fitsflow.core.faults import retry_delay
from fitsflow.core.headerstore import write_header
from fitsflow.core.messages import CAMERA_EVENTS, TELEMETRY, Message, make
from fitsflow.core.poison import POISON_ERRORS
from fitsflow.core.runtime import Daemon
from fitsflow.header_service.builder import (ImageRecord, Sample, build_header, missing_keywords, parse_time,
                                             sample_keywords)
from fitsflow.header_service.config import HeaderServiceConfig
from fitsflow.header_service.state import HeaderState
from fitsflow.header_service.stream_clock import StreamClock

_log = logging.getLogger(__name__)
STORE_FAULT = "header store"
DEADLINE_TICK_S = 0.5


class HeaderServiceDaemon(Daemon):
    name = "header-service"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.hcfg: HeaderServiceConfig = cfg.section("header_service")
        self.headers_root = cfg.paths.resolved().headers
        self.store = HeaderState(Path(cfg.site.state_dir) / f"header-service-{self.instance}", self.hcfg.history_per_topic)
        self.written = 0
        self.partial = 0
        self.storage_faults = 0
        self._writing: set[str] = set()
        #: deadlines are judged against the processed stream (stream_clock), not the wall clock
        self.clock = StreamClock()
        # Durable: events and telemetry published while the service restarts are still seen.
        bus.subscribe(CAMERA_EVENTS, self.on_event, name=f"header-events-{self.instance}", durable=True)
        bus.subscribe(TELEMETRY, self.on_telemetry, name=f"header-telemetry-{self.instance}", durable=True)

    async def start(self) -> None:
        await super().start()
        self.spawn(self._deadlines(), "deadlines", forever=True)

    def unreadable_state(self) -> list[str]:
        return self.store.rejected

    def status(self) -> str:
        return (f"{len(self.store.records)} images open, {self.written} headers written ({self.partial} partial), "
                f"{self.storage_faults} storage faults; {self.bus.describe()}")

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"headers_written": (self.written, "Image headers written"),
                "headers_partial": (self.partial, "Image headers written with telemetry missing"),
                "storage_faults": (self.storage_faults, "Header writes that met a fault of the machine")}

    # -- event handlers ----------------------------------------------------------------

    async def on_event(self, msg: Message) -> None:
        self.clock.observe("events", parse_time(msg.sent))
        try:
            rec = self.store.record(msg.image or "")
        except UnsafePath as exc:
            raise Reject(str(exc)) from None
        if rec.written:
            return  # a late or repeated event for a finished image
        rec.events.setdefault(msg.type, str(msg.data["timestamp"]))
        if msg.type == "START_INTEGRATION":
            rec.group, rec.snap = str(msg.data["group"]), int(msg.data["snap"])
            rec.exptime, rec.sensors = float(msg.data["exptime"]), [str(s) for s in msg.data["sensors"]]
        sample_keywords(rec, self.hcfg, self.store.history)
        await self.store.save(rec)
        if msg.type in ("END_READOUT", "END_OF_IMAGE_TELEMETRY") and not missing_keywords(rec, self.hcfg):
            await self._write(rec)

    async def on_telemetry(self, msg: Message) -> None:
        self.clock.observe("telemetry", parse_time(msg.sent))
        topic = str(msg.data["topic"])
        try:
            sample = Sample(str(msg.data["timestamp"]), dict(msg.data["values"]))
        except (ValueError, TypeError) as exc:
            raise Reject(f"telemetry sample of {topic}: {exc}") from None
        self.store.add_sample(topic, sample)
        changed = [rec for rec in list(self.store.records.values())
                   if not rec.written and sample_keywords(rec, self.hcfg, self.store.history)]
        await self.store.save_sample(topic, sample, changed)
        for rec in changed:
            ended = {"END_READOUT", "END_OF_IMAGE_TELEMETRY"} & set(rec.events)
            if ended and not missing_keywords(rec, self.hcfg):
                await self._write(rec)

    async def _write(self, rec: ImageRecord) -> None:
        """Write the header (atomically), then announce it; a storage failure is a fault,
        retried, never a silent loss. Events and telemetry are handled concurrently: the
        guard below is taken before any await, so only one of them writes an image."""
        if rec.written or rec.image in self._writing:
            return
        self._writing.add(rec.image)
        try:
            with self.stage("header", "One image header: build, write, announce HEADER_READY").time():
                await self._write_once(rec)
        finally:
            self._writing.discard(rec.image)

    async def _write_once(self, rec: ImageRecord) -> None:
        header = build_header(rec, self.hcfg, self.cfg.site.instrument, dt.datetime.now(dt.timezone.utc))
        try:
            path = await asyncio.to_thread(write_header, self.headers_root, header)
        except OSError as exc:
            self.storage_faults += 1
            n = self.faults.report(STORE_FAULT, f"cannot write headers to {self.headers_root}: {exc}")
            raise Requeue(f"header store unwritable: {exc}", delay=retry_delay(n)) from None
        if STORE_FAULT in self.faults.active:
            self.faults.clear(STORE_FAULT)
        rec.written = True
        self.written += 1  # counted when on disk, before anyone hears of it
        self.partial += header.partial
        await self.store.save(rec)
        await self.bus.send(make("HEADER_READY", rec.image, path=str(path), partial=header.partial,
                                 missing_keywords=header.missing_keywords, sender=self.ident))
        level = logging.WARNING if header.partial else logging.INFO
        _log.log(level, "header of %s written%s", rec.image,
                 f", partial: missing {header.missing_keywords}" if header.partial else "",
                 extra={"IMAGE": rec.image, "MSGTYPE": "HEADER_READY"})
        await self.store.forget(rec.image)

    async def _deadlines(self) -> None:
        loop = asyncio.get_running_loop()
        last_tick, last_connect = loop.time(), self.bus.last_connected_at
        while True:
            await asyncio.sleep(DEADLINE_TICK_S)
            if loop.time() - last_tick > 10 * DEADLINE_TICK_S or self.bus.last_connected_at != last_connect:
                self.clock.interrupted()  # stopped, starved or reconnected: a backlog may follow
            last_tick, last_connect = loop.time(), self.bus.last_connected_at
            for rec in list(self.store.records.values()):
                if rec.written:
                    await self.store.forget(rec.image)
                    continue
                start = rec.events.get("START_INTEGRATION")
                if start is None:
                    continue  # orphan telemetry-less record: waits for its start event
                try:
                    deadline = parse_time(start) + dt.timedelta(seconds=rec.exptime + self.hcfg.timeout_margin_s)
                except POISON_ERRORS as exc:  # cannot come through the bus; set aside, never a crash loop
                    await self.store.set_aside(rec, f"unusable START_INTEGRATION time {start!r}: {exc}")
                    await self.bus.send(make("ALERT", severity="error", source=self.ident,
                                             message=self.store.rejected[-1], sender=self.ident))
                    continue
                if self.clock.past(deadline):
                    try:
                        await self._write(rec)
                    except Requeue:
                        pass  # fault already reported; tried again next round
