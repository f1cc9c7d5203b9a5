"""The recorder over a real broker: it sees topic and queue traffic without taking queue
messages from their consumers, follows an image's life cycle and the daemons' states,
records what was sent while it was down, and serves the status page (headless Chromium)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config, load_config
from fitsflow.core.messages import destination_of, make
from fitsflow.recorder.daemon import RecorderDaemon
from fitsflow.testing.broker import PrivateBroker, free_port
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.wait import async_wait_for

pytestmark = pytest.mark.broker
SENSORS = ["R22_S00", "R22_S01"]
ARTIFACTS = Path(os.environ.get("FITSFLOW_ARTIFACTS", "/tmp/fitsflow-artifacts"))


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    """A broker of each test's own: these tests run daemons on the production destinations."""
    return fresh_broker


def site(tmp_path: Path, broker: PrivateBroker, port: int) -> Config:
    return load_config(make_site(tmp_path, [broker.url], extra={"recorder": {"http_port": port}}))


def life_cycle(image: str) -> list[tuple[object, str | None]]:
    """The messages of one image's life, as the daemons would send them."""
    msgs: list[tuple[object, str | None]] = [
        (make("START_INTEGRATION", image, group="g1", snap=0, exptime=15.0, sensors=SENSORS,
              timestamp="2026-11-22T01:00:00Z"), None),
        (make("END_READOUT", image, timestamp="2026-11-22T01:00:16Z", sensors=SENSORS), None),
        (make("READOUT_COMPLETE", image, present=SENSORS, missing=[], partial=[]), None),
        (make("HEADER_READY", image, path="headers/x.json", partial=True, missing_keywords=["RA"]), None),
    ]
    for s in SENSORS:
        raft, sensor = s.split("_")
        data_id = {"instrument": "TESTCAM", "image": image, "group": "g1", "snap": 0, "raft": raft, "sensor": sensor,
                   "obs_day": "20261122"}
        path = f"/data/{image}_{s}.fits"
        msgs += [
            (make("FILE_DELIVERED", image, path=path, size=1, checksum="crc32:00000000", data_id=data_id, assignment="a"), None),
            (make("INGEST_REQUEST", image, path=path, data_id=data_id, checksum="crc32:00000000"),
             destination_of("INGEST_REQUEST", target="oods")),
            (make("INGEST_REQUEST", image, path=path, data_id=data_id, checksum="crc32:00000000"),
             destination_of("INGEST_REQUEST", target="archive")),
            (make("IMAGE_IN_OODS", image, status=0, description="ok", path=path, data_id=data_id), None),
            (make("IMAGE_IN_ARCHIVE", image, status=0, description="ok", path=path, data_id=data_id), None),
        ]
    return msgs


async def send_all(bus: MessageBus, msgs: list[tuple[object, str | None]]) -> None:
    for msg, dest in msgs:
        await bus.send(msg, dest)  # type: ignore[arg-type]


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, b"", {}


def all_recorded(port: int, image: str, unique: str) -> bool:
    """The status page shows every message of ``life_cycle(image)``, the state and the panic."""
    status, body, _ = fetch(f"http://127.0.0.1:{port}/api/status")
    if status != 200:
        return False
    snap = json.loads(body)
    img = next((i for i in snap["images"] if i["image"] == image), None)
    return img is not None and img["stage"] == "in archive" and img["header_partial"] is not None \
        and img["n_in_archive"] == img["n_in_OODS"] == img["n_delivered"] == len(SENSORS) \
        and any(d["daemon"] == "forwarder@f1" for d in snap["daemons"]) \
        and any(e["type"] == "PANIC" and unique in e["message"] for e in snap["events"])


