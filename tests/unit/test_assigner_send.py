"""The controller sends an image's FORWARD_IMAGE assignments at once, not one after another's
receipt: with many forwarders, the last one would otherwise start its files late."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fitsflow.archive_controller.assigner import Assigner
from fitsflow.archive_controller.book import Assignment, Book
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.core.messages import Message


class _SlowReceipts:
    """A bus whose broker confirms a send only once ``expected`` sends are in flight."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.in_flight = 0
        self.all_in_flight: asyncio.Event | None = None
        self.sent: list[tuple[Message, str | None]] = []

    async def send(self, msg: Message, destination: str | None = None) -> None:
        if self.all_in_flight is None:  # made in the test's own event loop
            self.all_in_flight = asyncio.Event()
        self.in_flight += 1
        if self.in_flight == self.expected:
            self.all_in_flight.set()
        await asyncio.wait_for(self.all_in_flight.wait(), 5.0)  # sent one at a time, this times out
        self.sent.append((msg, destination))


class _Pool:
    def __init__(self) -> None:
        self.empty: list[str] = []

    def empty_for(self, image: str) -> None:
        self.empty.append(image)


def test_assignments_of_an_image_are_sent_at_once(tmp_path: Path) -> None:
    book = Book(f"sqlite:///{tmp_path / 'book.sqlite'}")
    try:
        plan = [Assignment(f"IMG_1-f{i}-x", "IMG_1", f"f{i}", [f"R22_S{i}0"], "open", False) for i in range(4)]
        book.add_assignments(plan)
        bus = _SlowReceipts(expected=len(plan))
        assigner = Assigner(ArchiveControllerConfig(), bus, book, _Pool(), "controller@test",  # type: ignore[arg-type]
                            spawn=lambda coro, name, **kw: coro.close())  # type: ignore[arg-type,return-value]
        asyncio.run(assigner.send(plan))
        assert sorted(d for _, d in bus.sent) == [f"/queue/fitsflow.forwarder.f{i}" for i in range(4)]
        assert all(msg.type == "FORWARD_IMAGE" for msg, _ in bus.sent)
        assert {a.assignment: a.sent for a in book.open_assignments()} == {a.assignment: True for a in plan}
    finally:
        book.close()


def test_an_assignment_without_a_forwarder_waits_and_the_others_go(tmp_path: Path) -> None:
    book = Book(f"sqlite:///{tmp_path / 'book.sqlite'}")
    try:
        plan = [Assignment("IMG_2-f0-x", "IMG_2", "f0", ["R22_S00"], "open", False),
                Assignment("IMG_2-none", "IMG_2", None, ["R22_S01"], "open", False)]
        book.add_assignments(plan)
        pool = _Pool()
        assigner = Assigner(ArchiveControllerConfig(), _SlowReceipts(expected=1), book, pool,  # type: ignore[arg-type]
                            "controller@test", spawn=lambda coro, name, **kw: coro.close())  # type: ignore[arg-type,return-value]
        asyncio.run(assigner.send(plan))
        assert pool.empty == ["IMG_2"]
        sent = {a.assignment: a.sent for a in book.open_assignments()}
        assert sent == {"IMG_2-f0-x": True, "IMG_2-none": False}
    finally:
        book.close()
