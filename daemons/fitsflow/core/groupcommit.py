"""Group commit: the writes of many concurrent handlers in one database transaction.

A handler that must not return (and so let its message be acked) before its write is
durable awaits :meth:`GroupCommit.submit`. One writer task takes everything submitted
meanwhile and hands it to ``write_many`` in a worker thread, as one transaction: one commit
(one fsync) for the batch instead of one per message. Each handler gets its own result.

If a batch fails, its items are written again one by one, so one bad item fails alone and
the others are kept; a fault of the machine (a full disk) then fails each of them, and the
bus retries them as it retries any fault.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Generic, Sequence, TypeVar

from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """See the module docstring. ``write_many(items)`` returns one result per item, in
    order, and writes all or none of them."""

    def __init__(self, write_many: Callable[[Sequence[T]], Sequence[R]], *, name: str,
                 max_batch: int = 500) -> None:
        self._write_many = write_many
        self.name = name
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        #: batches and items written, and the largest batch (for status lines and benches)
        self.batches = self.items = self.largest = 0

    def start(self, spawn: Spawn) -> None:
        """Run the writer as a supervised task of the daemon (it dies → the daemon ends)."""
        spawn(self._writer(), f"{self.name} writer", forever=True)

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; returns once it is committed."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if live:
                await self._write(live)

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await asyncio.to_thread(self._write_many, [item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the handlers, whose bus decides
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            _log.info("%s: a batch of %d failed (%s: %s); writing them one by one", self.name, len(batch),
                      type(exc).__name__, exc)
            for one in batch:
                await self._write([one])
            return
        self.batches += 1
        self.items += len(batch)
        self.largest = max(self.largest, len(batch))
        for (_, fut), result in zip(batch, results, strict=True):
            _settle(fut, result=result)


def _settle(fut: asyncio.Future[R], *, result: R | None = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the handler was cancelled (the daemon stops): its message stays unacked
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)  # type: ignore[arg-type]
