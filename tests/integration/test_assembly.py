"""Image assembly over a real broker, real UDP and real files: header service (live, replay,
partial, restart) and forwarder (join in both orders, bit-exact FITS, fitsverify/fitscheck,
repeated assignment, missing header, full disk)."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Awaitable

import numpy as np
import pytest
from astropy.io import fits

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings
from fitsflow.camera_sim.store import ImageStore, ImageRecipe
from fitsflow.core.config import Config, load_config
from fitsflow.core.headerstore import ImageHeader, read_header, write_header
from fitsflow.core.messages import CAMERA_EVENTS, TELEMETRY, make
from fitsflow.core.rawstore import SensorMeta, SensorWriter, write_readout_summary
from fitsflow.forwarder.daemon import ForwarderDaemon
from fitsflow.header_service.replay import replay
from fitsflow.header_service.daemon import HeaderServiceDaemon
from fitsflow.receiver.daemon import ReceiverDaemon
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.udp import free_udp_port
from fitsflow.testing.wait import async_wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    """A broker of each test's own: these tests run daemons on the production destinations."""
    return fresh_broker


SENSORS = ["R22_S00", "R22_S01", "R22_S02"]
ROWS, COLS = 120, 200


def site(tmp_path: Path, broker: PrivateBroker, **extra: dict) -> tuple[Config, int]:
    port = free_udp_port()
    sections = {"receiver": {"streams": [f"127.0.0.1:{port}"], "image_timeout_s": 5.0,
                             "socket_buffer_bytes": 4 << 20, "max_heap_bytes": 1 << 20},
                "header_service": {"timeout_margin_s": 20.0},
                "forwarder": {"join_timeout_s": 20.0, "heartbeat_s": 0.5}}
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return load_config(make_site(tmp_path, [broker.url], extra=sections)), port


def simulator(cfg: Config, bus, sender: SpeadSender, tmp: Path, seq: int = 1) -> CameraSimulator:  # type: ignore[no-untyped-def]
    return CameraSimulator(SimSettings(instrument=cfg.site.instrument, sensors=list(SENSORS), rows=ROWS, cols=COLS,
                                       stripe_rows=40, first_seq=seq), bus, sender, ImageStore(tmp / "store", 50))


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 150))


