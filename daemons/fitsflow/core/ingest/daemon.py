"""The ingest daemon shared by ``fitsflow-oods`` and ``fitsflow-archive-ingest``: a staging
watcher, an ingester, a registry, INGEST_REQUEST handling and the announcement."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from fitsflow.core import schemas
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.faults import is_environmental, retry_delay
from fitsflow.core.errors import Reject, Requeue, UnsafePath
from fitsflow.core.ingest.engine import Ingester, Placement, Staged
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.ingest.watcher import StagingWatcher
from fitsflow.core.messages import Message, destination_of, make
from fitsflow.core.runtime import Daemon

_log = logging.getLogger(__name__)
#: An INGEST_REQUEST whose file is neither staged nor registered waits this long (the
#: controller stages before it asks, so only a moment's race needs waiting), then goes to the
#: dead-letter queue with that reason instead of being retried forever.
UNSTAGED_WAIT_S = 300.0
STORAGE_FAULT = "ingest storage"


@dataclass(frozen=True)
class IngestSettings:
    target: str          # "oods" or "archive": INGEST_REQUEST queue and quarantine subdirectory
    announce_type: str   # IMAGE_IN_OODS or IMAGE_IN_ARCHIVE
    table: str           # registry table
    staging: Path
    repo: Path
    placement: Placement
    rescan_s: float
    concurrency: int


class IngestDaemon(Daemon):
    """Subclasses set ``name`` and ``settings`` (their staging, repository, registry...)."""

    settings: Callable[[Config], IngestSettings]

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        s = self.s = self.settings(cfg)
        self.registry = Registry(cfg.site.database_url, s.table)
        self.ingester = Ingester(name=self.name, staging=s.staging, repo=s.repo,
                                 quarantine=cfg.paths.resolved().quarantine / s.target, registry=self.registry,
                                 placement=s.placement, announce=self._announce, spawn=self.spawn,
                                 concurrency=s.concurrency, storage_failed=self._storage_failed,
                                 storage_ok=self._storage_ok)
        self.watcher = StagingWatcher(s.staging, self.ingester.found, s.rescan_s, spawn=self.spawn)
        self.roles = [self.ingester, self.watcher]
        bus.subscribe(destination_of("INGEST_REQUEST", target=s.target), self.on_ingest_request,
                      name=f"{s.target}-ingest", concurrency=s.concurrency)

    async def stop(self) -> None:
        await super().stop()
        self.registry.close()

    def status(self) -> str:
        st = self.ingester.stats
        return (f"{st.ingested} ingested ({st.trusted} without a re-read), {st.duplicates} duplicates, "
                f"{st.quarantined} quarantined, "
                f"{st.errors} errors, {self.watcher.overflows} inotify overflows; {self.bus.describe()}")

    def counters(self) -> dict[str, tuple[float, str]]:
        st = self.ingester.stats
        return {"ingested": (st.ingested, "Files ingested into the repository and registry"),
                "trusted": (st.trusted, "Files ingested without reading their checksum again (inode checked)"),
                "duplicates": (st.duplicates, "Files already registered (dropped)"),
                "quarantined": (st.quarantined, "Files quarantined"),
                "errors": (st.errors, "Ingest attempts that failed and wait for a retry")}

    def _storage_failed(self, detail: str) -> None:
        self.faults.report(STORAGE_FAULT, detail)

    def _storage_ok(self) -> None:
        if STORAGE_FAULT in self.faults.active:
            self.faults.clear(STORAGE_FAULT)

    async def on_ingest_request(self, msg: Message) -> None:
        """Ingest the request's files together (Ingester.ingest_many: each file on its own
        where it matters — one file's bad path or missing staged name does not hold the
        others back). The message is acked when every file is done; it waits for the machine
        (a fault), waits a while for a file not staged yet, and is dead-lettered for a path
        outside staging — in that order, after the other files are ingested."""
        body: schemas.IngestRequest = msg.body  # checked at the door (core.schemas)
        began = time.monotonic()
        results = await self.ingester.ingest_many([Staged(Path(f.path), f.checksum, f.verified, f.adler32)
                                                   for f in body.files])
        # One observation per file, as before a request's files were ingested together.
        took = self.stage("ingest", "One requested file: verify, place, register, announce (a request's files "
                                    "together)")
        for result in results:
            if not isinstance(result, Exception):
                took.observe(time.monotonic() - began)
        outcomes = await asyncio.gather(*(self._outcome(f, r) for f, r in zip(body.files, results)),
                                        return_exceptions=True)
        for outcome in outcomes:  # a surprise is a bug: the bus retries and logs it
            if isinstance(outcome, BaseException) and not isinstance(outcome, (Requeue, Reject)):
                raise outcome
        waits = [o for o in outcomes if isinstance(o, Requeue)]
        if waits:
            raise min(waits, key=lambda w: w.give_up_after_s is not None)  # a fault first: never given up
        rejected = [str(o) for o in outcomes if isinstance(o, Reject)]
        if rejected:
            raise Reject(f"INGEST_REQUEST for {msg.image}: {'; '.join(rejected)}")

    async def _outcome(self, f: schemas.StagedFile, result: int | Exception) -> None:
        """What one requested file's result means for its message: nothing (done), Requeue
        (wait), Reject (never), or the exception itself (a bug)."""
        if isinstance(result, UnsafePath):
            raise Reject(str(result))
        if isinstance(result, (OSError, SQLAlchemyError)):
            if not is_environmental(result):
                raise result
            # The machine (repository or registry full, unwritable): wait it out, never dead-letter.
            episode = self.faults.active.get(STORAGE_FAULT)
            raise Requeue(f"{f.path}: {result}", delay=retry_delay(episode.count if episode else 1)) from None
        if isinstance(result, Exception):
            raise result
        if result == -1:  # not in staging: ingested by another trigger, or not there yet
            data_id = msgspec.to_builtins(f.data_id)
            if "instrument" in data_id and await asyncio.to_thread(self.registry.find, data_id) is not None:
                return
            raise Requeue(f"{f.path} is neither staged nor registered", delay=2.0, give_up_after_s=UNSTAGED_WAIT_S)

    async def _announce(self, status: int, description: str, path: str, data_id: dict[str, Any] | None,
                        image: str) -> None:
        extra = {"data_id": data_id} if data_id else {}
        await self.bus.send(make(self.s.announce_type, image, status=status, description=description[:2000],
                                 path=path, sender=self.ident, **extra))
