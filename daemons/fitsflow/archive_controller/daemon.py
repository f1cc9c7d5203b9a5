"""The archive controller daemon: configuration, then the wiring of its roles.

    pool        ForwarderPool  who is alive (heartbeats), how loaded; "pool empty" episodes
    assigner    Assigner       READOUT_COMPLETE → FORWARD_IMAGE; reassignment, deferred partials
    deliveries  Deliveries     FILE_DELIVERED → verified, linked, unlinked, INGEST_REQUESTs
    catchup     CatchUp        images the camera sent but no receiver stored: re-sends, re-drives

Every role keeps its state in the one database (Book, catch-up's table, the archive
registry) through the daemon's one engine.
"""

from __future__ import annotations

import argparse

from fitsflow.archive_controller.assigner import Assigner
from fitsflow.archive_controller.book import Book
from fitsflow.archive_controller.catchup import CatchUp
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.archive_controller.deliveries import Deliveries
from fitsflow.archive_controller.pool import ForwarderPool
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.db import make_engine
from fitsflow.core.messages import destination_of
from fitsflow.core.runtime import Daemon, Role


class ArchiveControllerDaemon(Daemon):
    name = "archive-controller"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.acfg: ArchiveControllerConfig = cfg.section("archive_controller")
        # One engine (one connection pool) for everything this daemon keeps in the database.
        self.engine = make_engine(cfg.site.database_url)
        self.book = Book(self.engine)
        self.pool = ForwarderPool(self.acfg, bus, self.faults)
        self.assigner = Assigner(self.acfg, bus, self.book, self.pool, self.ident, spawn=self.spawn)
        self.deliveries = Deliveries(self.acfg, cfg.paths.resolved(), bus, self.book, ident=self.ident, host=self.host,
                                     faults=self.faults, stage=self.stage, spawn=self.spawn)
        self.catchup = CatchUp(self.acfg, self.engine, bus, self.ident, self.raise_panic, spawn=self.spawn,
                               sensor_states=self.book.sensor_states,
                               redrive_ingest=self.deliveries.redrive_ingest) if self.acfg.catchup else None
        bus.subscribe("/topic/fitsflow.readout", self.assigner.on_readout_complete, name="controller-readout",
                      durable=True)
        bus.subscribe("/topic/fitsflow.forwarder.heartbeat", self.pool.on_heartbeat, name="controller-heartbeats")
        bus.subscribe(destination_of("FILE_DELIVERED"), self.deliveries.on_file_delivered,
                      name="controller-delivered", concurrency=4)
        # Started in this order: unfinished hand-offs are resumed before anything is assigned.
        self.roles: list[Role] = [self.deliveries, self.pool, self.assigner]
        if self.catchup:
            self.roles.append(self.catchup)

    async def stop(self) -> None:
        await super().stop()
        self.book.close()
        self.engine.dispose()

    def status(self) -> str:
        return (f"{len(self.pool.live())} forwarders live, {self.deliveries.status()}, "
                f"{self.assigner.reassignments} reassignments; "
                + (f"{self.catchup.status()}; " if self.catchup else "") + self.bus.describe())

    def counters(self) -> dict[str, tuple[float, str]]:
        d = self.deliveries
        return {"handoffs": (d.done, "Delivered files handed off to the OODS and the archive"),
                "reassignments": (self.assigner.reassignments, "Sensors reassigned from a silent forwarder"),
                "checksums_read": (d.checksums_read, "Delivered files read in full to check their checksum"),
                "checksums_trusted": (d.checksums_trusted, "Delivered files written on this host, not read back")}
