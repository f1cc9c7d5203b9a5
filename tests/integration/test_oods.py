"""OODS ingest over real inotify, real files, a real broker and real databases: a burst of
10,000 files with inotify's queue overflowed, bad files, unsafe paths, expiry with protected
entries, and the registry on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Awaitable

import numpy as np
import pytest
from astropy.io import fits

from fitsflow.core.config import Config, load_config
from fitsflow.core.handoff import file_identity
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.messages import make
from fitsflow.oods.daemon import OodsDaemon
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.postgres import PrivatePostgres
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.files import make_sensor_file
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.wait import async_wait_for, async_wait_progress

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    """A broker of each test's own: these tests run daemons on the production destinations."""
    return fresh_broker


MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def site(tmp_path: Path, broker: PrivateBroker, database_url: str | None = None, **oods: object) -> Config:
    extra: dict = {"oods": {"rescan_s": 3600.0, **oods}}  # rescans off unless a test wants them
    if database_url:
        extra["site"] = {"database_url": database_url}
    return load_config(make_site(tmp_path, [broker.url], extra=extra))


def run(coro: Awaitable[None], timeout: float | None = 300) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def burst_template() -> tuple[bytes, int]:
    """A small valid sensor file whose image name is a fixed-width field at a known offset."""
    primary = fits.PrimaryHDU()
    for key, value in (("INSTRUME", "TESTCAM"), ("IMGNAME", "BURST_000000"), ("GROUPID", "G"), ("SNAP", 0),
                       ("OBSDAY", "20261121")):
        primary.header[key] = value
    ext = fits.ImageHDU(np.arange(16, dtype=np.int32).reshape(4, 4))
    ext.header["RAFTBAY"], ext.header["CCDSLOT"] = "R22", "S00"
    buf = io.BytesIO()
    fits.HDUList([primary, ext]).writeto(buf)
    data = buf.getvalue()
    return data, data.index(b"BURST_000000")


