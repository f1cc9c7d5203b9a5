"""The header service stopped (SIGSTOP) while images are taken: when it runs again, the images
are closed against the stream it processes, not the wall clock — every header is complete,
none is written before the telemetry queued for it has been read (issue 17)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.config import load_config
from fitsflow.core.messages import Message, destination_of
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener
from fitsflow.testing.pipeline import Pipeline
from fitsflow.testing.udp import free_udp_port
from fitsflow.testing.wait import async_wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
MARGIN_S = 3.0
STALL_S = 4 * MARGIN_S  # well past every deadline of the images taken meanwhile
STALLED_IMAGES = 40  # a backlog that takes a while to work off


def test_a_stalled_header_service_writes_complete_headers(tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    cfg = load_config(make_site(tmp_path, [fresh_broker.url], extra={
        "header_service": {"timeout_margin_s": MARGIN_S}}))
    pipeline = Pipeline(cfg.source, tmp_path / "logs", daemons=[("header_service", "h1")])
    ready: dict[str, Message] = {}
    on: set[str] = set()

    async def record(msg: Message) -> None:
        if msg.type == "HEADER_READY" and msg.image:
            ready[msg.image] = msg
        elif msg.type == "DAEMON_STATE" and msg.data["state"] == "ON":
            on.add(str(msg.data["daemon"]))

    async def main() -> None:
        async with Listener(cfg, f"hs-{os.getpid()}", [destination_of("HEADER_READY"), destination_of("DAEMON_STATE")],
                            record) as listen:
            pipeline.start_all()
            await async_wait_for(lambda: "header-service@h1" in on, 60, what="the header service ON")
            settings = SimSettings(instrument="TESTCAM", sensors=["R22_S00"], rows=8, cols=8, stripe_rows=8)
            with SpeadSender([("127.0.0.1", free_udp_port())]) as sender:  # nobody receives pixels here
                sim = CameraSimulator(settings, listen.bus, sender, ImageStore(tmp_path / "store", 20))
                first = await sim.take_image()
                await async_wait_for(lambda: first.image in ready, 30, what="the first header")
                pipeline.pause("header-service@h1")
                stalled = [await sim.take_image() for _ in range(STALLED_IMAGES)]
                await asyncio.sleep(STALL_S)  # the fault's duration, not a wait for a result
                pipeline.resume("header-service@h1")
                try:
                    await async_wait_for(lambda: all(r.image in ready for r in stalled), 60,
                                         what="headers of the images taken during the stall")
                except TimeoutError:
                    # Say which images and what the service was doing (a CI run once timed
                    # out here and left nothing to read).
                    missing = [r.image for r in stalled if r.image not in ready]
                    pytest.fail(f"no HEADER_READY for {len(missing)} of {len(stalled)} images {missing[:5]}...; "
                                f"dead: {pipeline.dead()}; header service log:\n"
                                f"{pipeline.log_tail('header-service@h1', 80)}")
            assert pipeline.dead() == [], pipeline.log_tail("header-service@h1")
        partial = {i: m.data["missing_keywords"] for i, m in ready.items() if m.data["partial"]}
        assert partial == {}, f"written before their queued telemetry was read: {partial}"

    try:
        asyncio.run(asyncio.wait_for(main(), 180))
    finally:
        pipeline.stop_all()
