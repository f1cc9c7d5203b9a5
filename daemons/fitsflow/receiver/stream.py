"""One UDP port: a spead2 stream, decoded into stripes, with its counters.

spead2 does the packet work in C++ threads; this module pulls finished heaps from its ring
in the event loop, checks them against the wire format and hands stripes to the assembler.
Incomplete heaps cannot be attributed (spead2's Python API gives their size and received
ranges, not their items), so they are counted as lost bytes; the stripe they carried then
shows up as missing rows of its sensor.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np
import spead2
import spead2.recv
import spead2.recv.asyncio

from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.errors import FitsflowError
from fitsflow.core.layout import COMPONENT_NAME, IMAGE_NAME
from fitsflow.core.spead_format import ITEMS, PIXEL_DTYPES, Stripe, decode_name, stripe_bounds
from fitsflow.core.config import parse_host_port
from fitsflow.receiver.config import ReceiverConfig

_log = logging.getLogger(__name__)
_KNOWN_IDS = {spec.id for spec in ITEMS}


class BadHeap(ValueError):
    """A heap that does not follow fitsflow's wire format; the message says how."""


@dataclass
class StreamCounters:
    """fitsflow's own counters of one stream (spead2's are read from the stream)."""

    heaps_complete: int = 0
    heaps_incomplete: int = 0
    heaps_bad: int = 0
    heaps_duplicate: int = 0
    heaps_with_unknown_items: int = 0
    storage_errors: int = 0
    stripes_stored: int = 0
    bytes_stored: int = 0
    bytes_lost: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)


StripeSink = Callable[[Stripe], Awaitable[bool]]


