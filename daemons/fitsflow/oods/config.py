"""``[oods]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OodsConfig:
    #: Full rescan of the staging tree (s), behind inotify.
    rescan_s: float = 30.0
    #: Files verified and ingested at once.
    concurrency: int = 2
    #: Files ingested longer ago than this are expired (deleted) unless protected.
    expire_after_days: float = 31.0
    #: How often expiry runs (s).
    clean_interval_s: float = 3600.0

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        for key in ("rescan_s", "concurrency", "expire_after_days", "clean_interval_s"):
            check.positive(f"oods.{key}", getattr(self, key))
