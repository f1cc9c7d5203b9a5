"""Role: the forwarder pool — who is alive (FORWARDER_HEARTBEAT), how loaded, how a set of
sensors is spread over them, and the "pool empty" fault episode."""

from __future__ import annotations

import itertools
import logging
import time
import uuid

from fitsflow.archive_controller.book import Assignment
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.core.bus import MessageBus
from fitsflow.core.faults import FaultEpisodes
from fitsflow.core.messages import Message

_log = logging.getLogger(__name__)
POOL_FAULT = "forwarder pool empty"


class ForwarderPool:
    def __init__(self, cfg: ArchiveControllerConfig, bus: MessageBus, faults: FaultEpisodes) -> None:
        self.cfg = cfg
        self.bus = bus
        self.faults = faults
        #: forwarder → (last heartbeat, monotonic), load, capacity
        self.forwarders: dict[str, tuple[float, int, int]] = {}
        self.started = time.monotonic()
        #: since when (monotonic) the listening controller has found no live forwarder
        self._empty_since: float | None = None

    async def start(self) -> None:
        self.started = time.monotonic()

    async def stop(self) -> None:
        pass

    async def on_heartbeat(self, msg: Message) -> None:
        name = str(msg.data["forwarder"])
        if name not in self.forwarders:
            _log.info("forwarder %s is live", name)
        self.forwarders[name] = (time.monotonic(), int(msg.data["load"]), int(msg.data["capacity"]))

    def live(self) -> list[str]:
        """The forwarders heard within the liveness timeout."""
        now = time.monotonic()
        return sorted(f for f, (seen, _l, _c) in self.forwarders.items() if now - seen < self.cfg.liveness_timeout_s)

    def plan(self, image: str, sensors: list[str]) -> list[Assignment]:
        """Spread sensors over live forwarders, least loaded first (one assignment each); with
        none alive, one assignment that waits for a forwarder."""
        live = self.live()
        if not live:
            return [Assignment(f"{image}-{uuid.uuid4().hex[:8]}", image, None, sensors, "open", False)]
        live.sort(key=lambda f: self.forwarders[f][1] / max(1, self.forwarders[f][2]))
        share: dict[str, list[str]] = {}
        for sensor, forwarder in zip(sensors, itertools.cycle(live)):
            share.setdefault(forwarder, []).append(sensor)
        return [Assignment(f"{image}-{f}-{uuid.uuid4().hex[:8]}", image, f, s, "open", False)
                for f, s in share.items()]

    def listening(self) -> bool:
        """True once the controller has been subscribed long enough to have heard every live
        forwarder's heartbeat: liveness_timeout_s since its start or its last reconnect, plus
        the bus's reconnect_max_s (a forwarder that lost the broker when the controller did
        retries within that). Heartbeats are not durable: after a reconnect, the backlog of
        readouts arrives before the first heartbeat, and judging the pool then would cry wolf."""
        since = max(self.started, self.bus.last_connected_at or self.started)
        return self.bus.listening and \
            time.monotonic() - since >= self.cfg.liveness_timeout_s + self.bus.cfg.reconnect_max_s

    def empty_for(self, image: str) -> None:
        """An assignment found no live forwarder: it waits (the assigner sends it once one is
        heard). The pool is declared empty — one episode, cleared by :meth:`check` — only
        once the controller, listening, has found it so for a further liveness_timeout_s.
        After a broker hang the broker refuses reconnecting clients ("already connected")
        until it has reaped their stale connections, some clients seconds after others
        (seen in CI, and again and again under load): live forwarders can stay unheard for
        a while after the controller's own reconnect, and a panic then is a false alarm."""
        if not self.listening() or self.live():
            self._empty_since = None
            return
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
        if now - self._empty_since >= self.cfg.liveness_timeout_s:
            self.faults.report(POOL_FAULT, f"no live forwarder heard for {2 * self.cfg.liveness_timeout_s:.0f} s: "
                                           f"{image} and later images wait for one")

    def check(self) -> list[str]:
        """The live forwarders; closes the empty-pool episode once there is one."""
        live = self.live()
        if live:
            self._empty_since = None
        if live and POOL_FAULT in self.faults.active:
            self.faults.clear(POOL_FAULT)
        return live