class SpeadStreamReceiver:
    """Role: receive one UDP port. ``sink(stripe)`` stores a stripe, False for a duplicate."""

    def __init__(self, address: str, cfg: ReceiverConfig, sink: StripeSink,
                 on_storage_error: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.on_storage_error = on_storage_error
        self.address = address
        self.host, self.port = parse_host_port(address)
        self.cfg = cfg
        self.sink = sink
        self.counters = StreamCounters()
        self._layouts: dict[int, tuple[np.dtype, tuple[int, ...]]] = {}
        self._stream: spead2.recv.asyncio.Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._slots = asyncio.Semaphore(cfg.writers)
        self._writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        pool = spead2.MemoryPool(lower=16384, upper=self.cfg.max_heap_bytes + 65536,
                                 max_free=self.cfg.pool_heaps(), initial=self.cfg.pool_heaps())
        config = spead2.recv.StreamConfig(max_heaps=self.cfg.max_heaps, memory_allocator=pool,
                                          allow_out_of_order=True, stop_on_stop_item=False)
        ring = spead2.recv.RingStreamConfig(heaps=self.cfg.ring_heaps, contiguous_only=False,
                                            incomplete_keep_payload_ranges=True)
        self._stream = spead2.recv.asyncio.Stream(spead2.ThreadPool(1), config, ring)
        try:
            self._stream.add_udp_reader(self.port, max_size=9200, buffer_size=self.cfg.socket_buffer_bytes,
                                        bind_hostname=self.host)
        except RuntimeError as exc:  # boost.asio's bind/resolve errors
            self._stream.stop()
            raise FitsflowError(f"cannot receive on UDP {self.address}: {exc}") from None
        self._task = asyncio.create_task(self._run(), name=f"spead {self.address}")
        _log.info("receiving SPEAD on %s (socket buffer %d MiB, %d heaps in flight, %d in ring)", self.address,
                  self.cfg.socket_buffer_bytes >> 20, self.cfg.max_heaps, self.cfg.ring_heaps)

    async def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
        await cancel_and_wait(self._task)
        await asyncio.gather(*self._writes, return_exceptions=True)  # stripes in flight land
        if self._stream is not None:
            _log.info("stream %s stopped: %s", self.address, self.describe())

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def spead_stats(self) -> dict[str, int]:
        if self._stream is None:
            return {}
        stats = self._stream.stats
        return dict(zip(stats.keys(), stats.values()))

    def describe(self) -> str:
        c = self.counters
        return (f"{self.address}: {c.heaps_complete} heaps, {c.heaps_incomplete} incomplete, {c.heaps_bad} bad, "
                f"{c.bytes_lost} B lost")

    async def _run(self) -> None:
        assert self._stream is not None
        async for heap in self._stream:
            if isinstance(heap, spead2.recv.IncompleteHeap):
                self.counters.heaps_incomplete += 1
                lost = heap.heap_length - heap.received_length if heap.heap_length >= 0 else 0
                self.counters.bytes_lost += max(0, lost)
                self._warn_once("incomplete", f"incomplete heap on {self.address}: {heap.received_length} of "
                                f"{heap.heap_length} bytes received (packets lost); its rows will be missing")
                continue
            try:
                stripe = self._decode(heap)
            except BadHeap as exc:
                reason = str(exc)
                self.counters.heaps_bad += 1
                kind = reason.split(":", 1)[0]
                self.counters.bad_reasons[kind] = self.counters.bad_reasons.get(kind, 0) + 1
                self._warn_once(kind, f"heap {heap.cnt} on {self.address} rejected: {reason}")
                continue
            self.counters.heaps_complete += 1
            await self._slots.acquire()  # at most `writers` stripes in flight; then wait
            task = asyncio.create_task(self._store(stripe))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _store(self, stripe: Stripe) -> None:
        """Store one stripe (runs concurrently with the next heaps and other stripes)."""
        try:
            try:
                stored = await self.sink(stripe)
            except OSError as exc:  # one sensor's storage failing must not stop the stream
                self.counters.storage_errors += 1
                _log.error("cannot store stripe %d of %s %s_%s: %s", stripe.index, stripe.image, stripe.raft,
                           stripe.sensor, exc, extra={"IMAGE": stripe.image})
                if self.on_storage_error is not None:
                    await self.on_storage_error(f"{stripe.image} {stripe.raft}_{stripe.sensor}: {exc}")
                return
            if stored:
                self.counters.stripes_stored += 1
                self.counters.bytes_stored += stripe.pixels.nbytes
            else:
                self.counters.heaps_duplicate += 1
        finally:
            self._slots.release()

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            _log.warning("%s (further ones are counted, not logged)", message)

    def _decode(self, heap: spead2.recv.Heap) -> Stripe:
        """Heap → Stripe, straight from the raw items (spead2's ItemGroup.update costs
        ~1.4 ms a heap in Python; this ~0.1 ms). Each item's dtype and shape come from the
        latest descriptor this stream received for it, parsed once per distinct descriptor."""
        for d in heap.get_descriptors():
            if d.id in _KNOWN_IDS:
                self._layouts[d.id] = _layout(d.numpy_header)
        raw = {item.id: item for item in heap.get_items()}
        unknown = set(raw) - _KNOWN_IDS
        if unknown:  # tolerated (a newer sender may add items), counted and reported once
            self.counters.heaps_with_unknown_items += 1
            self._warn_once("unknown items", f"heap {heap.cnt} on {self.address} has unknown items "
                            f"{sorted(hex(i) for i in unknown)}; they are ignored")
        if not self._layouts:
            raise BadHeap("no descriptors: items arrived before any descriptor (the sender must send them)")
        missing = [spec.name for spec in ITEMS if spec.id not in raw]
        if missing:
            raise BadHeap(f"missing items: {missing}")
        v: dict[str, np.ndarray] = {}
        for spec in ITEMS:
            layout = self._layouts.get(spec.id)
            if layout is None:
                raise BadHeap(f"no descriptors: none received for {spec.name}")
            dtype, shape = layout
            if spec.name != "pixels" and (dtype.str.lstrip("|") != spec.dtype.lstrip("|") or shape != spec.shape):
                raise BadHeap(f"wrong descriptor: {spec.name} is {dtype.str}{shape}, the format says "
                              f"{spec.dtype}{spec.shape}")
            item = raw[spec.id]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            buf = np.frombuffer(item, dtype=np.uint8)
            if buf.size < nbytes:
                raise BadHeap(f"wrong shape: {spec.name} has {buf.size} bytes, its descriptor needs {nbytes}")
            # As in SPEAD: immediates are head-padded, other items may be tail-padded.
            buf = buf[buf.size - nbytes:] if item.is_immediate else buf[:nbytes]
            value = buf.view(dtype)
            v[spec.name] = value if shape else value.reshape(())
        try:
            image, group = decode_name(v["image_name"]), decode_name(v["group_id"])
            raft, sensor = decode_name(v["raft"]), decode_name(v["sensor"])
        except (UnicodeDecodeError, ValueError, TypeError):
            raise BadHeap("bad names: a name item is not ASCII") from None
        if not IMAGE_NAME.fullmatch(image) or not COMPONENT_NAME.fullmatch(raft) or not COMPONENT_NAME.fullmatch(sensor):
            raise BadHeap(f"bad names: image {image!r}, raft {raft!r}, sensor {sensor!r}")
        pixels = v["pixels"]
        if pixels.dtype.str not in PIXEL_DTYPES:
            raise BadHeap(f"wrong pixels: {pixels.dtype.str} is not one of {sorted(PIXEL_DTYPES)}")
        rows, cols = int(v["sensor_rows"]), int(v["sensor_cols"])
        count, index, row_start = int(v["stripe_count"]), int(v["stripe_index"]), int(v["row_start"])
        if not (rows > 0 and cols > 0 and 0 < count <= rows and 0 <= index < count):
            raise BadHeap(f"wrong shape: {rows}x{cols} sensor, stripe {index} of {count}")
        start, end = stripe_bounds(rows, count, index)
        if row_start != start or pixels.size != (end - start) * cols:
            raise BadHeap(f"wrong shape: stripe {index} of {count} should hold rows {start}-{end} "
                          f"({(end - start) * cols} pixels), got row {row_start} and {pixels.size} pixels")
        return Stripe(image_seq=int(v["image_seq"]), image=image, group=group, snap=int(v["snap"]), raft=raft,
                      sensor=sensor, rows=rows, cols=cols, index=index, count=count, row_start=row_start,
                      t_start=float(v["t_readout_start"]), t_end=float(v["t_readout_end"]), pixels=pixels,
                      owner=heap)


@functools.lru_cache(maxsize=256)
def _layout(numpy_header: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) from a SPEAD numpy-style descriptor header, e.g.
    ``{'descr': '<i4', 'fortran_order': False, 'shape': (65536,)}``."""
    try:
        header = ast.literal_eval(numpy_header.decode("ascii"))
        dtype = np.dtype(header["descr"])
        shape = tuple(int(x) for x in header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError):
        raise BadHeap(f"bad descriptor: {numpy_header[:80]!r} is not a numpy descriptor") from None
    if header.get("fortran_order") or dtype.hasobject:
        raise BadHeap(f"bad descriptor: {numpy_header[:80]!r} is not supported")
    return dtype, shape


class RejectedPacketCounter(logging.Handler):
    """spead2 drops malformed and foreign packets itself and logs each at INFO on the
    ``spead2`` logger. This handler counts them by reason and logs the first of each kind,
    so a flood of foreign packets cannot flood the journal."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "rejected" in message or "dropped" in message or "discarding" in message:
            self.counts[message] = self.counts.get(message, 0) + 1
            if self.counts[message] == 1:
                _log.warning("spead2: %s (further ones are counted, not logged)", message)
        elif record.levelno >= logging.WARNING:
            _log.warning("spead2: %s", message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def install(self) -> None:
        logger = logging.getLogger("spead2")
        logger.addHandler(self)
        logger.propagate = False
        logger.setLevel(logging.INFO)

    def uninstall(self) -> None:
        logger = logging.getLogger("spead2")
        logger.removeHandler(self)
        logger.propagate = True
