"""The raw buffer store: the receiver writes sensor readouts, the forwarder reads them.

Layout under ``paths.raw_buffer``::

    <image>/<raft>_<sensor>.raw          the sensor's pixels (below); rows that never
                                         arrived are zeros
    <image>/<raft>_<sensor>.json         metadata (below); written last, so its presence
                                         means the .raw is whole
    <image>/.<raft>_<sensor>.assembling  the .raw being filled, stripe by stripe (pwrite)
    <image>/.<raft>_<sensor>.stripes     journal of stripes written so far, one per line:
                                         index, then the stripe's DATASUM part, CRC-32
                                         and Adler-32 (older journals: no Adler-32)
    <image>/READOUT.json                 the readout summary, written before READOUT_COMPLETE
                                         (``"announced": false``) and marked announced once
                                         the message is on a broker or in the outbox

The .raw is laid out as the sensor's final FITS file (``data_offset`` > 0): room for the
primary and the extension headers (:data:`HEADER_ROOM_BLOCKS` 2880-byte blocks, a sparse
hole until the forwarder writes them), then the data unit as FITS stores it (big-endian,
unsigned types offset by BZERO), padded to a block. The receiver sums each stripe as it
writes it, so the forwarder finishes the file (headers, CHECKSUM, DATASUM, the CRC-32 the
hand-off carries, the Adler-32 the archive registers in Rucio) without reading the pixels, and links it into ``incoming/``: the pixels
are written once. A .raw with ``data_offset`` 0 (written by an earlier fitsflow) holds the
pixels row-major in the readout's own dtype; the forwarder copies those.

With ``direct_io`` (``receiver.direct_io``), a stripe's whole 4 KiB blocks are written with
``O_DIRECT``, from the page-aligned encoding buffer straight to the device, and only the
partial blocks at its two ends through the page cache: nobody on this host reads the pixels
again, and the kernel's copy into the page cache was the largest part of the receiver's CPU
(bench/stripe_store --dir on a disk shows the difference). Where the filesystem refuses
O_DIRECT (tmpfs before Linux 6.6, some network filesystems), or a device wants another
alignment, the writes go through the page cache as before. A :class:`DirectIO` policy, one
per receiver, remembers such a filesystem: it is asked once and logged once, not for every
sensor of every image.

Metadata fields: image, image_seq, group, snap, raft, sensor, rows, cols, dtype (the
readout's, as the camera sent it), t_start, t_end, stripe_count, stripes_received,
missing_rows ([[start, end), ...]), partial (bool), received_at, data_offset, datasum,
data_crc and data_adler32 (of the padded data unit; null if unknown), inode (of the .raw
they describe).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


import numpy as np

from fitsflow.core.checksum import (adler32, adler32_combine, adler32_of_zeros, crc32, crc32_combine, crc32_of_zeros,
                                    fold32, ones_sum)
from fitsflow.core.handoff import atomic_write_bytes, fsync_dir
from fitsflow.core.layout import COMPONENT_NAME, check_name, inside
from fitsflow.core.poison import load_file
from fitsflow.core.spead_format import stripe_bounds

_log = logging.getLogger(__name__)


@dataclass
class SensorMeta:
    image: str
    image_seq: int
    group: str
    snap: int
    raft: str
    sensor: str
    rows: int
    cols: int
    dtype: str
    t_start: float
    t_end: float
    stripe_count: int
    stripes_received: list[int] = field(default_factory=list)
    missing_rows: list[list[int]] = field(default_factory=list)
    partial: bool = False
    received_at: float = 0.0
    data_offset: int = 0
    datasum: int | None = None
    data_crc: int | None = None
    inode: int = 0
    data_adler32: int | None = None

    @property
    def name(self) -> str:
        return f"{self.raft}_{self.sensor}"

    @property
    def data_bytes(self) -> int:
        """The pixels' size, without the block padding."""
        return self.rows * self.cols * np.dtype(self.dtype).itemsize

    @property
    def fits_layout(self) -> bool:
        return self.data_offset > 0


