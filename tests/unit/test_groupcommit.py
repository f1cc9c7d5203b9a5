"""core.groupcommit: concurrent submissions share a write; a failing batch is split so one
bad item fails alone; the writer is a supervised task."""

from __future__ import annotations

import asyncio
import threading
from typing import Sequence

from fitsflow.core.groupcommit import GroupCommit
from fitsflow.core.tasks import TaskSupervisor


def test_waiting_items_share_one_write_and_a_bad_one_fails_alone() -> None:
    calls: list[list[int]] = []
    started, gate = threading.Event(), threading.Event()

    def write_many(items: Sequence[int]) -> list[int]:
        if not calls:
            started.set()
            gate.wait(10)  # the first write is slow: everything submitted meanwhile waits for one
        calls.append(list(items))
        if 13 in items:
            raise ValueError("13 is bad")
        return [i * 2 for i in items]

    async def main() -> None:
        tasks = TaskSupervisor("test")
        gc: GroupCommit[int, int] = GroupCommit(write_many, name="test")
        gc.start(tasks.spawn)
        first = asyncio.create_task(gc.submit(1))
        assert await asyncio.to_thread(started.wait, 10)
        rest = [asyncio.create_task(gc.submit(i)) for i in (2, 13, 4)]
        await asyncio.sleep(0)
        gate.set()
        assert await first == 2
        results = await asyncio.gather(*rest, return_exceptions=True)
        assert results[0] == 4 and results[2] == 8
        assert isinstance(results[1], ValueError)
        assert calls == [[1], [2, 13, 4], [2], [13], [4]]
        assert (gc.batches, gc.items, gc.largest) == (3, 3, 1)
        await tasks.close()

    asyncio.run(main())


def test_a_dead_writer_is_seen_by_the_supervisor() -> None:
    def write_many(items: Sequence[int]) -> list[int]:
        return []  # wrong: one result per item is the contract; zip(strict) fails in the writer

    async def main() -> None:
        tasks = TaskSupervisor("test")
        gc: GroupCommit[int, int] = GroupCommit(write_many, name="test")
        gc.start(tasks.spawn)
        pending = asyncio.create_task(gc.submit(1))
        await asyncio.wait_for(tasks.wait_failure(), 10)
        assert tasks.failed_task == "test:test writer" and isinstance(tasks.failed, ValueError)
        pending.cancel()
        await tasks.close()

    asyncio.run(main())
