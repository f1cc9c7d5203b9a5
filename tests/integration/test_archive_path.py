"""The archive path over a real broker, real files and inotify: archive controller (assignment,
reassignment, empty pool, hand-off cut points under kill -9, link failures), OODS and archive
ingest end to end."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Awaitable

import numpy as np
import pytest
from astropy.io import fits

from fitsflow.archive_controller.book import Book
from fitsflow.archive_controller.daemon import ArchiveControllerDaemon
from fitsflow.archive_controller.pool import POOL_FAULT
from fitsflow.archive_ingest.daemon import ArchiveIngestDaemon
from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.core.config import Config, load_config
from fitsflow.core.headerstore import ImageHeader, write_header
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.messages import make
from fitsflow.core.rawstore import DATA_OFFSET, SensorMeta, SensorWriter, write_readout_summary
from fitsflow.forwarder.daemon import ForwarderDaemon
from fitsflow.forwarder.fitswriter import WrittenFile
from fitsflow.oods.daemon import OodsDaemon
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.files import make_sensor_file
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.wait import async_wait_for, wait_for
from fitsflow.core.checksum import file_crc32, file_crc32_adler32

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    """A broker of each test's own: these tests run daemons on the production destinations."""
    return fresh_broker


SENSORS = ["R22_S00", "R22_S01", "R22_S02"]
ROWS, COLS = 64, 80
T_READOUT = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc).timestamp()  # obs-day 20261120


def site(tmp_path: Path, broker: PrivateBroker, **extra: dict) -> Config:
    sections = {"archive_controller": {"liveness_timeout_s": 2.0, "assign_interval_s": 0.3},
                "forwarder": {"heartbeat_s": 0.3, "join_timeout_s": 10.0},
                "oods": {"rescan_s": 2.0}, "archive_ingest": {"rescan_s": 2.0}}
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return load_config(make_site(tmp_path, [broker.url], extra=sections))


def store_image(cfg: Config, image: str, seq: int) -> None:
    """What the receiver and the header service leave for the forwarders."""
    paths = cfg.paths.resolved()
    for index, name in enumerate(SENSORS):
        raft, sensor = name.split("_")
        meta = SensorMeta(image, seq, "G", 0, raft, sensor, ROWS, COLS, "<i4", T_READOUT, T_READOUT + 1, 1,
                          data_offset=DATA_OFFSET)
        w = SensorWriter(paths.raw_buffer, meta)
        w.write_stripe(0, 0, sensor_pixels(1, seq, index, ROWS, COLS))
        w.finish()
    write_readout_summary(paths.raw_buffer, image, {"present": SENSORS, "missing": [], "partial": [],
                                                    "timed_out": False})
    write_header(paths.headers, ImageHeader(image, [("INSTRUME", "TESTCAM", "Instrument"), ("IMGNAME", image, "Image"),
                                                    ("GROUPID", "G", "Group"), ("SNAP", 0, "Snap")]))


def readout(image: str):  # type: ignore[no-untyped-def]
    return make("READOUT_COMPLETE", image, present=SENSORS, missing=[], partial=[])


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 240))


OUT = ["/topic/fitsflow.oods", "/topic/fitsflow.archive", "/topic/fitsflow.alerts"]


