"""The recorder daemon: wiring, then the message handler.

It reads topics only, so it takes nothing from any other consumer: every topic of the message
catalogue, one by one, and ``/topic/mirror.fitsflow.>`` (the broker's copies of every queue:
ActiveMQ mirrored queues, see docs/messages.md). All subscriptions are durable: messages
published while the recorder is down are kept by the broker and recorded when it is back.

Not ``/topic/fitsflow.>``: a wildcard subscription makes ActiveMQ create a wildcard destination,
after which every other consumer of a fitsflow topic is checked for read permission on
``fitsflow.>`` and refused (measured with the shipped authorization map; the security test
guards it). Only the recorder reads ``mirror.*``, so its wildcard there harms nobody.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.groupcommit import GroupCommit
from fitsflow.core.messages import CATALOGUE, Message
from fitsflow.core.runtime import Daemon
from fitsflow.recorder.config import RecorderConfig
from fitsflow.recorder.store import RecorderStore
from fitsflow.recorder.web import StatusPage

_log = logging.getLogger(__name__)

TOPICS = sorted({t.destination for t in CATALOGUE.values() if t.destination.startswith("/topic/")})
QUEUE_MIRRORS = "/topic/mirror.fitsflow.>"
PRUNE_EVERY_S = 3600.0
#: handlers per subscription that may wait for one shared commit
SHARED_COMMITS = 16


def original_destination(destination: str) -> str:
    """``/topic/mirror.fitsflow.panic`` → ``/queue/fitsflow.panic``; others unchanged."""
    prefix = "/topic/mirror."
    return "/queue/" + destination[len(prefix):] if destination.startswith(prefix) else destination


class RecorderDaemon(Daemon):
    name = "recorder"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.rcfg: RecorderConfig = cfg.section("recorder")
        self.store = RecorderStore(self.rcfg.database_url or cfg.site.database_url)
        self.page = StatusPage(self.store, self.rcfg, spawn=self.spawn)
        self.roles = [self.page]
        self.recorded = 0
        self.repeats = 0
        # Messages arriving together are recorded in one transaction (one commit), each
        # acked only once it is committed; several handlers per subscription wait at once
        # so that they can share a commit. They hand their message on in arrival order.
        self.writer = GroupCommit(self.store.record_many, name=f"{self.ident} recording")
        for topic in TOPICS:
            bus.subscribe(topic, self.on_message, name=f"recorder-{topic.rsplit('/', 1)[-1]}", durable=True,
                          concurrency=SHARED_COMMITS)
        bus.subscribe(QUEUE_MIRRORS, self.on_message, name="recorder-queues", durable=True,
                      concurrency=SHARED_COMMITS)
        # The real consumer of a malformed message reports it; the recorder only counts.
        bus.on_dead_letter = self._dead_letter

    async def start(self) -> None:
        self.writer.start(self.spawn)
        await super().start()
        self.spawn(self._prune(), "prune", forever=True)

    async def stop(self) -> None:
        await super().stop()
        self.store.close()

    def status(self) -> str:
        w = self.writer
        return (f"{self.recorded} messages recorded ({self.repeats} repeats ignored) in {w.batches} commits "
                f"(largest {w.largest}), page {self.page.url}; "
                f"{self.bus.describe()}")

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"messages_recorded": (self.recorded, "Messages recorded"),
                "repeats": (self.repeats, "Repeated messages ignored")}

    async def on_message(self, msg: Message) -> None:
        done = await self.writer.submit((msg, original_destination(msg.destination), time.time()))
        if done.new:
            self.recorded += 1
        else:
            self.repeats += 1

    async def _dead_letter(self, destination: str, reason: str, msg: Message | None) -> None:
        _log.warning("%s: not recorded (%s): %s", self.ident, destination, reason[:300])

    async def _prune(self) -> None:
        while True:
            cutoff = time.time() - self.rcfg.retention_days * 86400
            n = await asyncio.to_thread(self.store.prune, cutoff)
            if n:
                _log.info("%s: pruned %d messages older than %.0f days", self.ident, n, self.rcfg.retention_days)
            await asyncio.sleep(PRUNE_EVERY_S)
