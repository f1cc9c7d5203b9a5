"""The archive ingest's Rucio registration against a real Rucio server (REST under gunicorn,
PostgreSQL), a real broker, real files and inotify: a stream of archived files registered
with their checksums, dataset, container and rules, through a Rucio kill -9 mid-stream;
a name Rucio holds with other content set aside; files archived before Rucio was enabled."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from fitsflow.archive_ingest.daemon import ArchiveIngestDaemon
from fitsflow.archive_ingest.rucio_registrar import RUCIO_FAULT
from fitsflow.core.checksum import file_adler32_md5, file_crc32_adler32
from fitsflow.core.config import Config, load_config
from fitsflow.core.layout import sensor_file_name
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.files import make_sensor_file
from fitsflow.testing.rucio import PASSWORD, USERNAME, PrivateRucio
from fitsflow.testing.wait import async_wait_for

pytestmark = pytest.mark.broker

DAY = "20261121"
RSE, OTHER_RSE = "SITE_ARCHIVE", "USDF_DISK"
OUT = ["/topic/fitsflow.rucio", "/topic/fitsflow.archive", "/queue/fitsflow.panic"]


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    return fresh_broker


@pytest.fixture
def rucio() -> Iterator[PrivateRucio]:
    r = PrivateRucio()
    yield r
    r.stop()


def site(tmp_path: Path, broker: PrivateBroker, rucio: PrivateRucio, enabled: bool = True, md5: bool = False,
         **more: object) -> Config:
    creds = tmp_path / "rucio-credentials.toml"
    creds.write_text(f'username = "{USERNAME}"\npassword = "{PASSWORD}"\n')
    creds.chmod(0o600)
    path = make_site(tmp_path, [broker.url], extra={
        "archive_ingest": {"rescan_s": 2.0},
        "rucio": {"enabled": enabled, "url": rucio.url, "account": "root", "credentials_file": str(creds),
                  "rse": RSE, "batch": 4, "retry_max_s": 2.0, "timeout_s": 10.0, "md5": md5,
                  "rules": [{"copies": 1, "rse_expression": OTHER_RSE}], **more}})
    cfg = load_config(path)
    if not enabled:
        return cfg
    rucio.add_posix_rse(RSE, cfg.paths.resolved().archive_repo)
    rucio.add_posix_rse(OTHER_RSE, tmp_path / "usdf", deterministic=True)  # another site's data lake
    rucio.client().add_scope("root", "testcam")
    return cfg


def stage(cfg: Config, images: list[str], sensors: tuple[str, ...] = ("S00", "S01")) -> list[str]:
    """Archive staging gets sensor files (by link, as from the controller); returns names."""
    paths = cfg.paths.resolved()
    prep, day = paths.root / "prep", paths.archive_staging / DAY
    prep.mkdir(exist_ok=True)
    day.mkdir(exist_ok=True)
    names = []
    for n, image in enumerate(images):
        for i, sensor in enumerate(sensors):
            written, _ = make_sensor_file(prep, image, "R22", sensor, obs_day=DAY, seq=n, index=i)
            os.link(written.path, day / written.path.name)
            names.append(written.path.name)
    return names


def run(coro, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(coro, timeout))


def registered(listen: Listener) -> set[str]:
    return {Path(m.data["path"]).name for m in listen.of("IMAGE_IN_RUCIO") if m.data["status"] == 0}


def test_a_stream_is_registered_through_a_rucio_crash(tmp_path: Path, broker: PrivateBroker,
                                                       rucio: PrivateRucio) -> None:
    # As Rubin registers: adler32 and md5, a dataset per 3 images (Rubin: 100)
    cfg = site(tmp_path, broker, rucio, md5=True, dataset="{instrument}_{obs_day}_{block}", dataset_images=3)
    repo = cfg.paths.resolved().archive_repo

    async def main() -> None:
        async with running(ArchiveIngestDaemon, cfg) as arch, Listener(cfg, "rucio-l1", OUT) as listen:
            first = stage(cfg, [f"TESTCAM_O_{DAY}_{i:06d}" for i in range(1, 4)])
            await async_wait_for(lambda: set(first) <= registered(listen), 120, what="the first files in Rucio")
            await asyncio.to_thread(rucio.kill)
            second = stage(cfg, [f"TESTCAM_O_{DAY}_{i:06d}" for i in range(4, 8)])
            await async_wait_for(lambda: len(listen.of("IMAGE_IN_ARCHIVE")) >= len(first) + len(second), 120,
                                 what="archiving goes on while Rucio is down")
            await async_wait_for(lambda: RUCIO_FAULT in arch.faults.active, 60, what="ALARM: Rucio unreachable")
            assert arch.effective_state().name == "ALARM", arch.status()
            await asyncio.to_thread(rucio.start)
            await async_wait_for(lambda: set(first + second) <= registered(listen), 180,
                                 what="every file registered once Rucio is back")
            await async_wait_for(lambda: RUCIO_FAULT not in arch.faults.active, 30, what="ALARM cleared")
            # The book's commit follows the announcement (a crash between them announces again).
            want = {"pending": 0, "registered": 14, "conflict": 0, "retake": 0, "unregistered": 0}
            await async_wait_for(lambda: arch.rucio_book.counts() == want, 30, what=f"the book says {want}")
            assert all(m.data["status"] == 0 for m in listen.of("IMAGE_IN_RUCIO"))
            # The shifter heard of the outage (the ALARM episode's panic: how the client saw it
            # depends on when the server died, mid-request or between), and of no file.
            panics = [m.data["message"] for m in listen.of("PANIC")]
            assert panics and all(f"{arch.ident}: rucio: " in p and "not registered" not in p for p in panics), panics

        c = rucio.client()
        datasets = [f"TESTCAM_{DAY}_{b:04d}" for b in range(3)]  # 7 images, 3 per dataset
        files = {f["name"]: f for d in datasets for f in c.list_files("testcam", d)}
        assert set(files) == set(first + second)  # 0 lost, and a name is one DID (0 duplicates)
        assert sum(len(list(c.list_files("testcam", d))) for d in datasets) == len(files)  # one dataset each
        images_of = [{n.split("_R22_")[0] for n in (f["name"] for f in c.list_files("testcam", d))} for d in datasets]
        assert [len(i) for i in images_of] == [3, 3, 1]  # whole images, in the order they were archived
        assert images_of[0] == {n.split("_R22_")[0] for n in first}
        replicas = {r["name"]: r for d in datasets for r in c.list_replicas([{"scope": "testcam", "name": d}])}
        for name, f in files.items():
            path = next(repo.rglob(name))
            adler32, md5 = file_adler32_md5(path)
            assert (f["adler32"], replicas[name]["md5"], f["bytes"]) == (adler32, md5, path.stat().st_size)
            assert replicas[name]["rses"][RSE] == [f"file://{path}"]  # the archive's own file: nothing copied
        assert sorted(d["name"] for d in c.list_content("testcam", "TESTCAM")) == datasets
        for d in datasets:
            rules = list(c.list_did_rules("testcam", d))
            assert [(r["copies"], r["rse_expression"]) for r in rules] == [(1, OTHER_RSE)]

    run(main(), 600)


def test_a_name_rucio_holds_with_other_content_is_set_aside(tmp_path: Path, broker: PrivateBroker,
                                                            rucio: PrivateRucio) -> None:
    cfg = site(tmp_path, broker, rucio)
    clash = sensor_file_name("TESTCAM", f"TESTCAM_O_{DAY}_000001", "R22", "S00")
    rucio.client().add_replicas(rse=OTHER_RSE, files=[{"scope": "testcam", "name": clash, "bytes": 1,
                                                      "adler32": "00000001", "md5": "0" * 32}])

    async def main() -> None:
        async with running(ArchiveIngestDaemon, cfg) as arch, Listener(cfg, "rucio-l2", OUT) as listen:
            names = stage(cfg, [f"TESTCAM_O_{DAY}_000001"])
            await async_wait_for(lambda: len(listen.of("IMAGE_IN_RUCIO")) >= 2 and listen.of("PANIC"), 120,
                                 what="one registered, one set aside with a panic")
            by_name = {Path(m.data["path"]).name: m.data for m in listen.of("IMAGE_IN_RUCIO")}
            assert by_name[clash]["status"] == 1 and "adler32 00000001" in by_name[clash]["description"]
            other = next(n for n in names if n != clash)
            assert by_name[other]["status"] == 0
            assert clash in listen.of("PANIC")[0].data["message"]
            await async_wait_for(lambda: [r.name for r in arch.rucio_book.in_state("conflict")] == [clash], 30,
                                 what="the book: set aside")  # committed after the announcements
            assert RUCIO_FAULT not in arch.faults.active  # a file's problem, not an outage
            # An operator asks again (as after fixing Rucio's entry): still different, set aside again.
            out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "fitsflow", "archive", "rucio-retry",
                                                           "--all", "--config", str(cfg.source)],
                                          capture_output=True, text=True, check=True)
            assert out.stdout.startswith("1 file(s)")
            await async_wait_for(lambda: len([m for m in listen.of("IMAGE_IN_RUCIO") if m.data["status"] == 1]) == 2,
                                 60, what="set aside again")

    run(main())
    meta = rucio.client().get_metadata("testcam", clash)
    assert (meta["bytes"], meta["adler32"]) == (1, "00000001")  # Rucio's entry is left as it was


def test_files_archived_before_rucio_was_enabled_are_registered(tmp_path: Path, broker: PrivateBroker,
                                                                rucio: PrivateRucio) -> None:
    cfg_off = site(tmp_path, broker, rucio, enabled=False)
    cfg = site(tmp_path, broker, rucio)

    async def main() -> None:
        async with running(ArchiveIngestDaemon, cfg_off) as arch, Listener(cfg, "rucio-l3", OUT) as listen:
            names = stage(cfg_off, [f"TESTCAM_O_{DAY}_000009"])
            await async_wait_for(lambda: arch.registry.count() == len(names), 60, what="archived")
            listed = await asyncio.to_thread(archive_ls, cfg)
            assert [f["rucio"]["state"] for f in listed] == ["not yet"] * len(names)
        async with running(ArchiveIngestDaemon, cfg) as arch, Listener(cfg, "rucio-l4", OUT) as listen:
            await async_wait_for(lambda: set(names) <= registered(listen), 120, what="registered after the restart")
            await async_wait_for(lambda: arch.rucio_book.counts()["registered"] == len(names), 30, what="committed")
            # The adler32 the archive ingest summed (here: files found by its rescan, read once
            # to verify) is the one registered: the registrar read no file (md5 not asked for).
            assert arch.rucio is not None and arch.rucio.summed == 0
        c = rucio.client()
        repo = cfg.paths.resolved().archive_repo
        for name in names:
            meta = c.get_metadata("testcam", name)
            assert (meta["adler32"], meta["md5"]) == (file_crc32_adler32(next(repo.rglob(name)))[1], None)
        listed = await asyncio.to_thread(archive_ls, cfg)
        assert sorted((f["rucio"]["state"], f["rucio"]["did"]) for f in listed) == \
            sorted(("registered", f"testcam:{n}") for n in names)

    run(main())


def archive_ls(cfg: Config) -> list[dict]:
    """``fitsflow archive ls --json``, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "fitsflow", "archive", "ls", "--json", "--config", str(cfg.source)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
