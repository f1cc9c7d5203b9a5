"""``[archive_controller]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveControllerConfig:
    #: A forwarder silent this long is gone: its unfinished sensors go to another one.
    liveness_timeout_s: float = 5.0
    #: Period of the assignment loop (new forwarders, reassignments, resends).
    assign_interval_s: float = 1.0
    #: Mode of the obs-day staging directories (setgid: files keep the group).
    staging_dir_mode: int = 0o2775
    #: Re-read each delivered file to check its CRC-32 (size is always checked).
    verify_checksum: bool = True

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        check.positive("archive_controller.liveness_timeout_s", self.liveness_timeout_s)
        check.positive("archive_controller.assign_interval_s", self.assign_interval_s)
