"""End-to-end benchmark: camera → receiver → forwarder → hand-off → OODS, headless.

    ./dev.sh bench e2e [--sizes 16,64] [--images 16] [--sensors 4] [--rate 300e6] [--warmup 5]
                       [--interval 0] [--profile]

Every daemon runs as its own process against a private ActiveMQ, as in production. For each
sensor size it sends images at a fixed UDP rate and reports, with baselines measured in the
same run on the same machine:

- latency per image, last packet → its last sensor announced in the OODS (IMAGE_IN_OODS):
  p50 / p99 / max, and the same minus the raw write time of that image's bytes
  at the disk's rate measured here: the faster of numpy.tofile + fsync and an O_DIRECT
  write + fsync) — issue 18's goal is p50 <= 50 ms and p99 <= 150 ms above it;
- sustained throughput (bytes of pixels / s, first START → last IMAGE_IN_OODS) as a ratio of
  the disk's rate (goal >= 0.8) and of spead2's own loopback rate (spead2_bench);
- the bare hand-off (2 link + unlink + directory fsyncs) as a floor;
- the camera's own average send rate (it generates each image's pixels and pauses for its
  events between readouts: the pipeline cannot be faster than it), and the CPU seconds per
  image of every daemon, the broker and the camera (on a small machine, CPU is the limit);
- each daemon's peak resident memory in the first and the second half of the run (growth
  with the number of images would show);
- only images after the warm-up (``--warmup N`` images first, sent and waited for, not
  counted): a broker that has just started spends about half its CPU compiling (the JVM's C2
  compiler thread, measured during a run), which a broker that has run for a night does not;
- how busy all cores were between each image's last packet and its last IMAGE_IN_OODS
  (/proc/stat; median over images): near 100 % on an idle pipeline, the latency is the
  image's work and everyone else's queueing for the cores, not waiting on anything; and
  which processes had the cores in that window (their CPU between the two, mean over
  images; /proc/PID/stat at the same 20 ms samples, to the kernel's 10 ms tick): what an
  image's latency would gain from each process's CPU. The rest of the busy time is the
  kernel's own threads (journal commits of fsyncs, loopback networking);
- with ``--interval S``: a pause between images (default none: back to back, the camera's
  rate while it reads out), to see the latency of one image on a pipeline with nothing else
  to do;
- with --profile: the top functions of the receiver, a forwarder, the archive controller and
  the OODS ingest (cProfile: their event loops' threads; time spent in worker threads —
  writes, fsyncs, checksums, database commits — shows there as waiting).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import datetime as dt
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parent))
from handoff import bare_handoff  # noqa: E402 - the bare hand-off of bench/handoff.py
from receive import disk_baselines, spead2_baseline  # noqa: E402 - the baselines of bench/receive.py

from fitsflow.camera_sim.sender import SpeadSender  # noqa: E402
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings, default_sensors  # noqa: E402
from fitsflow.camera_sim.store import ImageStore  # noqa: E402
from fitsflow.core.config import load_config  # noqa: E402
from fitsflow.core.db import make_engine  # noqa: E402
from fitsflow.core.messages import Message  # noqa: E402
from fitsflow.testing.broker import PrivateBroker, free_port  # noqa: E402
from fitsflow.core.sockbuf import RaisedCaps  # noqa: E402
from fitsflow.testing.config import make_site  # noqa: E402
from fitsflow.testing.daemons import Listener  # noqa: E402
from fitsflow.testing.pipeline import Pipeline  # noqa: E402
from fitsflow.testing.udp import free_udp_port  # noqa: E402

BUFFER = 64 << 20


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int, int]:
    """(busy, stolen, total) clock ticks of all cores so far (/proc/stat): busy is this
    machine's own work (iowait counts as idle), stolen what the hypervisor gave other guests."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:9]]  # user .. steal (guest is inside user)
    return ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6], ticks[7], sum(ticks)