def test_recorder_follows_images_and_daemons_without_stealing(tmp_path: Path, broker: PrivateBroker,
                                                             unique: str) -> None:
    port = free_port()
    cfg = site(tmp_path, broker, port)
    image, later = f"TC_O_20261122_{unique[:6]}", f"TC_O_20261122_{unique[:5]}x"
    consumer = Listener(cfg, f"delivered-{unique}", [destination_of("FILE_DELIVERED")])

    async def scenario() -> dict:
        await consumer.bus.start()
        producer = MessageBus.from_config(cfg, f"producer-{unique}")
        await producer.start()
        assert await producer.wait_connected(15) and await consumer.bus.wait_connected(15)
        async with running(RecorderDaemon, cfg, "r1") as rec:
            await send_all(producer, life_cycle(image))
            await producer.send(make("DAEMON_STATE", daemon="forwarder@f1", host="node1", state="ON", target="ON",
                                     status="2 assignments"))
            await producer.send(make("PANIC", message=f"disk full {unique}", host="node1", program="test"))
            # Not by counting rec.recorded: the recorder records its own DAEMON_STATEs too, and
            # under load the count was reached before the last of these (seen in CI).
            await async_wait_for(lambda: all_recorded(port, image, unique), 30, what="all recorded")
            status, body, headers = fetch(f"http://127.0.0.1:{port}/api/status")
            assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
            assert fetch(f"http://127.0.0.1:{port}/nothing")[0] == 404
        # Sent while the recorder is down: the durable subscriptions keep them.
        await send_all(producer, life_cycle(later)[:3])
        async with running(RecorderDaemon, cfg, "r1") as rec:
            await async_wait_for(lambda: rec.recorded >= 3, 30, what="recorded after the restart")
        await async_wait_for(lambda: len(consumer.of("FILE_DELIVERED", image)) == len(SENSORS), 30,
                             what="queue consumer got every FILE_DELIVERED")
        await producer.stop()
        await consumer.bus.stop()
        return json.loads(body)

    snap = asyncio.run(asyncio.wait_for(scenario(), 180))
    img = next(i for i in snap["images"] if i["image"] == image)
    assert img["stage"] == "in archive" and img["sensors"] == 2
    assert img["n_delivered"] == img["n_in_OODS"] == img["n_in_archive"] == 2
    assert img["header_partial"] is True and img["readout_to_oods_s"] >= 0
    fwd = next(d for d in snap["daemons"] if d["daemon"] == "forwarder@f1")
    assert (fwd["availability"], fwd["state"], fwd["host"]) == ("up", "ON", "node1")
    assert any(e["type"] == "PANIC" and unique in e["message"] for e in snap["events"])

    # fitsflow status reads the same tables: the image recorded while the recorder was down is there.
    cli = subprocess.run([sys.executable, "-m", "fitsflow.cli", "status", "--config", str(cfg.source), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    doc = json.loads(cli.stdout)
    assert {i["image"]: i["stage"] for i in doc["images"]}[later] == "readout"
    text = subprocess.run([sys.executable, "-m", "fitsflow.cli", "status", "--config", str(cfg.source)],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and image in text.stdout and "forwarder@f1" in text.stdout


def test_the_page_only_binds_loopback_unless_exposed(tmp_path: Path, broker: PrivateBroker) -> None:
    path = make_site(tmp_path, [broker.url], extra={"recorder": {"http_bind": "0.0.0.0"}})
    with pytest.raises(Exception, match="expose_page"):
        load_config(path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (dev.sh setup installs it)")
def test_status_page_in_headless_chromium(tmp_path: Path, broker: PrivateBroker, unique: str) -> None:
    port = free_port()
    cfg = site(tmp_path, broker, port)
    image = f"TC_O_20261122_{unique[:6]}"
    shot = ARTIFACTS / "status-page.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--virtual-time-budget=6000", f"--user-data-dir={tmp_path / 'chromium'}"]
    url = f"http://127.0.0.1:{port}/"

    async def scenario() -> str:
        producer = MessageBus.from_config(cfg, f"producer-{unique}")
        await producer.start()
        assert await producer.wait_connected(15)
        async with running(RecorderDaemon, cfg, "r1") as rec:
            for state in (("receiver@r1", "ON"), ("forwarder@f1", "ON"), ("archive-controller@c1", "ALARM")):
                await producer.send(make("DAEMON_STATE", daemon=state[0], host="node1", state=state[1],
                                         status="demo data"))
            await send_all(producer, life_cycle(image))
            await producer.send(make("ALERT", severity="warning", source="receiver@r1",
                                     message=f"packet loss 0.3 % on stream 2 ({unique})"))
            await async_wait_for(lambda: rec.recorded >= 4 + 4 + 5 * len(SENSORS), 30, what="recorded")
            dom = await asyncio.to_thread(subprocess.run, [*browser, "--dump-dom", url], capture_output=True,
                                          text=True, timeout=120)
            await asyncio.to_thread(subprocess.run, [*browser, f"--screenshot={shot}", "--window-size=1280,1100", url],
                                    capture_output=True, timeout=120)
        await producer.stop()
        return dom.stdout

    dom = asyncio.run(asyncio.wait_for(scenario(), 300))
    # The DOM after the page's script ran: real rows, not the static skeleton.
    assert image in dom and "archive-controller@c1" in dom and f"({unique})" in dom
    assert "in archive" in dom and 'class="node up"' in dom
    assert shot.is_file() and shot.stat().st_size > 20_000, "screenshot missing or blank"
