"""asyncio helpers that stay correct on Python 3.11.

``asyncio.wait_for`` on 3.11 can swallow a cancellation when the awaited thing completes in
the same loop iteration as the cancel (CPython gh-86296, fixed in 3.12 by rebuilding
``wait_for`` on ``asyncio.timeout``). A swallowed cancel leaves a daemon's background loop
running after ``stop()`` cancelled it, and the daemon never exits. fitsflow therefore uses
``asyncio.timeout`` (3.11+, cancellation-safe) through these helpers.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Like ``asyncio.wait_for`` (raises TimeoutError), without swallowing cancellation."""
    async with asyncio.timeout(timeout):
        return await aw


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
