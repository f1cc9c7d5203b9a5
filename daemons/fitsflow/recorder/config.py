"""``[recorder]`` configuration."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class RecorderConfig:
    #: SQLAlchemy URL of the recorder's tables; empty: ``site.database_url``.
    database_url: str = ""
    #: The status page. Loopback by default: binding another address needs expose_page = true.
    http_bind: str = "127.0.0.1"
    http_port: int = 8470
    expose_page: bool = False
    #: A daemon not heard of (DAEMON_STATE, every 5 s) for this long is "late", then "down".
    late_after_s: float = 15.0
    down_after_s: float = 60.0
    #: Messages and images older than this are pruned (hourly).
    retention_days: float = 30.0

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        for key in ("http_port", "late_after_s", "down_after_s", "retention_days"):
            check.positive(f"recorder.{key}", getattr(self, key))
        if self.down_after_s <= self.late_after_s:
            check.fail("recorder.down_after_s", "must be larger than late_after_s")
        try:
            loopback = ipaddress.ip_address(self.http_bind).is_loopback
        except ValueError:
            check.fail("recorder.http_bind", f"{self.http_bind!r} is not an IP address")
        if not loopback and not self.expose_page:
            check.fail("recorder.http_bind", f"{self.http_bind} is not loopback: the page shows the whole "
                                             "system; set expose_page = true to serve it there")
