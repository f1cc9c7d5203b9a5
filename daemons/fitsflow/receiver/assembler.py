"""Images and their sensors on disk: from stripes to READOUT_COMPLETE.

State lives on disk (the raw buffer store), so a restarted receiver resumes: sensors being
assembled are reopened from their stripe journals, images not yet announced get a fresh
deadline. An image is announced when every expected sensor is whole, or at its deadline
with the missing and partial sensors listed. READOUT.json is written before the message
(the forwarders, woken by it, read it) and marked announced once the message is on a broker
or in the bus's outbox: a crash in between announces again at the next start (consumers
are idempotent), never not at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.errors import UnsafePath
from fitsflow.core.handoff import atomic_write_bytes, remove_stale_temps
from fitsflow.core.layout import IMAGE_NAME
from fitsflow.core.poison import load_file
from fitsflow.core.rawstore import (DATA_OFFSET, DirectIO, SensorMeta, SensorWriter, image_dir, parse_meta,
                                    readout_announced, sensor_key, write_readout_summary)
from fitsflow.core.spead_format import Stripe
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)

Announce = Callable[[str, dict], Awaitable[None]]


@dataclass
class ImageState:
    image: str
    deadline: float
    expected: set[str] | None = None
    writers: dict[str, SensorWriter] = field(default_factory=dict)
    done: dict[str, SensorMeta] = field(default_factory=dict)
    announced: bool = False
    timed_out: bool = False

    def summary(self) -> dict:
        expected = self.expected if self.expected is not None else set(self.done) | set(self.writers)
        present = sorted(k for k in self.done if k in expected or self.expected is None)
        partial = sorted(k for k, m in self.done.items() if m.partial)
        missing = sorted(expected - set(self.done))
        return {"present": present, "missing": missing, "partial": partial, "timed_out": self.timed_out}


class ImageAssembler:
    """Role: turns stripes into stored sensors and announces finished images."""

    def __init__(self, root: Path, timeout_s: float, default_expected: set[str], announce: Announce,
                 *, spawn: Spawn, storage_failed: Callable[[str], object] = lambda detail: None,
                 keep_announced_s: float = 600.0, direct_io: bool = False, write_threads: int = 4) -> None:
        """``direct_io``: stripes written with O_DIRECT where the store allows it (core.rawstore).
        ``write_threads``: stripes written at once (every stream's ``receiver.writers``)."""
        self._spawn = spawn
        # The stripes' own threads: asyncio's shared pool (min(32, cores + 4) threads, also
        # taken by connects to the broker, panics, clean-ups) would make configured writers
        # wait for a thread while the spead2 ring fills.
        self._write_pool = ThreadPoolExecutor(write_threads, thread_name_prefix="stripe writer")
        #: O_DIRECT for the stripes, shared by all writers: a refusing filesystem is asked once
        self.direct_io = DirectIO() if direct_io else None
        self.storage_failed = storage_failed
        self.root = Path(root)
        self.timeout_s = timeout_s
        self.default_expected = default_expected
        self.announce = announce
        self.keep_announced_s = keep_announced_s
        self.images: dict[str, ImageState] = {}
        self._task: asyncio.Task[None] | None = None
        self.sensors_stored = 0
        self.sensors_partial = 0
        self.images_announced = 0
        self.late_stripes = 0
        self.storage_errors = 0
        #: State that could not be read at start-up (set aside; the daemon raises an ALERT).
        self.rejected: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._resume)
        for state in list(self.images.values()):
            await self._publish_complete(state)
        self._task = self._spawn(self._deadlines(), "assembler deadlines", forever=True)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for state in self.images.values():
            for writer in state.writers.values():
                writer.close()  # journals stay: the next start resumes these sensors
        self._write_pool.shutdown(wait=False)  # close() waited for the writes in flight

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def _resume(self) -> None:
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not IMAGE_NAME.fullmatch(d.name):
                continue
            # Images not announced yet, and announced ones with a sensor still being assembled
            # (a re-send, or a sensor whose last stripe was stored just before a crash).
            if not readout_announced(self.root, d.name, self.rejected) or any(d.glob(".*.stripes")):
                state = self._load(d)
                self.images[d.name] = state
                _log.info("resuming image %s: %d sensors stored, %d being assembled", d.name, len(state.done),
                          len(state.writers), extra={"IMAGE": d.name})

    def _load(self, d: Path) -> ImageState:
        """An image's state from the raw buffer store (what a restart, or a late stripe after
        the image left memory, finds on disk)."""
        state = ImageState(d.name, time.monotonic() + self.timeout_s, expected=self._expected_from_disk(d),
                           announced=readout_announced(self.root, d.name))
        for meta_file in d.glob("*.json"):
            if meta_file.name != "READOUT.json":
                meta = load_file(meta_file, parse_meta, self.rejected)
                if meta is not None:
                    state.done[meta.name] = meta
        for journal in d.glob(".*.stripes"):
            key = journal.name[1:-len(".stripes")]
            meta_path = d / f".{key}.meta"
            if key in state.done and not state.done[key].partial:
                continue
            meta = load_file(meta_path, parse_meta, self.rejected)  # None: never started, or unreadable
            if meta is not None:  # incl. a refill of a partial sensor
                state.writers[key] = SensorWriter(self.root, meta, direct_io=self.direct_io)
        remove_stale_temps(d)
        return state

    def _expected_from_disk(self, d: Path) -> set[str] | None:
        def parse(data: bytes) -> set[str]:
            names = json.loads(data)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("not a list of sensor names")
            return set(names)
        expected = load_file(d / ".expected", parse, self.rejected)
        return expected if expected is not None else (set(self.default_expected) or None)

    # -- events ------------------------------------------------------------------------

    def expect(self, image: str, sensors: list[str], exptime: float) -> None:
        """START_INTEGRATION: the sensors to wait for, and a deadline after the exposure."""
        state = self._state(image)
        state.expected = set(sensors)
        state.deadline = max(state.deadline, time.monotonic() + exptime + self.timeout_s)
        d = image_dir(self.root, image)
        d.mkdir(exist_ok=True)
        atomic_write_bytes(d / ".expected", json.dumps(sorted(sensors)).encode())

    async def add_stripe(self, stripe: Stripe) -> bool:
        """Store one stripe; False if it was a duplicate. Announces the image when whole."""
        try:
            key = sensor_key(stripe.raft, stripe.sensor)
        except UnsafePath:
            return False
        state = self._state(stripe.image)
        writer = state.writers.get(key)
        done = state.done.get(key)
        if writer is None and done is not None:
            if not done.partial or stripe.index in done.stripes_received or \
                    (done.rows, done.cols, done.stripe_count) != (stripe.rows, stripe.cols, stripe.count):
                self.late_stripes += 1
                return False
            # A stripe a partial sensor lacks (the camera re-sends it): fill the gaps.
            _log.info("image %s sensor %s: refilling a partial sensor", stripe.image, key,
                      extra={"IMAGE": stripe.image})
            writer = SensorWriter.refill(self.root, done, direct_io=self.direct_io)
            atomic_write_bytes(writer.dir / f".{key}.meta", json.dumps(writer.meta.__dict__).encode())
            state.writers[key] = writer
        if writer is None:
            meta = SensorMeta(image=stripe.image, image_seq=stripe.image_seq, group=stripe.group, snap=stripe.snap,
                              raft=stripe.raft, sensor=stripe.sensor, rows=stripe.rows, cols=stripe.cols,
                              dtype=stripe.pixels.dtype.str, t_start=stripe.t_start, t_end=stripe.t_end,
                              stripe_count=stripe.count, data_offset=DATA_OFFSET)
            # Synchronous (no await): two stripes of a new sensor written concurrently must
            # find the same writer.
            writer = self._open_writer(meta)
            state.writers[key] = writer
        elif (writer.meta.rows, writer.meta.cols, writer.meta.stripe_count) != (stripe.rows, stripe.cols, stripe.count):
            _log.warning("image %s sensor %s: stripe with shape %dx%d/%d differs from %dx%d/%d; dropped",
                         stripe.image, key, stripe.rows, stripe.cols, stripe.count, writer.meta.rows,
                         writer.meta.cols, writer.meta.stripe_count, extra={"IMAGE": stripe.image})
            return False
        if not writer.claim(stripe.index):
            if writer.complete and state.writers.get(key) is writer:
                await self._publish_complete(state)  # stored whole, never published (see there)
            return False  # a duplicate, or the same stripe being written right now
        # Stripes are independent pwrites at their own offsets: several may be written at once
        # (the stream keeps up to `writers` in flight), in threads, while the next heaps arrive.
        await asyncio.get_running_loop().run_in_executor(self._write_pool, writer.write_stripe, stripe.index,
                                                         stripe.row_start, stripe.pixels)
        if writer.complete and state.writers.get(key) is writer:
            del state.writers[key]  # taken before any await: finished exactly once
            await self._finish_sensor(state, key, writer)
            if state.expected is not None and state.expected <= set(state.done):
                await self._announce(state)
        return True

    def _open_writer(self, meta: SensorMeta) -> SensorWriter:
        writer = SensorWriter(self.root, meta, direct_io=self.direct_io)
        # The sensor's identity, beside its journal, so a restart can resume it.
        # Atomic: a full disk must not leave a 0-byte .meta that a restart cannot read.
        atomic_write_bytes(writer.dir / f".{meta.name}.meta", json.dumps(meta.__dict__).encode())
        return writer

    async def _publish_complete(self, state: ImageState) -> None:
        """Publish the sensors of ``state`` that have every stripe but were never published: a
        crash (or a full disk at the finish) came between the last stripe and the .json. Their
        stripes are all in the journal, so a re-send is refused as duplicates: without this
        they would wait for ever. Announces the image if that makes it whole, or again if it
        was announced already."""
        for key, writer in list(state.writers.items()):
            if not writer.complete or state.writers.get(key) is not writer:
                continue
            del state.writers[key]
            _log.info("image %s sensor %s: every stripe stored before the last stop; publishing it", state.image,
                      key, extra={"IMAGE": state.image})
            try:
                await self._finish_sensor(state, key, writer)
            except OSError as exc:  # kept: the next start or a re-sent stripe tries again
                self.storage_errors += 1
                _log.error("image %s sensor %s cannot be stored: %s", state.image, key, exc,
                           extra={"IMAGE": state.image})
                continue
        if not state.announced and state.expected is not None and state.expected <= set(state.done):
            await self._announce(state)

    async def _finish_sensor(self, state: ImageState, key: str, writer: SensorWriter | None = None) -> None:
        writer = writer or state.writers.pop(key)
        try:
            meta = await asyncio.to_thread(writer.finish)
        except OSError:
            writer.close()
            raise
        (writer.dir / f".{key}.meta").unlink(missing_ok=True)
        state.done[key] = meta
        self.sensors_stored += 1
        if meta.partial:
            self.sensors_partial += 1
            _log.warning("image %s sensor %s stored partial: rows %s missing", state.image, key, meta.missing_rows,
                         extra={"IMAGE": state.image})
        if state.announced:  # a late or re-sent sensor: tell the consumers again
            await self._announce(state)

    def _state(self, image: str) -> ImageState:
        state = self.images.get(image)
        if state is None:
            d = image_dir(self.root, image)
            if d.is_dir():
                state = self._load(d)
            else:
                state = ImageState(image, time.monotonic() + self.timeout_s,
                                   expected=set(self.default_expected) or None)
            self.images[image] = state
        return state

    async def _announce(self, state: ImageState) -> None:
        summary = state.summary()
        # The summary first: a forwarder woken by READOUT_COMPLETE reads it from disk, and
        # one that had all its messages before the summary was there waited for its next
        # look (0.5 s; bench e2e's p99 in about one run of five). Marked announced once the
        # message is durable (on a broker or in the bus's outbox): a crash in between
        # announces the image again at the next start, never not at all.
        await asyncio.to_thread(write_readout_summary, self.root, state.image, summary, announced=False)
        await self.announce(state.image, summary)
        await asyncio.to_thread(write_readout_summary, self.root, state.image, summary, announced=True)
        if not state.announced:
            self.images_announced += 1
        state.announced = True
        state.deadline = time.monotonic() + self.keep_announced_s

    async def _deadlines(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for state in list(self.images.values()):
                if now < state.deadline:
                    continue
                if state.announced:
                    del self.images[state.image]  # long done; late stripes now start a new state
                    for writer in state.writers.values():
                        writer.close()  # its journal stays: a re-send reopens it (_load)
                    continue
                state.timed_out = True
                for key in list(state.writers):
                    if state.writers[key].awaiting_store:
                        # Stripes arrived that the raw buffer refused (a full disk): a sensor
                        # published partial now would be archived with zeros for good. It stays
                        # open and is announced missing: catch-up asks the camera to re-send,
                        # the re-sent stripes complete it, the image is announced again.
                        _log.warning("image %s sensor %s: stripes %s were refused by the raw buffer; kept open for a "
                                     "re-send", state.image, key, sorted(state.writers[key].refused -
                                                                         state.writers[key].received),
                                     extra={"IMAGE": state.image})
                        continue
                    try:
                        await self._finish_sensor(state, key)  # partial: rows that never came are zeros
                    except OSError as exc:
                        self.storage_errors += 1
                        _log.error("image %s sensor %s cannot be stored: %s", state.image, key, exc,
                                   extra={"IMAGE": state.image})
                _log.warning("image %s timed out: %s", state.image, state.summary(), extra={"IMAGE": state.image})
                try:
                    await self._announce(state)
                except OSError as exc:  # the store is full or unwritable: try again shortly
                    self.storage_errors += 1
                    state.deadline = now + 1.0
                    _log.error("image %s: cannot record its readout: %s; retrying", state.image, exc,
                               extra={"IMAGE": state.image})
                    self.storage_failed(f"{state.image}: {exc}")
