"""``[forwarder]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForwarderConfig:
    #: Sensors written at once (each holds one sensor's pixels while it is written).
    capacity: int = 2
    #: Heartbeat period (s); the archive controller declares a forwarder gone after missing several.
    heartbeat_s: float = 1.0
    #: An assignment waits this long for its readout and header; then the files are written
    #: with what exists, the header flagged partial.
    join_timeout_s: float = 30.0
    #: Completed assignments are remembered this long, so a repeated FORWARD_IMAGE is a no-op.
    remember_done_s: float = 7 * 86400.0

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        for key in ("capacity", "heartbeat_s", "join_timeout_s", "remember_done_s"):
            check.positive(f"forwarder.{key}", getattr(self, key))
