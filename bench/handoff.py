"""Hand-off benchmark: FILE_DELIVERED → IMAGE_IN_OODS latency and files/s, across file sizes.

    ./dev.sh bench handoff [--files N]

The archive controller, the OODS ingest and the archive ingest run as their own processes
against a private ActiveMQ. For each size, files are written into the hand-off directory and
announced one at a time; the time to IMAGE_IN_OODS is taken per file. Printed beside it, from
the same files: the bare hand-off (two link(2) + unlink(2) + directory fsyncs), and a CRC-32
read of the file — the verification both the controller and the ingest do, which is the part
that grows with the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fitsflow.core.checksum import file_crc32
from fitsflow.core.config import load_config
from fitsflow.core.handoff import fsync_dir
from fitsflow.core.messages import Message, make
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener
from fitsflow.testing.files import make_sensor_file

SIZES_MIB = [1, 16, 64, 256]


def bare_handoff(src: Path, a: Path, b: Path) -> float:
    t0 = time.perf_counter()
    os.link(src, a)
    os.link(src, b)
    fsync_dir(a.parent)
    fsync_dir(b.parent)
    os.unlink(src)
    fsync_dir(src.parent)
    return time.perf_counter() - t0


async def measure(base: Path, broker: PrivateBroker, files: int) -> None:
    site = make_site(base, [broker.url], extra={"oods": {"rescan_s": 60.0}, "archive_ingest": {"rescan_s": 60.0}})
    cfg = load_config(site)
    paths = cfg.paths.resolved()
    env = dict(os.environ, FITSFLOW_CONFIG=str(site))
    procs = [subprocess.Popen([sys.executable, "-m", f"fitsflow.{m}", "--instance", "bench", "--log-level", "WARNING"],
                              env=env) for m in ("archive_controller", "oods", "archive_ingest")]
    got: dict[str, float] = {}

    async def on(msg: Message) -> None:
        got[Path(msg.data["path"]).name] = time.perf_counter()
    try:
        async with Listener(cfg, "bench-handoff", ["/topic/fitsflow.oods"], handler=on) as listen:
            await asyncio.sleep(3.0)
            print(f"{'size':>8} {'delivered->OODS p50':>20} {'p99':>8} {'files/s':>8} {'bare hand-off':>14} "
                  f"{'CRC read':>10}")
            n = 0
            for mib in SIZES_MIB:
                side = int((mib * 2**20 / 4) ** 0.5)
                count = max(3, files if mib <= 16 else files // 4)
                latencies, bare, crc = [], [], []
                t_start = time.perf_counter()
                for i in range(count):
                    n += 1
                    written, data_id = make_sensor_file(paths.incoming, f"HO_{n:06d}", rows=side, cols=side, seq=n)
                    t_crc = time.perf_counter()
                    file_crc32(written.path)
                    crc.append(time.perf_counter() - t_crc)
                    t0 = time.perf_counter()
                    await listen.bus.send(make("FILE_DELIVERED", f"HO_{n:06d}", assignment="bench", files=[
                        {"path": str(written.path), "size": written.size, "checksum": written.checksum,
                         "data_id": data_id}]))
                    while written.path.name not in got:
                        await asyncio.sleep(0.001)
                    latencies.append(got[written.path.name] - t0)
                    # the bare hand-off of a same-size file, for comparison
                    spare, _ = make_sensor_file(base, f"SP_{n:06d}", rows=side, cols=side, seq=n)
                    bare.append(bare_handoff(spare.path, base / "x1.fits", base / "x2.fits"))
                    os.unlink(base / "x1.fits")
                    os.unlink(base / "x2.fits")
                elapsed = time.perf_counter() - t_start
                latencies.sort()
                print(f"{mib:>5} MiB {statistics.median(latencies) * 1e3:>17.1f} ms "
                      f"{latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3:>6.1f} ms "
                      f"{count / elapsed:>8.1f} {statistics.median(bare) * 1e6:>11.0f} us "
                      f"{statistics.median(crc) * 1e3:>7.1f} ms", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20, help="files per size (a quarter of it above 16 MiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("FITSFLOW_BENCH_DIR")) as tmp:
        with PrivateBroker(Path(tmp) / "amq") as broker:
            asyncio.run(measure(Path(tmp), broker, args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
