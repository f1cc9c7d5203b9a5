"""Poll until a condition holds, instead of fixed sleeps (machines here are shared and noisy)."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> T:
    """Call ``predicate`` until it returns something truthy; return that, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], T | Awaitable[T]], timeout: float = 30.0,
                         interval: float = 0.02, what: str = "") -> T:
    """The asyncio twin of :func:`wait_for`; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate!r}")
        await asyncio.sleep(interval)


async def async_wait_progress(count: Callable[[], int], target: int, stall_s: float = 120.0,
                              interval: float = 0.5, what: str | Callable[[], str] = "") -> None:
    """Wait until ``count()`` reaches ``target``, however long steady progress takes (a machine
    with slow fsync may take minutes for a burst); fail only when the count has not moved for
    ``stall_s`` seconds, saying where it stopped (``what`` may be a function, called then)."""
    last, moved = count(), time.monotonic()
    while last < target:
        await asyncio.sleep(interval)
        now = count()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            said = what() if callable(what) else what
            raise TimeoutError(f"{said or 'count'}: stuck at {now} of {target} for {stall_s} s")
