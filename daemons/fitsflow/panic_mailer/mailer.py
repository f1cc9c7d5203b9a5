"""Turning panics into mails: folding, rate limiting, digests, and SMTP with retries.

Every handler returns only when a mail that covers its panic has been accepted by the SMTP
server, so the bus acks a panic only then (a crash before that hands it out again):
- the first panic of a kind (program, host, text) is mailed at once;
- repeats within ``fold_window_s`` wait for one "repeated N times" mail at the window's end;
- past ``max_mails_per_hour``, new kinds wait for one digest mail per window.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Callable

from fitsflow.core.config import read_credentials
from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.messages import Message
from fitsflow.core.tasks import Spawn
from fitsflow.panic_mailer.config import PanicMailerConfig

_log = logging.getLogger(__name__)

Send = Callable[[EmailMessage], None]


def smtp_sender(cfg: PanicMailerConfig) -> Send:
    """A blocking send over SMTP (STARTTLS and login when configured). STARTTLS verifies the
    server's certificate and name (the system's CAs, or ``tls_ca_file``): the password it
    protects must not go to whoever answers on the port."""
    creds = read_credentials(cfg.credentials_file) if cfg.credentials_file else None
    context = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None) \
        if cfg.starttls else None

    def send(mail: EmailMessage) -> None:
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=10) as smtp:
            if context is not None:
                smtp.starttls(context=context)
            if creds:
                smtp.login(*creds)
            smtp.send_message(mail)
    return send


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def safe_subject(text: str, limit: int = 200) -> str:
    """A one-line header value from any text: no line breaks or control characters (no
    header injection), no lone surrogates, at most ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def safe_body(text: str) -> str:
    """Any text as a mail body: line breaks and tabs kept, other control characters and lone
    surrogates shown as escapes (a shifter sees what was sent, and SMTP gets no NUL)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n").replace("\r", "\n"))


def describe(msg: Message) -> str:
    d = msg.data
    lines = [str(d["message"]), "",
             f"host:     {d['host']}", f"program:  {d['program']}", f"time:     {d.get('time', msg.sent)}",
             f"user:     {d.get('user', '?')}", f"cwd:      {d.get('cwd', '?')}", f"pid:      {d.get('pid', '?')}",
             f"command:  {' '.join(map(str, d.get('argv', [])))}", f"panic id: {msg.id}"]
    if d.get("traceback"):
        lines += ["", str(d["traceback"])]
    return "\n".join(lines)


@dataclass
class _Fold:
    first: Message
    until: float
    repeats: list[Message] = field(default_factory=list)
    done: asyncio.Future[None] | None = None


class Mailer:
    """Role: see the module docstring. ``send`` is blocking (smtplib); it runs in a thread."""

    def __init__(self, cfg: PanicMailerConfig, send: Send, *, spawn: Spawn) -> None:
        self._spawn = spawn
        self.cfg = cfg
        self.send = send
        self.folds: dict[tuple[str, str, str], _Fold] = {}
        self.sent_times: collections.deque[float] = collections.deque()
        self.digest: list[Message] = []
        self.digest_done: asyncio.Future[None] | None = None
        self.mails_sent = 0
        self.smtp_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._last_dead_letter_mail = 0.0

    async def start(self) -> None:
        self._task = self._spawn(self._windows(), "panic folding windows", forever=True)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    # -- the bus handler ---------------------------------------------------------------

    async def handle(self, msg: Message) -> None:
        d = msg.data
        key = (str(d["program"]), str(d["host"]), str(d["message"]))
        now = time.monotonic()
        fold = self.folds.get(key)
        loop = asyncio.get_running_loop()
        if fold is not None and now < fold.until:
            fold.repeats.append(msg)
            if fold.done is None:
                fold.done = loop.create_future()
            await asyncio.shield(fold.done)
            return
        self.folds[key] = _Fold(msg, now + self.cfg.fold_window_s)
        if self._take_rate_slot():  # taken before any await: concurrent handlers cannot overrun it
            await self._mail(f"PANIC {d['program']}@{d['host']}: {str(d['message'])[:120]}", describe(msg))
            return
        self.digest.append(msg)
        if self.digest_done is None:
            self.digest_done = loop.create_future()
        await asyncio.shield(self.digest_done)

    async def report_dead_letter(self, reason: str) -> None:
        """A malformed panic was dead-lettered: say so, at most once per window."""
        if time.monotonic() - self._last_dead_letter_mail < self.cfg.fold_window_s and self._last_dead_letter_mail:
            return
        self._last_dead_letter_mail = time.monotonic()
        await self._mail("PANIC (malformed) dead-lettered",
                         f"A message on the panic queue could not be read and went to its dead-letter queue.\n\n"
                         f"Reason: {reason}\n\nInspect /queue/DLQ.fitsflow.panic on the broker.")

    # -- windows -----------------------------------------------------------------------

    async def _windows(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.fold_window_s / 4))
            now = time.monotonic()
            for key, fold in list(self.folds.items()):
                if now < fold.until:
                    continue
                del self.folds[key]
                if fold.repeats:
                    d = fold.first.data
                    await self._mail(f"PANIC {d['program']}@{d['host']} repeated {len(fold.repeats)} more times",
                                     f"The panic below was raised {len(fold.repeats)} more times within "
                                     f"{self.cfg.fold_window_s:.0f} s after the first mail.\n\n{describe(fold.repeats[-1])}")
                    if fold.done is not None and not fold.done.done():
                        fold.done.set_result(None)
            if self.digest:  # at most one digest per window, whatever the rate
                items, self.digest = self.digest, []
                done, self.digest_done = self.digest_done, None
                body = "\n\n".join(f"--- {i + 1} ---\n{describe(m)}" for i, m in enumerate(items))
                await self._mail(f"PANIC digest: {len(items)} panics (mail rate limit reached)", body)
                if done is not None and not done.done():
                    done.set_result(None)

    def _take_rate_slot(self) -> bool:
        """True (and the slot counted) if one more individual mail fits in the hourly limit.
        Fold summaries and digests are not counted: there is one of each per window."""
        now = time.monotonic()
        while self.sent_times and now - self.sent_times[0] > 3600:
            self.sent_times.popleft()
        if len(self.sent_times) >= self.cfg.max_mails_per_hour:
            return False
        self.sent_times.append(now)
        return True

    # -- SMTP --------------------------------------------------------------------------

    async def _mail(self, subject: str, body: str) -> None:
        """Send one mail; retries with back-off until the SMTP server accepts it. Whatever
        the panic's text, the mail is built (safe_subject/safe_body); if sending it fails
        in an unexpected way, the next attempt sends a plain-ASCII rendering of it."""
        mail = self._build(subject, body)
        delay = 1.0
        while True:
            try:
                await asyncio.to_thread(self.send, mail)
                break
            except (OSError, smtplib.SMTPException) as exc:
                self.smtp_failures += 1
                _log.error("cannot send the panic mail %r via %s:%d: %s; retrying in %.0f s", mail["Subject"],
                           self.cfg.smtp_host, self.cfg.smtp_port, exc, delay)
            except Exception:  # noqa: BLE001 - the mail must go out; never lose the panic
                self.smtp_failures += 1
                _log.exception("sending the panic mail %r failed unexpectedly; next attempt in plain ASCII",
                               mail["Subject"])
                mail = self._build(subject.encode("ascii", "backslashreplace").decode(),
                                   body.encode("ascii", "backslashreplace").decode())
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.retry_max_s)
        self.mails_sent += 1
        _log.info("panic mail sent: %s", mail["Subject"])

    def _build(self, subject: str, body: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.cfg.sender
        mail["To"] = ", ".join(self.cfg.recipients)
        mail["Subject"] = safe_subject(subject)
        mail.set_content(safe_body(body))
        return mail