BLOCK = 2880
#: 2880-byte blocks kept for the primary header (360 cards: the header service's image
#: header) and the extension's (108 cards: sensor keywords and a long MISSROWS). A header
#: that does not fit makes the forwarder write a copy of the file instead of linking it.
HEADER_ROOM_BLOCKS = (10, 3)
DATA_OFFSET = sum(HEADER_ROOM_BLOCKS) * BLOCK
#: A stripe is encoded in chunks of this size (fits in a core's cache; no stripe-sized copy).
ENCODE_CHUNK_BYTES = 1 << 20
#: What O_DIRECT writes are aligned to: file offset, length and memory address. 4 KiB
#: satisfies devices with 512-byte and with 4 KiB logical blocks.
DIRECT_ALIGN = 4096


def padded(nbytes: int) -> int:
    """A data unit's size on disk: whole 2880-byte blocks."""
    return -(-nbytes // BLOCK) * BLOCK


def fits_encoded(pixels: np.ndarray) -> np.ndarray:
    """The pixels as a FITS data unit stores them: big-endian, unsigned integers as signed
    ones offset by BZERO (the top bit flipped). A new array; see :func:`fits_encode_into`."""
    flat = np.ascontiguousarray(pixels).reshape(-1)
    return fits_encode_into(flat, np.empty(flat.size, encoded_dtype(pixels.dtype))).reshape(pixels.shape)


def encoded_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype a FITS data unit stores pixels of ``dtype`` as (what :func:`fits_encoded` returns)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize > 1:
        return np.dtype(f">i{dtype.itemsize}")
    return dtype.newbyteorder(">")


def fits_encode_into(pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`fits_encoded` of the 1-D ``pixels``, written into the start of ``out`` (an array
    of :func:`encoded_dtype`, reused) and returned: one pass, and no new array per call. A new
    array per 1 MiB chunk cost page faults: 7,680 per 16 MiB of uint32 pixels, 20 ms against
    1.6 ms this way (measured with bench/stripe_store --dtype '<u4')."""
    dest = out[:pixels.size]
    dtype = pixels.dtype
    if dtype.kind == "u" and dtype.itemsize > 1:
        signed = np.dtype(dtype.str.replace("u", "i"))
        top = np.array(1 << (8 * dtype.itemsize - 1), dtype=dtype).view(signed)
        np.bitwise_xor(pixels.view(signed), top, out=dest)  # the BZERO offset and the byteswap at once
    else:
        np.copyto(dest, pixels)
    return dest


#: Each writing thread's encoding buffer (stripes of one sensor may be written in parallel).
_encode_buffers = threading.local()


def _encode_buffer(need: int) -> np.ndarray:
    """This thread's encoding buffer of at least ``need`` bytes, page-aligned (anonymous
    memory), so that its DIRECT_ALIGN-aligned offsets can be handed to O_DIRECT writes."""
    raw = getattr(_encode_buffers, "raw", None)
    if raw is None or raw.size < need:
        raw = _encode_buffers.raw = np.frombuffer(mmap.mmap(-1, need), dtype=np.uint8)
    return raw


def direct_io_supported(directory: Path) -> bool:
    """Whether files in ``directory`` can be opened with O_DIRECT (probed with a scratch file)."""
    probe = Path(directory) / f".direct-io-probe.{os.getpid()}.{threading.get_ident()}"
    probe.touch()
    try:
        fd = _open_direct(probe)
        if fd >= 0:
            os.close(fd)
        return fd >= 0
    finally:
        probe.unlink()


def _open_direct(path: Path) -> int:
    """A write-only O_DIRECT descriptor of ``path``, or -1 where its filesystem refuses one."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return -1


class DirectIO:
    """Whether sensor writers use O_DIRECT, and which filesystems refused it.

    A refusal is EINVAL, at open (the filesystem has no O_DIRECT) or at a write (the device
    wants a larger alignment than :data:`DIRECT_ALIGN`). It does not change while the
    process runs, so the filesystem (its ``st_dev``) is not asked again and the refusal is
    logged once, as a warning: before, every sensor of every image logged it. Shared by the
    writers of one receiver (their threads); a new process asks again."""

    def __init__(self) -> None:
        self._refused: set[int] = set()
        self._lock = threading.Lock()

    def open(self, path: Path) -> int:
        """An O_DIRECT descriptor of ``path``, or -1 where its filesystem refuses one."""
        dev = os.stat(path).st_dev
        if dev in self._refused:
            return -1
        fd = _open_direct(path)
        if fd < 0:
            self.refused(path, dev, "the filesystem refuses O_DIRECT")
        return fd

    def refused(self, path: Path, dev: int, why: str) -> None:
        """Remember that the filesystem ``dev`` of ``path`` refused; warn the first time."""
        with self._lock:
            if dev in self._refused:
                return
            self._refused.add(dev)
        _log.warning("%s: %s; stripes on this filesystem go through the page cache from now on", path, why)


def fits_decoded(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Inverse of :func:`fits_encoded`: the values in the readout's dtype."""
    want = np.dtype(dtype)
    if want.kind == "u" and want.itemsize > 1:
        values = stored.astype(want.str.replace("u", "i")).view(want)
        return np.bitwise_xor(values, want.type(1 << (8 * want.itemsize - 1)))
    return stored.astype(want)


def sensor_key(raft: str, sensor: str) -> str:
    check_name(raft, "raft", COMPONENT_NAME)
    check_name(sensor, "sensor", COMPONENT_NAME)
    return f"{raft}_{sensor}"


def image_dir(root: Path, image: str) -> Path:
    return inside(root, check_name(image))


class SensorWriter:
    """Assembles one sensor readout from its stripes, bounded in memory (each stripe is
    written where it belongs as it arrives) and resumable (a journal lists the stripes)."""

    def __init__(self, root: Path, meta: SensorMeta, *, direct_io: DirectIO | None = None) -> None:
        """``direct_io``: write the stripes' whole blocks with O_DIRECT where this policy
        allows (module docstring); None: through the page cache."""
        self.meta = meta
        self.dir = image_dir(root, meta.image)
        self.dir.mkdir(exist_ok=True)
        key = sensor_key(meta.raft, meta.sensor)
        self.final = self.dir / f"{key}.raw"
        self.meta_path = self.dir / f"{key}.json"
        self.temp = self.dir / f".{key}.assembling"
        self.journal = self.dir / f".{key}.stripes"
        self.itemsize = np.dtype(meta.dtype).itemsize
        nbytes = meta.data_offset + padded(meta.data_bytes) if meta.fits_layout else meta.data_bytes
        if self.journal.exists() and not self.temp.exists() and self.final.exists():
            # The last run died inside finish(), between renaming the pixels into place and
            # writing the .json that publishes them: take them back (opening a fresh temp
            # file here would replace good pixels with zeros — the chaos test caught that).
            os.rename(self.final, self.temp)
        self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != nbytes:
            os.ftruncate(self._fd, nbytes)  # sparse: never-written rows read as zeros
        #: O_DIRECT descriptor of the same file, -1 for none (the stripes' whole blocks)
        self._direct_io = direct_io
        self._dfd = direct_io.open(self.temp) if direct_io is not None and meta.fits_layout else -1
        self._direct = self._dfd >= 0  # False again if the device refuses our alignment
        self.received: set[int] = set()
        #: Each stored stripe's (DATASUM part, CRC-32, Adler-32), when known (not after a
        #: refill; Adler-32 None from a journal of an older fitsflow).
        self.sums: dict[int, tuple[int, int, int | None]] = {}
        if self.journal.exists():  # a restart: carry on where the last run stopped
            self._read_journal()
        self._journal = open(self.journal, "a")
        self._claimed: set[int] = set(self.received)
        #: Stripes that arrived but the store refused (a full disk): not lost on the wire.
        self.refused: set[int] = set()
        self._lock = threading.Lock()
        # Stripes being written right now (in worker threads). finish()/close() wait for them:
        # closing the fd under a pending pwrite lets the kernel give its number to the next
        # file opened, and the late pwrite lands in another sensor's file (the chaos test
        # caught exactly that when an image timed out during writes).
        self._inflight = 0
        self._idle = threading.Condition(self._lock)

    def _read_journal(self) -> None:
        for line in self.journal.read_text().splitlines():
            fields = line.split()
            if not fields or not all(f.isdigit() for f in fields):
                continue  # a line cut by a crash: that stripe is written again if it comes
            self.received.add(int(fields[0]))
            if len(fields) >= 3:
                self.sums[int(fields[0])] = _sums_of_line(fields)

    @classmethod
    def refill(cls, root: Path, meta: SensorMeta, *, direct_io: DirectIO | None = None) -> SensorWriter:
        """Reopen a published *partial* sensor to add the stripes it lacks (a re-send by the
        camera): the published .raw stays readable until ``finish`` replaces it atomically."""
        writer_dir = image_dir(root, meta.image)
        key = sensor_key(meta.raft, meta.sensor)
        temp, journal = writer_dir / f".{key}.assembling", writer_dir / f".{key}.stripes"
        if not journal.exists():  # (a restart during a refill finds both already there)
            shutil.copyfile(writer_dir / f"{key}.raw", temp)
            atomic_write_bytes(journal, "".join(f"{i}\n" for i in meta.stripes_received).encode())
        fresh = SensorMeta(**{**asdict(meta), "stripes_received": [], "missing_rows": [], "partial": False})
        return cls(root, fresh, direct_io=direct_io)

    def claim(self, index: int) -> bool:
        """Reserve stripe ``index`` for writing; False if it is stored or being written
        (a duplicate heap). Call from the event loop before handing the write to a thread."""
        if index in self.received or index in self._claimed:
            return False
        self._claimed.add(index)
        return True

    def write_stripe(self, index: int, row_start: int, pixels: np.ndarray) -> bool:
        """Write one stripe; False if it was already there (a duplicate heap)."""
        with self._lock:
            if index in self.received or self._fd < 0:
                return False  # a duplicate, or the sensor was finished meanwhile (a late stripe)
            fd, dfd = self._fd, self._dfd if self._direct else -1
            self._inflight += 1
        try:
            at = row_start * self.meta.cols * self.itemsize  # into the pixels
            try:
                if self.meta.fits_layout:
                    line = self._write_encoded(fd, dfd, index, at, np.ascontiguousarray(pixels).reshape(-1))
                else:
                    _pwrite_all(fd, memoryview(np.ascontiguousarray(pixels)).cast("B"), at)
                    line = f"{index}\n"
            except BaseException:
                # Not stored (a full disk): the stripe's claim goes, or its re-send (catch-up)
                # would be refused as a duplicate and the rows stay zeros for good.
                with self._lock:
                    self._claimed.discard(index)
                    self.refused.add(index)
                raise
            with self._lock:  # writes of different stripes may run in parallel threads
                self.received.add(index)
                fields = line.split()
                if len(fields) >= 3:
                    self.sums[index] = _sums_of_line(fields)
                self._journal.write(line)
                self._journal.flush()
        finally:
            with self._lock:
                self._inflight -= 1
                self._idle.notify_all()
        return True

    def _write_encoded(self, fd: int, dfd: int, index: int, at: int, flat: np.ndarray) -> str:
        """Write a stripe in the FITS layout, ``at`` bytes into the data unit; its journal
        line. Encoded, summed and written a chunk at a time, while the chunk is in cache:
        nobody reads these bytes again.

        Chunks end on DIRECT_ALIGN boundaries of the file (but for the stripe's last), and
        each is encoded at the same offset modulo DIRECT_ALIGN in the page-aligned buffer: its
        whole blocks are then aligned in the file and in memory, as O_DIRECT wants them."""
        total, crc, adler = 0, 0, 1
        itemsize = flat.itemsize
        encoded = encoded_dtype(flat.dtype)
        step = max(DIRECT_ALIGN, ENCODE_CHUNK_BYTES - ENCODE_CHUNK_BYTES % DIRECT_ALIGN)
        buffer = _encode_buffer(step + DIRECT_ALIGN)
        first = self.meta.data_offset + at  # the stripe's place in the file
        pos, end = first, first + flat.nbytes
        while pos < end:
            lead = pos % DIRECT_ALIGN  # a multiple of the pixel size, as is the data offset (2880 k)
            nxt = min(end, pos - lead + step)
            out = buffer[lead:lead + nxt - pos].view(encoded)
            chunk = memoryview(fits_encode_into(flat[(pos - first) // itemsize:(nxt - first) // itemsize],
                                                out)).cast("B")
            total += ones_sum(chunk, pos - self.meta.data_offset)
            crc = crc32(chunk, crc)
            adler = adler32(chunk, adler)
            self._store_chunk(fd, dfd, chunk, pos)
            pos = nxt
        return f"{index} {total} {crc} {adler}\n"

    def _store_chunk(self, fd: int, dfd: int, chunk: memoryview, pos: int) -> None:
        """Write ``chunk`` at ``pos``: its whole aligned blocks through ``dfd`` (O_DIRECT, if
        open), the partial ones at its ends through ``fd``."""
        lo = -(-pos // DIRECT_ALIGN) * DIRECT_ALIGN
        hi = (pos + len(chunk)) // DIRECT_ALIGN * DIRECT_ALIGN
        if dfd < 0 or hi <= lo:
            _pwrite_all(fd, chunk, pos)
            return
        if lo > pos:
            _pwrite_all(fd, chunk[:lo - pos], pos)
        try:
            _pwrite_all(dfd, chunk[lo - pos:hi - pos], lo)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise  # a full disk, an I/O error: the caller's business, as for any write
            # The device wants a larger alignment than DIRECT_ALIGN: the page cache from now on.
            self._direct = False
            if self._direct_io is not None:
                self._direct_io.refused(self.temp, os.fstat(dfd).st_dev, f"an O_DIRECT write was refused ({exc})")
            _pwrite_all(fd, chunk[lo - pos:hi - pos], lo)
        if pos + len(chunk) > hi:
            _pwrite_all(fd, chunk[hi - pos:], hi)

    def _close_fd(self) -> bool:
        """Close the pixel file once no write is in flight; False if already closed."""
        with self._lock:
            while self._inflight:
                self._idle.wait()
            if self._fd < 0:
                return False
            fd, self._fd = self._fd, -1
            dfd, self._dfd = self._dfd, -1
        try:
            os.fsync(fd)  # the inode's: the O_DIRECT writes' block allocations too
        finally:
            os.close(fd)
            if dfd >= 0:
                os.close(dfd)
        return True

    @property
    def complete(self) -> bool:
        return len(self.received) == self.meta.stripe_count

    @property
    def awaiting_store(self) -> bool:
        """Rows are missing because the store refused them, not because they never came:
        publishing the sensor as partial would make that final (see the assembler)."""
        return bool(self.refused - self.received)

    def finish(self) -> SensorMeta:
        """fsync and publish the sensor (.raw then .json); partial if stripes are missing."""
        self._close_fd()  # after this no stripe can be added: `received` is final
        meta = self.meta
        meta.stripes_received = sorted(self.received)
        meta.missing_rows = _missing_rows(meta.rows, meta.stripe_count, self.received)
        meta.partial = bool(meta.missing_rows)
        meta.received_at = time.time()
        self._journal.close()
        if meta.fits_layout:
            meta.datasum, meta.data_crc, meta.data_adler32 = self._data_sums()
            meta.inode = os.stat(self.temp).st_ino
        os.rename(self.temp, self.final)
        atomic_write_bytes(self.meta_path, json.dumps(asdict(meta), indent=1).encode())
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
        fsync_dir(self.dir)
        return meta

    def _data_sums(self) -> tuple[int, int, int]:
        """(DATASUM, CRC-32, Adler-32) of the padded data unit: from the stripes' sums, with
        zeros where rows are missing; read back from the file if a stripe's sums are unknown
        (a refill, a journal of an older fitsflow)."""
        meta, row_bytes = self.meta, self.meta.cols * self.itemsize
        if not self.received <= {i for i, sums in self.sums.items() if sums[2] is not None}:
            return _sums_of_file(self.temp, meta.data_offset, padded(meta.data_bytes))
        total, crc, adler = 0, 0, 1
        for i in range(meta.stripe_count):
            start, end = stripe_bounds(meta.rows, meta.stripe_count, i)
            length = (end - start) * row_bytes
            if i in self.sums:
                part_sum, part_crc, part_adler = self.sums[i]
                total += part_sum
                crc = crc32_combine(crc, part_crc, length)
                adler = adler32_combine(adler, part_adler, length)  # type: ignore[arg-type]
            else:
                crc = crc32_of_zeros(length, crc)
                adler = adler32_of_zeros(length, adler)
        pad = padded(meta.data_bytes) - meta.data_bytes
        return fold32(total), crc32_of_zeros(pad, crc), adler32_of_zeros(pad, adler)

    def close(self) -> None:
        """Stop without publishing (shutdown); the journal lets the next run resume."""
        if self._close_fd():
            self._journal.close()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def _sums_of_line(fields: list[str]) -> tuple[int, int, int | None]:
    """A journal line's (DATASUM part, CRC-32, Adler-32 or None)."""
    return int(fields[1]), int(fields[2]), int(fields[3]) if len(fields) > 3 else None


def _sums_of_file(path: Path, offset: int, length: int) -> tuple[int, int, int]:
    total, crc, adler, chunk = 0, 0, 1, 8 * 1024 * 1024
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        done = 0
        while done < length:
            data = fh.read(min(chunk, length - done))
            if not data:
                raise OSError(f"{path}: shorter than its data unit")
            total += ones_sum(data, done)
            crc = crc32(data, crc)
            adler = adler32(data, adler)
            done += len(data)
    return fold32(total), crc, adler


def _missing_rows(rows: int, count: int, received: set[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for i in range(count):
        if i in received:
            continue
        start, end = stripe_bounds(rows, count, i)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
    return ranges


def parse_meta(data: bytes) -> SensorMeta:
    """A sensor's metadata from its JSON (raises on anything that is not valid)."""
    meta = SensorMeta(**json.loads(data))
    if not (meta.rows > 0 and meta.cols > 0 and 0 < meta.stripe_count <= meta.rows):
        raise ValueError(f"{meta.name}: impossible shape {meta.rows}x{meta.cols} in {meta.stripe_count} stripes")
    if meta.data_offset < 0 or meta.data_offset % BLOCK:
        raise ValueError(f"{meta.name}: data_offset {meta.data_offset} is not a whole number of FITS blocks")
    return meta


def read_meta(root: Path, image: str, raft: str, sensor: str,
              problems: list[str] | None = None) -> SensorMeta | None:
    """A stored sensor's metadata, or None if it is not (yet) stored — or unreadable, in
    which case it is set aside (core.poison) and noted in ``problems``."""
    path = image_dir(root, image) / f"{sensor_key(raft, sensor)}.json"
    return load_file(path, parse_meta, [] if problems is None else problems)


def raw_path(root: Path, meta: SensorMeta) -> Path:
    return image_dir(root, meta.image) / f"{meta.name}.raw"


def read_pixels(root: Path, meta: SensorMeta) -> np.ndarray:
    """The stored pixel values, (rows, cols): a read-only memory map of a .raw in the
    readout's own layout, a decoded copy of one in the FITS layout."""
    path = raw_path(root, meta)
    if not meta.fits_layout:
        return np.memmap(path, dtype=np.dtype(meta.dtype), mode="r", shape=(meta.rows, meta.cols))
    stored = np.memmap(path, dtype=fits_encoded(np.zeros(0, meta.dtype)).dtype, mode="r",
                       offset=meta.data_offset, shape=(meta.rows, meta.cols))
    return fits_decoded(stored, meta.dtype)


def write_readout_summary(root: Path, image: str, summary: dict[str, Any], *, announced: bool = True) -> None:
    """The image's READOUT summary, atomically. ``announced`` False: READOUT_COMPLETE is about
    to be sent (a restart that finds it so announces the image again)."""
    atomic_write_bytes(image_dir(root, image) / "READOUT.json",
                       json.dumps({**summary, "announced": announced}, indent=1).encode())


def readout_announced(root: Path, image: str, problems: list[str] | None = None) -> bool:
    """Whether the image's READOUT_COMPLETE has gone out (to a broker or the bus's outbox).
    A summary without the mark was written before it existed, after its message."""
    summary = read_readout_summary(root, image, problems)
    return summary is not None and summary.get("announced", True) is not False


def read_readout_summary(root: Path, image: str, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The image's READOUT summary, or None (the readout is not complete, or the summary is
    unreadable: set aside). Written before READOUT_COMPLETE is sent: whoever that message
    wakes finds it."""
    def parse(data: bytes) -> dict[str, Any]:
        summary = json.loads(data)
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    return load_file(image_dir(root, image) / "READOUT.json", parse, [] if problems is None else problems)