@pytest.mark.timeout(0)  # waits on progress instead: 40,000 fsyncs take minutes where fsync is slow
def test_burst_of_10000_files_with_inotify_overflow(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg = site(tmp_path, broker, concurrency=2)
    staging = cfg.paths.resolved().oods_staging
    prep = cfg.paths.root / "prep"  # same filesystem: files arrive by link, as from the controller
    prep.mkdir()
    template, offset = burst_template()
    n = 10_000
    for i in range(n):
        data = template[:offset] + f"BURST_{i:06d}".encode() + template[offset + 12:]
        (prep / f"TESTCAM_BURST_{i:06d}_R22_S00.fits").write_bytes(data)
    old = MAX_QUEUED.read_text()
    MAX_QUEUED.write_text("64")  # a tiny inotify queue: the burst must overflow it
    try:
        async def main() -> None:
            async with running(OodsDaemon, cfg) as oods:
                day = staging / "20261121"
                day.mkdir()  # a new subdirectory, watched as it appears
                names = sorted(os.listdir(prep))
                for start in range(0, n, 2500):  # bursts
                    for name in names[start:start + 2500]:
                        os.link(prep / name, day / name)
                    await asyncio.sleep(0.05)
                await async_wait_progress(oods.registry.count, n, what=lambda: (
                    f"files registered ({oods.watcher.overflows} overflows, {oods.watcher.scans} scans, "
                    f"{oods.ingester.stats})"))
                await async_wait_for(lambda: not any(day.iterdir()), 60, what="staging emptied")
                assert oods.watcher.overflows > 0, "the burst did not overflow inotify's queue"
                # Counted once the placing thread's result is back in the loop: a moment after.
                await async_wait_for(lambda: oods.ingester.stats.ingested == n, 30, what=f"{n} files counted")
                assert oods.ingester.stats.quarantined == 0
                print(f"\n{n} files: {oods.watcher.overflows} overflows, {oods.watcher.scans} scans, "
                      f"{oods.ingester.stats.duplicates} repeated sightings ingested once")
        run(main(), None)
    finally:
        MAX_QUEUED.write_text(old)
    reg = Registry(cfg.site.database_url, "oods_files")
    assert len({e.data_id["image"] for e in reg.query()}) == n
    reg.close()


def test_bad_files_are_quarantined_with_their_path(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg = site(tmp_path, broker)
    paths = cfg.paths.resolved()
    work = cfg.paths.root / "work"
    work.mkdir()
    good, _ = make_sensor_file(work, "TESTCAM_O_20261121_000001")
    truncated, _ = make_sensor_file(work, "TESTCAM_O_20261121_000002")
    flipped, _ = make_sensor_file(work, "TESTCAM_O_20261121_000003")
    os.truncate(truncated.path, truncated.size // 2)
    raw = bytearray(flipped.path.read_bytes())
    raw[-100] ^= 0xFF  # a bit flip in the pixels: DATASUM no longer matches
    flipped.path.write_bytes(bytes(raw))
    no_obsday = work / "TESTCAM_O_20261121_000004_R22_S00.fits"
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"], primary.header["IMGNAME"] = "TESTCAM", "TESTCAM_O_20261121_000004"
    ext = fits.ImageHDU(np.zeros((4, 4), np.int32))
    ext.header["RAFTBAY"], ext.header["CCDSLOT"] = "R22", "S00"
    fits.HDUList([primary, ext]).writeto(no_obsday, checksum=True)
    (work / "notes.fits").write_text("this is not FITS")
    (work / "empty.fits").write_bytes(b"")
    expected = {good.path.name: 0, truncated.path.name: 1, flipped.path.name: 1, no_obsday.name: 2,
                "notes.fits": 1, "empty.fits": 1}

    async def main() -> None:
        async with running(OodsDaemon, cfg) as oods, Listener(cfg, "oods-bad", ["/topic/fitsflow.oods"]) as listen:
            nested = paths.oods_staging / "20261121" / "sub"
            nested.mkdir(parents=True)
            for name in expected:
                os.link(work / name, nested / name)
            await async_wait_for(lambda: len(listen.of("IMAGE_IN_OODS")) == len(expected), 60)
            got = {Path(m.data["path"]).name: m.data["status"] for m in listen.of("IMAGE_IN_OODS")}
            assert got == expected
            for m in listen.of("IMAGE_IN_OODS"):
                if m.data["status"]:
                    # quarantined with the path it had under staging
                    assert Path(m.data["path"]) == paths.quarantine / "oods" / "20261121" / "sub" / Path(
                        m.data["path"]).name
                    assert Path(m.data["path"]).exists() and m.data["description"]
            flip_reason = next(m.data["description"] for m in listen.of("IMAGE_IN_OODS")
                               if Path(m.data["path"]).name == flipped.path.name)
            assert "datasum does not match" in flip_reason.lower(), flip_reason
            # Unsafe paths in a request are dead-lettered, not followed.
            for bad in ("/etc/passwd", str(paths.oods_staging / ".." / ".." / "x.fits")):
                await listen.bus.send(make("INGEST_REQUEST", "TESTCAM_O_20261121_000009", path=bad,
                                           data_id={"image": "TESTCAM_O_20261121_000009", "raft": "R22", "sensor": "S00"},
                                           checksum="crc32:00000000"), "/queue/fitsflow.oods.ingest")
            # Both handled before the daemon stops (else the second waits on the queue).
            await async_wait_for(lambda: oods.bus.stats.dead_lettered >= 2, 30, what="both requests dead-lettered")
            assert oods.failed is None
    run(main())
    dead = drain(broker.url, "/queue/DLQ.fitsflow.oods.ingest", expect=2, timeout=15)
    assert len(dead) == 2 and all("outside" in f.headers["DLQReason"] for f in dead)


def test_one_request_ingests_its_files_and_dead_letters_only_for_its_bad_one(tmp_path: Path,
                                                                              broker: PrivateBroker) -> None:
    """An INGEST_REQUEST carries the files of one hand-off. A path outside staging among them
    does not hold the others back: they are ingested (trusted by the identity the request
    carries, so by this request and not by the watcher), each announced, and only then is the
    message dead-lettered, naming the bad path."""
    cfg = site(tmp_path, broker)
    paths = cfg.paths.resolved()
    image = "TESTCAM_O_20261121_000010"
    day = paths.oods_staging / "20261121"
    day.mkdir(parents=True)
    staged = [make_sensor_file(day, image, sensor=s, index=i) for i, s in enumerate(("S00", "S01"))]
    entries = [{"path": str(w.path), "checksum": w.checksum, "data_id": d, "verified": file_identity(w.path.stat())}
               for w, d in staged]
    bad = {"path": "/etc/passwd", "checksum": "crc32:00000000", "data_id": {**staged[0][1], "sensor": "S02"}}

    async def main() -> None:
        async with running(OodsDaemon, cfg) as oods, Listener(cfg, "oods-batch", ["/topic/fitsflow.oods"]) as listen:
            await listen.bus.send(make("INGEST_REQUEST", image, files=[bad, *entries]), "/queue/fitsflow.oods.ingest")
            await async_wait_for(lambda: oods.bus.stats.dead_lettered >= 1, 30, what="the request dead-lettered")
            assert oods.registry.count() == 2 and oods.ingester.stats.trusted == 2, oods.status()
            await async_wait_for(lambda: len(listen.of("IMAGE_IN_OODS", image)) == 2, 30, what="2 announcements")
            assert all(m.data["status"] == 0 for m in listen.of("IMAGE_IN_OODS", image))
    run(main())
    dead = drain(broker.url, "/queue/DLQ.fitsflow.oods.ingest", expect=1, timeout=15)
    assert len(dead) == 1 and "/etc/passwd" in dead[0].headers["DLQReason"], dead[0].headers


def test_expiry_spares_protected_files(tmp_path: Path, broker: PrivateBroker) -> None:
    cfg = site(tmp_path, broker, expire_after_days=3 / 86400, clean_interval_s=0.5)
    paths = cfg.paths.resolved()
    images = [f"TESTCAM_O_20261121_00010{i}" for i in range(3)]

    async def main() -> None:
        async with running(OodsDaemon, cfg) as oods:
            day = paths.oods_staging / "20261121"
            day.mkdir()
            for image in images:
                make_sensor_file(day, image)
            await async_wait_for(lambda: oods.registry.count() == 3, 30)
            tagged = subprocess.run([sys.executable, "-m", "fitsflow", "oods", "tag", "--config", str(cfg.source),
                                     "--image", images[0]], capture_output=True, text=True)
            assert tagged.returncode == 0 and "1 file(s) protected" in tagged.stdout, tagged.stderr
            await async_wait_for(lambda: oods.cleaner.expired == 2, 30, what="expiry of the unprotected files")
            assert oods.registry.count() == 1
    run(main())
    left = sorted(p.relative_to(paths.oods_repo) for p in paths.oods_repo.rglob("*.fits"))
    assert [p.parts[2] for p in left] == [images[0]]
    assert sorted(d.name for d in (paths.oods_repo / "TESTCAM" / "20261121").iterdir()) == [images[0]], \
        "empty directories of expired images must go"
    listed = subprocess.run([sys.executable, "-m", "fitsflow", "oods", "get", "--config", str(cfg.source),
                             "--image", images[0]], capture_output=True, text=True)
    assert listed.returncode == 0 and Path(listed.stdout.strip()) == paths.oods_repo / left[0]


@pytest.fixture
def postgres():  # type: ignore[no-untyped-def]
    pg = PrivatePostgres()
    yield pg
    pg.stop()


def test_registry_and_ingest_on_postgresql(tmp_path: Path, broker: PrivateBroker, postgres: PrivatePostgres) -> None:
    reg = Registry(postgres.url, "oods_files")
    data_id = {"instrument": "TESTCAM", "image": "IMG1", "group": "G", "snap": 0, "raft": "R22", "sensor": "S00",
               "obs_day": "20261121"}
    assert reg.add(data_id, "a/b.fits", 10, "crc32:1") is True
    assert reg.add(data_id, "a/b.fits", 10, "crc32:1") is False  # same data ID: no duplicate row
    assert reg.find(data_id).checksum == "crc32:1" and reg.count() == 1
    assert reg.set_protected(data_id, True) == 1
    assert reg.expired(dt.datetime.now(dt.timezone.utc)) == []  # protected: never expired
    reg.close()
    cfg = site(tmp_path, broker, database_url=postgres.url)

    async def main() -> None:
        async with running(OodsDaemon, cfg) as oods:
            day = cfg.paths.resolved().oods_staging / "20261121"
            day.mkdir()
            make_sensor_file(day, "TESTCAM_O_20261121_000300")
            await async_wait_for(lambda: oods.registry.count() == 2, 30)
    run(main())
