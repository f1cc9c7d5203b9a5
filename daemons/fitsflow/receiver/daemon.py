"""The receiver daemon: wiring, then event handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.states import State
from fitsflow.core.errors import FitsflowError, Reject, UnsafePath
from fitsflow.core.faults import MachineFault
from fitsflow.core.messages import CAMERA_EVENTS, Message, destination_of, make
from fitsflow.core.runtime import Daemon
from fitsflow.core.rawstore import direct_io_supported
from fitsflow.core.sockbuf import cap_warning
from fitsflow.receiver.assembler import ImageAssembler
from fitsflow.receiver.config import ReceiverConfig
from fitsflow.receiver.janitor import clean, mark_archived
from fitsflow.receiver.metrics import LossMonitor, StreamCollector
from fitsflow.receiver.stream import RejectedPacketCounter, SpeadStreamReceiver

_log = logging.getLogger(__name__)
STORE_FAULT = "raw buffer store"
LOSS_FAULT = "UDP packet loss above threshold"
SOCKET_FAULT = "UDP port {address} not open"


class ReceiverDaemon(Daemon):
    name = "receiver"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.rcfg: ReceiverConfig = cfg.section("receiver")
        self.raw_root = cfg.paths.resolved().raw_buffer
        addresses = self.rcfg.streams_for(args.instance)
        self.assembler = ImageAssembler(self.raw_root, self.rcfg.image_timeout_s,
                                        set(self.rcfg.expected_sensors), self._announce, spawn=self.spawn,
                                        storage_failed=self._storage_failed, direct_io=self.rcfg.direct_io,
                                        write_threads=self.rcfg.writers * len(addresses))
        self.streams = [SpeadStreamReceiver(addr, self.rcfg, self.assembler.add_stripe, self._storage_failed,
                                            self._storage_ok, spawn=self.spawn, socket_failed=self._socket_failed,
                                            socket_ok=self._socket_ok)
                        for addr in addresses]
        self.rejected = RejectedPacketCounter(on_fatal=self._receive_thread_died)
        self.loss = LossMonitor(self.streams, self.rcfg.loss_alert_fraction)
        self.alerts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.roles = [self.assembler, *self.streams]
        # Durable: a restarted receiver still learns which sensors to expect.
        bus.subscribe(CAMERA_EVENTS, self.on_camera_event, name=f"receiver-events-{self.instance}",
                      selector="MsgType = 'START_INTEGRATION'", durable=True)
        # Durable too: an archived sensor heard while the receiver was away is still marked.
        bus.subscribe(destination_of("IMAGE_IN_ARCHIVE"), self.on_image_in_archive,
                      name=f"receiver-archived-{self.instance}", selector="MsgType = 'IMAGE_IN_ARCHIVE'",
                      durable=True)
        self.raw_removed = 0
        self.raw_waiting = 0

    async def start(self) -> None:
        warning = cap_warning("rmem", self.rcfg.socket_buffer_bytes, f"{self.ident} UDP receive buffer")
        if warning:  # the package ships /usr/lib/sysctl.d/90-fitsflow-receiver.conf
            _log.warning(warning)
        await self._say_how_stripes_are_written()
        self._loop = asyncio.get_running_loop()
        self.rejected.install()
        await super().start()
        self.spawn(self._stats_loop(), "stats", forever=True)
        if self.rcfg.raw_clean_interval_s:
            self.spawn(self._clean_loop(), "raw buffer clean-up", forever=True)

    async def stop(self) -> None:
        await super().stop()
        self.rejected.uninstall()

    async def _say_how_stripes_are_written(self) -> None:
        """Tell the operator whether the raw buffer takes O_DIRECT writes (receiver.direct_io)."""
        if not self.rcfg.direct_io:
            _log.info("raw buffer %s: stripes written through the page cache (receiver.direct_io = false)",
                      self.raw_root)
            return
        try:
            direct = await asyncio.to_thread(direct_io_supported, self.raw_root)
        except OSError as exc:  # not there or not writable yet: the store's own fault path says so
            _log.info("raw buffer %s: O_DIRECT not probed (%s)", self.raw_root, exc)
            return
        if direct:
            _log.info("raw buffer %s: stripes' whole blocks written with O_DIRECT", self.raw_root)
        else:
            _log.warning("raw buffer %s: its filesystem refuses O_DIRECT; stripes written through the page cache",
                         self.raw_root)

    def unreadable_state(self) -> list[str]:
        return self.assembler.rejected

    def metrics_endpoint(self) -> tuple[str, int] | None:
        # receiver.metrics_port/_address: the receiver's keys from before [metrics], still honoured
        return super().metrics_endpoint() or \
            ((self.rcfg.metrics_address, self.rcfg.metrics_port) if self.rcfg.metrics_port else None)

    def collectors(self) -> list[Any]:
        return [StreamCollector(self.streams, self.rejected)]

    def counters(self) -> dict[str, tuple[float, str]]:
        a = self.assembler
        return {"sensors_stored": (a.sensors_stored, "Sensor readouts stored in the raw buffer"),
                "sensors_partial": (a.sensors_partial, "Sensor readouts stored with rows missing"),
                "images_announced": (a.images_announced, "Readouts announced (READOUT_COMPLETE)")}

    def status(self) -> str:
        heaps = sum(s.counters.heaps_complete for s in self.streams)
        incomplete = sum(s.counters.heaps_incomplete for s in self.streams)
        lost = sum(s.counters.bytes_lost for s in self.streams)
        return (f"{len(self.streams)} streams, {heaps} heaps, {incomplete} incomplete ({lost} B lost), "
                f"{self.rejected.total} packets rejected, {self.assembler.sensors_stored} sensors stored "
                f"({self.assembler.sensors_partial} partial), {self.assembler.images_announced} images, "
                f"{self.raw_removed} removed from the raw buffer ({self.raw_waiting} not all archived); "
                f"{self.bus.describe()}")

    # -- event handlers ----------------------------------------------------------------

    async def on_camera_event(self, msg: Message) -> None:
        if msg.type == "START_INTEGRATION" and msg.image:
            self.assembler.expect(msg.image, [str(s) for s in msg.data["sensors"]], float(msg.data["exptime"]))

    async def on_image_in_archive(self, msg: Message) -> None:
        if msg.data["status"] != 0:
            return  # not archived: the readout stays
        data_id = msg.data.get("data_id") or {}
        try:
            marked = await asyncio.to_thread(mark_archived, self.raw_root, str(data_id.get("image")),
                                             str(data_id.get("raft")), str(data_id.get("sensor")))
        except UnsafePath as exc:
            raise Reject(f"IMAGE_IN_ARCHIVE {msg.data.get('path')!r}: {exc}") from None
        if marked:
            _log.debug("%s %s_%s archived", data_id["image"], data_id["raft"], data_id["sensor"],
                       extra={"IMAGE": data_id["image"]})

    async def _clean_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rcfg.raw_clean_interval_s)
            try:
                result = await asyncio.to_thread(clean, self.raw_root, self.rcfg.raw_keep_s)
            except OSError as exc:  # the store's trouble shows in the writes too; keep trying
                _log.error("cleaning the raw buffer store %s failed: %s", self.raw_root, exc)
                continue
            self.raw_removed += len(result.removed)
            self.raw_waiting = result.waiting
            if result.removed:
                _log.info("raw buffer: %d archived images removed (%s%s)", len(result.removed),
                          ", ".join(result.removed[:5]), ", ..." if len(result.removed) > 5 else "")

    async def _announce(self, image: str, summary: dict) -> None:
        await self.bus.send(make("READOUT_COMPLETE", image, sender=self.ident, **summary))
        _log.info("readout of %s: %d present, %d missing, %d partial", image, len(summary["present"]),
                  len(summary["missing"]), len(summary["partial"]), extra={"IMAGE": image,
                                                                           "MSGTYPE": "READOUT_COMPLETE"})

    def _storage_failed(self, problem: str) -> None:
        """The raw buffer store refused a write (full, unwritable): one fault episode until a
        write succeeds again; the pixels lost meanwhile come back by catch-up's re-sends."""
        self.faults.report(STORE_FAULT, f"cannot store readouts in {self.raw_root}: {problem}")

    def _storage_ok(self) -> None:
        if STORE_FAULT in self.faults.active:
            self.faults.clear(STORE_FAULT)

    def _socket_failed(self, address: str, problem: str) -> None:
        """A stream's UDP port cannot be opened: one fault episode per port until it opens;
        the images sent meanwhile are lost to this receiver and come back by catch-up."""
        self.faults.report(SOCKET_FAULT.format(address=address), problem)

    def _socket_ok(self, address: str) -> None:
        self.faults.clear(SOCKET_FAULT.format(address=address))

    def _receive_thread_died(self, problem: str) -> None:
        """From spead2's thread: the stream cannot receive any more. The daemon ends (exit
        70) and systemd restarts it, instead of living on deaf."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: self.spawn(_fail(problem), "spead2 receive thread"))

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rcfg.stats_interval_s)
            for stream in self.streams:
                problem = stream.check_alive()
                if problem:
                    self.state = State.FAULT
                    raise FitsflowError(problem)  # a supervised task: the daemon ends, systemd restarts it
            try:
                await self.bus.send(make("RECEIVER_STATS", receiver=self.ident, streams=self.loss.snapshot(),
                                         rejected=dict(self.rejected.counts), sender=self.ident))
            except MachineFault as exc:  # informative: the next interval's will do
                _log.debug("stats not sent: %s", exc)
            # One episode while intervals keep losing (one ALERT and one panic, not one a
            # minute), cleared by the first interval without loss.
            problems = self.loss.check()
            if problems:
                self.alerts += 1
                self.faults.report(LOSS_FAULT, "; ".join(problems))
            elif LOSS_FAULT in self.faults.active:
                self.faults.clear(LOSS_FAULT)


async def _fail(problem: str) -> None:
    raise FitsflowError(problem)
