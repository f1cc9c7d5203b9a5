"""Header service benchmark: images/s and per-image latency, against the bus alone.

    ./dev.sh bench header [--images 200] [--paced 40] [--interval 0.25] [--profile]

The header service runs as its own process against a private ActiveMQ, as in production.
A camera stand-in publishes, per image, what the camera simulator publishes (START_INTEGRATION,
5 telemetry samples, END_READOUT, 5 more samples, END_OF_IMAGE_TELEMETRY — 13 persistent
messages) and a listener times each image's HEADER_READY:

- **burst**: ``--images`` images published as fast as the bus takes them, as after a restart
  with a backlog of durable messages: headers/s, and the same messages/s as a ratio of the
  bus alone (the same messages to a consumer that only counts them, same run);
- **paced**: ``--paced`` images every ``--interval`` s, as at the telescope: latency
  END_OF_IMAGE_TELEMETRY sent → HEADER_READY received, p50 / p99 / max, and how many headers
  came out partial (they should not: all telemetry is published).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fitsflow.camera_sim.simulator import telemetry_samples
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config, load_config
from fitsflow.core.messages import CAMERA_EVENTS, TELEMETRY, Message, make
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener
from fitsflow.testing.pipeline import Pipeline

SENSORS = ["R22_S00", "R22_S01", "R22_S10", "R22_S11"]
PER_IMAGE = 13


def image_messages(image: str, rng: random.Random) -> list[Message]:
    """The camera's messages of one image, in the simulator's order."""
    def now() -> str:
        return dt.datetime.now(dt.timezone.utc).isoformat()

    def telemetry() -> list[Message]:
        ts = now()
        return [make("TELEMETRY", topic=topic, timestamp=ts, values=values)
                for topic, values in telemetry_samples(rng).items()]

    return [make("START_INTEGRATION", image, group=f"{image}_G", snap=0, exptime=0.0, sensors=SENSORS,
                 timestamp=now()), *telemetry(),
            make("END_READOUT", image, timestamp=now(), sensors=SENSORS), *telemetry(),
            make("END_OF_IMAGE_TELEMETRY", image, timestamp=now())]


async def publish(bus: MessageBus, images: list[str], interval: float, sent: dict[str, float]) -> None:
    rng = random.Random(1)
    for image in images:
        for msg in image_messages(image, rng):
            await bus.send(msg, CAMERA_EVENTS if msg.type != "TELEMETRY" else TELEMETRY)
        sent[image] = time.monotonic()
        if interval:
            await asyncio.sleep(interval)


async def bus_alone(cfg: Config, n_images: int) -> float:
    """Messages/s of the same traffic to a consumer that only counts (the floor)."""
    got = 0
    done = asyncio.Event()

    async def count(msg: Message) -> None:
        nonlocal got
        got += 1
        if got == n_images * PER_IMAGE:
            done.set()

    async with Listener(cfg, "bench-floor", [CAMERA_EVENTS, TELEMETRY], handler=count):
        camera = MessageBus.from_config(cfg, "bench-camera-floor")
        await camera.start()
        await camera.wait_connected(15)
        t0 = time.monotonic()
        await publish(camera, [f"FLOOR_O_20261122_{i:06d}" for i in range(n_images)], 0, {})
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.monotonic() - t0
        await camera.stop()
    return n_images * PER_IMAGE / elapsed


async def through_service(cfg: Config, prefix: str, n_images: int, interval: float) -> tuple[float, list[float], int]:
    """Publish, wait for every HEADER_READY: (elapsed s, latencies s, partial headers)."""
    ready: dict[str, float] = {}
    partial = 0
    done = asyncio.Event()
    images = [f"{prefix}_O_20261122_{i:06d}" for i in range(n_images)]

    async def on(msg: Message) -> None:
        nonlocal partial
        if msg.type == "HEADER_READY" and msg.image in images and msg.image not in ready:
            ready[msg.image] = time.monotonic()
            partial += bool(msg.data.get("partial"))
            if len(ready) == n_images:
                done.set()

    sent: dict[str, float] = {}
    async with Listener(cfg, f"bench-{prefix.lower()}", ["/topic/fitsflow.header"], handler=on):
        camera = MessageBus.from_config(cfg, f"bench-camera-{prefix.lower()}")
        await camera.start()
        await camera.wait_connected(15)
        t0 = time.monotonic()
        await publish(camera, images, interval, sent)
        await asyncio.wait_for(done.wait(), 900)
        elapsed = time.monotonic() - t0
        await camera.stop()
    return elapsed, [ready[i] - sent[i] for i in images], partial


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="images in the burst")
    ap.add_argument("--paced", type=int, default=40, help="images in the paced run")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between paced images")
    ap.add_argument("--profile", action="store_true", help="run the service under cProfile")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitsflow-header-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        broker = PrivateBroker(base / "activemq", name="bench-header").start()
        # A wide margin: a header must wait for its telemetry, not time out in a backlog.
        cfg = load_config(make_site(base, [broker.url], extra={"header_service": {"timeout_margin_s": 600.0}}))
        profile = base / "profile" if args.profile else None
        if profile:
            profile.mkdir()
        pipeline = Pipeline(cfg.source, base / "logs", [("header_service", "h1")], profile=profile)
        try:
            floor = asyncio.run(bus_alone(cfg, args.images))
            print(f"bus alone: {floor:.0f} messages/s ({args.images} images x {PER_IMAGE} persistent messages)")
            pipeline.start_all()
            time.sleep(5)  # subscribed (durable: nothing would be lost anyway, only timed wrong)
            elapsed, _, partial = asyncio.run(through_service(cfg, "BURST", args.images, 0))
            rate = args.images * PER_IMAGE / elapsed
            print(f"burst: {args.images} headers in {elapsed:.1f} s = {args.images / elapsed:.1f} headers/s, "
                  f"{rate:.0f} messages/s = {rate / floor:.2f}x the bus alone; {partial} partial")
            elapsed, lat, partial = asyncio.run(through_service(cfg, "PACED", args.paced, args.interval))
            print(f"paced ({args.paced} images every {args.interval} s): END_OF_IMAGE_TELEMETRY -> HEADER_READY "
                  f"p50 {pct(lat, 50) * 1e3:.0f} ms, p99 {pct(lat, 99) * 1e3:.0f} ms, max {max(lat) * 1e3:.0f} ms, "
                  f"mean {statistics.mean(lat) * 1e3:.0f} ms; {partial} partial")
        finally:
            pipeline.stop_all()
            broker.stop()
        if profile:
            st = pstats.Stats(str(profile / "header-service@h1.prof"))
            print("profile (self time):")
            for func, (_cc, _nc, tt, ct, _c) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:10]:  # type: ignore[attr-defined]
                print(f"    {tt:8.2f} s self  {ct:8.2f} s cum  {Path(func[0]).name}:{func[1]} {func[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
