"""A sensor whose every stripe was stored but which was never published — the receiver was
killed between its last stripe and its .json, or the disk was full at the finish — is
published at the next start, or when the camera re-sends one of its stripes. Before, it
waited for ever: its stripes were all in the journal, so every re-sent stripe was refused as
a duplicate (the chaos test caught one such sensor missing from the OODS)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fitsflow.core import rawstore
from fitsflow.core.rawstore import read_meta, read_pixels, read_readout_summary, write_readout_summary
from fitsflow.core.spead_format import Stripe, stripe_bounds
from fitsflow.receiver.assembler import ImageAssembler

IMAGE = "CAM_O_20261207_000001"
SENSORS = ["R22_S00", "R22_S01"]
ROWS, COLS, COUNT = 37, 29, 3


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(-2**31, 2**31 - 1, size=(ROWS, COLS), dtype=np.int32)


def stripes(name: str, n: int) -> list[Stripe]:
    raft, sensor = name.split("_")
    data = pixels(n)
    out = []
    for i in range(COUNT):
        start, end = stripe_bounds(ROWS, COUNT, i)
        out.append(Stripe(1, IMAGE, "G", 0, raft, sensor, ROWS, COLS, i, COUNT, start, 0.0, 1.0,
                          data[start:end].reshape(-1)))
    return out


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.announced: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def assembler(self) -> ImageAssembler:
        async def announce(image: str, summary: dict) -> None:
            self.announced.append(summary)

        def spawn(coro, name, *, forever=False):  # type: ignore[no-untyped-def]
            task = asyncio.get_running_loop().create_task(coro, name=name)
            self.tasks.append(task)
            return task

        return ImageAssembler(self.root, 60.0, set(SENSORS), announce, spawn=spawn, direct_io=True)


def restarted(root: Path) -> Harness:
    """A receiver's assembler started on ``root`` (what it resumes, publishes and announces
    at start) and stopped."""
    async def main() -> Harness:
        h = Harness(root)
        asm = h.assembler()
        await asm.start()
        await asm.stop()
        return h
    return asyncio.run(main())


def stored_whole(root: Path, name: str, n: int) -> bool:
    raft, sensor = name.split("_")
    meta = read_meta(root, IMAGE, raft, sensor)
    return meta is not None and not meta.partial and np.array_equal(read_pixels(root, meta), pixels(n))


async def started_with_s00(h: Harness) -> ImageAssembler:
    """An assembler started on ``h``'s raw buffer, with sensor S00 stored and published."""
    asm = h.assembler()
    await asm.start()
    for s in stripes("R22_S00", 0):
        await asm.add_stripe(s)
    return asm


def crash_after_last_stripe(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S00 published; S01's stripes all stored, then the receiver dies before publishing it."""
    def killed(self):  # type: ignore[no-untyped-def]
        raise SystemExit("killed")

    async def main() -> None:
        h = Harness(root)
        asm = await started_with_s00(h)
        with monkeypatch.context() as m:
            m.setattr(rawstore.SensorWriter, "finish", killed)
            for s in stripes("R22_S01", 1):
                try:
                    await asm.add_stripe(s)
                except SystemExit:
                    pass
        for state in asm.images.values():  # what a kill leaves: open files, journals, no .json
            for writer in state.writers.values():
                writer.close()
        for t in h.tasks:
            t.cancel()
    asyncio.run(main())
    assert stored_whole(root, "R22_S00", 0) and read_meta(root, IMAGE, "R22", "S01") is None


@pytest.mark.parametrize("announced", [False, True])
def test_a_sensor_stored_whole_before_a_crash_is_published_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    announced: bool) -> None:
    """Not announced yet: the restart publishes the sensor and announces the image whole at
    once (not at its deadline). Announced already with the sensor missing (the image timed
    out): the restart publishes it and announces the image again."""
    crash_after_last_stripe(tmp_path, monkeypatch)
    if announced:
        write_readout_summary(tmp_path, IMAGE, {"present": ["R22_S00"], "missing": ["R22_S01"], "partial": [],
                                                "timed_out": True})

    h = restarted(tmp_path)
    assert stored_whole(tmp_path, "R22_S01", 1)
    assert h.announced and h.announced[-1]["present"] == SENSORS and h.announced[-1]["missing"] == []
    assert read_readout_summary(tmp_path, IMAGE)["present"] == SENSORS
    assert not list((tmp_path / IMAGE).glob(".*.stripes"))


