"""One sensor readout + the image header → one FITS file, written atomically.

A readout the receiver stored in the FITS layout (core.rawstore) is finished in place: the
header blocks go into the room the receiver left before the data unit, CHECKSUM, DATASUM and
the file's CRC-32 come from the sums the receiver took per stripe, and the file is linked
into ``incoming/`` (:func:`write_linked`). Where that cannot be done (the .raw is already
linked elsewhere — a reassignment —, lies on another filesystem, or the header does not fit
the room) the same bytes are written as a copy (:func:`write_copy`). An older .raw (the
readout's own layout) is written through astropy (:func:`write_fits`).

Primary HDU: the image header from the header service (+ DATE, ORIGIN, FILENAME, the data
ID). Extension 1: the pixels with the sensor's keywords (RAFTBAY, CCDSLOT, DETNAME, DETSIZE,
DATASEC, and PARTIAL/MISSROWS when rows never arrived). CHECKSUM and DATASUM on both HDUs.
The bytes depend only on the inputs (DATE is the readout's arrival time, not "now"), so
writing the same assignment twice gives the same file.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from fitsflow import __version__
from fitsflow.core.checksum import (adler32, adler32_combine, adler32_hex, crc32, crc32_combine, file_crc32_adler32,
                                    fold32, ones_sum)
from fitsflow.core.fits_text import CARD_TEXT, declare_long_strings, listed
from fitsflow.core.handoff import atomic_writer, publish_link
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import BLOCK, HEADER_ROOM_BLOCKS, SensorMeta, padded


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    #: ``crc32:<8 hex>``: verifies the hand-off at disk speed (sha256 runs at ~250 MB/s
    #: on this class of CPU); the FITS CHECKSUM/DATASUM cards guard the content too.
    checksum: str
    #: Adler-32 (8 hex digits) of the same bytes, for Rucio; None if unknown (a readout
    #: stored by an older fitsflow)
    adler32: str | None = None


def _rows_text(ranges: list[list[int]]) -> str:
    """Missing rows as FITS 1-based inclusive ranges, e.g. '101:150,301:400' (a long list
    continues over CONTINUE cards; see core.fits_text)."""
    return listed(f"{a + 1}:{b}" for a, b in ranges)


def build_hdus(header: ImageHeader, meta: SensorMeta, pixels: np.ndarray, filename: str,
               data_id: dict[str, object]) -> fits.HDUList:
    primary = fits.PrimaryHDU()
    primary.header = primary_header(header, data_id, _content_date(meta), filename)
    image = fits.ImageHDU(data=pixels, name=f"{meta.raft}_{meta.sensor}")
    e = image.header
    e["RAFTBAY"] = (meta.raft, "Raft")
    e["CCDSLOT"] = (meta.sensor, "Sensor slot in the raft")
    e["DETNAME"] = (f"{meta.raft}_{meta.sensor}", "Detector name")
    e["DETSIZE"] = (f"[1:{meta.cols},1:{meta.rows}]", "Detector size (pixels)")
    e["DATASEC"] = (f"[1:{meta.cols},1:{meta.rows}]", "Data section")
    e["IMGSEQ"] = (meta.image_seq, "Camera image sequence number")
    e["STRIPES"] = (meta.stripe_count, "Readout stripes (SPEAD heaps) expected")
    e["PARTIAL"] = (meta.partial, "Readout incomplete: rows missing (zeros)")
    if meta.partial:
        e["MISSROWS"] = (_rows_text(meta.missing_rows), "Missing rows, 1-based inclusive")
    declare_long_strings(e)
    return fits.HDUList([primary, image])


def _content_date(meta: SensorMeta) -> str:
    return dt.datetime.fromtimestamp(meta.received_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


_DATE_COMMENT = "Readout stored (UTC): file content date"
_FILENAME_COMMENT = "Original file name"
#: The data ID's fields that go into the primary header (raft and sensor go into the extension).
_IMAGE_FIELDS = ("instrument", "image", "group", "snap", "obs_day")


def build_primary_header(header: ImageHeader, data_id: dict[str, object], date: str, filename: str) -> fits.Header:
    """A sensor file's primary header, card by card: the image header from the header
    service, then DATE, ORIGIN, FFVERS, FILENAME, OBSDAY, the data ID where the header
    service did not give it, HDRPART, LONGSTRN."""
    h = fits.PrimaryHDU().header
    for key, value, comment in header.cards:
        h[key] = (value, comment)
    h["DATE"] = (date, _DATE_COMMENT)
    h["ORIGIN"] = ("fitsflow", "Software that wrote this file")
    h["FFVERS"] = (__version__, "fitsflow version")
    h["FILENAME"] = (filename, _FILENAME_COMMENT)
    h["OBSDAY"] = (str(data_id["obs_day"]), "Observing day (UTC - 12 h)")
    # The data ID, whatever the header service said or did not say: a file must always be
    # ingestable (a minimal, flagged header still names its image).
    for key, field_, comment in (("INSTRUME", "instrument", "Instrument"), ("IMGNAME", "image", "Image name"),
                                 ("GROUPID", "group", "Group of images"), ("SNAP", "snap", "Snap within the group")):
        if key not in h and data_id.get(field_) not in (None, ""):
            h[key] = (data_id[field_], comment)
    if header.partial:
        h["HDRPART"] = (True, "Header incomplete: telemetry missing")
    declare_long_strings(h)
    return h


class PrimaryTemplates:
    """The primary headers of the images being written, built once per image and copied per
    sensor, where only DATE and FILENAME differ. astropy checks its configuration on every
    card it sets or reads (astropy issue 12491): building ~100 cards costs ~2.9 ms, a copy
    with the two cards set again ~1.1 ms (16 MiB sensor, one forwarder thread)."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._by_image: OrderedDict[tuple, fits.Header] = OrderedDict()

    def header(self, header: ImageHeader, data_id: dict[str, object], date: str, filename: str) -> fits.Header:
        try:
            key = (tuple(header.cards), header.partial, tuple(data_id.get(f) for f in _IMAGE_FIELDS))
            hash(key)
        except TypeError:  # a value astropy may refuse anyway: built card by card, as it always was
            return build_primary_header(header, data_id, date, filename)
        with self._lock:
            template = self._by_image.get(key)
            if template is not None:
                self._by_image.move_to_end(key)
        if template is None:
            # DATE and FILENAME stand in: their cards keep their places, their values are set
            # per file below. An empty FILENAME, so that a long one (LONGSTRN) is per file too.
            template = build_primary_header(header, data_id, date, "")
            with self._lock:
                self._by_image[key] = template
                while len(self._by_image) > self.keep:
                    self._by_image.popitem(last=False)
        h = template.copy()
        h["DATE"] = (date, _DATE_COMMENT)
        h["FILENAME"] = (filename, _FILENAME_COMMENT)
        if len(filename) > CARD_TEXT:
            declare_long_strings(h)
        return h


