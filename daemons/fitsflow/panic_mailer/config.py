"""``[panic_mailer]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PanicMailerConfig:
    smtp_host: str = "localhost"
    smtp_port: int = 25
    #: Upgrade the connection with STARTTLS before logging in (required to send a password).
    starttls: bool = False
    #: CA certificates (PEM) that sign the SMTP server's certificate under STARTTLS; the
    #: system's CA store when unset. The server's name (smtp_host) must match it.
    tls_ca_file: Path | None = None
    #: TOML file with username/password for SMTP AUTH; mode 0600, owned by the service user.
    credentials_file: Path | None = None
    sender: str = "fitsflow@localhost"
    recipients: tuple[str, ...] = ()
    #: The same panic (program, host, text) repeated within this window → one more mail with
    #: the count, at the end of the window.
    fold_window_s: float = 300.0
    #: More mails than this in an hour → the rest go into one digest per window.
    max_mails_per_hour: int = 20
    #: Longest wait between attempts while the SMTP server is unreachable (s).
    retry_max_s: float = 60.0

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        if not self.recipients:
            check.fail("panic_mailer.recipients", "at least one address is needed")
        for key in ("fold_window_s", "max_mails_per_hour", "retry_max_s", "smtp_port"):
            check.positive(f"panic_mailer.{key}", getattr(self, key))
        if self.credentials_file is not None:
            check.secret_file("panic_mailer.credentials_file", self.credentials_file)
            if not self.starttls:
                check.fail("panic_mailer.starttls", "a password must not cross the network in clear: "
                                                    "set starttls = true with credentials_file")
