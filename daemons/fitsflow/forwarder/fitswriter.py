"""One sensor readout + the image header → one FITS file, written atomically.

Primary HDU: the image header from the header service (+ DATE, ORIGIN, FILENAME, the data
ID). Extension 1: the pixels with the sensor's keywords (RAFTBAY, CCDSLOT, DETNAME, DETSIZE,
DATASEC, and PARTIAL/MISSROWS when rows never arrived). CHECKSUM and DATASUM on both HDUs.
The bytes depend only on the inputs (DATE is the readout's arrival time, not "now"), so
writing the same assignment twice gives the same file.
"""

from __future__ import annotations

import datetime as dt
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from fitsflow import __version__
from fitsflow.core.checksum import file_crc32
from fitsflow.core.fits_text import declare_long_strings, listed
from fitsflow.core.handoff import atomic_writer
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import SensorMeta



@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    #: ``crc32:<8 hex>``: verifies the hand-off at disk speed (sha256 runs at ~250 MB/s
    #: on this class of CPU); the FITS CHECKSUM/DATASUM cards guard the content too.
    checksum: str


def _rows_text(ranges: list[list[int]]) -> str:
    """Missing rows as FITS 1-based inclusive ranges, e.g. '101:150,301:400' (a long list
    continues over CONTINUE cards; see core.fits_text)."""
    return listed(f"{a + 1}:{b}" for a, b in ranges)


def build_hdus(header: ImageHeader, meta: SensorMeta, pixels: np.ndarray, filename: str,
               data_id: dict[str, object]) -> fits.HDUList:
    primary = fits.PrimaryHDU()
    h = primary.header
    for key, value, comment in header.cards:
        h[key] = (value, comment)
    h["DATE"] = (dt.datetime.fromtimestamp(meta.received_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
                 "Readout stored (UTC): file content date")
    h["ORIGIN"] = ("fitsflow", "Software that wrote this file")
    h["FFVERS"] = (__version__, "fitsflow version")
    h["FILENAME"] = (filename, "Original file name")
    h["OBSDAY"] = (str(data_id["obs_day"]), "Observing day (UTC - 12 h)")
    # The data ID, whatever the header service said or did not say: a file must always be
    # ingestable (a minimal, flagged header still names its image).
    for key, field_, comment in (("INSTRUME", "instrument", "Instrument"), ("IMGNAME", "image", "Image name"),
                                 ("GROUPID", "group", "Group of images"), ("SNAP", "snap", "Snap within the group")):
        if key not in h and data_id.get(field_) not in (None, ""):
            h[key] = (data_id[field_], comment)
    if header.partial:
        h["HDRPART"] = (True, "Header incomplete: telemetry missing")
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
    declare_long_strings(h)
    declare_long_strings(e)
    return fits.HDUList([primary, image])


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
BLOCK = 2880


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


def _write_data(fh, pixels: np.ndarray, crc: int) -> int:  # type: ignore[no-untyped-def]
    """Write pixels big-endian in chunks through one reused buffer, CRC-32 as we go, then the
    zero padding to a 2880-byte block. Returns the CRC."""
    flat = np.ascontiguousarray(pixels).reshape(-1)
    buf = np.empty(CHUNK_BYTES // pixels.dtype.itemsize, dtype=pixels.dtype.newbyteorder(">"))
    for start in range(0, flat.size, buf.size):
        part = flat[start:start + buf.size]
        out = buf[:part.size]
        out[...] = part  # the byteswap, into the reused buffer
        view = memoryview(out).cast("B")
        fh.write(view)
        crc = zlib.crc32(view, crc)
    pad = (-flat.nbytes) % BLOCK
    if pad:
        zeros = bytes(pad)
        fh.write(zeros)
        crc = zlib.crc32(zeros, crc)
    return crc


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
                crc = 0
                for header in (primary.header, fast.header):
                    block = header.tostring(padding=True).encode("ascii")
                    fh.write(block)
                    crc = zlib.crc32(block, crc)
                crc = _write_data(fh, image.data, crc)
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
    checksum = f"crc32:{crc:08x}" if crc is not None else file_crc32(path)
    return WrittenFile(path, os.path.getsize(path), checksum)