primary_header = PrimaryTemplates().header


class _KnownDatasumHDU(fits.ImageHDU):
    """An ImageHDU whose DATASUM was computed by fitsflow in one pass over the pixels
    (instead of astropy's separate byteswap, sum and write passes). Only the data sum comes
    from here; astropy still builds the header and its CHECKSUM."""

    _known_datasum = 0

    def _calculate_datasum(self) -> int:  # astropy's hook for the data checksum
        return self._known_datasum


#: Pixel types written by the single-pass writer: 4-byte types need no FITS scaling.
FAST_DTYPES = {"<i4", "<f4", ">i4", ">f4"}
CHUNK_BYTES = 4 * 1024 * 1024
CARDS_PER_BLOCK = BLOCK // 80


def _datasum(pixels: np.ndarray) -> int:
    """FITS DATASUM: the 32-bit ones' complement sum of the big-endian data words. For 4-byte
    pixels each word is one pixel's bits, so the values, viewed as unsigned 32-bit integers
    in their own byte order, sum the same without a byteswap."""
    flat = np.ascontiguousarray(pixels).reshape(-1).view(pixels.dtype.byteorder.replace("|", "=") + "u4")
    total = 0
    step = CHUNK_BYTES // 4
    for start in range(0, flat.size, step):
        total += int(np.add.reduce(flat[start:start + step], dtype=np.uint64))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _write_data(fh, pixels: np.ndarray, crc: int, adler: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Write pixels big-endian in chunks through one reused buffer, CRC-32 and Adler-32 as we
    go, then the zero padding to a 2880-byte block. Returns both."""
    flat = np.ascontiguousarray(pixels).reshape(-1)
    buf = np.empty(CHUNK_BYTES // pixels.dtype.itemsize, dtype=pixels.dtype.newbyteorder(">"))
    for start in range(0, flat.size, buf.size):
        part = flat[start:start + buf.size]
        out = buf[:part.size]
        out[...] = part  # the byteswap, into the reused buffer
        view = memoryview(out).cast("B")
        fh.write(view)
        crc = crc32(view, crc)
        adler = adler32(view, adler)
    pad = (-flat.nbytes) % BLOCK
    if pad:
        zeros = bytes(pad)
        fh.write(zeros)
        crc = crc32(zeros, crc)
        adler = adler32(zeros, adler)
    return crc, adler


def write_fits(directory: Path, filename: str, hdus: fits.HDUList, owner: str = "") -> WrittenFile:
    """Write atomically into ``directory`` (temp + fsync + rename + fsync dir), with
    CHECKSUM/DATASUM, and return the size and CRC-32 of the bytes as written. ``owner``
    names the writer in its temp file (see core.handoff.remove_stale_temps).

    32-bit pixels take the single-pass writer; other types astropy's own ``writeto``."""
    path = Path(directory) / filename
    primary, image = hdus[0], hdus[1]
    when = f"fitsflow {primary.header.get('DATE', '')}"  # fixed comment: same input, same bytes
    try:
        with atomic_writer(path, owner=owner) as fh:
            if image.data is not None and image.data.dtype.str in FAST_DTYPES:
                fast = _KnownDatasumHDU(data=image.data, header=image.header)
                fast._known_datasum = _datasum(image.data)
                primary.add_checksum(when=when)
                fast.add_checksum(when=when)
                crc, adler = 0, 1
                for header in (primary.header, fast.header):
                    block = header.tostring(padding=True).encode("ascii")
                    fh.write(block)
                    crc = crc32(block, crc)
                    adler = adler32(block, adler)
                crc, adler = _write_data(fh, image.data, crc, adler)
            else:
                # Our own fixed comment again: writeto(checksum=True) would stamp "now" into
                # CHECKSUM's comment, and a repeated assignment would not give the same bytes.
                primary.add_checksum(when=when)
                image.add_checksum(when=when)
                fits.HDUList([primary, image]).writeto(fh, checksum=False, output_verify="exception")
                crc = None
    except OSError:
        raise
    except Exception as exc:
        # astropy (8.0) fails in its own clean-up after a short write and raises an
        # AttributeError that hides the OSError (ENOSPC, EIO) that started it: report that one.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is not None:
            raise cause from None
        raise
    checksum, adler_hex = (f"crc32:{crc:08x}", adler32_hex(adler)) if crc is not None else file_crc32_adler32(path)
    return WrittenFile(path, os.path.getsize(path), checksum, adler_hex)


# -- readouts stored in the FITS layout --------------------------------------------------

class NotLinkable(Exception):
    """The stored readout cannot become the file itself; the message says why."""


def shape_only(meta: SensorMeta) -> np.ndarray:
    """An array of the readout's shape and dtype that holds no memory: what astropy needs to
    build the extension header (BITPIX, NAXISn, BZERO) without the pixels."""
    return np.broadcast_to(np.zeros((), dtype=meta.dtype), (meta.rows, meta.cols))


def header_blocks(hdus: fits.HDUList, datasum: int, room: tuple[int, int] | None) -> tuple[bytes, bool]:
    """The primary and extension headers as written, with DATASUM (``datasum`` of the data
    unit) and CHECKSUM. With ``room``, each header is filled with blank cards before END to
    exactly its room's blocks if both fit (True), else written at its own size (False).

    astropy builds the cards; the blank cards and CHECKSUM are done on the bytes: astropy's
    add_checksum re-renders the header each time (15 ms of a forwarder's ~25 ms per file)."""
    primary, image = hdus[0], hdus[1]
    when = f"fitsflow {primary.header.get('DATE', '')}"  # fixed comment: same input, same bytes
    texts = []
    for hdu, sum_ in ((primary, 0), (image, datasum)):
        hdu.header["CHECKSUM"] = (CHECKSUM_ZEROS, when)
        hdu.header["DATASUM"] = (str(sum_), when)
        texts.append(hdu.header.tostring(padding=False).encode("ascii"))
    fits_room = room is not None and all(len(t) <= blocks * BLOCK for t, blocks in zip(texts, room))
    out = []
    for text, sum_, blocks in zip(texts, (0, datasum), room or (0, 0)):
        size = blocks * BLOCK if fits_room else -(-len(text) // BLOCK) * BLOCK
        text = text[:-80] + b" " * (size - len(text)) + text[-80:] if fits_room else text.ljust(size)
        out.append(_with_checksum(text, sum_))
    return b"".join(out), fits_room


CHECKSUM_ZEROS = "0" * 16
_EXCLUDED = frozenset(b":;<=>?@[\\]^_`")  # punctuation the encoding avoids


def _with_checksum(header: bytes, datasum: int) -> bytes:
    """``header`` (whole blocks, CHECKSUM holding zeros) with its CHECKSUM value
    set so that the HDU (header and a data unit summing to ``datasum``) sums to -0: the FITS
    checksum convention (Seaman, Pence & Rots), its ASCII encoding as in cfitsio's ffesum."""
    at = next(i for i in range(0, len(header), 80) if header[i:i + 10] == b"CHECKSUM= ") + 11
    value = ~fold32(ones_sum(header) + datasum) & 0xFFFFFFFF
    asc = bytearray(16)
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        ch = [byte // 4 + 0x30] * 4
        ch[0] += byte % 4
        changed = True
        while changed:  # move pairs away from punctuation, keeping their sum
            changed = False
            for j in (0, 2):
                if ch[j] in _EXCLUDED or ch[j + 1] in _EXCLUDED:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = True
        for j in range(4):
            asc[4 * j + i] = ch[j]
    encoded = bytes(asc[(k + 15) % 16] for k in range(16))  # rotated one place right
    return header[:at] + encoded + header[at + 16:]


def write_linked(raw: Path, directory: Path, filename: str, hdus: fits.HDUList, meta: SensorMeta,
                 owner: str = "") -> WrittenFile:
    """Finish the receiver's .raw as the FITS file: write its headers into the room before
    the data unit, fsync, and link it into ``directory`` atomically. The pixels are not read.

    Raises NotLinkable if it cannot be done, before touching anything another reader sees:
    the .raw is not the one ``meta`` describes, is linked elsewhere already (a file handed on
    must never change), lies on another filesystem, or the header does not fit the room."""
    path = Path(directory) / filename
    if meta.datasum is None or meta.data_crc is None:
        raise NotLinkable("the readout's sums are unknown")
    try:
        fd = os.open(raw, os.O_RDWR)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise NotLinkable(f"cannot write {raw}: {exc.strerror}") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two forwarders given the same sensor: one at a time
        st = os.fstat(fd)
        if st.st_ino != meta.inode:
            raise NotLinkable(f"{raw} is not the file its metadata describes (a refill under way?)")
        if st.st_nlink != 1:
            raise NotLinkable(f"{raw} has {st.st_nlink} links: handed on already, never written again")
        if st.st_dev != os.stat(directory).st_dev:
            raise NotLinkable(f"{raw} is on another filesystem than {directory}")
        head, fits_room = header_blocks(hdus, meta.datasum, HEADER_ROOM_BLOCKS)
        if not fits_room:
            raise NotLinkable(f"the header of {filename} is larger than the room of {len(head)} bytes")
        done = 0
        while done < len(head):
            done += os.pwrite(fd, memoryview(head)[done:], done)
        os.fsync(fd)
        try:
            publish_link(raw, path, owner)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise NotLinkable(f"cannot link {raw} into {directory}: {exc}") from None
            raise
    finally:
        os.close(fd)
    data = padded(meta.data_bytes)
    crc = crc32_combine(crc32(head), meta.data_crc, data)
    adler = None if meta.data_adler32 is None else adler32_hex(adler32_combine(adler32(head), meta.data_adler32, data))
    return WrittenFile(path, len(head) + data, f"crc32:{crc:08x}", adler)


def write_copy(raw: Path, directory: Path, filename: str, hdus: fits.HDUList, meta: SensorMeta,
               owner: str = "") -> WrittenFile:
    """The file :func:`write_linked` would make, as a new file (atomically): the same bytes
    when the header fits the room. Reads the stored data unit twice (its sums, then the
    copy): the path of exceptions, never of every image."""
    path = Path(directory) / filename
    size = padded(meta.data_bytes)
    with open(raw, "rb", buffering=0) as src:
        total, offset = 0, meta.data_offset
        while offset < meta.data_offset + size:
            chunk = os.pread(src.fileno(), min(CHUNK_BYTES, meta.data_offset + size - offset), offset)
            if not chunk:
                raise OSError(errno.EIO, f"{raw}: shorter than its data unit")
            total += ones_sum(chunk, offset - meta.data_offset)
            offset += len(chunk)
        head, _ = header_blocks(hdus, fold32(total), HEADER_ROOM_BLOCKS)
        with atomic_writer(path, owner=owner) as fh:
            fh.write(head)
            crc, adler = crc32(head), adler32(head)
            offset = meta.data_offset
            while offset < meta.data_offset + size:
                chunk = os.pread(src.fileno(), min(CHUNK_BYTES, meta.data_offset + size - offset), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"{raw}: shorter than its data unit")
                fh.write(chunk)
                crc = crc32(chunk, crc)
                adler = adler32(chunk, adler)
                offset += len(chunk)
    return WrittenFile(path, len(head) + size, f"crc32:{crc:08x}", adler32_hex(adler))
