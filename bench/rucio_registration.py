"""Rucio registration benchmark: cost per file and latency after IMAGE_IN_ARCHIVE.

    ./dev.sh bench rucio_registration [--files N] [--mib M] [--md5]

(Not bench/rucio.py: the script's directory comes first on sys.path, and "rucio" must be the package.)

A real Rucio server (REST under gunicorn, private PostgreSQL) and a private ActiveMQ; the
archive ingest runs as its own process with ``[rucio] enabled``. N sensor files of M MiB are
staged for the archive at once; per file, the time from its IMAGE_IN_ARCHIVE to its
IMAGE_IN_RUCIO is taken. Printed beside it, measured in the same run: Rucio's own bulk
registration of the same number of files (one ``add_replicas`` + one attach, the floor for
any client), and the read of a file for adler32 + md5 (what ``[rucio] md5 = true`` adds per file;
without it the registrar reads nothing: the adler32 comes with the file from its write, or,
for files staged by hand as here, from the ingest's verifying read).
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

from fitsflow.core.checksum import file_adler32_md5
from fitsflow.core.config import load_config
from fitsflow.core.messages import Message
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener
from fitsflow.testing.files import make_sensor_file
from fitsflow.testing.rucio import PASSWORD, USERNAME, PrivateRucio

DAY = "20261128"


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(base: Path, files: int, mib: int, md5: bool) -> None:
    broker = PrivateBroker(base / "amq").start()
    rucio = PrivateRucio()
    try:
        creds = base / "rucio.toml"
        creds.write_text(f'username = "{USERNAME}"\npassword = "{PASSWORD}"\n')
        creds.chmod(0o600)
        site = make_site(base, [broker.url], instrument="BENCH", extra={
            "archive_ingest": {"rescan_s": 60.0},
            "rucio": {"enabled": True, "url": rucio.url, "account": "root", "credentials_file": str(creds),
                      "rse": "SITE_ARCHIVE", "md5": md5}})
        cfg = load_config(site)
        paths = cfg.paths.resolved()
        rucio.add_posix_rse("SITE_ARCHIVE", paths.archive_repo)
        rucio.add_posix_rse("FLOOR", base / "floor")
        client = rucio.client()
        client.add_scope("root", "bench")

        rows = cols = int((mib * 1024 * 1024 / 4) ** 0.5)
        prep = paths.root / "prep"
        prep.mkdir()
        written = [make_sensor_file(prep, f"BENCH_O_{DAY}_{i // 4:06d}", "R22", f"S{i % 4:02d}", instrument="BENCH",
                                    obs_day=DAY, rows=rows, cols=cols, seq=i // 4, index=i % 4)[0] for i in range(files)]

        # The floor: Rucio's own bulk registration of as many files (another RSE and scope names).
        t0 = time.perf_counter()
        sums = [file_adler32_md5(w.path) for w in written]
        t_sums = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.add_replicas(rse="FLOOR", files=[{"scope": "bench", "name": f"floor_{w.path.name}", "bytes": w.size,
                                                 "adler32": a, "md5": m, "pfn": f"file://{base}/floor/{w.path.name}"}
                                                for w, (a, m) in zip(written, sums)])
        client.add_dataset("bench", "floor")
        client.attach_dids("bench", "floor", [{"scope": "bench", "name": f"floor_{w.path.name}"} for w in written])
        t_floor = time.perf_counter() - t0

        archived: dict[str, float] = {}
        registered: dict[str, float] = {}

        async def on(msg: Message) -> None:
            name = Path(msg.data["path"]).name
            (archived if msg.type == "IMAGE_IN_ARCHIVE" else registered)[name] = time.perf_counter()

        env = dict(os.environ, FITSFLOW_CONFIG=str(site))
        proc = subprocess.Popen([sys.executable, "-m", "fitsflow.archive_ingest", "--instance", "bench",
                                 "--log-level", "WARNING"], env=env)
        try:
            async with Listener(cfg, "bench-rucio", ["/topic/fitsflow.archive", "/topic/fitsflow.rucio"], handler=on):
                await asyncio.sleep(5)  # the daemon's subscriptions
                day = paths.archive_staging / DAY
                day.mkdir(parents=True, exist_ok=True)
                cpu0 = _cpu(proc.pid)
                t_start = time.perf_counter()
                for w in written:
                    os.link(w.path, day / w.path.name)
                deadline = time.monotonic() + 600
                while len(registered) < files and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                t_all = time.perf_counter() - t_start
                cpu = _cpu(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(30)
        lat = [registered[n] - archived[n] for n in registered if n in archived]
        print(f"{files} files of {mib} MiB, md5 {'on' if md5 else 'off'}: {len(registered)}/{files} registered in Rucio in {t_all:.2f} s "
              f"(archived and registered: {files / t_all:.1f} files/s)")
        print(f"  IMAGE_IN_ARCHIVE -> IMAGE_IN_RUCIO: p50 {statistics.median(lat) * 1e3:.0f} ms, "
              f"p99 {percentile(lat, 0.99) * 1e3:.0f} ms, max {max(lat) * 1e3:.0f} ms")
        print(f"  archive ingest CPU: {cpu / files * 1e3:.1f} ms per file (ingest and registration)")
        print(f"  floor, Rucio's bulk add_replicas + attach of {files} files: {t_floor:.2f} s "
              f"({t_floor / files * 1e3:.1f} ms per file)")
        print(f"  a read for adler32 + md5 per file: {t_sums / files * 1e3:.1f} ms "
              f"({files * written[0].size / t_sums / 1e6:.0f} MB/s)")
    finally:
        rucio.stop()
        broker.stop()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--mib", type=int, default=1, help="MiB per sensor file")
    ap.add_argument("--md5", action="store_true", help="[rucio] md5 = true (one read per file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitsflow-bench-rucio-") as tmp:
        asyncio.run(run(Path(tmp), args.files, args.mib, args.md5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
