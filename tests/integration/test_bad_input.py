"""Bad input from clients fitsflow did not write, while good images flow (issue 16).

Each test runs the whole pipeline as real processes on a broker of its own, real UDP and a
real data tree; sends one class of bad input; checks that it ends in a dead-letter queue or
quarantine at its first attempt with a reason that names the field or file; then sends a
good image and checks that it is archived bit-exact in both registries, that no daemon died
and that every daemon still consumes (the good image needs all of them).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np
import pytest

from fitsflow.core.messages import destination_of, make
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.flow import SENSORS, Flow, run_flow
from fitsflow.testing.wait import async_wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
SENT = "2026-11-21T00:00:00Z"


@pytest.fixture
def flow(tmp_path: Path, fresh_broker: PrivateBroker) -> Callable[[Callable[[Flow], Awaitable[None]]], None]:
    """``flow(scenario)``: run ``scenario(flow)`` against a started pipeline, then stop it."""
    return lambda scenario: run_flow(tmp_path, fresh_broker, scenario)


def _spead_packet(items: list[tuple[int, int]], payload: bytes = b"x" * 8) -> bytes:
    header = bytes([0x53, 4, 2, 6, 0, 0]) + struct.pack(">H", len(items))
    return header + b"".join(struct.pack(">Q", (1 << 63) | (i << 48) | v) for i, v in items) + payload


def test_forged_spead_packets_are_refused_and_counted(flow) -> None:  # type: ignore[no-untyped-def]
    """Class 1: heaps declaring 2^47 bytes, 64 MiB and 1 GiB (max_heap_bytes is 1 MiB), a
    payload offset of 2^40 without a heap size, another flavour, and random SPEAD headers."""
    async def scenario(f: Flow) -> None:
        forged = [_spead_packet([(1, 7), (2, 1 << 47), (3, 0), (4, 8)]),
                  _spead_packet([(1, 8), (2, 64 << 20), (3, 0), (4, 8)]),
                  _spead_packet([(1, 9), (2, 1 << 30), (3, 0), (4, 8)]),
                  _spead_packet([(1, 10), (3, 1 << 40), (4, 8)]),
                  bytes([0x53, 4, 3, 5, 0, 0, 0, 1]) + struct.pack(">Q", 1 << 63 | 1 << 40 | 5)]
        rng = np.random.default_rng(16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in forged * 20:
                sock.sendto(packet, ("127.0.0.1", f.port))
            for _ in range(500):  # extreme heap sizes, offsets and item counts
                n = int(rng.integers(0, 120))
                items = [(int(rng.choice([1, 2, 3, 4, 0x1000, 0x1008])), int(rng.integers(0, 1 << 48)))
                         for _ in range(min(n, 8))]
                packet = _spead_packet(items)
                packet = packet[:6] + struct.pack(">H", n) + packet[8:]
                sock.sendto(packet, ("127.0.0.1", f.port))
        await f.good_image_archived()

        def refused() -> dict[str, int]:
            return dict(f.stats[-1].data.get("rejected", {})) if f.stats else {}
        await async_wait_for(lambda: sum(v for k, v in refused().items() if "packet filter" in k) >= 80, 30,
                             what="the filter's refusals counted in RECEIVER_STATS")
        counts = refused()
        assert counts["refused by the packet filter: heap size or payload offset above the limit"] >= 80
        assert counts["refused by the packet filter: not SPEAD-64-48 or too many item pointers"] >= 20
        await f.good_image_archived()  # and still receiving
    flow(scenario)


def test_deeply_nested_and_malformed_bodies_are_dead_lettered(flow) -> None:  # type: ignore[no-untyped-def]
    """Class 2: a 4 KB deeply nested JSON body (and a lone surrogate) to every destination
    a daemon consumes: each dead-lettered once, with the reason, no consumer wedged."""
    async def scenario(f: Flow) -> None:
        nested = '{"version":1,"type":"FORWARD_IMAGE","id":"n1","sent":"' + SENT + '","image":"X","data":' \
                 + "[" * 2000 + "]" * 2000 + "}"
        surrogate = json.dumps({"version": 1, "type": "FORWARDER_HEARTBEAT", "id": "s1", "sent": SENT,
                                "data": {"forwarder": "\ud800", "load": 0, "capacity": 1}})
        targets = ["/queue/fitsflow.forwarder.f1", "/queue/fitsflow.archive.delivered", "/topic/fitsflow.readout",
                   "/queue/fitsflow.oods.ingest"]
        for dest in targets:
            f.send_raw(dest, nested)
        f.send_raw("/topic/fitsflow.forwarder.heartbeat", surrogate)
        reasons = [d.headers["DLQReason"] for dest in targets for d in f.dead_letters(dest, 1)]
        assert len(reasons) == len(targets) and all("nested too deeply" in r for r in reasons), reasons
        beat = f.dead_letters("/topic/fitsflow.forwarder.heartbeat", 1)
        assert "surrogate" in beat[0].headers["DLQReason"] and beat[0].headers["DLQAttempts"] == "0"
        await f.good_image_archived()
    flow(scenario)


def test_bad_timestamps_are_refused_at_the_door(flow) -> None:  # type: ignore[no-untyped-def]
    """Class 3: START_INTEGRATION with "not a time" (it crash-looped the header service)."""
    async def scenario(f: Flow) -> None:
        body = json.dumps({"version": 1, "type": "START_INTEGRATION", "id": "t1", "sent": SENT,
                           "image": "TESTCAM_O_20261121_900001",
                           "data": {"group": "g", "snap": 0, "exptime": 0.0, "sensors": SENSORS,
                                    "timestamp": "not a time"}})
        f.send_raw(destination_of("START_INTEGRATION"), body, MsgType="START_INTEGRATION")
        dead = f.dead_letters(destination_of("START_INTEGRATION"), 2)  # the header service's, the receiver's
        assert all("$.timestamp" in d.headers["DLQReason"] for d in dead), [d.headers["DLQReason"] for d in dead]
        await f.good_image_archived()
        assert f.states.get("header-service@h1") == "ON"
    flow(scenario)


def test_forged_forwarder_names_get_no_work(flow) -> None:  # type: ignore[no-untyped-def]
    """Class 4: heartbeats from '../../x' and '../../../../etc/passwd': refused, never assigned."""
    async def scenario(f: Flow) -> None:
        for name in ("../../x", "../../../../etc/passwd", "f1/../../y"):
            body = json.dumps({"version": 1, "type": "FORWARDER_HEARTBEAT", "id": os.urandom(8).hex(), "sent": SENT,
                               "data": {"forwarder": name, "load": 0, "capacity": 100}})
            f.send_raw(destination_of("FORWARDER_HEARTBEAT"), body)
        dead = f.dead_letters(destination_of("FORWARDER_HEARTBEAT"), 3)
        assert len(dead) == 3 and all("$.forwarder" in d.headers["DLQReason"] for d in dead)
        for _ in range(3):
            await f.good_image_archived()
        state = Path(f.cfg.site.state_dir)
        assert not list(state.glob("*passwd*")) and not (state.parent / "x").exists()
    flow(scenario)


def test_a_body_of_another_type_is_refused_not_retried(flow) -> None:  # type: ignore[no-untyped-def]
    """Class 6: a PANIC body on the archive topic (it was retried 5 times as a KeyError)."""
    async def scenario(f: Flow) -> None:
        panic = make("PANIC", message="not for you", host="h", program="p")
        f.send_raw(destination_of("IMAGE_IN_ARCHIVE"), panic.encode(), **panic.headers())
        dead = f.dead_letters(destination_of("IMAGE_IN_ARCHIVE"), 1)  # the receiver's raw-buffer subscription
        assert "PANIC is not sent to /topic/fitsflow.archive" in dead[0].headers["DLQReason"]
        assert dead[0].headers["DLQAttempts"] == "0"
        await f.good_image_archived()
    flow(scenario)


def test_staged_entries_that_are_not_files_are_quarantined_once(flow) -> None:  # type: ignore[no-untyped-def]
    """Class 7: symlinks (to /etc/shadow, dangling, to a directory) and a FIFO in the OODS
    staging: each quarantined once with its kind, never followed; rescans stay quiet."""
    async def scenario(f: Flow) -> None:
        paths = f.cfg.paths.resolved()
        day = paths.oods_staging / "20261121"
        day.mkdir(exist_ok=True)
        (day / "TESTCAM_O_20261121_000001_R22_S00.fits").symlink_to("/etc/shadow")
        (day / "dangling.fits").symlink_to(day / "nowhere")
        (paths.oods_staging / "etc-link").symlink_to("/etc")
        os.mkfifo(day / "pipe.fits")
        names = {"TESTCAM_O_20261121_000001_R22_S00.fits", "dangling.fits", "etc-link", "pipe.fits"}
        await async_wait_for(lambda: {Path(str(m.data["path"])).name for m in f.oods} >= names, 60,
                             what="four quarantines announced")
        quarantined = {Path(str(m.data["path"])).name: str(m.data["description"]) for m in f.oods
                       if m.data["status"] != 0}
        assert "symbolic link to /etc/shadow" in quarantined["TESTCAM_O_20261121_000001_R22_S00.fits"]
        assert "a FIFO" in quarantined["pipe.fits"] and "symbolic link" in quarantined["etc-link"]
        assert all(os.path.lexists(paths.quarantine / "oods" / p) for p in
                   ("20261121/dangling.fits", "20261121/pipe.fits", "etc-link"))
        await f.good_image_archived()  # takes several rescans (rescan_s = 1): none announces them again
        announced = [Path(str(m.data["path"])).name for m in f.oods if m.data["status"] != 0]
        assert sorted(announced) == sorted(names), announced
        log = (f.tmp / "logs" / "oods-o1.log").read_text()
        assert "Traceback" not in log, log[-3000:]
    flow(scenario)

