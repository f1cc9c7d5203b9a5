"""A forwarder wakes when an image header lands in the header store (real inotify), before
HEADER_READY can reach it through the broker; the messages stay the way of record."""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path

from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.memory_link import MemoryBroker
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import load_config
from fitsflow.core.handoff import atomic_writer
from fitsflow.forwarder.daemon import ForwarderDaemon
from fitsflow.forwarder.headerwatch import HeaderWatch
from fitsflow.testing.config import make_site

WAIT_S = 10.0  # an event, not a sleep: this is only how long a lost wake-up takes to fail


def land(directory: Path, image: str) -> None:
    """A header as the header service writes it: a temp file renamed into place."""
    with atomic_writer(directory / f"{image}.json", owner="header-service") as fh:
        fh.write(b'{"image": "%s", "cards": []}' % image.encode())


def test_a_header_renamed_into_place_wakes_once(tmp_path: Path) -> None:
    async def main() -> int:
        woken = asyncio.Event()
        watch = HeaderWatch(tmp_path, woken.set)
        await watch.start()
        try:
            assert watch.watching
            (tmp_path / "notes.txt").write_text("not a header")  # other files do not wake
            land(tmp_path, "IMG_1")
            await asyncio.wait_for(woken.wait(), WAIT_S)
            return watch.seen
        finally:
            await watch.stop()
    assert asyncio.run(main()) == 1  # the temp file's own write is not a header


def test_a_header_store_made_after_the_start_is_watched_then(tmp_path: Path) -> None:
    store = tmp_path / "headers"

    async def main() -> None:
        woken = asyncio.Event()
        watch = HeaderWatch(store, woken.set)
        await watch.start()
        try:
            assert not watch.watching  # missing: the forwarder still wakes on HEADER_READY
            store.mkdir()
            watch.ensure()  # the forwarder's next pass
            assert watch.watching
            land(store, "IMG_2")
            await asyncio.wait_for(woken.wait(), WAIT_S)
            woken.clear()
            shutil.rmtree(store)  # replaced under the forwarder: the watch ends...

            async def closed() -> None:
                while watch.watching:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(closed(), WAIT_S)
            store.mkdir()
            watch.ensure()  # ...and is made again on the new directory
            land(store, "IMG_3")
            await asyncio.wait_for(woken.wait(), WAIT_S)
        finally:
            await watch.stop()
    asyncio.run(main())


def test_the_forwarder_wakes_when_a_header_lands(tmp_path: Path) -> None:
    cfg = load_config(make_site(tmp_path, ["stomp://127.0.0.1:61613"]))
    bus = MessageBus(cfg.bus, "forwarder-test", BusStore(tmp_path / "bus.sqlite"), [MemoryBroker().link("memory://0")])
    daemon = ForwarderDaemon(cfg, bus, argparse.Namespace(instance="f1"))
    daemon.headers_root.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        assert daemon.header_watch in daemon.roles
        await daemon.header_watch.start()
        try:
            land(daemon.headers_root, "IMG_4")
            await asyncio.wait_for(daemon.wake.wait(), WAIT_S)
        finally:
            await daemon.header_watch.stop()
    try:
        asyncio.run(main())
    finally:
        bus.store.close()
