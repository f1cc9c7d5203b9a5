"""FITS write benchmark: the forwarder's write path vs numpy.tofile of the same bytes.

    ./dev.sh bench fits_write [--repeat N]

Both sides fsync. The forwarder's path is the real one (``build_hdus`` + ``write_fits``):
astropy header and image HDU, big-endian conversion, CHECKSUM/DATASUM, temp file + fsync +
rename + directory fsync, then the sha256 that FILE_DELIVERED carries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.core.headerstore import ImageHeader
from fitsflow.core.rawstore import SensorMeta
from fitsflow.forwarder.fitswriter import build_hdus, write_fits


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


def forwarder(directory: Path, data: np.ndarray, header: ImageHeader, meta: SensorMeta) -> float:
    data_id = {"obs_day": "20261121"}
    t0 = time.perf_counter()
    hdus = build_hdus(header, meta, data, "bench.fits", data_id)
    written = write_fits(directory, "bench.fits", hdus)
    elapsed = time.perf_counter() - t0
    written.path.unlink()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    header = ImageHeader("BENCH", [(f"KEY{i:04d}", float(i), "a telemetry value") for i in range(100)])
    print(f"{'sensor':>8} {'numpy.tofile':>14} {'forwarder':>12} {'ratio':>6}   (median of {args.repeat}, fsync both)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("FITSFLOW_BENCH_DIR")) as tmp:
        d = Path(tmp)
        for side in (2048, 4096):
            data = sensor_pixels(1, 1, 0, side, side)
            meta = SensorMeta("BENCH", 1, "G", 0, "R22", "S00", side, side, "<i4", 0.0, 0.0, 16, received_at=0.0)
            raw_t, fw_t = [], []
            for _ in range(args.repeat):
                raw_t.append(tofile(d, data))
                fw_t.append(forwarder(d, data, header, meta))
            mb = data.nbytes / 1e6
            raw, fw = mb / statistics.median(raw_t), mb / statistics.median(fw_t)
            print(f"{data.nbytes >> 20:>5} MiB {raw:>10.0f} MB/s {fw:>8.0f} MB/s {fw / raw:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
