"""The archive ingest daemon: the shared ingest daemon with the archive's layout (no expiry)."""

from __future__ import annotations

from typing import Any

from fitsflow.archive_ingest.config import ArchiveIngestConfig
from fitsflow.core.config import Config
from fitsflow.core.ingest.daemon import IngestDaemon, IngestSettings


def archive_placement(data_id: dict[str, Any], filename: str) -> str:
    """``<instrument>/raw/<obs_day>/<image>/<file>``."""
    return f"{data_id['instrument']}/raw/{data_id['obs_day']}/{data_id['image']}/{filename}"


class ArchiveIngestDaemon(IngestDaemon):
    name = "archive-ingest"

    def settings(self, cfg: Config) -> IngestSettings:
        acfg: ArchiveIngestConfig = cfg.section("archive_ingest")
        paths = cfg.paths.resolved()
        return IngestSettings("archive", "IMAGE_IN_ARCHIVE", "archive_files", paths.archive_staging,
                              paths.archive_repo, archive_placement, acfg.rescan_s, acfg.concurrency)
