"""The archive ingest daemon: the shared ingest daemon with the archive's layout (no expiry),
and, with ``[rucio] enabled``, the registration of every archived file in Rucio."""

from __future__ import annotations

import argparse
from typing import Any

from fitsflow.archive_ingest.config import ArchiveIngestConfig
from fitsflow.archive_ingest.rucio_book import RucioBook
from fitsflow.archive_ingest.rucio_config import RucioConfig
from fitsflow.archive_ingest.rucio_registrar import RucioRegistrar
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.ingest.daemon import IngestDaemon, IngestSettings


def archive_placement(data_id: dict[str, Any], filename: str) -> str:
    """``<instrument>/raw/<obs_day>/<image>/<file>``."""
    return f"{data_id['instrument']}/raw/{data_id['obs_day']}/{data_id['image']}/{filename}"


class ArchiveIngestDaemon(IngestDaemon):
    name = "archive-ingest"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args)
        rcfg: RucioConfig = cfg.section("rucio")
        self.rucio: RucioRegistrar | None = None
        if rcfg.enabled:
            self.rucio_book = RucioBook(self.registry.engine)
            self.rucio = RucioRegistrar(rcfg, self.rucio_book, self.s.repo, bus, ident=self.ident, faults=self.faults,
                                        spawn=self.spawn, panic=self.raise_panic)
            self.roles.append(self.rucio)

    def settings(self, cfg: Config) -> IngestSettings:
        acfg: ArchiveIngestConfig = cfg.section("archive_ingest")
        paths = cfg.paths.resolved()
        return IngestSettings("archive", "IMAGE_IN_ARCHIVE", "archive_files", paths.archive_staging,
                              paths.archive_repo, archive_placement, acfg.rescan_s, acfg.concurrency)

    def status(self) -> str:
        return super().status() + (f"; {self.rucio.status()}" if self.rucio else "")

    def counters(self) -> dict[str, tuple[float, str]]:
        out = super().counters()
        if self.rucio:
            out["rucio_registered"] = (self.rucio.registered, "Archived files registered in Rucio")
            out["rucio_conflicts"] = (self.rucio.conflicts, "Archived files set aside: Rucio has their name with "
                                                            "other content, or they are gone")
        return out

    async def _announce(self, status: int, description: str, path: str, data_id: dict[str, Any] | None,
                        image: str) -> None:
        await super()._announce(status, description, path, data_id, image)
        if self.rucio is not None and status == 0:
            self.rucio.wake()  # the file is in archive_files: the registrar takes it on