class BusySampler:
    """How busy the machine's cores were in a window: /proc/stat every ``period_s`` in a
    thread. An image's latency on an idle pipeline is either work on its path or waiting for
    a core; a window with every core busy says it is the second."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, int, int, int]] = []
        #: name → pid of the processes whose CPU is sampled as well (set before entering)
        self.pids: dict[str, int] = {}
        self.cpu: list[dict[str, float]] = []  # each process's CPU seconds at each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy sampler", daemon=True)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.samples.append((time.time(), *machine_jiffies()))
            self.cpu.append({name: cpu_s(pid) for name, pid in self.pids.items()})

    def busy(self, t0: float, t1: float) -> tuple[float, float] | None:
        """Fractions of all cores' time between t0 and t1 that were busy and stolen (None:
        too short a window)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][3] == inside[0][3]:
            return None
        total = inside[-1][3] - inside[0][3]
        return (inside[-1][1] - inside[0][1]) / total, (inside[-1][2] - inside[0][2]) / total

    def cpu_in(self, t0: float, t1: float) -> dict[str, float]:
        """Each sampled process's CPU seconds between t0 and t1 (to the sampling period and
        the kernel's clock tick, 10 ms: meaningful as a mean over many windows)."""
        inside = [i for i, s in enumerate(self.samples) if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {}
        first, last = self.cpu[inside[0]], self.cpu[inside[-1]]
        return {name: last[name] - first[name] for name in first}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run_size(base: Path, mib: int, args: argparse.Namespace, write_rate: float) -> dict:
    rows = cols = int((mib * 2**20 / 4) ** 0.5)
    sensors = default_sensors(1)[:args.sensors]
    broker = PrivateBroker(base / "activemq", name=f"e2e{mib}").start()
    port = free_udp_port()
    site_db = {"database_url": args.database_url} if args.database_url else {}
    site = make_site(base, [broker.url], instrument="BENCH", extra={"site": site_db,
        "receiver": {"streams": [f"127.0.0.1:{port}"], "socket_buffer_bytes": BUFFER,
                     "max_heap_bytes": 16 << 20, "image_timeout_s": 30.0, "expected_sensors": sensors},
        "forwarder": {"join_timeout_s": 60.0}, "recorder": {"http_port": free_port()},
        "oods": {"rescan_s": 60.0}, "archive_ingest": {"rescan_s": 60.0}})
    cfg = load_config(site)
    profile = base / "profile" if args.profile else None
    if profile:
        profile.mkdir()
    pipeline = Pipeline(site, base / "logs", profile=profile, log_level="WARNING")
    oods: dict[str, dict[str, float]] = {}
    busy_sampler = BusySampler()
    ends: dict[str, float] = {}
    ready: set[str] = set()
    rss: dict[str, list[tuple[int, int]]] = {}

    async def on(msg: Message) -> None:
        if msg.type == "IMAGE_IN_OODS" and msg.image:
            oods.setdefault(msg.image, {})[str(msg.data.get("path"))] = time.time()
        elif msg.type == "DAEMON_STATE" and msg.data["state"] == "ON":
            ready.add(str(msg.data["daemon"]))

    async def whole_in_oods(images: Iterable[str], patience_s: float = 300.0) -> None:
        """Until every sensor of these images is announced in the OODS (or patience ends:
        the images that are not are reported as not whole)."""
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline and any(len(oods.get(i, {})) < len(sensors) for i in images):
            await asyncio.sleep(0.2)

    async def sample_memory(stop: asyncio.Event) -> None:
        while not stop.is_set():
            done = len([i for i in ends if len(oods.get(i, {})) >= len(sensors)])
            for name, proc in pipeline.procs.items():
                rss.setdefault(name, []).append((done, status_kib(proc.pid, "VmRSS")))
            await asyncio.sleep(1.0)

    try:
        pipeline.start_all()
        async with Listener(cfg, "bench-e2e", ["/topic/fitsflow.oods", "/topic/fitsflow.state"], handler=on) as listen:
            # Every daemon ON (its subscriptions exist: nothing sent from now on is missed),
            # then a few seconds for the controller to hear the forwarders.
            deadline = time.monotonic() + 120
            while not set(pipeline.daemons) <= ready and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)
            # Idle: every process's CPU with the pipeline up and no image (heart-beats,
            # states, telemetry, the broker's own housekeeping): what an image's figure
            # carries that is not the image's.
            idle_pids = {**{name: proc.pid for name, proc in pipeline.procs.items()},
                         "activemq (broker)": broker.proc.pid if broker.proc else 0}
            idle_first = {name: cpu_s(pid) for name, pid in idle_pids.items()}
            await asyncio.sleep(args.idle_s)
            idle = {name: (cpu_s(pid) - idle_first[name]) / args.idle_s for name, pid in idle_pids.items()}
            settings = SimSettings(instrument="BENCH", sensors=sensors, rows=rows, cols=cols,
                                   stripe_rows=max(1, (4 << 20) // (cols * 4)), interval=args.interval)
            with SpeadSender([("127.0.0.1", port)], rate_bytes_s=args.rate) as sender:
                sim = CameraSimulator(settings, listen.bus, sender, ImageStore(base / "camera-store", 10))
                warm: list[str] = []
                for _ in range(args.warmup):
                    warm.append((await sim.take_image()).image)
                await whole_in_oods(warm)
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_memory(stop))
                t_first = time.time()
                cpu_pids = {**{name: proc.pid for name, proc in pipeline.procs.items()},
                            "activemq (broker)": broker.proc.pid if broker.proc else 0,
                            "camera (this bench)": os.getpid()}
                cpu_first = {name: cpu_s(pid) for name, pid in cpu_pids.items()}
                busy_sampler.pids = cpu_pids
                with busy_sampler:
                    for _ in range(args.images):
                        r = await sim.take_image()
                        ends[r.image] = r.t_end
                    await whole_in_oods(ends)
            stop.set()
            await sampler
            cpu = {name: cpu_s(pid) - cpu_first[name] for name, pid in cpu_pids.items()}
    finally:
        pipeline.stop_all()
        broker.stop()
    whole = [i for i in ends if len(oods.get(i, {})) >= len(sensors)]
    lat = [max(oods[i].values()) - ends[i] for i in whole]
    image_bytes = len(sensors) * rows * cols * 4
    raw_write = image_bytes / write_rate
    t_last = max((max(oods[i].values()) for i in whole), default=time.time())
    result = {"mib": mib, "images": args.images, "whole": len(whole), "lat": lat, "raw_write": raw_write,
              "throughput": len(whole) * image_bytes / (t_last - t_first), "rss": rss,
              "camera": len(ends) * image_bytes / (max(ends.values()) - t_first) if ends else 0.0,
              "cpu": cpu, "wall": t_last - t_first, "idle": idle,
              "busy": [b for i in whole if (b := busy_sampler.busy(ends[i], max(oods[i].values()))) is not None],
              "window_cpu": [busy_sampler.cpu_in(ends[i], max(oods[i].values())) for i in whole]}
    if profile:
        result["profile"] = profile
    try:
        result["stages"] = stage_breakdown(cfg.site.database_url, set(ends))
        result["messages"] = message_counts(cfg.site.database_url, t_first, t_last)
    except Exception as exc:  # noqa: BLE001 - a report detail must not cost the run's figures
        print(f"  (no stage breakdown: {type(exc).__name__}: {exc})")
        result["stages"] = []
    return result


#: (label, from, to): stages of an image between message types, timed by each message's own
#: "sent" stamp (all senders share this machine's clock). A "last"/"first" picks among the
#: image's several messages of that type (one per assignment, or per sensor for the
#: ingests' answers), or of several types; INGEST_REQUEST: the OODS's.
STAGES = [
    ("camera END_READOUT -> READOUT_COMPLETE (receiver)", ("first", "END_READOUT"), ("last", "READOUT_COMPLETE")),
    ("camera END_READOUT -> END_OF_IMAGE_TELEMETRY (camera)", ("first", "END_READOUT"),
     ("last", "END_OF_IMAGE_TELEMETRY")),
    ("camera END_READOUT -> HEADER_READY (header service, its telemetry)", ("first", "END_READOUT"),
     ("last", "HEADER_READY")),
    ("READOUT_COMPLETE -> FORWARD_IMAGE (controller assigns)", ("last", "READOUT_COMPLETE"),
     ("first", "FORWARD_IMAGE")),
    ("READOUT_COMPLETE -> last FORWARD_IMAGE (the image's last forwarder told)", ("last", "READOUT_COMPLETE"),
     ("last", "FORWARD_IMAGE")),
    ("FORWARD_IMAGE -> last FILE_DELIVERED (forwarder: join, FITS write)", ("first", "FORWARD_IMAGE"),
     ("last", "FILE_DELIVERED")),
    ("HEADER_READY -> last FILE_DELIVERED", ("last", "HEADER_READY"), ("last", "FILE_DELIVERED")),
    ("later of HEADER_READY, last FORWARD_IMAGE -> last FILE_DELIVERED", ("last", "HEADER_READY", "FORWARD_IMAGE"),
     ("last", "FILE_DELIVERED")),
    ("last FILE_DELIVERED -> last INGEST_REQUEST (controller hand-off)", ("last", "FILE_DELIVERED"),
     ("last", "INGEST_REQUEST")),
    ("last INGEST_REQUEST -> last IMAGE_IN_OODS (OODS ingest)", ("last", "INGEST_REQUEST"),
     ("last", "IMAGE_IN_OODS")),
]


def message_counts(database_url: str, t_first: float, t_last: float) -> dict[str, int]:
    """Messages the recorder kept between the first measured image's start and the last one
    in the OODS, by type (every message crosses the broker at least once; the recorder
    records each one: their count is the messaging cost)."""
    engine = make_engine(database_url)
    with engine.connect() as db:
        rows = db.execute(text("SELECT type, sent FROM rec_messages")).all()
    engine.dispose()
    counts: dict[str, int] = {}
    for type_, sent in rows:
        if t_first <= dt.datetime.fromisoformat(sent).timestamp() <= t_last:
            counts[str(type_)] = counts.get(str(type_), 0) + 1
    return counts


def stage_breakdown(database_url: str, images: set[str]) -> list[tuple[str, float, float]]:
    """(stage, median, max) in seconds over the measured images, from the messages the
    recorder kept."""
    times: dict[tuple[str, str], list[float]] = {}
    engine = make_engine(database_url)
    with engine.connect() as db:
        rows = db.execute(text("SELECT image, type, destination, sent FROM rec_messages WHERE image IS NOT NULL"))
        for image, type_, destination, sent in rows:
            if image not in images or type_ == "INGEST_REQUEST" and "oods" not in destination:
                continue
            times.setdefault((image, type_), []).append(dt.datetime.fromisoformat(sent).timestamp())
    engine.dispose()
    pick = {"first": min, "last": max}
    out = []
    def at(image: str, how: str, types: tuple[str, ...]) -> float | None:
        stamps = [t for type_ in types for t in times.get((image, type_), [])]
        return pick[how](stamps) if all((image, type_) in times for type_ in types) else None

    for label, (how_a, *a), (how_b, *b) in STAGES:
        values = []
        for image in {i for i, _ in times}:
            start, end = at(image, how_a, tuple(a)), at(image, how_b, tuple(b))
            if start is not None and end is not None:
                values.append(end - start)
        if values:
            out.append((label, statistics.median(values), max(values)))
    return out


def show_profile(path: Path, top: int = 8) -> None:
    if not path.exists():
        print(f"    (no profile at {path})")
        return
    st = pstats.Stats(str(path))
    for func, (_cc, _nc, tt, ct, _callers) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]:  # type: ignore[attr-defined]
        name = f"{Path(func[0]).name}:{func[1]} {func[2]}"
        print(f"    {tt:8.2f} s self  {ct:8.2f} s cum  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,64", help="MiB per sensor, comma-separated")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--sensors", type=int, default=4)
    ap.add_argument("--rate", type=float, default=300e6, help="UDP send rate, bytes/s")
    ap.add_argument("--warmup", type=int, default=5, help="images sent and waited for before the measured ones")
    ap.add_argument("--interval", type=float, default=0.0, help="pause between images, s (default: back to back)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--idle-s", type=float, default=5.0, help="seconds of the idle measurement before the images")
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                    help="the site database: one SQLite file (the default configuration) or a private "
                         "PostgreSQL (what a site with several daemons should use)")
    args = ap.parse_args()
    args.database_url = ""
    with RaisedCaps(BUFFER) as caps, tempfile.TemporaryDirectory(prefix="fitsflow-e2e-", dir="/var/tmp") as tmp:
        for note in caps.notes:
            print(note, flush=True)
        base = Path(tmp)
        print("baselines (same machine, same run):", flush=True)
        spead2 = spead2_baseline()
        write, disk_line = disk_baselines(base, sensors=args.sensors)
        src, a, b = base / "h.fits", base / "a" / "h.fits", base / "b" / "h.fits"
        a.parent.mkdir(), b.parent.mkdir()
        hand = []
        for _ in range(20):
            src.write_bytes(b"x" * 2880)
            hand.append(bare_handoff(src, a, b))
            a.unlink(), b.unlink()
        print(f"  spead2_bench loopback: {spead2 / 1e9:.2f} GB/s; {disk_line} (the faster is the disk here); "
              f"bare hand-off: {statistics.median(hand) * 1e3:.2f} ms", flush=True)
        postgres = None
        if args.database == "postgresql":
            from fitsflow.testing.postgres import PrivatePostgres

            postgres = PrivatePostgres()
        for mib in [int(x) for x in args.sizes.split(",")]:
            if postgres is not None:  # a fresh database per size
                db = f"e2e{mib}"
                subprocess.run(["runuser", "-u", "postgres", "--", str(postgres.bin / "createdb"), "-h", "127.0.0.1",
                                "-p", str(postgres.port), db], check=True)
                args.database_url = postgres.url.rsplit("/", 1)[0] + f"/{db}"
            print(f"\n{args.images} images of {args.sensors} x {mib} MiB sensors at {args.rate / 1e6:.0f} MB/s "
                  f"(after {args.warmup} warm-up images{f', {args.interval:g} s apart' if args.interval else ''}):",
                  flush=True)
            r = asyncio.run(run_size(base / f"s{mib}", mib, args, write))
            lat = r["lat"]
            print(f"  whole in the OODS: {r['whole']}/{r['images']}")
            if lat:
                above = [x - r["raw_write"] for x in lat]
                print(f"  last packet -> IMAGE_IN_OODS: p50 {pct(lat, .5) * 1e3:.0f} ms, p99 {pct(lat, .99) * 1e3:.0f} ms, "
                      f"max {max(lat) * 1e3:.0f} ms; raw write of an image here {r['raw_write'] * 1e3:.0f} ms")
                print(f"  above the raw write: p50 {pct(above, .5) * 1e3:.0f} ms (goal <= 50), "
                      f"p99 {pct(above, .99) * 1e3:.0f} ms (goal <= 150)")
                if r["busy"]:
                    print(f"  all {os.cpu_count()} cores busy between the last packet and IMAGE_IN_OODS: "
                          f"{statistics.median(b for b, _ in r['busy']) * 100:.0f} %, stolen by the hypervisor "
                          f"{statistics.median(st for _, st in r['busy']) * 100:.0f} % (medians over images; "
                          "near 100 % busy: the latency is mostly waiting for a core)")
                windows = [w for w in r["window_cpu"] if w]
                if windows:
                    mean = {n: statistics.fmean(w.get(n, 0.0) for w in windows) for n in windows[0]}
                    print("  who had the cores in that window (CPU ms, mean over images): " + ", ".join(
                        f"{n.split(' ')[0]} {ms * 1e3:.0f}" for n, ms in sorted(mean.items(), key=lambda kv: -kv[1])
                        if ms >= 0.0005))
                print(f"  sustained: {r['throughput'] / 1e6:.0f} MB/s = {r['throughput'] / write:.2f} x the disk (goal >= 0.8), "
                      f"{r['throughput'] / spead2:.2f} x spead2 loopback, {r['throughput'] / args.rate:.2f} x send rate")
            print(f"  the camera sent at {r['camera'] / 1e6:.0f} MB/s on average (pixels, first start to last "
                  f"END_READOUT; {args.rate / 1e6:.0f} MB/s while a readout is on the wire)")
            wall_per_image = r['wall'] / max(1, r['images'])
            print(f"  CPU per image (s; this machine has {os.cpu_count()} cores, {wall_per_image:.2f} s of wall "
                  f"time per image), and what the same process burns idle in that time:")
            for name, seconds in sorted(r["cpu"].items(), key=lambda kv: -kv[1]):
                idle = r["idle"].get(name)
                print(f"    {name:24s} {seconds / max(1, r['images']):7.3f}" +
                      (f"   idle {idle * wall_per_image:6.3f}" if idle is not None else ""))
            if r.get("messages"):
                per = {t: n / max(1, r["images"]) for t, n in r["messages"].items()}
                print(f"  messages per image: {sum(per.values()):.1f} (" +
                      ", ".join(f"{t} {n:.1f}" for t, n in sorted(per.items(), key=lambda kv: -kv[1])[:8]) + ", ...)")
            print("  where the time goes, per image (each message's sent stamp): median / max")
            for label, median, worst in r["stages"]:
                print(f"    {label:68s} {median * 1e3:7.0f} / {worst * 1e3:7.0f} ms")
            print("  peak RSS (MiB) first half / second half of the images:")
            for name, samples in sorted(r["rss"].items()):
                half = r["images"] / 2
                first = max((kib for n, kib in samples if n < half), default=0) / 1024
                second = max((kib for n, kib in samples if n >= half), default=0) / 1024
                print(f"    {name:24s} {first:7.1f} / {second:7.1f}")
            if "profile" in r:
                for name in ("receiver@r1", "forwarder@f1", "archive-controller@c1", "oods@o1", "recorder@r1"):
                    print(f"  profile of {name} (top by own time):")
                    show_profile(r["profile"] / f"{name}.prof")
        if postgres is not None:
            postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
