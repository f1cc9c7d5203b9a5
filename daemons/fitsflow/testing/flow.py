"""A whole pipeline under test: every daemon as a real process on one broker, a camera on its
own bus, real UDP and a real data tree — and the checks every scenario ends with (each image
in both registries exactly once and bit-exact, nothing stranded between daemons, no daemon
dead, panics counted). Used by the tests of bad input and of machine faults."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from astropy.io import fits

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings
from fitsflow.camera_sim.store import ImageRecipe, ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config, load_config
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.messages import Message, destination_of
from fitsflow.testing.broker import PrivateBroker, free_port
from fitsflow.testing.config import make_data_tree, make_site
from fitsflow.testing.pipeline import Pipeline
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.udp import free_udp_port
from fitsflow.testing.wait import async_wait_for

SENSORS = ["R22_S00", "R22_S01"]


#: How long eight daemons may take to start and say ON: a guard, not a pace (about 10 s on a
#: quiet 2-core machine). When it expires, look for a daemon that died at start in the logs.
STARTUP_S = 120.0


class Flow:
    """The pipeline, a camera on its own bus, and what the checks need. ``base`` holds the
    data tree (``data_root`` may put it elsewhere, e.g. on a small tmpfs); ``extra``
    overrides configuration sections."""

    def __init__(self, base: Path, broker: PrivateBroker, *, data_root: Path | None = None,
                 extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.tmp = base
        self.broker = broker
        self.port = free_udp_port()
        sections: dict[str, dict[str, Any]] = {
            "bus": {"max_attempts": 3, "retry_delay_s": 0.2, "heartbeat_ms": 2000, "receipt_timeout_s": 3.0,
                    "reconnect_max_s": 1.0},
            "receiver": {"streams": [f"127.0.0.1:{self.port}"], "image_timeout_s": 3.0, "max_heap_bytes": 1 << 20,
                         "socket_buffer_bytes": 4 << 20, "expected_sensors": SENSORS, "stats_interval_s": 1.0},
            "forwarder": {"heartbeat_s": 0.5, "join_timeout_s": 60.0},
            "archive_controller": {"liveness_timeout_s": 5.0, "catchup_after_s": 10.0, "catchup_interval_s": 2.0,
                                   "catchup_max_resends": 20},
            "oods": {"rescan_s": 2.0}, "archive_ingest": {"rescan_s": 2.0},
            "recorder": {"http_port": free_port()},
        }
        if data_root is not None:
            sections["paths"] = {"root": str(data_root)}
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        site = make_site(base, [broker.url], extra=sections)
        if data_root is not None:  # make_site made the tree under base/data: make it where it lives
            make_data_tree(data_root)
        self.cfg: Config = load_config(site)
        self.pipeline = Pipeline(self.cfg.source, base / "logs")
        self.states: dict[str, str] = {}
        self.stats: list[Message] = []
        self.oods: list[Message] = []
        self.alerts: list[Message] = []
        self.recipes: list[ImageRecipe] = []
        self.bus = MessageBus.from_config(self.cfg, f"camera-{os.getpid()}")
        for type_ in ("DAEMON_STATE", "RECEIVER_STATS", "IMAGE_IN_OODS", "ALERT"):
            self.bus.subscribe(destination_of(type_), self._on)
        self.sender: SpeadSender | None = None
        self.sim: CameraSimulator | None = None

    async def _on(self, msg: Message) -> None:
        if msg.type == "DAEMON_STATE":
            self.states[str(msg.data["daemon"])] = str(msg.data["state"])
        elif msg.type == "RECEIVER_STATS":
            self.stats.append(msg)
        elif msg.type == "ALERT":
            self.alerts.append(msg)
        else:
            self.oods.append(msg)

    async def start(self) -> None:
        self.pipeline.start_all()
        await self.bus.start()
        assert await self.bus.wait_connected(30)
        await self.all_on()
        self.sender = SpeadSender([("127.0.0.1", self.port)], rate_bytes_s=50e6)
        settings = SimSettings(instrument="TESTCAM", sensors=SENSORS, rows=64, cols=80, stripe_rows=16)
        self.sim = CameraSimulator(settings, self.bus, self.sender, ImageStore(self.tmp / "camera-store", 500))

    async def all_on(self, timeout: float = STARTUP_S) -> None:
        self.states.clear()
        await async_wait_for(lambda: all(self.states.get(n) == "ON" for n in self.pipeline.daemons), timeout,
                             what="every daemon ON")

    async def stop(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        await self.bus.stop()
        self.pipeline.stop_all()

    async def take_image(self) -> ImageRecipe:
        assert self.sim is not None
        recipe = await self.sim.take_image()
        self.recipes.append(recipe)
        return recipe

    def link(self) -> Any:
        """A raw STOMP connection, as a client fitsflow did not write."""
        from fitsflow.core.bus.stomp_link import StompLink
        link = StompLink(self.broker.url, heartbeat_ms=0)
        link.connect(f"outsider-{os.urandom(4).hex()}")
        return link

    def send_raw(self, destination: str, body: str, **headers: str) -> None:
        link = self.link()
        try:
            link.send(destination, body, {"persistent": "true", **headers}).result(10)
        finally:
            link.close()

    def dead_letters(self, destination: str, expect: int) -> list[Any]:
        name = destination.split("/", 2)[-1]
        return drain(self.broker.url, f"/queue/DLQ.{name}", expect=expect, timeout=30)

    def panics(self) -> list[str]:
        """The panics raised so far (this pipeline has no mailer: they wait in their queue)."""
        return [json.loads(f.body)["data"]["message"] for f in drain(self.broker.url, destination_of("PANIC"),
                                                                      timeout=3)]

    def registry_entries(self) -> dict[str, dict[tuple[str, str], list[str]]]:
        """{table: {(image, sensor): [paths]}} of both registries."""
        out = {}
        for table in ("oods_files", "archive_files"):
            reg = Registry(self.cfg.site.database_url, table)
            try:
                entries: dict[tuple[str, str], list[str]] = {}
                for e in reg.query():
                    entries.setdefault((e.data_id["image"], f"{e.data_id['raft']}_{e.data_id['sensor']}"),
                                       []).append(e.path)
                out[table] = entries
            finally:
                reg.close()
        return out

    async def wait_all_archived(self, recipes: list[ImageRecipe] | None = None, timeout: float = 180) -> None:
        recipes = self.recipes if recipes is None else recipes
        want = {(r.image, s) for r in recipes for s in SENSORS}
        await async_wait_for(lambda: all(want <= set(e) for e in self.registry_entries().values()), timeout,
                             what=f"{len(want)} sensors in both registries")

    def check_exact(self, recipes: list[ImageRecipe] | None = None) -> None:
        """Every sensor exactly once in each registry, bit-exact; nothing left between
        daemons; every daemon alive."""
        recipes = self.recipes if recipes is None else recipes
        paths = self.cfg.paths.resolved()
        want = {(r.image, s) for r in recipes for s in SENSORS}
        by_image = {r.image: r for r in recipes}
        for (table, entries), repo in zip(self.registry_entries().items(), (paths.oods_repo, paths.archive_repo)):
            assert want <= set(entries), f"{table}: missing {sorted(want - set(entries))[:10]}"
            dup = {k: v for k, v in entries.items() if len(v) > 1}
            assert dup == {}, f"{table}: duplicated {dup}"
            for (image, sensor), [path] in ((k, v) for k, v in entries.items() if k in want):
                r = by_image[image]
                with fits.open(repo / path) as hdul:
                    expected = sensor_pixels(r.seed, r.image_seq, SENSORS.index(sensor), r.rows, r.cols)
                    assert np.array_equal(hdul[1].data, expected), f"{table}: {path} differs"
        assert self.pipeline.dead() == [], {n: self.pipeline.log_tail(n) for n in self.pipeline.dead()}

    def stranded(self) -> list[Path]:
        paths = self.cfg.paths.resolved()
        return [p for d in (paths.incoming, paths.oods_staging, paths.archive_staging) for p in d.rglob("*")
                if p.is_file()]

    async def good_image_archived(self) -> ImageRecipe:
        """A good image, end to end: bit-exact in both registries; every daemon alive."""
        recipe = await self.take_image()
        await self.wait_all_archived([recipe], 90)
        self.check_exact([recipe])
        return recipe


def run_flow(base: Path, broker: PrivateBroker, scenario: Callable[[Flow], Awaitable[None]], *,
             timeout: float = 400, **kwargs: Any) -> None:
    """Start a :class:`Flow`, run ``scenario(flow)``, stop everything whatever happened."""
    async def main() -> None:
        f = Flow(base, broker, **kwargs)
        try:
            await f.start()
            await scenario(f)
        finally:
            await f.stop()
    asyncio.run(asyncio.wait_for(main(), timeout))