def assert_fits_ok(path: Path, recipe: ImageRecipe, index: int) -> fits.Header:
    with fits.open(path, checksum=True) as hdul:  # verifies CHECKSUM/DATASUM
        data = np.asarray(hdul[1].data)
        want = sensor_pixels(recipe.seed, recipe.image_seq, index, recipe.rows, recipe.cols)
        assert data.dtype.kind == "i" and np.array_equal(data, want), f"{path.name}: pixels differ"
        primary = hdul[0].header.copy()
        assert "CHECKSUM" in primary and "DATASUM" in hdul[1].header
    verify = subprocess.run(["fitsverify", "-q", str(path)], capture_output=True, text=True)
    assert verify.returncode == 0 and "verification OK" in verify.stdout, verify.stdout + verify.stderr
    check = subprocess.run([str(Path(sys.executable).parent / "fitscheck"), str(path)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return primary


def test_header_service_live_matches_replay(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg, port = site(tmp_path, broker)

    async def main() -> None:
        async with running(HeaderServiceDaemon, cfg) as hs, \
                Listener(cfg, "rec-hs", [CAMERA_EVENTS, TELEMETRY, "/topic/fitsflow.header"]) as listen:
            with SpeadSender([("127.0.0.1", port)]) as sender:
                r = await simulator(cfg, listen.bus, sender, tmp_path).take_image()
            await async_wait_for(lambda: listen.of("HEADER_READY", r.image), 30, what="HEADER_READY")
            ready = listen.of("HEADER_READY", r.image)[0]
            assert ready.data["partial"] is False and ready.data["missing_keywords"] == []
            header = read_header(cfg.paths.resolved().headers, r.image)
            cards = {k: v for k, v, _ in header.cards}
            assert cards["IMGNAME"] == r.image and cards["FILTER"] in "ugrizy" and cards["HDRPART"] is False
            assert isinstance(cards["RA"], float) and cards["MJD-OBS"] > 60000
            lines = [m.encode() for m in listen.messages if m.type != "HEADER_READY"]
            rebuilt = await asyncio.to_thread(replay, lines, r.image, cfg)  # the live handlers, on a scratch copy
            assert rebuilt["cards"] == [list(c) for c in header.cards]
            assert hs.written == 1
    run(main())


def test_missing_telemetry_gives_partial_header(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg, port = site(tmp_path, broker, header_service={
        "timeout_margin_s": 1.0, "keywords": {"SEEING": {"topic": "site.seeing", "field": "fwhm", "comment": "DIMM"},
                                              "FILTER": {"topic": "camera.filter", "field": "name"}}})

    async def main() -> None:
        async with running(HeaderServiceDaemon, cfg), Listener(cfg, "rec-hp", ["/topic/fitsflow.header"]) as listen:
            with SpeadSender([("127.0.0.1", port)]) as sender:
                r = await simulator(cfg, listen.bus, sender, tmp_path).take_image()
            await async_wait_for(lambda: listen.of("HEADER_READY", r.image), 30, what="HEADER_READY after timeout")
            ready = listen.of("HEADER_READY", r.image)[0]
            assert ready.data["partial"] is True and ready.data["missing_keywords"] == ["SEEING"]
            header = read_header(cfg.paths.resolved().headers, r.image)
            cards = {k: v for k, v, _ in header.cards}
            assert cards["SEEING"] is None and cards["HDRMISS"] == "SEEING" and cards["FILTER"] is not None
    run(main())


def test_header_service_restart_mid_image(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg, _ = site(tmp_path, broker)
    image = "TESTCAM_O_20261121_000555"
    ts = "2026-11-21T05:00:00.000000Z"

    async def main() -> None:
        async with Listener(cfg, "rec-hr", ["/topic/fitsflow.header"]) as listen:
            async with running(HeaderServiceDaemon, cfg) as hs:
                await listen.bus.send(make("START_INTEGRATION", image, group="g", snap=0, exptime=1.0,
                                           sensors=SENSORS, timestamp=ts))
                for topic, values in {"mount.pointing": {"ra": 10.0, "dec": 20.0, "alt": 45.0, "az": 1.0,
                                                         "rotpa": 0.0},
                                      "camera.filter": {"name": "i"}}.items():
                    await listen.bus.send(make("TELEMETRY", topic=topic, timestamp="2026-11-21T05:00:01Z",
                                               values=values))
                await async_wait_for(lambda: image in hs.store.records and "FILTER" in hs.store.records[image].sampled,
                                     20, what="samples recorded")
            # restarted: the rest of the image arrives
            async with running(HeaderServiceDaemon, cfg) as hs2:
                assert hs2.store.records[image].sampled["FILTER"] == "i"
                for topic, values in {"dome.status": {"azimuth": 3.0, "shutter": "open"},
                                      "camera.temperatures": {"ccd": -100.0, "cryostat": -129.0},
                                      "site.weather": {"temperature": 7.0, "humidity": 20.0, "pressure": 744.0}}.items():
                    await listen.bus.send(make("TELEMETRY", topic=topic, timestamp="2026-11-21T05:00:09Z",
                                               values=values))
                await listen.bus.send(make("END_READOUT", image, timestamp="2026-11-21T05:00:03Z", sensors=SENSORS))
                await async_wait_for(lambda: listen.of("HEADER_READY", image), 30)
            assert listen.of("HEADER_READY", image)[0].data["partial"] is False
            cards = {k: v for k, v, _ in read_header(cfg.paths.resolved().headers, image).cards}
            assert (cards["RA"], cards["FILTER"], cards["AIRTEMP"]) == (10.0, "i", 7.0)
    run(main())


def test_header_takes_the_weather_in_force_at_end_of_readout(tmp_path: Path, broker: PrivateBroker) -> None:
    """The default weather keywords (``when = "at"``): the header is written on END_READOUT
    with the station's last sample before it, without waiting for the next one."""
    cfg, _ = site(tmp_path, broker)
    image = "TESTCAM_O_20261121_000556"

    async def main() -> None:
        async with Listener(cfg, "rec-wx", ["/topic/fitsflow.header"]) as listen:
            async with running(HeaderServiceDaemon, cfg):
                await listen.bus.send(make("START_INTEGRATION", image, group="g", snap=0, exptime=1.0,
                                           sensors=SENSORS, timestamp="2026-11-21T05:00:00.000000Z"))
                for topic, values in {"site.weather": {"temperature": 6.5, "humidity": 21.0, "pressure": 743.0},
                                      "mount.pointing": {"ra": 10.0, "dec": 20.0, "alt": 45.0, "az": 1.0,
                                                         "rotpa": 0.0},
                                      "camera.filter": {"name": "i"}, "dome.status": {"azimuth": 3.0, "shutter": "open"},
                                      "camera.temperatures": {"ccd": -100.0, "cryostat": -129.0}}.items():
                    stamp = "2026-11-21T04:59:30Z" if topic == "site.weather" else "2026-11-21T05:00:01Z"
                    await listen.bus.send(make("TELEMETRY", topic=topic, timestamp=stamp, values=values))
                await listen.bus.send(make("END_READOUT", image, timestamp="2026-11-21T05:00:03Z", sensors=SENSORS))
                await async_wait_for(lambda: listen.of("HEADER_READY", image), 30)
            assert listen.of("HEADER_READY", image)[0].data["partial"] is False
            cards = {k: v for k, v, _ in read_header(cfg.paths.resolved().headers, image).cards}
            assert (cards["AIRTEMP"], cards["HUMIDITY"], cards["PRESSURE"]) == (6.5, 21.0, 743.0)
    run(main())


def test_forwarder_join_both_orders_bit_exact_and_valid(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg, port = site(tmp_path, broker)
    incoming = cfg.paths.resolved().incoming

    async def main() -> None:
        async with running(ReceiverDaemon, cfg), running(HeaderServiceDaemon, cfg), \
                running(ForwarderDaemon, cfg, "f1") as fwd, \
                Listener(cfg, "rec-fw", ["/queue/fitsflow.archive.delivered", "/topic/fitsflow.readout",
                                         "/topic/fitsflow.header", "/topic/fitsflow.forwarder.heartbeat"]) as listen:
            with SpeadSender([("127.0.0.1", port)]) as sender:
                sim = simulator(cfg, listen.bus, sender, tmp_path)
                # Order 1: readout and header first, assignment after.
                first = await sim.take_image()
                await async_wait_for(lambda: listen.of("READOUT_COMPLETE", first.image)
                                     and listen.of("HEADER_READY", first.image), 30)
                await listen.bus.send(make("FORWARD_IMAGE", first.image, sensors=SENSORS, assignment="a1"),
                                      "/queue/fitsflow.forwarder.f1")
                # Order 2: assignment first, then the image.
                second_name = sim.next_image_name(dt.datetime.now(dt.timezone.utc))
                await listen.bus.send(make("FORWARD_IMAGE", second_name, sensors=SENSORS, assignment="a2"),
                                      "/queue/fitsflow.forwarder.f1")
                await async_wait_for(lambda: "a2" in fwd.book.items, 10)
                second = await sim.take_image()
                assert second.image == second_name
            await async_wait_for(lambda: len(listen.files("FILE_DELIVERED")) == 6, 60, what="6 files delivered")
            for recipe in (first, second):
                # One delivery per assignment, each file in it once.
                assert len(listen.of("FILE_DELIVERED", recipe.image)) == 1
                for index, name in enumerate(SENSORS):
                    raft, sensor = name.split("_")
                    delivered = [f for f in listen.files("FILE_DELIVERED", recipe.image)
                                 if f["data_id"]["sensor"] == sensor]
                    assert len(delivered) == 1
                    d = delivered[0]
                    path = Path(d["path"])
                    assert path.parent == incoming and path.name == f"TESTCAM_{recipe.image}_{raft}_{sensor}.fits"
                    assert d["size"] == path.stat().st_size and d["checksum"].startswith("crc32:")
                    assert d["data_id"] == {"instrument": "TESTCAM", "image": recipe.image, "group": recipe.group,
                                            "snap": 0, "raft": raft, "sensor": sensor,
                                            "obs_day": recipe.image.split("_")[2]}
                    primary = assert_fits_ok(path, recipe, index)
                    assert primary["IMGNAME"] == recipe.image and primary["HDRPART"] is False
            assert not [p for p in incoming.iterdir() if p.name.startswith(".tmp-")]
            await async_wait_for(lambda: listen.of("FORWARDER_HEARTBEAT"), 10, what="a forwarder heartbeat")
            assert listen.of("FORWARDER_HEARTBEAT")[0].data["forwarder"] == "f1"
            # The same assignment again: no second file, no second delivery (waited for on
            # the forwarder's own counters, not for a while).
            handled = fwd.bus.stats.handled
            await listen.bus.send(make("FORWARD_IMAGE", first.image, sensors=SENSORS, assignment="a1"),
                                  "/queue/fitsflow.forwarder.f1")
            await async_wait_for(lambda: fwd.bus.stats.handled > handled, 30, what="the repeated assignment handled")
            await async_wait_for(lambda: not fwd.book.open_items(), 30, what="the forwarder idle")
            assert fwd.files_written == 6 and len(listen.files("FILE_DELIVERED")) == 6  # 2 images x 3 sensors
    run(main())


def _store_sensor(cfg: Config, image: str, seq: int = 9) -> None:
    raw = cfg.paths.resolved().raw_buffer
    meta = SensorMeta(image=image, image_seq=seq, group="g", snap=0, raft="R22", sensor="S00", rows=ROWS, cols=COLS,
                      dtype="<i4", t_start=1.7e9, t_end=1.7e9 + 1, stripe_count=1)
    w = SensorWriter(raw, meta)
    w.write_stripe(0, 0, sensor_pixels(1, seq, 0, ROWS, COLS))
    w.finish()
    write_readout_summary(raw, image, {"present": ["R22_S00"], "missing": [], "partial": [], "timed_out": False})


def test_forwarder_without_header_writes_flagged_file(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg, _ = site(tmp_path, broker, forwarder={"join_timeout_s": 1.0})
    image = "TESTCAM_O_20261121_000901"
    _store_sensor(cfg, image)

    async def main() -> None:
        async with running(ForwarderDaemon, cfg, "f2"), \
                Listener(cfg, "rec-nh", ["/queue/fitsflow.archive.delivered"]) as listen:
            await listen.bus.send(make("FORWARD_IMAGE", image, sensors=["R22_S00"], assignment="nh1"),
                                  "/queue/fitsflow.forwarder.f2")
            await async_wait_for(lambda: listen.of("FILE_DELIVERED", image), 30)
        path = Path(listen.files("FILE_DELIVERED", image)[0]["path"])
        with fits.open(path, checksum=True) as hdul:
            assert hdul[0].header["HDRPART"] is True and "no header" in hdul[0].header["HDRMISS"]
        # Flagged, and still ingestable: the data ID keywords come from the forwarder itself.
        from fitsflow.core.ingest.verify import inspect
        assert inspect(path).data_id["image"] == image and inspect(path).data_id["instrument"] == "TESTCAM"
    run(main())


def test_forwarder_full_disk(tmp_path: Path, broker: PrivateBroker) -> None:
    """A small tmpfs holds the whole data tree; filling it makes the FITS write fail."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        state = tmp_path / "state"  # state (bus outboxes) stays off the full disk, as in production
        state.mkdir()
        cfg_path = make_site(mnt, [broker.url], extra={"forwarder": {"join_timeout_s": 30.0},
                                                       "site": {"state_dir": str(state)}})
        cfg = load_config(cfg_path)
        image = "TESTCAM_O_20261121_000902"
        _store_sensor(cfg, image)
        write_header(cfg.paths.resolved().headers, ImageHeader(image, [("IMGNAME", image, "Image")]))
        filler = mnt / "filler"
        with open(filler, "wb") as fh:  # leave ~20 KiB: less than the ~96 KiB file
            free = shutil.disk_usage(mnt).free
            fh.write(b"\0" * max(0, free - 20 * 1024))

        async def main() -> None:
            async with running(ForwarderDaemon, cfg, "f3") as fwd, \
                    Listener(cfg, "rec-fd", ["/queue/fitsflow.archive.delivered", "/topic/fitsflow.alerts"]) as listen:
                await listen.bus.send(make("FORWARD_IMAGE", image, sensors=["R22_S00"], assignment="fd1"),
                                      "/queue/fitsflow.forwarder.f3")
                await async_wait_for(lambda: listen.of("ALERT"), 30, what="an ALERT for the full disk")
                alert = listen.of("ALERT")[0].data["message"]
                assert "cannot write" in alert and "bytes free there" in alert, alert
                incoming = cfg.paths.resolved().incoming
                assert list(incoming.iterdir()) == [], "a temp or partial file was left behind"
                assert fwd.failed is None and fwd.effective_state() == "ALARM"
                assert "ALARM FITS files" in fwd.status_line()
                filler.unlink()  # space again: the pending sensor is written on the next round
                await async_wait_for(lambda: listen.of("FILE_DELIVERED", image), 30)
                assert fwd.effective_state() == "ON"
                await async_wait_for(lambda: any("cleared" in m.data["message"] for m in listen.of("ALERT")), 30,
                                     what="the episode's 'cleared' ALERT")
                assert len([m for m in listen.of("ALERT") if "cleared" not in m.data["message"]]) == 1
        run(main())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
