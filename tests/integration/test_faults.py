"""Faults of the machine while images flow (issue 17): each fault class its own scenario over
the whole pipeline (real processes, a broker of its own, real UDP, real files), each ending
with 0 lost, 0 duplicated, 0 corrupt, 0 stranded, no daemon dead, and at most one panic per
fault episode. Printed per scenario: images, time to recover after the fault ended, panics."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.flow import Flow, run_flow
from fitsflow.testing.wait import async_wait_for

# run_flow bounds each scenario (600 s); the per-test guard of pytest.ini (300 s) would cut it first.
pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(900)]
IMAGES = 12
OUTAGE_S = 20.0  # how long each fault lasts: the fault itself, not a wait for a result


async def quiet(f: Flow, timeout: float = 120) -> None:
    """Nothing left between daemons (a late duplicate is cleaned up a moment after the registries
    are complete): wait until the hand-off directories stay empty for a few checks."""
    deadline = time.monotonic() + timeout
    empty_since: float | None = None
    while time.monotonic() < deadline:
        if f.stranded():
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        elif time.monotonic() - empty_since > 5:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"stranded: {f.stranded()[:10]}")


async def images_while(f: Flow, n: int, during: float) -> None:
    """Take ``n`` images spread over ``during`` seconds."""
    for _ in range(n):
        await f.take_image()
        await asyncio.sleep(during / n)


async def recovered(name: str, f: Flow, timeout: float = 240) -> list[str]:
    """After the fault: every image archived exactly once and bit-exact, nothing stranded, no
    daemon dead; prints the figures; returns the panics raised."""
    t0 = time.monotonic()
    await f.wait_all_archived(timeout=timeout)
    await quiet(f)
    f.check_exact()
    panics = f.panics()
    print(f"\n[{name}] images {len(f.recipes)}, sensors {len(f.recipes) * 2}: lost 0, duplicated 0, corrupt 0, "
          f"stranded 0; recovered {time.monotonic() - t0:.1f} s after the fault ended; panics {len(panics)}")
    for p in panics:
        print(f"    panic: {p[:200]}")
    return panics


def test_power_cut_broker_and_every_daemon_at_once(tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    """kill -9 of the broker and of every daemon at the same instant, three times at random
    moments while images flow (also while announcements await their receipts); each time
    everything is restarted, as a booting machine would."""
    rng = random.Random(int(os.environ.get("FITSFLOW_FAULT_SEED", "17")))

    async def scenario(f: Flow) -> None:
        for cut in range(3):
            camera = asyncio.create_task(images_while(f, IMAGES // 3, 4.0))
            await asyncio.sleep(rng.uniform(0.5, 3.5))
            for name in f.pipeline.daemons:
                f.pipeline.kill(name)
            f.broker.kill()
            await camera
            f.broker.start()
            f.pipeline.start_all()
            await f.all_on()
        panics = await recovered("power cut x3", f, 240)
        assert panics == [], panics
    run_flow(tmp_path, fresh_broker, scenario, timeout=600)


def test_broker_stopped(tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    """The broker hangs (SIGSTOP) for a while mid-stream: no false panic, nothing lost."""
    async def scenario(f: Flow) -> None:
        camera = asyncio.create_task(images_while(f, IMAGES, 10.0))
        await asyncio.sleep(2.0)
        assert f.broker.proc is not None
        os.kill(f.broker.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(OUTAGE_S)
        os.kill(f.broker.proc.pid, signal.SIGCONT)
        await camera
        panics = await recovered("broker SIGSTOP", f, 240)
        assert panics == [], panics
    run_flow(tmp_path, fresh_broker, scenario, timeout=600)


@pytest.mark.parametrize("which", ["incoming", "oods_staging", "archive_staging"])
def test_handoff_directory_unwritable(which: str, tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    """A hand-off directory refuses every change (chattr +i refuses even root) while images
    flow: the work waits in ALARM and completes by itself when it is writable again."""
    async def scenario(f: Flow) -> None:
        target = getattr(f.cfg.paths.resolved(), which)
        await f.good_image_archived()  # the day directories exist: the fault is on the files
        subprocess.run(["chattr", "+i", str(target)], check=True)
        for day in target.iterdir():
            subprocess.run(["chattr", "+i", str(day)], check=True)
        try:
            await images_while(f, IMAGES, OUTAGE_S / 2)
            await asyncio.sleep(OUTAGE_S / 2)
            alarms = [m for m in f.alerts if m.data["severity"] == "error"]
            assert alarms, "no ALERT while the directory was unwritable"
        finally:
            for day in target.iterdir():
                subprocess.run(["chattr", "-i", str(day)], check=False)
            subprocess.run(["chattr", "-i", str(target)], check=False)
        panics = await recovered(f"{which} unwritable", f, 240)
        # One episode per daemon that met the fault (two forwarders share incoming/).
        assert len(panics) <= 2 and all(str(target) in p or "Errno" in p for p in panics), panics
        await async_wait_for(lambda: any("cleared" in m.data["message"] for m in f.alerts), 60,
                             what="the episode's 'cleared' ALERT")
    run_flow(tmp_path, fresh_broker, scenario, timeout=600)


def test_data_filesystem_full(tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    """The filesystem holding the whole data tree fills up for a while: nobody crash-loops,
    pixels the receiver could not store come back by catch-up's re-sends, and everything
    completes once there is space again."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    filler = mnt / "filler"

    async def scenario(f: Flow) -> None:
        await f.good_image_archived()
        with open(filler, "wb") as fh:
            fh.write(bytes(max(0, shutil.disk_usage(mnt).free - 4096)))
        try:
            await images_while(f, IMAGES, OUTAGE_S / 2)
            await asyncio.sleep(OUTAGE_S / 2)
        finally:
            filler.unlink()
        panics = await recovered("data filesystem full", f, 300)
        assert len(panics) <= len(f.pipeline.daemons), panics  # at most one episode per daemon
    try:
        run_flow(tmp_path, fresh_broker, scenario, timeout=600, data_root=mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
