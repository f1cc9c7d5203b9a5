"""Catch-up: close the gaps the rest of fitsflow cannot.

Images whose packets were sent while a receiver was down (or lost on the way) never become
files. The camera announces every image it read out (END_READOUT); this role compares those
announcements with what the archive registry holds and, for an image still incomplete
``catchup_after_s`` later, re-drives the step that is missing: sensors the controller never
heard of (or partial ones) are asked of the camera again (RESEND_IMAGE, at most
``catchup_max_resends`` times, ``catchup_after_s`` apart); sensors handed off but not in the
archive get their INGEST_REQUEST again; sensors assigned and on their way are left to the
assignment loop (a full disk downstream is not cured by the camera sending pixels again). A re-sent image flows through the
normal path: the receiver stores the sensors it lacked (or fills partial ones), announces the
readout again, and the controller assigns what is new. An image still incomplete after the
last re-send raises one panic.

State lives in the controller's database (table ``controller_expected``), so a restarted or
failed-over controller carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError

from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.core.bus import MessageBus
from sqlalchemy.engine import Engine
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.migrations import migrate
from fitsflow.core.schemas import EndReadout
from fitsflow.core.messages import CAMERA_EVENTS, Message, make
from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)

metadata = MetaData()
expected_t = Table(
    "controller_expected", metadata,
    Column("image", String(80), primary_key=True),
    Column("sensors", Text, nullable=False),          # JSON list the camera announced
    Column("announced_at", Float, nullable=False),
    Column("resends", Integer, nullable=False),
    Column("last_resend_at", Float),
    Column("state", String(16), nullable=False, index=True),  # waiting | complete | given-up
)


class CatchUp:
    """A role of the archive controller (see the module docstring)."""

    def __init__(self, cfg: ArchiveControllerConfig, database: Engine, bus: MessageBus, ident: str,
                 panic: Callable[[str], Awaitable[None]], *, spawn: Spawn,
                 sensor_states: Callable[[str], dict[str, str]] = lambda image: {},
                 redrive_ingest: Callable[[str, list[str]], Awaitable[int]] | None = None) -> None:
        """``sensor_states(image)``: what the controller knows of each sensor (its book);
        ``redrive_ingest(image, sensors)``: ask the ingesters again for handed-off sensors."""
        self._spawn = spawn
        self.sensor_states = sensor_states
        self.redrive_ingest = redrive_ingest or _no_redrive
        self.redriven = 0
        self.cfg = cfg
        self.bus = bus
        self.ident = ident
        self.panic = panic
        self.engine = database  # the controller's one engine (its owner disposes of it)
        migrate(self.engine)
        self.archive = Registry(database, "archive_files")
        self.resends = 0
        self.closed = 0
        self._task: asyncio.Task[None] | None = None
        bus.subscribe(CAMERA_EVENTS, self.on_end_readout, name="controller-catchup",
                      selector="MsgType = 'END_READOUT'", durable=True)

    async def start(self) -> None:
        self._task = self._spawn(self._loop(), "catch-up", forever=True)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.archive.close()

    def status(self) -> str:
        return (f"catch-up: {self.resends} re-sends asked, {self.redriven} ingests asked again, "
                f"{self.closed} gaps closed")

    async def on_end_readout(self, msg: Message) -> None:
        body: EndReadout = msg.body  # names checked at the door (core.schemas)
        await asyncio.to_thread(self._expect, msg.image or "", sorted(body.sensors))

    def _expect(self, image: str, sensors: list[str]) -> None:
        try:
            with self.engine.begin() as c:
                c.execute(insert(expected_t).values(image=image, sensors=json.dumps(sensors), announced_at=time.time(),
                                                    resends=0, state="waiting"))
        except IntegrityError:
            pass  # a re-sent image announces itself again: nothing new

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.catchup_interval_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - a database hiccup: next round
                _log.exception("catch-up round failed")

    async def check(self) -> None:
        """One round: every waiting image old enough is checked against the archive."""
        now = time.time()
        for row in await asyncio.to_thread(self._due, now):
            wanted = set(json.loads(row.sensors))
            archived = await asyncio.to_thread(self._archived, row.image)
            missing = sorted(wanted - archived)
            if not missing:
                await asyncio.to_thread(self._set, row.image, state="complete")
                if row.resends:
                    self.closed += 1
                    _log.info("catch-up: %s complete after %d re-send(s)", row.image, row.resends,
                              extra={"IMAGE": row.image})
                continue
            # Re-drive the step that is missing; only pixels that never reached the controller
            # need the camera (a gap downstream of the receiver is not closed by a re-send).
            states = await asyncio.to_thread(self.sensor_states, row.image)
            upstream = [s for s in missing if states.get(s) in (None, "deferred")]
            handed_off = [s for s in missing if states.get(s) == "delivered"]
            if handed_off:
                asked = await self.redrive_ingest(row.image, handed_off)
                if asked:
                    self.redriven += asked
                    _log.warning("catch-up: %s: %d sensors handed off but not in the archive; ingest asked again",
                                 row.image, asked, extra={"IMAGE": row.image})
            if not upstream:  # on their way (assigned, handed off): look again later, no re-send
                await asyncio.to_thread(self._set, row.image, last_resend_at=now)
                continue
            missing = upstream
            if row.resends >= self.cfg.catchup_max_resends:
                await asyncio.to_thread(self._set, row.image, state="given-up")
                await self.panic(f"{self.ident}: {row.image} still lacks {len(missing)} sensors in the archive "
                                 f"after {row.resends} re-sends: {', '.join(missing[:10])}")
                continue
            await self.bus.send(make("RESEND_IMAGE", row.image, reason=f"not in the archive: {', '.join(missing)}",
                                     sender=self.ident))
            await asyncio.to_thread(self._set, row.image, resends=row.resends + 1, last_resend_at=now)
            self.resends += 1
            _log.warning("catch-up: %s lacks %s in the archive; re-send %d asked", row.image, ", ".join(missing),
                         row.resends + 1, extra={"IMAGE": row.image, "MSGTYPE": "RESEND_IMAGE"})

    def _due(self, now: float):  # type: ignore[no-untyped-def]
        after = self.cfg.catchup_after_s
        with self.engine.connect() as c:
            return c.execute(select(expected_t).where(
                expected_t.c.state == "waiting", expected_t.c.announced_at < now - after,
                (expected_t.c.last_resend_at.is_(None)) | (expected_t.c.last_resend_at < now - after))).all()

    def _archived(self, image: str) -> set[str]:
        return {f"{e.data_id['raft']}_{e.data_id['sensor']}" for e in self.archive.query(image=image)}

    def _set(self, image: str, **values: object) -> None:
        with self.engine.begin() as c:
            c.execute(update(expected_t).where(expected_t.c.image == image).values(**values))


async def _no_redrive(image: str, sensors: list[str]) -> int:
    return 0