def test_a_resent_stripe_publishes_a_sensor_whose_finish_failed(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk was full when the sensor was finished: the writer left the image's state.
    The camera's re-send brings stripes that are all in the journal already; the first of
    them publishes the sensor (the pixels are those stored the first time)."""
    async def main() -> Harness:
        h = Harness(tmp_path)
        asm = await started_with_s00(h)

        def full(self):  # type: ignore[no-untyped-def]
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m, pytest.raises(OSError):
            m.setattr(rawstore.SensorWriter, "finish", full)
            for s in stripes("R22_S01", 1):
                await asm.add_stripe(s)
        assert read_meta(tmp_path, IMAGE, "R22", "S01") is None
        assert not h.announced
        resent = stripes("R22_S01", 1)[0]
        assert await asm.add_stripe(resent) is False  # a duplicate of a stored stripe...
        await asm.stop()
        return h
    h = asyncio.run(main())
    assert stored_whole(tmp_path, "R22_S01", 1)  # ...that published the sensor
    assert h.announced and h.announced[-1]["present"] == SENSORS


def test_the_summary_is_on_disk_before_the_announcement_and_marked_announced_after(tmp_path: Path) -> None:
    """A forwarder woken by READOUT_COMPLETE reads READOUT.json: it is there when the message
    goes out (marked not announced yet), and marked announced once the message is sent."""
    seen: list[dict | None] = []

    async def main() -> Harness:
        h = Harness(tmp_path)
        asm = h.assembler()
        inner = asm.announce

        async def announce(image: str, summary: dict) -> None:
            seen.append(read_readout_summary(tmp_path, image))
            await inner(image, summary)
        asm.announce = announce
        await asm.start()
        for name in SENSORS:
            for s in stripes(name, SENSORS.index(name)):
                await asm.add_stripe(s)
        await asm.stop()
        return h
    h = asyncio.run(main())
    assert len(h.announced) == 1 and h.announced[0]["present"] == SENSORS
    assert seen[0] is not None and seen[0]["present"] == SENSORS and seen[0]["announced"] is False
    assert read_readout_summary(tmp_path, IMAGE)["announced"] is True
    assert rawstore.readout_announced(tmp_path, IMAGE)


def test_a_crash_between_the_summary_and_the_announcement_announces_at_the_next_start(tmp_path: Path) -> None:
    """The receiver dies after READOUT.json and before READOUT_COMPLETE is durable: the next
    start announces the image (at once: it is whole), and only then marks it announced."""
    async def first() -> None:
        h = Harness(tmp_path)
        asm = h.assembler()

        async def killed(image: str, summary: dict) -> None:
            raise SystemExit("killed")
        asm.announce = killed
        await asm.start()
        with pytest.raises(SystemExit):
            for name in SENSORS:
                for s in stripes(name, SENSORS.index(name)):
                    await asm.add_stripe(s)
        await asm.stop()
    asyncio.run(first())
    assert read_readout_summary(tmp_path, IMAGE)["announced"] is False

    h = restarted(tmp_path)
    assert [a["present"] for a in h.announced] == [SENSORS]
    assert rawstore.readout_announced(tmp_path, IMAGE)


def test_a_summary_from_before_the_mark_counts_as_announced(tmp_path: Path) -> None:
    """READOUT.json written by an earlier fitsflow (after its message, no mark): not announced
    again at an upgrade's restart."""
    (tmp_path / IMAGE).mkdir()
    (tmp_path / IMAGE / "READOUT.json").write_text('{"present": [], "missing": [], "partial": []}')
    assert rawstore.readout_announced(tmp_path, IMAGE)

    assert restarted(tmp_path).announced == []
