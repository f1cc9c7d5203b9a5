"""A forwarder announces the files of an assignment together: one FILE_DELIVERED per pass,
split at the catalogue's limit, and each file booked as delivered once it is announced."""

from __future__ import annotations

import argparse
import asyncio
import errno
from pathlib import Path

import pytest

from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.memory_link import MemoryBroker
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import load_config
from fitsflow.core.messages import Message, decode
from fitsflow.core.schemas import MAX_FILES
from fitsflow.forwarder.assignments import Assignment, AssignmentBook
from fitsflow.forwarder.daemon import ForwarderDaemon
from fitsflow.testing.config import make_site

IMAGE = "TESTCAM_O_20261121_000001"


def entry(n: int) -> dict:
    sensor = f"S{n:03d}"
    return {"path": f"/data/incoming/TESTCAM_{IMAGE}_R22_{sensor}.fits", "size": 2880 * (n + 2),
            "checksum": f"crc32:{n:08x}", "identity": f"1:{n}:2",
            "data_id": {"instrument": "TESTCAM", "image": IMAGE, "raft": "R22", "sensor": sensor,
                        "obs_day": "20261121"}}


def forwarder(tmp_path: Path) -> tuple[ForwarderDaemon, list[tuple[Message, str | None]]]:
    """A forwarder whose sends are kept (decoded as a consumer would read them)."""
    cfg = load_config(make_site(tmp_path, ["stomp://127.0.0.1:61613"]))
    bus = MessageBus(cfg.bus, "forwarder-test", BusStore(tmp_path / "bus.sqlite"), [MemoryBroker().link("memory://0")])
    daemon = ForwarderDaemon(cfg, bus, argparse.Namespace(instance="f1"))
    sent: list[tuple[Message, str | None]] = []

    async def send(msg: Message, destination: str | None = None) -> None:
        sent.append((decode(msg.encode()), destination))

    daemon.bus.send = send  # type: ignore[method-assign]
    return daemon, sent


def test_one_message_per_pass_split_at_the_limit_and_each_file_booked(tmp_path: Path) -> None:
    daemon, sent = forwarder(tmp_path)
    bus, cfg = daemon.bus, daemon.cfg
    names = [f"R22_S{n:03d}" for n in range(2 * MAX_FILES + 6)]
    files = {name: entry(n) for n, name in enumerate(names)}
    a = Assignment("a1", IMAGE, names)
    try:
        asyncio.run(daemon._deliver(a, files))
    finally:
        bus.store.close()
    assert [len(m.data["files"]) for m, _ in sent] == [MAX_FILES, MAX_FILES, 6]
    assert all(m.type == "FILE_DELIVERED" and m.image == IMAGE and m.data["assignment"] == "a1" and
               m.data["written_on"] == daemon.host for m, _ in sent)
    assert [f for m, _ in sent for f in m.data["files"]] == [files[n] for n in names]
    assert a.pending() == [] and daemon.files_written == len(names)
    booked = AssignmentBook(Path(cfg.site.state_dir) / "forwarder-f1").items["a1"]
    assert booked.delivered == {n: {k: files[n][k] for k in ("path", "size", "checksum")} for n in names}


def test_the_files_written_are_announced_when_another_sensor_raises(tmp_path: Path) -> None:
    """A sensor whose attempt raises (the raw buffer unreadable: the pass is retried) does not
    keep the files written in the same pass from being announced and booked."""
    daemon, sent = forwarder(tmp_path)
    names = ["R22_S000", "R22_S001", "R22_S002"]
    a = Assignment("a2", IMAGE, names)

    async def sensor(a: Assignment, name: str, header: object, summary: object) -> dict:
        if name == "R22_S001":
            raise OSError(errno.EIO, "Input/output error")
        return entry(names.index(name))

    daemon._sensor = sensor  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError, match="Input/output"):
            asyncio.run(daemon._process_once(a))
    finally:
        daemon.bus.store.close()
    assert [f["data_id"]["sensor"] for m, _ in sent for f in m.data["files"]] == ["S000", "S002"]
    assert a.pending() == ["R22_S001"] and not a.complete
