"""The forwarder daemon: wiring, then event handlers.

Readiness is read from disk (READOUT.json in the raw buffer store, the header object in the
header store), so the join of READOUT_COMPLETE and HEADER_READY works in either order and
survives restarts; the messages only wake the forwarder up early.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import shutil
import time
from pathlib import Path

from fitsflow.core.aio import wait_event
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.errors import Reject, UnsafePath
from fitsflow.core.faults import MachineFault, is_environmental
from fitsflow.core.fits_text import LIST_LIMIT
from fitsflow.core.headerstore import BadHeader, ImageHeader, header_path, read_header
from fitsflow.core.layout import check_name, obs_day, sensor_file_name
from fitsflow.core.messages import Message, destination_of, make
from fitsflow.core.schemas import MAX_FILES
from fitsflow.core.rawstore import SensorMeta, raw_path, read_meta, read_pixels, read_readout_summary
from fitsflow.core.handoff import file_identity, remove_stale_temps
from fitsflow.core.runtime import Daemon
from fitsflow.forwarder.assignments import Assignment, AssignmentBook
from fitsflow.forwarder.config import ForwarderConfig
from fitsflow.core.checksum import file_crc32_adler32
from fitsflow.forwarder.fitswriter import (NotLinkable, WrittenFile, build_hdus, shape_only, write_copy, write_fits,
                                           write_linked)

_log = logging.getLogger(__name__)
WRITE_FAULT = "FITS files"
STATE_FAULT = "assignment state"

#: Another forwarder's temp file this old is a crash's leftover (a write takes seconds).
STALE_TEMP_S = 3600.0


def minimal_header(image: str, reason: str) -> ImageHeader:
    """What a file gets when the header service never delivered: flagged, never silent."""
    return ImageHeader(image=image, cards=[("IMGNAME", image, "Image name"),
                                           ("HDRPART", True, "Header incomplete: telemetry missing"),
                                           ("HDRMISS", reason[:LIST_LIMIT], "Why the header is incomplete")],
                       partial=True, missing_keywords=["*"])


class ForwarderDaemon(Daemon):
    name = "forwarder"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        check_name(self.instance, "forwarder instance")
        self.fcfg: ForwarderConfig = cfg.section("forwarder")
        paths = cfg.paths.resolved()
        self.raw_root, self.headers_root, self.incoming = paths.raw_buffer, paths.headers, paths.incoming
        self.temp_owner = f"forwarder-{self.instance}"  # incoming/ is shared by every forwarder
        self.book = AssignmentBook(Path(cfg.site.state_dir) / f"forwarder-{self.instance}")
        self.slots = asyncio.Semaphore(self.fcfg.capacity)
        self.wake = asyncio.Event()
        self.in_progress: set[str] = set()
        self.files_written = 0
        self.files_linked = 0  # of files_written: the receiver's stored readout, finished in place
        self.files_copied = 0  # of files_written: the same bytes as a new file (see fitswriter)
        self.write_errors = 0
        bus.subscribe(destination_of("FORWARD_IMAGE", forwarder=self.instance), self.on_forward_image,
                      name=f"forwarder-{self.instance}")
        bus.subscribe("/topic/fitsflow.readout", self.on_ready, name=f"forwarder-{self.instance}-readout")
        bus.subscribe("/topic/fitsflow.header", self.on_ready, name=f"forwarder-{self.instance}-header")

    async def start(self) -> None:
        removed = remove_stale_temps(self.incoming, self.temp_owner, others_after_s=STALE_TEMP_S)
        if removed:
            _log.warning("removed %d temp files left by an interrupted write: %s", len(removed), removed)
        await super().start()
        self.spawn(self._heartbeats(), "heartbeats", forever=True)
        self.spawn(self._work(), "work", forever=True)

    def unreadable_state(self) -> list[str]:
        return self.book.rejected

    def status(self) -> str:
        return (f"{len(self.book.open_items())} assignments open, {self.files_written} files written "
                f"({self.files_linked} finished in place, {self.files_copied} copied), "
                f"{self.write_errors} write errors; {self.bus.describe()}")

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"files_written": (self.files_written, "FITS files written and delivered"),
                "files_linked": (self.files_linked, "Files finished in place from the stored readout: pixels "
                                                    "written once"),
                "files_copied": (self.files_copied, "Files written as a copy of the stored readout (reassigned, "
                                                    "header beyond the room, another filesystem)"),
                "write_errors": (self.write_errors, "FITS writes that met a fault of the machine")}

    # -- event handlers ----------------------------------------------------------------

    async def on_forward_image(self, msg: Message) -> None:
        assignment = str(msg.data["assignment"])
        try:
            check_name(assignment, "assignment")
            check_name(msg.image or "")
            sensors = [str(s) for s in msg.data["sensors"]]
            for s in sensors:
                raft, sensor = s.split("_", 1)
                sensor_file_name(self.cfg.site.instrument, msg.image or "", raft, sensor)
        except (UnsafePath, ValueError) as exc:
            raise Reject(f"FORWARD_IMAGE {assignment}: {exc}") from None
        if assignment in self.book.items:
            _log.info("assignment %s for %s seen before; nothing new to do", assignment, msg.image,
                      extra={"IMAGE": msg.image})
            return
        await self.book.save(Assignment(assignment, msg.image or "", sensors))
        self.wake.set()

    async def on_ready(self, msg: Message) -> None:
        self.wake.set()

    # -- work --------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await wait_event(self.wake, 0.5)
            self.wake.clear()
            for a in self.book.open_items():
                if a.assignment not in self.in_progress and self._ready(a):
                    self.in_progress.add(a.assignment)
                    self.spawn(self._process(a), f"assignment {a.assignment}")
            self.book.prune(self.fcfg.remember_done_s)

    def _ready(self, a: Assignment) -> bool:
        if time.time() - a.received_at > self.fcfg.join_timeout_s:
            return True
        return read_readout_summary(self.raw_root, a.image) is not None and header_path(
            self.headers_root, a.image).exists()

    async def _process(self, a: Assignment) -> None:
        try:
            await self._process_once(a)
        except OSError as exc:
            if not is_environmental(exc):
                raise
            # The state directory or the raw buffer failing: the assignment stays open in the
            # book and is taken up again at the next wake-up.
            self.faults.report(STATE_FAULT, f"assignment {a.assignment} of {a.image}: {exc}")
        finally:
            self.in_progress.discard(a.assignment)

    async def _process_once(self, a: Assignment) -> None:
        header = self._header(a)
        summary = read_readout_summary(self.raw_root, a.image)
        names = a.pending()
        written = await asyncio.gather(*(self._sensor(a, s, header, summary) for s in names), return_exceptions=True)
        # What was written is announced even if another sensor's attempt raised (then raised on).
        await self._deliver(a, {name: f for name, f in zip(names, written) if isinstance(f, dict)})
        for outcome in written:
            if isinstance(outcome, BaseException):
                raise outcome
        if not a.pending():
            a.complete = True
            await self.book.save(a)
            _log.info("assignment %s for %s done: %d delivered, %d failed", a.assignment, a.image,
                      len(a.delivered), len(a.failed), extra={"IMAGE": a.image})
        if STATE_FAULT in self.faults.active:
            self.faults.clear(STATE_FAULT)

    def _header(self, a: Assignment) -> ImageHeader:
        try:
            header = read_header(self.headers_root, a.image)
        except BadHeader as exc:
            _log.error("%s; writing with a minimal header", exc, extra={"IMAGE": a.image})
            return minimal_header(a.image, "header unusable")
        if header is None:
            _log.warning("no header for %s after %.0f s; writing with a minimal header", a.image,
                         self.fcfg.join_timeout_s, extra={"IMAGE": a.image})
            return minimal_header(a.image, "no header from the header service")
        return header

    async def _deliver(self, a: Assignment, files: dict[str, dict]) -> None:
        """Announce the files written in this pass: one FILE_DELIVERED for all of them (split
        at MAX_FILES), then book them as delivered. A crash in between delivers them again:
        the controller drops a sensor it has handed off already."""
        names = list(files)
        for start in range(0, len(names), MAX_FILES):
            batch = names[start:start + MAX_FILES]
            await self.bus.send(make("FILE_DELIVERED", a.image, assignment=a.assignment, sender=self.ident,
                                     written_on=self.host, files=[files[n] for n in batch]))
            for n in batch:
                a.delivered[n] = {k: files[n][k] for k in ("path", "size", "checksum")}
            await self.book.save(a)
            self.files_written += len(batch)

    async def _sensor(self, a: Assignment, name: str, header: ImageHeader, summary: dict | None) -> dict | None:
        """Write one sensor's file; its FILE_DELIVERED entry, or None if it was not written
        (failed for good, or waiting for the machine)."""
        raft, sensor = name.split("_", 1)
        meta = read_meta(self.raw_root, a.image, raft, sensor)
        if meta is None:
            if summary is not None or time.time() - a.received_at > self.fcfg.join_timeout_s:
                reason = "never received" if summary is not None else "readout not complete in time"
                a.failed[name] = reason
                await self.book.save(a)
                await self._alert(f"{a.image} {name}: no FITS file: {reason}")
            return None
        filename = sensor_file_name(self.cfg.site.instrument, a.image, raft, sensor)
        data_id = {"instrument": self.cfg.site.instrument, "image": a.image, "group": meta.group, "snap": meta.snap,
                   "raft": raft, "sensor": sensor, "obs_day": obs_day(_utc(meta.t_start))}
        async with self.slots:
            try:
                with self.stage("write", "One sensor's FITS file: read the raw pixels, write, fsync").time():
                    written = await asyncio.to_thread(self._write, filename, header, meta, data_id)
            except OSError as exc:  # the environment (full disk, I/O error): retried until it works
                self.write_errors += 1
                try:
                    free = f"{shutil.disk_usage(self.incoming).free} bytes free there"
                except OSError:
                    free = "free space unknown"
                # One ALARM episode for all sensors, not a panic per sensor.
                self.faults.report(WRITE_FAULT, f"cannot write FITS files in {self.incoming}: {exc} ({free}); "
                                                f"last: {a.image} {name}")
                return None  # stays pending: retried on the next wake-up
            except Exception as exc:  # noqa: BLE001 - a bad input or a bug: this sensor fails, others go on
                _log.exception("%s %s: writing %s failed", a.image, name, filename, extra={"IMAGE": a.image})
                a.failed[name] = f"{type(exc).__name__}: {exc}"
                await self.book.save(a)
                await self._alert(f"{a.image} {name}: no FITS file: {type(exc).__name__}: {exc}")
                return None
        if WRITE_FAULT in self.faults.active:
            self.faults.clear(WRITE_FAULT)
        return {"path": str(written[0]), "size": written[1], "checksum": written[2], "data_id": data_id,
                "identity": written[3], **({"adler32": written[4]} if written[4] else {})}

    def _write(self, filename: str, header: ImageHeader, meta: SensorMeta,
               data_id: dict) -> tuple[Path, int, str, str, str | None]:
        """(path, size, checksum, identity, Adler-32 or None) of the sensor's file in incoming/."""
        target = self.incoming / filename
        if target.exists():  # written before a crash, not yet delivered: deliver what is there
            crc, adler = file_crc32_adler32(target)
            st = target.stat()
            return target, st.st_size, crc, file_identity(st), adler
        if meta.fits_layout:
            written = self._finish_stored(filename, header, meta, data_id)
        else:  # stored by an earlier fitsflow: the readout's own layout
            written = write_fits(self.incoming, filename, build_hdus(header, meta, read_pixels(self.raw_root, meta),
                                                                     filename, data_id), owner=self.temp_owner)
        return written.path, written.size, written.checksum, file_identity(written.path.stat()), written.adler32

    def _finish_stored(self, filename: str, header: ImageHeader, meta: SensorMeta, data_id: dict) -> WrittenFile:
        """The stored readout becomes the file (linked), or, where it cannot, a copy."""
        raw = raw_path(self.raw_root, meta)
        try:
            written = write_linked(raw, self.incoming, filename,
                                   build_hdus(header, meta, shape_only(meta), filename, data_id), meta,
                                   owner=self.temp_owner)
            self.files_linked += 1
            return written
        except NotLinkable as why:
            _log.info("%s: written as a copy: %s", filename, why, extra={"IMAGE": meta.image})
        written = write_copy(raw, self.incoming, filename, build_hdus(header, meta, shape_only(meta), filename,
                                                                      data_id), meta, owner=self.temp_owner)
        self.files_copied += 1
        return written

    async def _alert(self, problem: str) -> None:
        _log.error(problem)
        await self.bus.send(make("ALERT", severity="error", source=self.ident, message=problem, sender=self.ident))

    async def _heartbeats(self) -> None:
        while True:
            try:
                await self.bus.send(make("FORWARDER_HEARTBEAT", forwarder=self.instance, load=len(self.book.open_items()),
                                         capacity=self.fcfg.capacity, sender=self.ident))
            except MachineFault as exc:  # the next beat will do; the bus reported the fault
                _log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(self.fcfg.heartbeat_s)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)
