"""Panics end to end: a real broker, a real SMTP server (aiosmtpd), real processes."""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import ssl
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Awaitable

import pytest
from aiosmtpd.controller import Controller

from fitsflow.core.config import Config, load_config
from fitsflow.core.panic import build_panic
from fitsflow.panic_mailer.config import PanicMailerConfig
from fitsflow.panic_mailer.daemon import PanicMailerDaemon
from fitsflow.panic_mailer.mailer import smtp_sender
from fitsflow.testing.broker import PrivateBroker, free_port
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.pki import TestPKI
from fitsflow.testing.wait import async_wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    """A broker of each test's own: these tests run daemons on the production destinations."""
    return fresh_broker


class Inbox:
    """aiosmtpd handler keeping every accepted mail."""

    def __init__(self) -> None:
        self.mails: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [m["Subject"] for m in self.mails]


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp():  # type: ignore[no-untyped-def]
    s = SmtpServer()
    s.start()
    yield s
    s.stop()


def site(tmp_path: Path, brokers: list[str], smtp: SmtpServer, **mailer: object) -> Config:
    return load_config(make_site(tmp_path, brokers, extra={"panic_mailer": {
        "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "recipients": ["oncall@example.org"],
        "sender": "fitsflow@test", "fold_window_s": 2.0, **mailer}}))


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def env(cfg: Config) -> dict[str, str]:
    return dict(os.environ, FITSFLOW_CONFIG=str(cfg.source))


def test_two_lines_of_python_reach_the_shifter(tmp_path: Path, broker: PrivateBroker, smtp: SmtpServer) -> None:
    cfg = site(tmp_path, [broker.url], smtp)

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg):
            script = "from fitsflow import panic\ntry:\n    1/0\nexcept ZeroDivisionError:\n    panic('disk on fire')"
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script], env=env(cfg),
                                           capture_output=True, text=True, cwd=tmp_path)
            assert "PANIC" in done.stderr
            await async_wait_for(lambda: smtp.inbox.mails, 30, what="the panic mail")
    run(main())
    mail = smtp.inbox.mails[0]
    body = mail.get_content() if hasattr(mail, "get_content") else mail.get_payload()
    assert "disk on fire" in mail["Subject"] and mail["To"] == "oncall@example.org"
    text = mail.get_payload(decode=True).decode()
    for expected in ("disk on fire", f"cwd:      {tmp_path}", "ZeroDivisionError", "host:", "user:"):
        assert expected in text, (expected, text)
    assert body is not None


def test_wrap_panics_on_failure_and_keeps_the_exit_code(tmp_path: Path, broker: PrivateBroker,
                                                         smtp: SmtpServer) -> None:
    cfg = site(tmp_path, [broker.url], smtp)

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg):
            ok = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "fitsflow.wrap", "--", "true"],
                                         env=env(cfg), capture_output=True, text=True)
            assert ok.returncode == 0
            failed = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "fitsflow.wrap", "--", "sh", "-c",
                                 "echo progress; echo 'out of tape' >&2; exit 3"], env=env(cfg), capture_output=True,
                text=True)
            assert failed.returncode == 3 and "progress" in failed.stdout and "out of tape" in failed.stderr
            killed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "fitsflow.wrap", "--", "sh", "-c",
                                                              "kill -9 $$"], env=env(cfg), capture_output=True)
            assert killed.returncode == 128 + 9
            await async_wait_for(lambda: len(smtp.inbox.mails) == 2, 30)
    run(main())
    texts = sorted(m.get_payload(decode=True).decode() for m in smtp.inbox.mails)
    assert any("exit status 3" in t and "out of tape" in t for t in texts)
    assert any("killed by SIGKILL" in t for t in texts)


def test_smtp_down_then_back(tmp_path: Path, broker: PrivateBroker, smtp: SmtpServer) -> None:
    cfg = site(tmp_path, [broker.url], smtp, retry_max_s=1.0)
    smtp.stop()

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg) as mailer:
            await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "fitsflow", "panic", "tape robot jammed"],
                                    env=env(cfg), capture_output=True)
            await async_wait_for(lambda: mailer.mailer.smtp_failures >= 2, 30, what="failed SMTP attempts")
            assert mailer.bus.stats.handled == 0  # not acked while nothing was mailed
            smtp.start()
            await async_wait_for(lambda: smtp.inbox.mails, 30, what="the mail once SMTP is back")
            await async_wait_for(lambda: mailer.bus.stats.handled == 1, 10)
    run(main())
    assert "tape robot jammed" in smtp.inbox.mails[0]["Subject"]


def test_flood_is_folded_and_rate_limited(tmp_path: Path, broker: PrivateBroker, smtp: SmtpServer) -> None:
    cfg = site(tmp_path, [broker.url], smtp, max_mails_per_hour=3)

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg) as mailer, Listener(cfg, "flooder", []) as listen:
            from fitsflow.core.panic import build_panic
            for _ in range(30):  # the same panic 30 times
                await listen.bus.send(build_panic("cooling failure", program="cryo"))
            for i in range(6):  # 6 different ones: past the rate limit
                await listen.bus.send(build_panic(f"sensor {i} dead", program="cryo"))
            await async_wait_for(lambda: mailer.bus.stats.handled == 36, 60, what="every panic acked")
    run(main())
    subjects = smtp.inbox.subjects()
    assert sum("cooling failure" in s and "repeated" not in s for s in subjects) == 1
    assert any("repeated 29 more times" in s for s in subjects), subjects
    digest = [m for m in smtp.inbox.mails if "digest" in m["Subject"]]
    assert digest, subjects
    assert len(smtp.inbox.mails) <= 3 + 1 + len(digest), subjects  # 3 by the rate, the fold summary, the digests
    digest_text = "".join(m.get_payload(decode=True).decode() for m in digest)
    individual = [s for s in subjects if "sensor" in s]
    for i in range(6):  # every panic was mailed: alone or in the digest
        assert f"sensor {i} dead" in digest_text or any(f"sensor {i} dead" in s for s in individual)


