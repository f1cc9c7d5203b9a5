"""``[archive_ingest]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveIngestConfig:
    rescan_s: float = 30.0
    concurrency: int = 2

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        check.positive("archive_ingest.rescan_s", self.rescan_s)
        check.positive("archive_ingest.concurrency", self.concurrency)
