"""The no-loss promise under abuse, on one machine: 200 images while every daemon is killed -9
(each at least twice) and restarted, the broker is killed -9 and restarted, a forwarder hangs,
and bad input arrives on every channel. Afterwards every image the camera sent is in the OODS
and the archive exactly once, bit-exact; catch-up closed the gaps of the receiver's downtime;
nothing is stranded and every dead letter is one we sent on purpose."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config, load_config
from fitsflow.core.errors import Disconnected
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.messages import CATALOGUE, Message, destination_of, make
from fitsflow.forwarder.assignments import AssignmentBook
from fitsflow.testing.broker import PrivateBroker, free_port
from fitsflow.testing.config import make_site
from fitsflow.testing.flow import STARTUP_S
from fitsflow.testing.pipeline import Pipeline
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.udp import free_udp_port
from fitsflow.testing.wait import async_wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]

IMAGES = int(os.environ.get("FITSFLOW_CHAOS_IMAGES", "200"))
SENSORS = ["R22_S00", "R22_S01", "R22_S10", "R22_S11"]
MARK = "CHAOS-BAD-INPUT"  # every malformed message we inject carries it


def site(tmp: Path, broker: PrivateBroker, port: int) -> Config:
    return load_config(make_site(tmp, [broker.url], extra={
        "bus": {"heartbeat_ms": 2000, "receipt_timeout_s": 3.0, "reconnect_max_s": 1.0, "retry_delay_s": 0.2},
        "receiver": {"streams": [f"127.0.0.1:{port}"], "image_timeout_s": 3.0, "socket_buffer_bytes": 8 << 20,
                     "max_heap_bytes": 1 << 20, "expected_sensors": SENSORS,
                     # longer than the forwarders' join timeout: a late duplicate still finds its pixels
                     "raw_keep_s": 90.0, "raw_clean_interval_s": 5.0},
        "forwarder": {"heartbeat_s": 0.5, "join_timeout_s": 60.0},
        "archive_controller": {"liveness_timeout_s": 3.0, "partial_grace_s": 30.0, "catchup_after_s": 8.0,
                               "catchup_interval_s": 2.0, "catchup_max_resends": 8},
        "oods": {"rescan_s": 5.0}, "archive_ingest": {"rescan_s": 5.0},
        "recorder": {"http_port": free_port()},
    }))


class Chaos(threading.Thread):
    """Kills, restarts and hangs things on a random schedule while images flow."""

    def __init__(self, pipeline: Pipeline, broker: PrivateBroker, duration: float, seed: int = 4) -> None:
        super().__init__(daemon=True)
        self.p, self.broker, self.duration = pipeline, broker, duration
        self.rng = random.Random(seed)
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            plan = [("kill", n) for n in self.p.daemons for _ in range(2)] + [("broker", ""), ("hang", "forwarder@f2")]
            self.rng.shuffle(plan)
            gap = self.duration / (len(plan) + 1)
            for what, name in plan:
                time.sleep(gap * self.rng.uniform(0.6, 1.4))
                t0 = time.monotonic()
                if what == "kill":
                    self.p.kill(name)
                    time.sleep(self.rng.uniform(0.3, 2.0))
                    self.p.start(name)
                elif what == "broker":
                    self.broker.kill()
                    time.sleep(2.0)
                    self.broker.start()
                else:
                    self.p.pause(name)
                    time.sleep(8.0)  # longer than the controller's liveness timeout: work is reassigned
                    self.p.resume(name)
                self.events.append(f"{what} {name} ({time.monotonic() - t0:.1f} s)")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def bad_input(cfg: Config, broker: PrivateBroker, port: int) -> None:
    """Foreign UDP packets, a malformed message on every destination, a path outside the
    data tree, a corrupt FITS file dropped into staging."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for n in range(50):
            s.sendto(bytes(random.Random(n).randrange(256) for _ in range(200)), ("127.0.0.1", port))
    from fitsflow.core.bus.stomp_link import StompLink

    link = StompLink(broker.url, heartbeat_ms=0)
    for _ in range(60):  # the chaos may have the broker down right now
        try:
            link.connect("chaos-bad-input")
            break
        except Disconnected:
            time.sleep(0.5)
    try:
        dests = {t.destination.format(forwarder="f1", target="oods") for t in CATALOGUE.values()}
        dests.add(destination_of("INGEST_REQUEST", target="archive"))
        for dest in sorted(dests):
            link.send(dest, "{" + MARK, {"persistent": "true", "MsgClass": "fitsflow"}).result(10)
        outside = make("FILE_DELIVERED", "TESTCAM_O_20261122_999999", path="/etc/passwd", size=1,
                       checksum="crc32:00000000", assignment=MARK,
                       data_id={"instrument": "TESTCAM", "image": "TESTCAM_O_20261122_999999", "group": "g",
                                "snap": 0, "raft": "R22", "sensor": "S00", "obs_day": "20261122"})
        link.send(destination_of("FILE_DELIVERED"), outside.encode(), outside.headers()).result(10)
    finally:
        link.close()
    staging = cfg.paths.resolved().oods_staging / "20261122"
    staging.mkdir(exist_ok=True)
    (staging / "TESTCAM_O_20261122_999998_R22_S00.fits").write_bytes(b"SIMPLE  = not a FITS file" * 200)


