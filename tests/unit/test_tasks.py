"""Supervised tasks (core.tasks): a thread the daemon serves from counts like a task."""

from __future__ import annotations

import asyncio
import threading

from fitsflow.core.tasks import TaskDied, TaskSupervisor, watch_thread


def test_a_dead_thread_fails_its_watcher_and_a_stopped_one_does_not() -> None:
    async def main() -> None:
        supervisor = TaskSupervisor("t")
        release, stopped = threading.Event(), threading.Event()
        dies = threading.Thread(target=release.wait, name="dies", daemon=True)
        asked = threading.Thread(target=release.wait, name="asked", daemon=True)
        dies.start()
        asked.start()
        supervisor.spawn(watch_thread(dies, "endpoint", interval_s=0.01), "watch dies", forever=True)
        supervisor.spawn(watch_thread(asked, "page", stopped=stopped.is_set, interval_s=0.01), "watch asked",
                         forever=True)
        await asyncio.sleep(0.05)
        assert supervisor.failed is None  # both threads alive
        stopped.set()  # "asked" is stopped on purpose, "dies" just ends
        release.set()
        await asyncio.wait_for(supervisor.wait_failure(), 5)
        assert isinstance(supervisor.failed, TaskDied) and "endpoint thread (dies) died" in str(supervisor.failed)
        assert supervisor.failed_task == "t:watch dies"
        await asyncio.sleep(0.05)
        assert supervisor.running == 1  # the stopped thread's watcher waits quietly until closed
        await supervisor.close()
    asyncio.run(main())
