"""Role: readouts become FORWARD_IMAGE assignments (READOUT_COMPLETE), and the assignment
loop keeps them moving: a silent forwarder's sensors are reassigned, partial sensors that
waited their grace are forwarded as they are, an assignment not yet sent is sent."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid

from fitsflow.archive_controller.book import Assignment, Book
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.archive_controller.pool import ForwarderPool
from fitsflow.core import schemas
from fitsflow.core.bus import MessageBus
from fitsflow.core.messages import Message, destination_of, make
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)


class Assigner:
    def __init__(self, cfg: ArchiveControllerConfig, bus: MessageBus, book: Book, pool: ForwarderPool, ident: str,
                 *, spawn: Spawn) -> None:
        self.cfg = cfg
        self.bus = bus
        self.book = book
        self.pool = pool
        self.ident = ident
        self._spawn = spawn
        self.reassignments = 0

    async def start(self) -> None:
        self._spawn(self._loop(), "assignments", forever=True)

    async def stop(self) -> None:
        pass  # its task belongs to the daemon's supervisor

    async def on_readout_complete(self, msg: Message) -> None:
        """Assign the sensors stored and not yet assigned or delivered. Sent again after a
        re-send by the camera (catch-up), it assigns what was missing or is now whole."""
        body: schemas.ReadoutComplete = msg.body  # names checked at the door (core.schemas)
        image, present, partial = msg.image or "", list(body.present), set(body.partial)
        known = await asyncio.to_thread(self.book.sensor_states, image)
        defer = [] if not self.cfg.partial_grace_s else \
            [s for s in present if s in partial and s not in known]
        ready = [s for s in present if s not in partial or not self.cfg.partial_grace_s]
        ready = [s for s in ready if known.get(s) in (None, "deferred")]
        if ready:
            await asyncio.to_thread(self.book.supersede_deferred, image, set(ready))
            plan = self.pool.plan(image, ready)
            await asyncio.to_thread(self.book.add_assignments, plan)
            await self.send(plan)
        if defer:
            _log.info("%s: %d partial sensors wait %.0f s for a re-send", image, len(defer), self.cfg.partial_grace_s,
                      extra={"IMAGE": image})
            await asyncio.to_thread(self.book.add_assignments, [
                Assignment(f"{image}-deferred-{uuid.uuid4().hex[:8]}", image, None, defer, "deferred", False)])

    async def send(self, plan: list[Assignment]) -> None:
        """FORWARD_IMAGE for each assignment that has a forwarder (each booked as sent after
        its receipt). All at once: one after the other, the last forwarder of an image would
        wait for every other one's receipt and booking (8-15 ms each, measured), and a camera
        has many forwarders. An assignment whose send fails stays unsent; the loop sends it
        again."""
        for a in plan:
            if a.forwarder is None:
                self.pool.empty_for(a.image)
        sending = [a for a in plan if a.forwarder is not None]
        outcomes = await asyncio.gather(*(self._send_one(a) for a in sending), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _send_one(self, a: Assignment) -> None:
        await self.bus.send(make("FORWARD_IMAGE", a.image, sensors=a.sensors, assignment=a.assignment,
                                 sender=self.ident), destination_of("FORWARD_IMAGE", forwarder=a.forwarder))
        await asyncio.to_thread(self.book.set_assignment, a.assignment, sent=True)
        _log.info("%s: %d sensors to %s (%s)", a.image, len(a.sensors), a.forwarder, a.assignment,
                  extra={"IMAGE": a.image, "MSGTYPE": "FORWARD_IMAGE"})

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.assign_interval_s)
            await self.pass_once()

    async def pass_once(self) -> None:
        """One pass over the book's deferred and open assignments."""
        live = self.pool.check()
        grace = not self.pool.listening()  # hear everyone first (after a start or a reconnect)
        if self.cfg.partial_grace_s and live:
            # Partial sensors the camera did not re-send in time: forward them as they are.
            cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self.cfg.partial_grace_s)
            for a in await asyncio.to_thread(self.book.deferred_assignments, cutoff):
                plan = self.pool.plan(a.image, a.sensors)
                await asyncio.to_thread(self.book.reassign, a.assignment, plan)
                await self.send(plan)
        for a in await asyncio.to_thread(self.book.open_assignments):
            delivered = await asyncio.to_thread(self.book.delivered_sensors, a.image)
            left = [s for s in a.sensors if s not in delivered]
            if not left:
                await asyncio.to_thread(self.book.set_assignment, a.assignment, state="done")
            elif a.forwarder is None or (a.forwarder not in live and not grace):
                if not live:
                    if a.forwarder is None:
                        self.pool.empty_for(a.image)
                    continue
                plan = self.pool.plan(a.image, left)
                if a.forwarder is not None:
                    self.reassignments += 1
                    _log.warning("forwarder %s is silent: %d sensors of %s reassigned", a.forwarder, len(left),
                                 a.image, extra={"IMAGE": a.image})
                await asyncio.to_thread(self.book.reassign, a.assignment, plan)
                await self.send(plan)
            elif not a.sent:
                await self.send([a])
