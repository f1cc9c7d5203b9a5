"""Receive benchmark: spead2's own tools vs fitsflow's receiver, same heaps, same packets.

    ./dev.sh bench receive [--images N] [--rate-gbs 1.0]

1. Baseline: ``spead2_bench.py master`` against ``spead2_bench.py agent`` on loopback —
   spead2's sustainable rate, receiving without storing.
2. Baselines: ``numpy.tofile`` + fsync of the same bytes, and the same bytes written with
   O_DIRECT from an aligned buffer + fsync: what storing costs on this disk through the page
   cache and past it. The faster of the two is "the disk" in the ratios.
3. fitsflow: ``fitsflow-receiver`` (its own process, real broker) fed by the camera
   simulator: 9 sensors of 4096 x 4096 int32 (64 MiB) cut into 16 MiB heaps, 8972-byte packets,
   at unlimited rate and at a fixed rate. Throughput counts bytes stored in the raw buffer
   store; heaps lost come from the receiver's own counters.
4. Memory: the receiver's resident set after 10 and after 1,000 small images.

Needs root to raise net.core.rmem_max/wmem_max to the 64 MiB socket buffer (restored afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.camera_sim.sender import ReadoutInfo, SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings, default_sensors
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import load_config
from fitsflow.core.messages import Message
from fitsflow.core.sockbuf import RaisedCaps
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.udp import free_udp_port

HEAP = 16 * 1024 * 1024
PACKET = 8972
BUFFER = 64 * 1024 * 1024
SENSOR_NAMES = default_sensors(1)


def spead2_baseline() -> float:
    """spead2_bench's sustainable rate, bytes/s."""
    bindir = Path(sys.executable).parent
    port = free_udp_port()
    agent = subprocess.Popen([str(bindir / "spead2_bench.py"), "agent", str(port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        out = subprocess.run([str(bindir / "spead2_bench.py"), "master", "--heap-size", str(HEAP), "--packet",
                              str(PACKET), "--recv-buffer", str(BUFFER), f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=600).stdout
    finally:
        agent.terminate()
        agent.wait()
    m = re.search(r"Sustainable rate: ([\d.]+) Gbps", out)
    if not m:
        raise RuntimeError(f"spead2_bench printed no rate:\n{out}")
    return float(m.group(1)) * 1e9 / 8


def write_baseline(directory: Path, sensors: int = 9) -> float:
    """numpy.tofile + fsync of ``sensors`` x 64 MiB into new files, kept until the last is
    written, bytes/s."""
    data = np.ones((4096, 4096), dtype=np.int32)
    t0 = time.perf_counter()
    for i in range(sensors):
        path = directory / f"w{i}.raw"
        with open(path, "wb") as fh:
            data.tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())
    elapsed = time.perf_counter() - t0
    for i in range(sensors):
        (directory / f"w{i}.raw").unlink()
    return sensors * data.nbytes / elapsed


def direct_write_baseline(directory: Path, sensors: int = 9) -> float | None:
    """The same ``sensors`` x 64 MiB written with O_DIRECT in 16 MiB writes from a page-aligned buffer,
    + fsync, bytes/s; None where the filesystem refuses O_DIRECT (tmpfs before Linux 6.6)."""
    import mmap

    buffer = mmap.mmap(-1, 16 << 20)
    buffer.write(b"\x01" * len(buffer))
    t0 = time.perf_counter()
    for i in range(sensors):
        path = directory / f"d{i}.raw"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError:
            path.unlink(missing_ok=True)
            return None
        try:
            for k in range(4):
                os.pwrite(fd, buffer, k * len(buffer))
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - t0
    for i in range(sensors):
        (directory / f"d{i}.raw").unlink()
    return sensors * 4 * len(buffer) / elapsed


def disk_baselines(directory: Path, sensors: int = 9) -> tuple[float, str]:
    """(the faster of the two raw writes in bytes/s, a line that gives both)."""
    cached = write_baseline(directory, sensors)
    direct = direct_write_baseline(directory, sensors)
    line = (f"numpy.tofile + fsync: {cached / 1e9:.2f} GB/s; O_DIRECT write + fsync: "
            + (f"{direct / 1e9:.2f} GB/s" if direct else "refused by this filesystem"))
    return max(cached, direct or 0.0), line


def udp_receive_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full socket buffer (all sockets)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's (user, system) CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class ReceiverUnderTest:
    def __init__(self, base: Path, broker: PrivateBroker, *, timeout_s: float = 10.0,
                 expected: list[str] | None = None, options: dict[str, object] | None = None) -> None:
        """``options``: ``[receiver]`` settings on top of the shipped defaults (``--receiver``)."""
        self.port = free_udp_port()
        self.site = make_site(base, [broker.url], extra={"receiver": {
            "streams": [f"127.0.0.1:{self.port}"], "socket_buffer_bytes": BUFFER, "max_heap_bytes": HEAP,
            "image_timeout_s": timeout_s, "stats_interval_s": 1.0,
            "expected_sensors": expected or [], **(options or {})}})
        self.cfg = load_config(self.site)
        self.raw = self.cfg.paths.resolved().raw_buffer
        self.proc = subprocess.Popen([sys.executable, "-m", "fitsflow.receiver", "--instance", "bench",
                                      "--log-level", "ERROR"], env=dict(os.environ, FITSFLOW_CONFIG=str(self.site)))
        self.readouts: dict[str, dict] = {}
        self.stats: dict = {}

    async def listen(self) -> MessageBus:
        bus = MessageBus.from_config(self.cfg, f"bench-listener-{self.port}")

        async def on(msg: Message) -> None:
            if msg.type == "READOUT_COMPLETE" and msg.image:
                self.readouts[msg.image] = dict(msg.data)
            elif msg.type == "RECEIVER_STATS":
                self.stats = msg.data["streams"][0]
        bus.subscribe("/topic/fitsflow.readout", on)
        bus.subscribe("/topic/fitsflow.stats", on)
        await bus.start()
        await bus.wait_connected(10)
        return bus

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def send_images(port: int, images: int, rate: float, pixels: list[np.ndarray]) -> tuple[float, float]:
    """Send ``images`` images of pre-generated sensors (the sender must not be the bottleneck);
    returns the wall-clock times the first heap went out and the last one was sent."""
    with SpeadSender([("127.0.0.1", port)], rate_bytes_s=rate, packet_size=PACKET) as sender:
        t0 = time.time()
        for n in range(1, images + 1):
            info = ReadoutInfo(f"BENCH_{n:06d}", n, "G", 0, t0, t0)
            for index, name in enumerate(SENSOR_NAMES):
                raft, sensor = name.split("_")
                sender.send_sensor(info, index, raft, sensor, pixels[index], 4096 * 4096 * 4 // HEAP)
    return t0, time.time()


async def fitsflow_run(base: Path, broker: PrivateBroker, images: int, rate: float,
                       pixels: list[np.ndarray], options: dict[str, object]) -> dict:
    rx = ReceiverUnderTest(base, broker, expected=SENSOR_NAMES, options=options)
    bus = await rx.listen()
    await asyncio.sleep(3.0)  # the receiver process starts
    drops0 = udp_receive_errors()
    cpu0 = cpu_seconds(rx.proc.pid)
    t0, t_sent = await asyncio.to_thread(send_images, rx.port, images, rate, pixels)
    deadline = time.monotonic() + 60
    while len(rx.readouts) < images and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu = [b - a for a, b in zip(cpu0, cpu_seconds(rx.proc.pid))]
    await asyncio.sleep(2.5)  # a last RECEIVER_STATS
    # Receiver-side timing: from the first heap sent to the last sensor stored (its metadata),
    # so image timeouts of incomplete images do not count.
    metas = [json.loads(p.read_text()) for p in rx.raw.glob("*/R*_S*.json")]
    stored_bytes = sum(len(m["stripes_received"]) * HEAP for m in metas)
    t_last = max((m["received_at"] for m in metas), default=t0 + 1)
    sent_heaps = images * len(SENSOR_NAMES) * (4096 * 4096 * 4 // HEAP)
    result = {"bytes_per_s": stored_bytes / (t_last - t0), "sent_per_s": len(pixels) * pixels[0].nbytes * images /
              (t_sent - t0), "cpu_user_per_gb": cpu[0] / (stored_bytes / 1e9 or 1),
              "cpu_sys_per_gb": cpu[1] / (stored_bytes / 1e9 or 1), "sensors_whole": sum(not m["partial"] for m in metas),
              "sensors_sent": images * len(SENSOR_NAMES), "heaps_sent": sent_heaps,
              "heaps_stored": rx.stats.get("stripes_stored", 0),
              "heaps_lost": sent_heaps - rx.stats.get("stripes_stored", 0),
              "incomplete": rx.stats.get("heaps_incomplete", 0),
              # Where packets were lost: in the kernel (socket buffer full: nobody read in
              # time) or while spead2's worker waited for the ring (Python behind).
              "kernel_drops": udp_receive_errors() - drops0,
              "ring_full": rx.stats.get("spead2", {}).get("worker_blocked", 0)}
    await bus.stop()
    rx.stop()
    shutil.rmtree(base / "data", ignore_errors=True)
    return result


async def memory_run(base: Path, broker: PrivateBroker, images: int) -> list[tuple[int, int]]:
    rx = ReceiverUnderTest(base, broker, timeout_s=2.0)
    bus = await rx.listen()
    await asyncio.sleep(3.0)
    settings = SimSettings(instrument="TESTCAM", sensors=default_sensors(1), rows=256, cols=256, stripe_rows=64)
    samples = []
    with SpeadSender([("127.0.0.1", rx.port)], rate_bytes_s=200e6, packet_size=PACKET) as sender:
        sim = CameraSimulator(settings, bus, sender, ImageStore(base / "store", 20))
        names: list[str] = []
        for i in range(1, images + 1):
            image = (await sim.take_image()).image
            names.append(image)
            if i % 50 == 0:  # downstream consumes the raw buffer: drop images well behind
                for old in names[:-50]:
                    if old in rx.readouts:
                        shutil.rmtree(rx.raw / old, ignore_errors=True)
            if i in (10, images):
                while image not in rx.readouts:
                    await asyncio.sleep(0.01)
                samples.append((i, rss_kib(rx.proc.pid)))
    await bus.stop()
    rx.stop()
    return samples


def receiver_options(pairs: list[str]) -> dict[str, object]:
    """``["writers=4", "direct_io=false"]`` → ``{"writers": 4, "direct_io": False}`` (TOML values)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--receiver {pair!r}: expected KEY=VALUE")
        options.update(tomllib.loads(f"{key.strip()} = {value.strip()}"))
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10, help="64 MiB x 9 images per throughput run")
    parser.add_argument("--rate-gbs", type=float, default=1.0, help="the fixed rate, GB/s")
    parser.add_argument("--memory-images", type=int, default=1000, help="0: no memory run")
    parser.add_argument("--no-unlimited", action="store_true", help="only the fixed-rate run")
    parser.add_argument("--receiver", action="append", default=[], metavar="KEY=VALUE",
                        help="a [receiver] setting on top of the shipped defaults, VALUE in TOML "
                             "(e.g. --receiver writers=4 --receiver direct_io=false); repeatable")
    args = parser.parse_args()
    options = receiver_options(args.receiver)
    if options:
        print(f"receiver settings: {options}", flush=True)
    with RaisedCaps(BUFFER) as caps:
        for note in caps.notes:
            print(note, file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=os.environ.get("FITSFLOW_BENCH_DIR")) as tmp:
            base = Path(tmp)
            print("spead2_bench (receive only, no storage) ...", flush=True)
            spead2_rate = spead2_baseline()
            print(f"  sustainable rate {spead2_rate / 1e9:.2f} GB/s", flush=True)
            # The run's whole volume, into new files kept to the end, as the receiver stores
            # it: on a VM a page the guest has not used (or gave back) costs far more to
            # allocate than one it reuses, and a few hundred MiB would hide that.
            write_rate, line = disk_baselines(base, sensors=len(SENSOR_NAMES) * args.images)
            print(f"{args.images} x 9 x 64 MiB, {line}", flush=True)
            with PrivateBroker(base / "amq") as broker:
                pixels = [sensor_pixels(1, 1, i, 4096, 4096) for i in range(len(SENSOR_NAMES))]
                runs = [("unlimited", 0.0)] * (not args.no_unlimited) + [(f"{args.rate_gbs:g} GB/s", args.rate_gbs * 1e9)]
                for label, rate in runs:
                    r = asyncio.run(fitsflow_run(base / label.replace(" ", "").replace("/", ""), broker,
                                                 args.images, rate, pixels, options))
                    print(f"fitsflow receiver, {label} (the camera sent at {r['sent_per_s'] / 1e9:.2f} GB/s): "
                          f"{r['bytes_per_s'] / 1e9:.2f} GB/s stored "
                          f"({r['bytes_per_s'] / spead2_rate:.0%} of spead2_bench, "
                          f"{r['bytes_per_s'] / write_rate:.0%} of the disk); heaps lost {r['heaps_lost']} "
                          f"of {r['heaps_sent']} ({r['incomplete']} incomplete); whole sensors "
                          f"{r['sensors_whole']}/{r['sensors_sent']}; packets dropped by the kernel {r['kernel_drops']}, "
                          f"spead2 waited on a full ring {r['ring_full']} times; receiver CPU per GB stored: "
                          f"{r['cpu_user_per_gb']:.2f} s user, {r['cpu_sys_per_gb']:.2f} s system", flush=True)
                if not args.memory_images:
                    return 0
                samples = asyncio.run(memory_run(base / "mem", broker, args.memory_images))
                (i0, r0), (i1, r1) = samples[0], samples[-1]
                print(f"receiver RSS: {r0 / 1024:.1f} MiB after {i0} images, {r1 / 1024:.1f} MiB after {i1} "
                      f"images ({(r1 - r0) / r0:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