def forwarders_busy(cfg: Config) -> list[str]:
    """Assignments some forwarder has not finished, read from their books on disk."""
    return [a.assignment for d in Path(cfg.site.state_dir).glob("forwarder-*") if d.is_dir()
            for a in AssignmentBook(d).open_items()]


@pytest.mark.timeout(1200)
def test_no_image_lost_under_chaos(tmp_path: Path, broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory()
    port = free_udp_port()
    cfg = site(tmp_path, broker, port)
    pipeline = Pipeline(cfg.source, tmp_path / "logs")
    pipeline.start_all()
    registries = [Registry(cfg.site.database_url, t) for t in ("oods_files", "archive_files")]
    recipes = []

    async def camera() -> None:
        bus = MessageBus.from_config(cfg, "camera")
        settings = SimSettings(instrument="TESTCAM", sensors=SENSORS, rows=64, cols=64, stripe_rows=16,
                               interval=0.15)
        with SpeadSender([("127.0.0.1", port)], rate_bytes_s=50e6) as sender:
            sim = CameraSimulator(settings, bus, sender, ImageStore(tmp_path / "camera-store", IMAGES + 10))
            on: set[str] = set()

            async def on_state(msg: Message) -> None:
                if msg.data["state"] == "ON":
                    on.add(str(msg.data["daemon"]))
            bus.subscribe(destination_of("DAEMON_STATE"), on_state)
            await bus.start()
            assert await bus.wait_connected(30)
            await async_wait_for(lambda: set(pipeline.daemons) <= on, STARTUP_S, what="every daemon ON")
            chaos = Chaos(pipeline, broker, duration=IMAGES * 0.3)
            chaos.start()
            for n in range(IMAGES):
                recipes.append(await sim.take_image())
                if n == IMAGES // 2:
                    await asyncio.to_thread(bad_input, cfg, broker, port)
            await asyncio.to_thread(chaos.join)
            assert chaos.error is None, chaos.error
            # Everything must arrive; the camera keeps serving re-sends (catch-up) meanwhile.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                counts = [await asyncio.to_thread(r.count) for r in registries]
                print(f"waiting: {counts} of {IMAGES * len(SENSORS)}", flush=True)
                if counts == [IMAGES * len(SENSORS)] * 2:
                    break
                await asyncio.sleep(2)
            # Then until no forwarder has work left and the hand-off directories stay empty:
            # a reassigned sensor's first forwarder may still write its (duplicate) file, up
            # to the join timeout later, and the controller then removes it. Sampling the
            # directories alone missed one written as the pipeline was being stopped.
            paths = cfg.paths.resolved()
            quiet_since = time.monotonic()
            while time.monotonic() < deadline + 180 and time.monotonic() - quiet_since < 10:
                busy = any(p.is_file() for d in (paths.incoming, paths.oods_staging, paths.archive_staging)
                           for p in d.rglob("*")) or forwarders_busy(cfg)
                if busy:
                    quiet_since = time.monotonic()
                await asyncio.sleep(1)
            await bus.stop()
        print("chaos:", "; ".join(chaos.events))

    try:
        asyncio.run(camera())
        # A daemon that died by itself (not by our kill -9) is a bug, even if systemd would
        # restart it: say which, with its log.
        crashed = pipeline.dead()
        assert crashed == [], "\n\n".join(f"{n}:\n{pipeline.log_tail(n, 40)}" for n in crashed)
    finally:
        pipeline.stop_all()
    assert all(n >= 2 for n in pipeline.kills.values()), pipeline.kills
    assert broker.starts >= 2

    # Every image, every sensor: exactly one entry in each registry, bit-exact pixels.
    repos = [cfg.paths.resolved().oods_repo, cfg.paths.resolved().archive_repo]
    for reg, repo in zip(registries, repos):
        entries: dict[tuple[str, str], list[str]] = {}
        for e in reg.query():
            entries.setdefault((e.data_id["image"], f"{e.data_id['raft']}_{e.data_id['sensor']}"), []).append(e.path)
        want = {(r.image, s) for r in recipes for s in SENSORS}
        assert set(entries) == want, f"{reg.table.name}: missing {sorted(want - set(entries))[:10]}, " \
                                     f"unexpected {sorted(set(entries) - want)[:10]}"
        assert all(len(paths) == 1 for paths in entries.values())
        for r in recipes:
            for index, s in enumerate(SENSORS):
                with fits.open(repo / entries[(r.image, s)][0]) as hdul:
                    expected = sensor_pixels(r.seed, r.image_seq, index, r.rows, r.cols, r.dtype)
                    assert np.array_equal(hdul[1].data, expected), f"{r.image} {s} differs"
                    assert not hdul[1].header.get("PARTIAL", False), f"{r.image} {s} is partial"
                    # A header is complete, or flagged partial with the reason.
                    primary = hdul[0].header
                    assert primary["IMGNAME"] == r.image
                    assert primary["HDRPART"] is False or primary.get("HDRMISS"), f"{r.image} {s}: partial, no reason"
        reg.close()

    paths = cfg.paths.resolved()
    stranded = [p for d in (paths.incoming, paths.archive_staging) for p in d.rglob("*") if p.is_file()]
    stranded += [p for p in paths.oods_staging.rglob("*") if p.is_file()]
    assert stranded == [], stranded[:10]
    assert list(paths.quarantine.rglob("*999998*")), "the corrupt staged file was not quarantined"
    # The raw buffer was cleaned under chaos too (images archived more than 90 s before the end).
    left = [d for d in paths.raw_buffer.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(left) < IMAGES, f"no image left the raw buffer ({len(left)} there)"
    broker.start()
    # Drained until all are there: right after a restart on a busy machine the broker may not
    # have every DLQ destination loaded yet when the first (wildcard) consumer arrives.
    want_dead = len({t.destination for t in CATALOGUE.values()})
    dead = []
    deadline = time.monotonic() + 60
    while len(dead) < want_dead and time.monotonic() < deadline:
        dead += drain(broker.url, "/queue/DLQ.>", timeout=3.0)
    unexplained = [(f.headers.get("DLQOrigin"), f.headers.get("DLQReason", "")[:200]) for f in dead if MARK not in f.body]
    assert unexplained == [], unexplained
    assert len(dead) >= want_dead