def test_images_reach_oods_and_archive_exactly_once(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg = site(tmp_path, broker)
    images = [f"TESTCAM_O_20261121_{n:06d}" for n in (1, 2)]
    for n, image in enumerate(images, 1):
        store_image(cfg, image, n)

    async def main() -> None:
        async with running(ArchiveControllerDaemon, cfg) as ctl, running(ForwarderDaemon, cfg, "f1") as f1, \
                running(ForwarderDaemon, cfg, "f2") as f2, running(OodsDaemon, cfg) as oods, \
                running(ArchiveIngestDaemon, cfg) as arch, Listener(cfg, "arch-l1", OUT) as listen:
            await async_wait_for(lambda: {"f1", "f2"} <= set(ctl.pool.live()), 30, what="heartbeats")
            for image in images:
                await listen.bus.send(readout(image))
            try:
                await async_wait_for(lambda: len(listen.of("IMAGE_IN_OODS")) >= 6 and
                                     len(listen.of("IMAGE_IN_ARCHIVE")) >= 6, 90, what="12 ingest announcements")
            except TimeoutError:  # say where the flow stopped (a flake once seen in CI, not understood yet)
                assignments = await asyncio.to_thread(ctl.book.open_assignments)
                raise AssertionError(
                    f"live forwarders {ctl.pool.live()}; open assignments {assignments}; "
                    f"controller {ctl.status()}; f1 {f1.status()}; f2 {f2.status()}; oods {oods.status()}; "
                    f"archive {arch.status()}; announcements {[(m.type, m.image) for m in listen.messages]}") from None
            assert all(m.data["status"] == 0 for m in listen.of("IMAGE_IN_OODS") + listen.of("IMAGE_IN_ARCHIVE"))
            # Written on this host: no file was read back to check its checksum (one write, no re-read).
            assert (ctl.deliveries.checksums_trusted, ctl.deliveries.checksums_read) == (6, 0), ctl.status()
            # Pixels written once: each file is the receiver's stored readout, finished in place.
            assert (f1.files_linked + f2.files_linked, f1.files_copied + f2.files_copied) == (6, 0), \
                (f1.status(), f2.status())
            assert oods.ingester.stats.trusted == arch.ingester.stats.trusted == 6, (oods.status(), arch.status())
    run(main())
    paths = cfg.paths.resolved()
    for table, repo, layout in (("oods_files", paths.oods_repo, "TESTCAM/20261120"),
                                ("archive_files", paths.archive_repo, "TESTCAM/raw/20261120")):
        reg = Registry(cfg.site.database_url, table)
        entries = list(reg.query())
        assert len(entries) == 6, table
        for e in entries:
            f = repo / e.path
            assert e.path.startswith(layout + "/" + e.data_id["image"] + "/")
            # The Adler-32 for Rucio, carried from the receiver's stripes (no file was read)
            assert e.adler32 == file_crc32_adler32(f)[1]
            with fits.open(f, checksum=True) as hdul:
                seq = images.index(e.data_id["image"]) + 1
                index = SENSORS.index(f"{e.data_id['raft']}_{e.data_id['sensor']}")
                assert np.array_equal(hdul[1].data, sensor_pixels(1, seq, index, ROWS, COLS))
        reg.close()
    assert list(paths.incoming.iterdir()) == []
    for staging in (paths.oods_staging, paths.archive_staging):
        assert [p for p in staging.rglob("*") if p.is_file()] == [], f"files left in {staging}"
    # The OODS copy and the archive copy are one inode: hand-offs are links, never copies.
    oods = sorted(paths.oods_repo.rglob("*.fits"))
    arch = sorted(paths.archive_repo.rglob("*.fits"))
    assert all(os.path.samefile(a, b) for a, b in zip(oods, arch))


def test_a_site_target_gets_its_link_and_its_own_ingest_request(tmp_path: Path, broker: PrivateBroker) -> None:
    """paths.extra_staging adds a hand-off target without code: every file is hard-linked into
    its staging directory too (the same inode as the OODS's and the archive's) and announced
    on its own queue, /queue/fitsflow.prompt.ingest, for the site's consumer."""
    cfg = site(tmp_path, broker, paths={"extra_staging": {"prompt": "prompt/staging"}})
    image = "TESTCAM_O_20261121_000001"
    store_image(cfg, image, 1)

    async def main() -> None:
        async with running(ArchiveControllerDaemon, cfg) as ctl, running(ForwarderDaemon, cfg, "f1") as f1, \
                running(OodsDaemon, cfg), running(ArchiveIngestDaemon, cfg), \
                Listener(cfg, "prompt-consumer", ["/queue/fitsflow.prompt.ingest"]) as prompt, \
                Listener(cfg, "arch-l4", OUT) as listen:
            await async_wait_for(lambda: "f1" in ctl.pool.live(), 30, what="heartbeat")
            await listen.bus.send(readout(image))
            await async_wait_for(lambda: len(prompt.files("INGEST_REQUEST")) >= 3 and
                                 len(listen.of("IMAGE_IN_ARCHIVE")) >= 3, 90,
                                 what="3 files requested for the prompt target and 3 archived files")
            assert f1.files_linked == 3
            # One assignment, one delivery: one request for the site's target holds its 3 files.
            assert len(prompt.of("INGEST_REQUEST")) == 1 and prompt.of("INGEST_REQUEST")[0].image == image
            requests.extend(prompt.files("INGEST_REQUEST"))
    requests: list = []
    run(main())
    paths = cfg.paths.resolved()
    staging = paths.root / "prompt" / "staging"
    archived = {p.name: p for p in paths.archive_repo.rglob("*.fits")}
    assert sorted(f["data_id"]["sensor"] for f in requests) == ["S00", "S01", "S02"]
    for f in requests:
        staged = Path(f["path"])
        assert staged.parent == staging / "20261120"
        assert os.path.samefile(staged, archived[staged.name]), f"{staged} is not the archived file"
    assert list(paths.incoming.iterdir()) == []


def test_silent_forwarder_work_is_reassigned(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg = site(tmp_path, broker)
    image = "TESTCAM_O_20261121_000010"
    store_image(cfg, image, 10)

    async def main() -> None:
        # (no listener on the FILE_DELIVERED queue: it would take messages from the controller)
        async with running(ArchiveControllerDaemon, cfg) as ctl, running(ForwarderDaemon, cfg, "f1"), \
                Listener(cfg, "arch-l2", []) as listen:
            # "ghost" beats twice, takes work, then goes silent (its queue is never read)
            for _ in range(2):
                await listen.bus.send(make("FORWARDER_HEARTBEAT", forwarder="ghost", load=0, capacity=100))
                await asyncio.sleep(0.2)
            await async_wait_for(lambda: {"f1", "ghost"} <= set(ctl.pool.live()), 10)
            await listen.bus.send(readout(image))
            await async_wait_for(lambda: ctl.assigner.reassignments >= 1, 30, what="a reassignment")
            await async_wait_for(lambda: len(ctl.book.delivered_sensors(image)) == 3, 30,
                                 what="all sensors delivered by f1 and handed off")
            assert ctl.state != "FAULT"
    run(main())


def test_empty_pool_alerts_then_assigns(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg = site(tmp_path, broker)
    image = "TESTCAM_O_20261121_000011"
    store_image(cfg, image, 11)

    async def main() -> None:
        async with running(ArchiveControllerDaemon, cfg) as ctl, Listener(
                cfg, "arch-l3", ["/topic/fitsflow.alerts"]) as listen:
            await listen.bus.send(readout(image))
            await async_wait_for(lambda: listen.of("ALERT"), 20, what="pool-empty ALERT")
            assert "no live forwarder" in listen.of("ALERT")[0].data["message"]
            # Not before the controller had listened for the whole liveness timeout.
            assert ctl.bus.last_connected_at is not None
            assert ctl.effective_state() == "ALARM" and ctl.pool.listening()
            async with running(ForwarderDaemon, cfg, "late"):
                await async_wait_for(lambda: len(ctl.book.delivered_sensors(image)) == 3, 30)
                await async_wait_for(lambda: any("cleared" in m.data["message"] for m in listen.of("ALERT")), 10,
                                     what="the pool's episode cleared")
            assert ctl.effective_state() == "ON"
            assert [m for m in listen.of("ALERT") if "no live forwarder" in m.data["message"]][:1] == \
                listen.of("ALERT")[:1] and len(listen.of("ALERT")) == 2  # one episode: one ALERT each way
    run(main())


def test_no_false_pool_alarm_after_a_reconnect(tmp_path: Path, broker: PrivateBroker) -> None:
    """Readouts queued while the controller was away arrive before the first heartbeat after
    its reconnect: the forwarders are alive, only not heard yet — no ALARM, no panic."""
    cfg = site(tmp_path, broker)
    images = [f"TESTCAM_O_20261121_0000{20 + i}" for i in range(3)]
    for i, image in enumerate(images):
        store_image(cfg, image, 20 + i)

    async def main() -> None:
        async with running(ForwarderDaemon, cfg, "f1"), Listener(cfg, "arch-l4", ["/topic/fitsflow.alerts"]) as listen:
            async with running(ArchiveControllerDaemon, cfg):
                pass  # its durable subscriptions exist now
            for image in images:  # published while the controller is down
                await listen.bus.send(readout(image))
            async with running(ArchiveControllerDaemon, cfg) as ctl:
                await async_wait_for(lambda: all(len(ctl.book.delivered_sensors(i)) == 3 for i in images), 60,
                                     what="the backlog delivered")
                assert POOL_FAULT not in ctl.faults.active and ctl.faults.episodes == 0
            assert not [m for m in listen.of("ALERT") if "forwarder" in m.data["message"]]
    run(main())


CUT_POINTS = ["handoff.verified", "handoff.linked", "handoff.unlinked", "handoff.sent"]


def delivered(written: WrittenFile, data_id: dict) -> dict:
    """A FILE_DELIVERED entry for a file written here."""
    return {"path": str(written.path), "size": written.size, "checksum": written.checksum, "data_id": data_id}


@pytest.mark.parametrize("cut", CUT_POINTS)
def test_handoff_completes_once_after_kill_at(cut: str, tmp_path: Path, broker: PrivateBroker) -> None:
    """Two files delivered together go through each step together: a kill -9 at any step
    leaves both recorded at the same state, and the restart completes both, once."""
    cfg = site(tmp_path, broker)
    paths = cfg.paths.resolved()
    image = f"TESTCAM_O_20261121_0001{CUT_POINTS.index(cut):02d}"
    files = [make_sensor_file(paths.incoming, image, sensor=s, rows=ROWS, cols=COLS, index=i)
             for i, s in enumerate(("S00", "S01"))]
    env = dict(os.environ, FITSFLOW_CONFIG=str(cfg.source))

    async def deliver() -> None:
        async with Listener(cfg, f"arch-cut-{cut}", []) as listen:
            await listen.bus.send(make("FILE_DELIVERED", image, assignment="cut1",
                                       files=[delivered(w, d) for w, d in files]))
    run(deliver())
    crashed = subprocess.run([sys.executable, "-m", "fitsflow.archive_controller", "--instance", "cut"],
                             env=dict(env, FITSFLOW_FAILPOINT=cut), capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert f"failpoint {cut} reached" in crashed.stderr
    book = Book(cfg.site.database_url)
    keys = [f"{image}/R22_S00", f"{image}/R22_S01"]
    assert len({book.handoff(k).state for k in keys}) == 1, "the two files stopped at different steps"
    again = subprocess.Popen([sys.executable, "-m", "fitsflow.archive_controller", "--instance", "cut"], env=env)
    try:
        wait_for(lambda: all((row := book.handoff(k)) is not None and row.state == "requested" for k in keys), 60,
                 what="the hand-offs to finish after the restart")
        book.close()
    finally:
        again.terminate()
        again.wait(30)
    staged = {}
    for written, _ in files:
        names = [paths.oods_staging / "20261121" / written.path.name,
                 paths.archive_staging / "20261121" / written.path.name]
        assert all(p.exists() for p in names) and os.path.samefile(*names)
        assert not written.path.exists(), "the incoming name must be gone"
        assert os.stat(names[0]).st_nlink == 2, "exactly the two staged names, no copies"
        staged[written.path.name] = names
    for target in ("oods", "archive"):
        requests = drain(broker.url, f"/queue/fitsflow.{target}.ingest", timeout=3)
        mine = [f for f in requests if json.loads(f.body)["image"] == image]
        # A kill between sending and recording "requested" repeats the request (a new message):
        # ingest is idempotent. Copies of one message (a send whose receipt was not recorded
        # is sent again from the outbox) carry its id and are dropped by the consumer.
        decided = {f.headers["MsgId"] for f in mine}
        assert 1 <= len(decided) <= (2 if cut == "handoff.sent" else 1), (target, len(mine), decided)
        # One request per target holds both files.
        asked = {e["path"] for e in json.loads(mine[0].body)["data"]["files"]}
        assert asked == {str(names[0 if target == "oods" else 1]) for names in staged.values()}


def test_link_failure_is_an_error_event_not_a_request(tmp_path: Path, broker: PrivateBroker) -> None:
    """One file of a delivery cannot be linked (another file has its staged name): the other
    file of the same message is handed off all the same; the blocked one stays where it is,
    with an ALERT, and the message is dead-lettered for it."""
    cfg = site(tmp_path, broker)
    paths = cfg.paths.resolved()
    image = "TESTCAM_O_20261121_000200"
    written, data_id = make_sensor_file(paths.incoming, image)
    other, other_id = make_sensor_file(paths.incoming, image, sensor="S01", index=1)
    blocker = paths.oods_staging / "20261121" / written.path.name
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"another file with this name")

    async def main() -> None:
        async with running(ArchiveControllerDaemon, cfg), Listener(cfg, "arch-l5", ["/topic/fitsflow.alerts"]) as listen:
            await listen.bus.send(make("FILE_DELIVERED", image, assignment="x",
                                       files=[delivered(written, data_id), delivered(other, other_id)]))
            await async_wait_for(lambda: listen.of("ALERT"), 20)
            assert "cannot link" in listen.of("ALERT")[0].data["message"]
            assert written.path.name in listen.of("ALERT")[0].data["message"]
    run(main())
    assert written.path.exists(), "the original must stay when a link failed"
    assert not other.path.exists(), "the other file of the delivery is handed off"
    for target in ("oods", "archive"):
        asked = [e["path"] for f in drain(broker.url, f"/queue/fitsflow.{target}.ingest", expect=1, timeout=10)
                 for e in json.loads(f.body)["data"]["files"]]
        assert [Path(a).name for a in asked] == [other.path.name], (target, asked)
    dead = drain(broker.url, "/queue/DLQ.fitsflow.archive.delivered", expect=1, timeout=10)
    assert dead and "cannot link" in dead[0].headers["DLQReason"] and "R22_S00" in dead[0].headers["DLQReason"]


def test_a_delivery_replaced_by_a_later_one_is_not_dead_lettered(tmp_path: Path, broker: PrivateBroker) -> None:
    """After a reassignment two forwarders write the same sensor under one name: the second
    file replaces the first before the first announcement is read. The sensor is handed off
    once (the second file) and nothing is dead-lettered (a dead letter pages the shifter)."""
    cfg = site(tmp_path, broker)
    paths = cfg.paths.resolved()
    image = "TESTCAM_O_20261121_000300"
    first, data_id = make_sensor_file(paths.incoming, image, rows=16)
    second, _ = make_sensor_file(paths.incoming, image, rows=32)  # same name: replaces the first
    assert first.path == second.path and first.checksum != second.checksum
    staged = paths.oods_staging / "20261121" / second.path.name

    async def main() -> None:
        async with running(ArchiveControllerDaemon, cfg), Listener(cfg, "arch-l6", []) as listen:
            for f in (first, second):
                await listen.bus.send(make("FILE_DELIVERED", image, path=str(f.path), size=f.size,
                                           checksum=f.checksum, data_id=data_id, assignment=f"a{f.size}"))
            await async_wait_for(staged.exists, 20, what="the second file staged")
            await asyncio.sleep(3)  # the first announcement's retries run out meanwhile
    run(main())
    assert file_crc32(staged) == second.checksum and not second.path.exists()
    assert drain(broker.url, "/queue/DLQ.fitsflow.archive.delivered", timeout=2) == []
    assert len([f for f in drain(broker.url, "/queue/fitsflow.oods.ingest", timeout=3)
                if json.loads(f.body)["image"] == image]) == 1
