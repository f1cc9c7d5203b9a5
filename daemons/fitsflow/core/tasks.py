"""Supervised background tasks: a task that dies is never silent.

Every long-running task of a daemon — its own loops, its roles' loops, its bus's connection,
outbox and consumer tasks — is started through a :class:`TaskSupervisor`. A task that ends
with an exception (or returns although it should run forever) is logged with its traceback
and recorded as the owner's failure; the runtime watches every supervisor and ends the
daemon with exit 70, so systemd restarts it, instead of leaving a process that answers the
watchdog while doing nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable, Coroutine, Protocol

_log = logging.getLogger(__name__)


class Spawn(Protocol):
    """What roles receive to start their background tasks (a supervisor's ``spawn``)."""

    def __call__(self, coro: Coroutine[None, None, None], name: str, *, forever: bool = False) -> asyncio.Task[None]: ...


class TaskDied(RuntimeError):
    """A task meant to run until cancelled returned by itself."""


class TaskSupervisor:
    """Starts tasks and remembers the first one that failed."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.failed: BaseException | None = None
        self.failed_task = ""
        self._failure = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[None, None, None], name: str, *, forever: bool = False) -> asyncio.Task[None]:
        """Run ``coro`` in the background. ``forever``: it must only end by cancellation, so
        returning is a failure too (a loop that fell out of its ``while``)."""
        task = asyncio.create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, forever))
        return task

    def _done(self, task: asyncio.Task[None], forever: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        if exc is None and forever:
            exc = TaskDied(f"task {task.get_name()} ended by itself")
        if exc is None:
            return
        _log.critical("%s: task %s died: %r", self.owner, task.get_name(), exc, exc_info=exc)
        if self.failed is None:
            self.failed, self.failed_task = exc, task.get_name()
        self._failure.set()

    async def wait_failure(self) -> None:
        await self._failure.wait()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task and wait until they have ended (their ending is no failure)."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._closing = False


async def watch_thread(thread: threading.Thread, what: str, stopped: Callable[[], bool] = lambda: False,
                       interval_s: float = 2.0) -> None:
    """A supervised task (``forever=True``) that fails when ``thread`` dies unasked: a thread
    the daemon serves from (an HTTP endpoint) counts like one of its tasks, so a dead one ends
    the daemon for systemd to restart instead of leaving it alive with its page gone.
    ``stopped()``: the thread was stopped on purpose (shutdown) — then this waits quietly."""
    while thread.is_alive() or stopped():
        await asyncio.sleep(interval_s)
    raise TaskDied(f"the {what} thread ({thread.name}) died")
