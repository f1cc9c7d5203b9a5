"""The OODS ingest daemon: the shared ingest daemon plus cache expiry."""

from __future__ import annotations

import argparse
from typing import Any

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.ingest.cleaner import CacheCleaner
from fitsflow.core.ingest.daemon import IngestDaemon, IngestSettings
from fitsflow.oods.config import OodsConfig


def oods_placement(data_id: dict[str, Any], filename: str) -> str:
    """``<instrument>/<obs_day>/<image>/<file>``."""
    return f"{data_id['instrument']}/{data_id['obs_day']}/{data_id['image']}/{filename}"


class OodsDaemon(IngestDaemon):
    name = "oods"

    def settings(self, cfg: Config) -> IngestSettings:
        ocfg: OodsConfig = cfg.section("oods")
        paths = cfg.paths.resolved()
        return IngestSettings("oods", "IMAGE_IN_OODS", "oods_files", paths.oods_staging, paths.oods_repo,
                              oods_placement, ocfg.rescan_s, ocfg.concurrency)

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args)
        ocfg: OodsConfig = cfg.section("oods")
        self.cleaner = CacheCleaner(self.s.repo, self.registry, ocfg.expire_after_days * 86400,
                                    ocfg.clean_interval_s, lambda: self.ingester.busy_paths, spawn=self.spawn)
        self.roles.append(self.cleaner)
