"""Storing a sensor readout, stripe by stripe, with its sums: what each sum costs.

    ./dev.sh bench stripe_store [--mib M] [--stripes S] [--repeat N] [--dir DIR] [--dtype D]

The receiver writes each stripe into the final FITS layout (big-endian) and sums it while the
bytes are in cache: the DATASUM part, the CRC-32 the hand-off checks, and the Adler-32 Rucio
gets. Printed side by side, measured in the same run into the same directory (tmpfs by
default, so that the disk does not hide the CPU): ``numpy.tofile`` of the same pixels (the
floor: one copy, no encoding, no sums), the store with every sum, and the store with the
Adler-32 left out (the cost it adds).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fitsflow.core import rawstore
from fitsflow.core.rawstore import DATA_OFFSET, SensorMeta, SensorWriter
from fitsflow.core.spead_format import PIXEL_DTYPES


def store(root: Path, data: np.ndarray, stripes: int, n: int) -> float:
    rows, cols = data.shape
    meta = SensorMeta(f"IMG_{n}", n, "G", 0, "R22", "S00", rows, cols, data.dtype.str, 0.0, 0.0, stripes,
                      data_offset=DATA_OFFSET)
    writer = SensorWriter(root, meta)
    t0 = time.perf_counter()
    for i in range(stripes):
        start, end = i * rows // stripes, (i + 1) * rows // stripes
        writer.write_stripe(i, start, data[start:end].reshape(-1))
    elapsed = time.perf_counter() - t0
    writer.finish()
    return elapsed


def tofile(root: Path, data: np.ndarray, n: int) -> float:
    t0 = time.perf_counter()
    data.tofile(root / f"floor_{n}.raw")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=16, help="MiB per sensor")
    ap.add_argument("--dtype", default="<i4", choices=sorted(PIXEL_DTYPES),
                    help="the camera's pixel type (unsigned ones are offset by BZERO as they are stored)")
    ap.add_argument("--stripes", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dir", default="/dev/shm", help="where to write (default tmpfs)")
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    side = int((args.mib * 1024 * 1024 / dtype.itemsize) ** 0.5)
    data = np.random.default_rng(1).integers(0, 2**15, size=(side, side)).astype(dtype)
    real_adler = rawstore.adler32
    times: dict[str, list[float]] = {"tofile": [], "all sums": [], "without Adler-32": []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="fitsflow-bench-stripes-") as tmp:
        root = Path(tmp)
        for n in range(args.repeat):  # interleaved: a noisy moment costs every variant alike
            times["tofile"].append(tofile(root, data, n))
            rawstore.adler32 = real_adler
            times["all sums"].append(store(root, data, args.stripes, 2 * n))
            rawstore.adler32 = lambda chunk, value=1: value  # the Adler-32 left out
            times["without Adler-32"].append(store(root, data, args.stripes, 2 * n + 1))
            for p in root.iterdir():  # keep tmpfs small
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        rawstore.adler32 = real_adler
    mb = data.nbytes / 1e6
    floor = statistics.median(times["tofile"])
    print(f"{args.mib} MiB sensor of {args.dtype} pixels in {args.stripes} stripes into {args.dir}, "
          f"median of {args.repeat}:")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:17s} {med * 1e3:7.1f} ms  {mb / med:7.0f} MB/s  {med / floor:5.2f}x tofile")
    added = statistics.median(times["all sums"]) / statistics.median(times["without Adler-32"])
    print(f"  Adler-32's share: the store takes {added:.2f}x the time it takes without it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
