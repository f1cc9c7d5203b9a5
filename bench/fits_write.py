"""FITS write benchmark: a sensor's pixels from the receiver's hands to a FITS file in
incoming/, against numpy.tofile + fsync of the same bytes (the disk's rate, this run).

    ./dev.sh bench fits_write [--repeat N]

"write once" is the real path: the receiver stores the stripes in the FITS layout
(``SensorWriter``: big-endian encoding, DATASUM part and CRC-32 per stripe, pwrite, fsync),
the forwarder finishes the file in place (``write_linked``: headers, CHECKSUM, link).
"copy" is the same start with the forwarder's fallback (``write_copy``: the data unit read
twice, written again); "astropy" the former path (raw store in the readout's own layout,
then ``write_fits``: the pixels read back, byte-swapped and written a second time).

Then a sensor file's primary header, per sensor, for image headers of 32, 94 and 300 cards:
copied from the image's template with DATE and FILENAME set (what the forwarder does) against
built card by card (``build_primary_header``, what it did for every sensor before).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import DATA_OFFSET, SensorMeta, SensorWriter, raw_path, read_pixels
from fitsflow.core.spead_format import stripe_bounds
from fitsflow.forwarder.fitswriter import (PrimaryTemplates, build_hdus, build_primary_header, shape_only,
                                          write_copy, write_fits, write_linked)

STRIPES = 16
DATA_ID = {"obs_day": "20261121"}


def tofile(directory: Path, data: np.ndarray) -> float:
    path = directory / "raw.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        data.tofile(fh)
        fh.flush()
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def store(root: Path, data: np.ndarray, data_offset: int) -> SensorMeta:
    side = data.shape[0]
    meta = SensorMeta("BENCH", 1, "G", 0, "R22", "S00", side, side, "<i4", 0.0, 0.0, STRIPES, received_at=0.0,
                      data_offset=data_offset)
    writer = SensorWriter(root, meta)
    for i in range(STRIPES):
        start, end = stripe_bounds(side, STRIPES, i)
        writer.write_stripe(i, start, data[start:end].reshape(-1))
    return writer.finish()


def pipeline(d: Path, data: np.ndarray, header: ImageHeader, finish: str) -> float:
    raw, incoming = d / "raw", d / "incoming"
    for p in (raw, incoming):
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir()
    t0 = time.perf_counter()
    meta = store(raw, data, 0 if finish == "astropy" else DATA_OFFSET)
    if finish == "astropy":
        write_fits(incoming, "b.fits", build_hdus(header, meta, read_pixels(raw, meta), "b.fits", DATA_ID))
    else:
        write: Callable = write_linked if finish == "write once" else write_copy
        write(raw_path(raw, meta), incoming, "b.fits", build_hdus(header, meta, shape_only(meta), "b.fits", DATA_ID),
              meta)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    header = ImageHeader("BENCH", [(f"KEY{i:04d}", float(i), "a telemetry value") for i in range(100)])
    paths = ("write once", "copy", "astropy")
    print(f"{'sensor':>8} {'numpy.tofile':>14} " + " ".join(f"{p:>18}" for p in paths) +
          f"   (MB/s and ratio to tofile, median of {args.repeat}, fsync all)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("FITSFLOW_BENCH_DIR")) as tmp:
        d = Path(tmp)
        for side in (2048, 4096):
            data = sensor_pixels(1, 1, 0, side, side)
            times: dict[str, list[float]] = {p: [] for p in ("tofile", *paths)}
            for _ in range(args.repeat):
                times["tofile"].append(tofile(d, data))
                for p in paths:
                    times[p].append(pipeline(d, data, header, p))
            mb = data.nbytes / 1e6
            rate = {p: mb / statistics.median(t) for p, t in times.items()}
            print(f"{data.nbytes >> 20:>5} MiB {rate['tofile']:>9.0f} MB/s " +
                  " ".join(f"{rate[p]:>9.0f} MB/s {rate[p] / rate['tofile']:>4.2f}×" for p in paths))
    print(f"{'header':>8} {'card by card':>14} {'from template':>18}   (a sensor's primary header, ms, median of "
          f"{args.repeat} x 100 sensors)")
    for cards in (32, 94, 300):
        print(f"{cards:>4} cards " + " ".join(f"{t * 1e3:>12.2f} ms" for t in primary_header_times(cards, args.repeat)))
    return 0


def primary_header_times(cards: int, repeat: int) -> tuple[float, float]:
    """Per sensor: the primary header built card by card, and copied from the image's template."""
    header = ImageHeader("BENCH", [(f"KEY{i:04d}", float(i), "a telemetry value") for i in range(cards)])
    templates = PrimaryTemplates()
    out = []
    for build in (build_primary_header, templates.header):
        build(header, DATA_ID, "2026-11-21T00:00:00.000", "warm.fits")
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for n in range(100):
                build(header, DATA_ID, f"2026-11-21T00:00:00.{n:03d}", f"BENCH_R22_S{n:02d}.fits")
            runs.append((time.perf_counter() - t0) / 100)
        out.append(statistics.median(runs))
    return out[0], out[1]


if __name__ == "__main__":
    sys.exit(main())
