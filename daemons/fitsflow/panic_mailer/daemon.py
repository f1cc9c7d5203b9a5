"""The panic mailer daemon: wiring, then the panic queue handler."""

from __future__ import annotations

import argparse

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.errors import ConfigError
from fitsflow.core.messages import Message, destination_of
from fitsflow.core.runtime import Daemon
from fitsflow.panic_mailer.config import PanicMailerConfig
from fitsflow.panic_mailer.mailer import Mailer, smtp_sender


class PanicMailerDaemon(Daemon):
    name = "panic-mailer"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.pcfg: PanicMailerConfig = cfg.section("panic_mailer")
        if not self.pcfg.recipients:
            raise ConfigError(str(cfg.source), "panic_mailer.recipients", "no on-call address to mail panics to")
        self.mailer = Mailer(self.pcfg, smtp_sender(self.pcfg), spawn=self.spawn)
        self.roles = [self.mailer]
        # Many handlers may wait at once: repeats wait for their window's summary mail.
        bus.subscribe(destination_of("PANIC"), self.on_panic, name="panic-mailer", concurrency=100)
        bus.on_dead_letter = self._dead_letter

    def status(self) -> str:
        return (f"{self.mailer.mails_sent} mails sent, {len(self.mailer.folds)} panics folding, "
                f"{len(self.mailer.digest)} in the digest, {self.mailer.smtp_failures} SMTP failures; "
                f"{self.bus.describe()}")

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"mails_sent": (self.mailer.mails_sent, "Panic e-mails sent"),
                "smtp_failures": (self.mailer.smtp_failures, "SMTP sends that failed (retried)")}

    async def on_panic(self, msg: Message) -> None:
        await self.mailer.handle(msg)

    async def _dead_letter(self, destination: str, reason: str, msg: Message | None) -> None:
        await self.mailer.report_dead_letter(reason)
