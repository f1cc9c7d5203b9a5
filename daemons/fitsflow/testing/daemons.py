"""Run fitsflow daemons in-process, on a real bus, for integration tests."""

from __future__ import annotations

import argparse
import contextlib
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.messages import Message
from fitsflow.core.runtime import Daemon

D = TypeVar("D", bound=Daemon)


@contextlib.asynccontextmanager
async def running(cls: type[D], cfg: Config, instance: str = "t") -> AsyncIterator[D]:
    """Start ``cls`` as its entry point would (bus first, then roles); stop it on exit."""
    bus = MessageBus.from_config(cfg, f"{cls.name}-{instance}")
    daemon = cls(cfg, bus, argparse.Namespace(instance=instance))
    daemon.watch_bus_faults()
    await bus.start(consume=False)
    if not await bus.wait_connected(15):
        raise TimeoutError(f"{cls.name}: no broker")
    await daemon.start()
    bus.start_consuming()
    try:
        yield daemon
    finally:
        await daemon.stop()
        await bus.stop()


class Listener:
    """Collects the messages of some destinations (or hands them to ``handler``)."""

    def __init__(self, cfg: Config, name: str, destinations: list[str],
                 handler: Callable[[Message], Awaitable[None]] | None = None) -> None:
        self.bus = MessageBus.from_config(cfg, name)
        self.messages: list[Message] = []
        for dest in destinations:
            self.bus.subscribe(dest, handler or self._on)

    async def _on(self, msg: Message) -> None:
        self.messages.append(msg)

    def of(self, type_: str, image: str | None = None) -> list[Message]:
        return [m for m in self.messages if m.type == type_ and (image is None or m.image == image)]

    def files(self, type_: str, image: str | None = None) -> list[dict]:
        """The file entries of the FILE_DELIVERED or INGEST_REQUEST messages received."""
        return [f for m in self.of(type_, image) for f in m.data["files"]]

    async def __aenter__(self) -> Listener:
        await self.bus.start()
        if not await self.bus.wait_connected(15):
            raise TimeoutError("listener: no broker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.stop()
