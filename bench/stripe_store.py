"""Storing a sensor readout, stripe by stripe, with its sums: what each sum costs.

    ./dev.sh bench stripe_store [--mib M] [--stripes S] [--repeat N] [--dir DIR] [--dtype D] [--fsync]

The receiver writes each stripe into the final FITS layout (big-endian) and sums it while the
bytes are in cache: the DATASUM part, the CRC-32 the hand-off checks, and the Adler-32 Rucio
gets. Printed side by side, measured in the same run into the same directory (tmpfs by
default, so that the disk does not hide the CPU): ``numpy.tofile`` of the same pixels (the
floor: one copy, no encoding, no sums), the store with every sum through the page cache, the
same with O_DIRECT (``receiver.direct_io``: its whole blocks straight to the device), and the
store with the Adler-32 left out (the cost it adds). Each with its wall time and the CPU the
process spent (user + system: the kernel's copy into the page cache shows there).

``--dir`` on a disk with ``--fsync``: every variant is timed up to its data being on the disk
(tofile + fsync; the store's finish, which fsyncs), as the receiver's raw buffer needs it.
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

import numpy as np

from fitsflow.core import rawstore
from fitsflow.core.rawstore import DATA_OFFSET, DirectIO, SensorMeta, SensorWriter
from fitsflow.core.spead_format import PIXEL_DTYPES


def store(root: Path, data: np.ndarray, stripes: int, n: int, *, direct_io: bool = False,
          fsync: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds to store ``data`` as a receiver does (and finish it, with ``fsync``)."""
    rows, cols = data.shape
    meta = SensorMeta(f"IMG_{n}", n, "G", 0, "R22", "S00", rows, cols, data.dtype.str, 0.0, 0.0, stripes,
                      data_offset=DATA_OFFSET)
    writer = SensorWriter(root, meta, direct_io=DirectIO() if direct_io else None)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(stripes):
        start, end = i * rows // stripes, (i + 1) * rows // stripes
        writer.write_stripe(i, start, data[start:end].reshape(-1))
    if fsync:
        writer.finish()
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    if not fsync:
        writer.finish()
    return elapsed


def tofile(root: Path, data: np.ndarray, n: int, fsync: bool = False) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    path = root / f"floor_{n}.raw"
    data.tofile(path)
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=16, help="MiB per sensor")
    ap.add_argument("--dtype", default="<i4", choices=sorted(PIXEL_DTYPES),
                    help="the camera's pixel type (unsigned ones are offset by BZERO as they are stored)")
    ap.add_argument("--stripes", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dir", default="/dev/shm", help="where to write (default tmpfs)")
    ap.add_argument("--fsync", action="store_true", help="time each variant until its data is on the disk")
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    side = int((args.mib * 1024 * 1024 / dtype.itemsize) ** 0.5)
    data = np.random.default_rng(1).integers(0, 2**15, size=(side, side)).astype(dtype)
    real_adler = rawstore.adler32
    names = ["tofile" + (" + fsync" if args.fsync else ""), "all sums", "all sums, O_DIRECT", "without Adler-32"]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="fitsflow-bench-stripes-") as tmp:
        root = Path(tmp)
        if not rawstore.direct_io_supported(root):
            print(f"({args.dir} refuses O_DIRECT: that variant goes through the page cache)")
        for n in range(args.repeat):  # interleaved: a noisy moment costs every variant alike
            times[names[0]].append(tofile(root, data, n, args.fsync))
            rawstore.adler32 = real_adler
            times["all sums"].append(store(root, data, args.stripes, 3 * n, fsync=args.fsync))
            times["all sums, O_DIRECT"].append(store(root, data, args.stripes, 3 * n + 2, direct_io=True,
                                                     fsync=args.fsync))
            rawstore.adler32 = lambda chunk, value=1: value  # the Adler-32 left out
            times["without Adler-32"].append(store(root, data, args.stripes, 3 * n + 1, fsync=args.fsync))
            rawstore.adler32 = real_adler
            for p in root.iterdir():  # keep tmpfs small
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    mb = data.nbytes / 1e6
    floor = statistics.median(t for t, _ in times[names[0]])
    print(f"{args.mib} MiB sensor of {args.dtype} pixels in {args.stripes} stripes into {args.dir}"
          f"{' (fsynced)' if args.fsync else ''}, median of {args.repeat}:")
    for name, values in times.items():
        med = statistics.median(t for t, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"  {name:19s} {med * 1e3:7.1f} ms  {mb / med:7.0f} MB/s  {med / floor:5.2f}x {names[0]}  "
              f"CPU {cpu * 1e3:6.1f} ms")
    wall = {name: statistics.median(t for t, _ in values) for name, values in times.items()}
    added = wall["all sums"] / wall["without Adler-32"]
    print(f"  Adler-32's share: the store takes {added:.2f}x the time it takes without it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
