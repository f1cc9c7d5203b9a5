"""One sensor readout + the image header → one FITS file, written atomically.

Primary HDU: the image header from the header service (+ DATE, ORIGIN, FILENAME, the data
ID). Extension 1: the pixels with the sensor's keywords (RAFTBAY, CCDSLOT, DETNAME, DETSIZE,
DATASEC, and PARTIAL/MISSROWS when rows never arrived). CHECKSUM and DATASUM on both HDUs.
The bytes depend only on the inputs (DATE is the readout's arrival time, not "now"), so
writing the same assignment twice gives the same file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from fitsflow import __version__
from fitsflow.core.handoff import atomic_writer
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import SensorMeta

HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    checksum: str  # "sha256:<hex>"


def _rows_text(ranges: list[list[int]]) -> str:
    """Missing rows as FITS 1-based inclusive ranges, e.g. '101:150,301:400'."""
    return ",".join(f"{a + 1}:{b}" for a, b in ranges)


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
        e["MISSROWS"] = (_rows_text(meta.missing_rows)[:68], "Missing rows, 1-based inclusive")
    return fits.HDUList([primary, image])


def write_fits(directory: Path, filename: str, hdus: fits.HDUList) -> WrittenFile:
    """Write atomically into ``directory`` (temp + fsync + rename + fsync dir), with
    CHECKSUM/DATASUM, and return size and sha256 of the bytes as they are on disk."""
    path = Path(directory) / filename
    try:
        with atomic_writer(path) as fh:
            hdus.writeto(fh, checksum=True, output_verify="exception")
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
    return WrittenFile(path, os.path.getsize(path), file_checksum(path))


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
