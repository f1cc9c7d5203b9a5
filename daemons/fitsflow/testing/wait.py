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
