"""``[archive_controller]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveControllerConfig:
    #: A forwarder silent this long is gone: its unfinished sensors go to another one.
    liveness_timeout_s: float = 5.0
    #: Period of the assignment loop (new forwarders, reassignments, resends).
    assign_interval_s: float = 1.0
    #: Mode of the obs-day staging directories. No setgid bit here: they inherit it from
    #: the staging tree (tmpfiles.d), and the units forbid setting it (RestrictSUIDSGID=yes).
    staging_dir_mode: int = 0o775
    #: Check each delivered file's CRC-32 against its announcement (size is always checked).
    verify_checksum: bool = True
    #: ... except for a file a forwarder on this host wrote and announced with its identity
    #: (dev:ino:mtime_ns), still unchanged: its CRC was computed over the bytes as they were
    #: written, and a re-read right after comes from the page cache — it proves nothing more
    #: and costs a pass over every pixel. Files from other hosts (shared storage) are read.
    #: The ingests then trust the identity the controller verified (one check per inode).
    trust_local_writes: bool = True

    #: Partial sensors (rows lost on the way, or not stored while the disk was full) wait this
    #: long for the camera's re-send (catch-up, after catchup_after_s) before they are
    #: forwarded as they are, flagged PARTIAL. Longer than catchup_after_s: a partial file once
    #: archived is not replaced by the complete one a later re-send brings. 0: at once.
    partial_grace_s: float = 180.0
    #: Catch-up: ask the camera to re-send an image whose sensors are not all in the archive
    #: this long after its END_READOUT (needs a camera that keeps images: RESEND_IMAGE).
    catchup: bool = True
    catchup_after_s: float = 120.0
    catchup_interval_s: float = 10.0
    catchup_max_resends: int = 3

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        for key in ("catchup_after_s", "catchup_interval_s", "catchup_max_resends"):
            check.positive(f"archive_controller.{key}", getattr(self, key))
        if self.partial_grace_s < 0:
            check.fail("archive_controller.partial_grace_s", "must be >= 0")
        if self.catchup and 0 < self.partial_grace_s <= self.catchup_after_s:
            check.fail("archive_controller.partial_grace_s",
                       f"{self.partial_grace_s:g} s is not longer than catchup_after_s ({self.catchup_after_s:g} s): "
                       "partial sensors would be archived as partial before the camera is asked to re-send them "
                       "(or set 0 to archive them at once)")
        check.positive("archive_controller.liveness_timeout_s", self.liveness_timeout_s)
        check.positive("archive_controller.assign_interval_s", self.assign_interval_s)
        if self.staging_dir_mode & ~0o777:
            check.fail("archive_controller.staging_dir_mode",
                       f"{oct(self.staging_dir_mode)} has setuid/setgid/sticky bits: the units forbid setting them "
                       "(RestrictSUIDSGID=yes; mkdir fails with EPERM); new directories inherit setgid from the tree")
