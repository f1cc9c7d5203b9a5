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
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np
import spead2
import spead2.recv
import spead2.recv.asyncio

from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.errors import FitsflowError
from fitsflow.core.faults import retry_delay
from fitsflow.core.layout import COMPONENT_NAME, IMAGE_NAME
from fitsflow.core.spead_format import ITEMS, PIXEL_DTYPES, Stripe, decode_name, stripe_bounds
from fitsflow.core.config import parse_host_port
from fitsflow.core.tasks import Spawn
from fitsflow.receiver import packet_filter
from fitsflow.receiver.config import ReceiverConfig

_log = logging.getLogger(__name__)
_KNOWN_IDS = {spec.id for spec in ITEMS}
_DIGITS = re.compile(r"\d+")
#: Room in a heap beyond its pixels' max_heap_bytes, for the items and their descriptors.
DESCRIPTOR_ROOM = 65536


def udp_socket_state(inode: int) -> tuple[int, int] | None:
    """(rx_queue bytes, packets dropped) of the UDP socket with this inode, from
    /proc/net/udp and udp6; None if it is not there. The kernel drops a packet at the socket
    when its receive buffer is full: nobody read in time."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] == str(inode):
                        return int(fields[4].split(":")[1], 16), int(fields[12])
        except (OSError, ValueError, StopIteration):
            continue
    return None


def _udp_socket(host: str, port: int, buffer_bytes: int) -> socket.socket:
    """A bound UDP socket with the receive buffer asked for (the kernel caps it at
    net.core.rmem_max; the daemon warns about that at start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        sock.bind((host or "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


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
                 storage_failed: Callable[[str], object], storage_ok: Callable[[], None], *, spawn: Spawn,
                 socket_failed: Callable[[str, str], object] = lambda address, detail: None,
                 socket_ok: Callable[[str], object] = lambda address: None) -> None:
        """``storage_failed(detail)`` / ``storage_ok()``: the raw buffer store refused a stripe /
        took one; ``socket_failed(address, detail)`` / ``socket_ok(address)``: the port cannot
        be opened (yet) / is open at last (fault episodes of the daemon open and close with them)."""
        self._spawn = spawn
        self.storage_failed = storage_failed
        self.storage_ok = storage_ok
        self.socket_failed = socket_failed
        self.socket_ok = socket_ok
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
        self._socket: socket.socket | None = None
        self._last_batches = -1
        self._stalls = 0

    async def start(self) -> None:
        """Open the port and receive. A port that cannot be opened (address not on this host
        yet, port held by another process, the kernel refusing the packet filter) is a fault
        of the machine, not of fitsflow: the daemon stays up in ALARM, saying why, and opens
        the port as soon as it can; exiting would only make systemd restart it into the same
        refusal."""
        try:
            self._open()
        except FitsflowError as exc:
            self.socket_failed(self.address, str(exc))
            self._task = self._spawn(self._open_then_run(), f"spead {self.address}", forever=True)
            return
        self._task = self._spawn(self._run(), f"spead {self.address}", forever=True)

    def _open(self) -> None:
        """A spead2 stream reading our own bound, filtered socket; FitsflowError naming the
        address and the system's reason if the port cannot be opened."""
        pool = spead2.MemoryPool(lower=16384, upper=self.cfg.max_heap_bytes + DESCRIPTOR_ROOM,
                                 max_free=self.cfg.pool_heaps(), initial=self.cfg.pool_heaps())
        # allow_unsized_heaps=False: a heap must say its size in every packet (spead2's
        # sender does), so that the packet filter can bound it.
        config = spead2.recv.StreamConfig(max_heaps=self.cfg.max_heaps, memory_allocator=pool,
                                          allow_out_of_order=True, stop_on_stop_item=False,
                                          allow_unsized_heaps=False)
        ring = spead2.recv.RingStreamConfig(heaps=self.cfg.ring_heaps, contiguous_only=False,
                                            incomplete_keep_payload_ranges=True)
        stream = spead2.recv.asyncio.Stream(spead2.ThreadPool(1), config, ring)
        sock: socket.socket | None = None
        try:
            # Our own socket, so that the kernel filters it before spead2 sees a packet
            # (packet_filter: no packet may make spead2 allocate beyond max_heap_bytes).
            sock = _udp_socket(self.host, self.port, self.cfg.socket_buffer_bytes)
            packet_filter.attach(sock, self.cfg.max_heap_bytes + DESCRIPTOR_ROOM)
            stream.add_udp_reader(sock, max_size=9200)
        except (OSError, RuntimeError) as exc:  # bind errors, boost.asio's errors
            stream.stop()
            if sock is not None:
                sock.close()
            raise FitsflowError(f"cannot receive on UDP {self.address}: {exc}") from None
        self._stream, self._socket = stream, sock
        _log.info("receiving SPEAD on %s (socket buffer %d MiB, %d heaps in flight, %d in ring)", self.address,
                  self.cfg.socket_buffer_bytes >> 20, self.cfg.max_heaps, self.cfg.ring_heaps)

    async def _open_then_run(self) -> None:
        attempt = 0
        while self._stream is None:
            attempt += 1
            await asyncio.sleep(retry_delay(attempt, first=0.5, cap=self.cfg.reopen_max_s))
            try:
                self._open()
            except FitsflowError as exc:
                self.socket_failed(self.address, str(exc))
        self.socket_ok(self.address)
        await self._run()

    async def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
        await cancel_and_wait(self._task)
        await asyncio.gather(*self._writes, return_exceptions=True)  # stripes in flight land
        if self._socket is not None:
            self._socket.close()
        if self._stream is not None:
            _log.info("stream %s stopped: %s", self.address, self.describe())

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def _socket_state(self) -> tuple[int, int] | None:
        """:func:`udp_socket_state` of this stream's socket, or None without one."""
        if self._socket is None:
            return None
        return udp_socket_state(os.fstat(self._socket.fileno()).st_ino)

    def kernel_queue(self) -> int | None:
        """Bytes waiting in this stream's socket receive queue (from /proc/net/udp*), or None."""
        state = self._socket_state()
        return state[0] if state else None

    def socket_drops(self) -> int | None:
        """Packets the kernel dropped at this stream's socket (its buffer was full), or None."""
        state = self._socket_state()
        return state[1] if state else None

    def check_alive(self) -> str | None:
        """Called periodically: a reason if spead2's worker no longer reads the socket while
        packets wait in it (its thread died or hangs), else None. Needs two calls in a row
        that see packets waiting and no batch read in between."""
        if self._stream is None:
            return None
        batches = self.spead_stats().get("batches", 0)
        waiting = self.kernel_queue()
        stalled = bool(waiting) and batches == self._last_batches
        self._last_batches = batches
        self._stalls = self._stalls + 1 if stalled else 0
        if self._stalls >= 2:
            return (f"spead2 stopped reading UDP {self.address}: {waiting} bytes wait in the socket and no packet "
                    "was read since the last check")
        return None

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
            task = self._spawn(self._store(stripe), f"store {stripe.image} {stripe.raft}_{stripe.sensor}/{stripe.index}")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _store(self, stripe: Stripe) -> None:
        """Store one stripe (runs concurrently with the next heaps and other stripes)."""
        try:
            try:
                stored = await self.sink(stripe)
            except OSError as exc:  # the store failing must not stop the stream (nor flood the log)
                self.counters.storage_errors += 1
                _log.debug("cannot store stripe %d of %s %s_%s: %s", stripe.index, stripe.image, stripe.raft,
                           stripe.sensor, exc, extra={"IMAGE": stripe.image})
                self.storage_failed(f"{stripe.image} {stripe.raft}_{stripe.sensor}: {exc}")
                return
            self.storage_ok()
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

    def __init__(self, on_fatal: Callable[[str], None] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[str, int] = {}
        #: spead2's other warnings, by kind (numbers replaced by N)
        self.warnings: dict[str, int] = {}
        #: Called (from spead2's thread) when spead2 reports that its worker died.
        self.on_fatal = on_fatal

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "rejected" in message or "dropped" in message or "discarding" in message:
            # Counted by kind: numbers vary per packet ("too small (17 bytes)") and would make
            # one key per packet size.
            message = packet_filter.reason_of(message) or _DIGITS.sub("N", message)
            self.counts[message] = self.counts.get(message, 0) + 1
            if self.counts[message] == 1:
                _log.warning("spead2: %s (further ones are counted, not logged)", message)
        elif "threw exception" in message:  # "Worker thread threw exception (expect deadlocks!)"
            _log.critical("spead2: %s", message)
            if self.on_fatal is not None:
                self.on_fatal(f"spead2's receive thread died: {message}")
        elif record.levelno >= logging.WARNING:  # e.g. "worker thread blocked by full ringbuffer on heap 12"
            kind = _DIGITS.sub("N", message)
            self.warnings[kind] = self.warnings.get(kind, 0) + 1
            if self.warnings[kind] == 1:
                _log.warning("spead2: %s (further ones of this kind are counted, not logged)", message)

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