def test_no_broker_outbox_then_flush(tmp_path: Path, broker_factory, smtp: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    b = broker_factory()
    cfg = site(tmp_path, [b.url], smtp)
    b.kill()
    raised = subprocess.run([sys.executable, "-m", "fitsflow", "panic", "no broker anywhere"], env=env(cfg),
                            capture_output=True, text=True)
    assert raised.returncode == 1 and "panic raised (outbox)" in raised.stdout
    b.start()

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg):
            flushed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "fitsflow", "panic", "--flush"],
                                              env=env(cfg), capture_output=True, text=True)
            assert "1 panic(s) sent" in flushed.stdout, flushed.stderr
            await async_wait_for(lambda: smtp.inbox.mails, 30)
    run(main())
    assert "no broker anywhere" in smtp.inbox.mails[0]["Subject"]


def test_malformed_panic_dead_lettered_and_reported_once(tmp_path: Path, broker: PrivateBroker,
                                                          smtp: SmtpServer) -> None:
    cfg = site(tmp_path, [broker.url], smtp)

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg) as mailer, Listener(cfg, "bad-panics", []) as listen:
            for _ in range(3):
                await listen.bus.send_raw("/queue/fitsflow.panic", json.dumps({"nonsense": True}),
                                          {"persistent": "true"})
            await async_wait_for(lambda: mailer.bus.stats.dead_lettered == 3, 30)
            await async_wait_for(lambda: smtp.inbox.mails, 10)
            await asyncio.sleep(1.0)
    run(main())
    assert len(smtp.inbox.mails) == 1 and "malformed" in smtp.inbox.mails[0]["Subject"]


def test_any_text_is_mailed_with_safe_headers(tmp_path: Path, broker: PrivateBroker, smtp: SmtpServer) -> None:
    """Newlines, a header-injection attempt, control characters, non-Latin text and 200 kB
    (cut to what a message may carry, saying so): each arrives as one mail with a one-line
    subject, no injected header, the text in the body."""
    cfg = site(tmp_path, [broker.url], smtp)
    texts = ["disk full\nBcc: evil@example.org\r\nX-Injected: yes",
             "NUL \x00 ESC \x1b[31m red \u2028 LS; 中文 🔥",
             "traceback line\n" * 14_000]

    async def main() -> None:
        async with running(PanicMailerDaemon, cfg) as mailer, Listener(cfg, f"texts-{os.getpid()}", []) as listen:
            for i, text in enumerate(texts):
                await listen.bus.send(build_panic(f"{i}: {text}", program=f"p{i}"))
            await async_wait_for(lambda: len(smtp.inbox.mails) == len(texts), 60, what="one mail per panic")
            assert mailer.failed is None and mailer.mailer.smtp_failures == 0
    run(main())
    for mail in smtp.inbox.mails:
        subject = re.sub(r"\r?\n[ \t]", " ", mail["Subject"])  # unfolded (RFC 5322 folding is fine)
        assert "\n" not in subject and "\r" not in subject
        assert mail["Bcc"] is None and mail["X-Injected"] is None
        assert mail.get_all("To") == ["oncall@example.org"]
    bodies = {m["Subject"].split(": ", 1)[1][:1]: m.get_payload(decode=True).decode() for m in smtp.inbox.mails}
    assert "Bcc: evil@example.org" in bodies["0"]  # in the body, where it is harmless
    assert "\\x00" in bodies["1"] and "\\x1b[31m" in bodies["1"] and "中文 🔥" in bodies["1"]
    assert bodies["2"].count("traceback line") > 6000 and "more characters cut" in bodies["2"]


def test_starttls_verifies_the_smtp_servers_certificate(tmp_path: Path) -> None:
    """A real SMTP server offering STARTTLS: the mail goes out when its certificate is signed
    by the configured CA for the configured name, and not to an impostor."""
    pki, rogue = TestPKI(tmp_path / "ca"), TestPKI(tmp_path / "rogue", name="rogue-ca")
    pem = pki.server_pem("localhost", "127.0.0.1", name="smtp")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem.cert, pem.key)
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True)
    controller.start()
    try:
        def mailer_config(ca: Path) -> PanicMailerConfig:
            return PanicMailerConfig(smtp_host="localhost", smtp_port=port, starttls=True, tls_ca_file=ca,
                                     recipients=("oncall@example.org",))
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = "f@test", "oncall@example.org", "tls test"
        mail.set_content("hello")
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp_sender(mailer_config(rogue.ca_cert))(mail)
        assert inbox.mails == []
        smtp_sender(mailer_config(pki.ca_cert))(mail)
        assert [m["Subject"] for m in inbox.mails] == ["tls test"]
    finally:
        controller.stop()
