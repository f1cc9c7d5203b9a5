"""Panics: serious errors that a person must hear about now, from any program.

    from fitsflow import panic
    panic("the archive disk is full")

The message carries host, program, arguments, working directory, user, pid, time and the
traceback of the exception being handled, if any. Delivery, in order of preference:

1. the broker (the configured brokers in turn; persistent, with a receipt), to
   ``/queue/fitsflow.panic``, where ``fitsflow-panic-mailer`` e-mails the on-call list;
2. else the host's panic outbox (``<state_dir>/panic.outbox.sqlite``), sent by the next
   ``panic()`` call, by ``fitsflow panic --flush``, and by every fitsflow daemon on the host
   every few seconds;
3. else (no configuration, unwritable state) the local journal — and always stderr.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import sys
import traceback
import uuid
from pathlib import Path

from fitsflow.core.config import Config, load_config
from fitsflow.core.errors import ConfigError, Disconnected, FitsflowError
from fitsflow.core.logs import JOURNAL_SOCKET, JournalHandler
from fitsflow.core.messages import Message, decode, destination_of, make, utcnow_iso

_log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 3.0
#: Bytes a panic's text and traceback may take in the JSON body (the broker's limit for a
#: whole message is messages.MAX_BODY_BYTES); longer ones are cut, saying so.
MESSAGE_BUDGET = 120_000
TRACEBACK_BUDGET = 100_000


def _clip(text: str, budget: int, keep: str) -> str:
    """``text`` cut (at its end, or its start for ``keep="tail"``) until it fits ``budget``
    bytes as JSON (escapes counted), with a note of how much was cut."""
    if len(json.dumps(text)) <= budget:
        return text
    size = len(text)
    lo, hi = 0, min(size, budget)  # a piece of L characters takes at least L bytes as JSON
    while lo < hi:  # the longest piece that fits, with room for the note
        mid = (lo + hi + 1) // 2
        piece = text[:mid] if keep == "head" else text[-mid:]
        lo, hi = (mid, hi) if len(json.dumps(piece)) <= budget - 100 else (lo, mid - 1)
    note = f"[… {size - lo} more characters cut …]"
    return f"{text[:lo]}\n{note}" if keep == "head" else f"{note}\n{text[-lo:] if lo else ''}"


def panic_outbox(cfg: Config) -> Path:
    return Path(cfg.site.state_dir) / "panic.outbox.sqlite"


def build_panic(message: str, *, program: str | None = None, argv: list[str] | None = None,
                traceback_text: str | None = None) -> Message:
    if traceback_text is None and sys.exc_info()[0] is not None:
        traceback_text = traceback.format_exc()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    data = {"message": _clip(message, MESSAGE_BUDGET, keep="head"), "host": socket.gethostname(),
            "program": program or os.path.basename(sys.argv[0] or "python"),
            "argv": list(argv if argv is not None else sys.argv), "cwd": os.getcwd(), "user": user,
            "pid": os.getpid(), "time": utcnow_iso()}
    if traceback_text:
        data["traceback"] = _clip(traceback_text, TRACEBACK_BUDGET, keep="tail")
    return make("PANIC", **data)


def _send_direct(cfg: Config, msg: Message) -> str | None:
    """Try each broker once; returns the broker used, or None."""
    from fitsflow.core.bus.stomp_link import StompLink

    for link in StompLink.for_brokers(cfg.bus, heartbeat_ms=0, connect_timeout_s=SEND_TIMEOUT_S):
        try:
            link.connect(f"panic-{uuid.uuid4().hex[:12]}")
            link.send(destination_of("PANIC"), msg.encode(), msg.headers()).result(SEND_TIMEOUT_S)
            return link.url
        except (Disconnected, TimeoutError, OSError) as exc:
            _log.debug("panic via %s failed: %s", link.url, exc)
        finally:
            link.close()
    return None


def flush_panic_outbox(cfg: Config) -> int:
    """Send what the host's panic outbox holds, oldest first; returns how many went out."""
    from fitsflow.core.bus.store import BusStore

    path = panic_outbox(cfg)
    if not path.exists():
        return 0
    store = BusStore(path)
    sent = 0
    try:
        for entry in store.outbox_head(1000):
            msg = decode(entry.body)
            if _send_direct(cfg, msg) is None:
                break
            store.outbox_remove(entry.seq)
            sent += 1
    finally:
        store.close()
    return sent


def deliver(msg: Message, cfg: Config | None) -> str:
    """Deliver a PANIC by the best available way; returns "broker", "outbox" or "journal"."""
    text = f"PANIC from {msg.data['program']}@{msg.data['host']}: {msg.data['message']}"
    print(f"fitsflow: {text}", file=sys.stderr)
    if cfg is not None:
        try:
            flush_panic_outbox(cfg)  # older panics first
            if _send_direct(cfg, msg) is not None:
                return "broker"
            from fitsflow.core.bus.store import BusStore

            store = BusStore(panic_outbox(cfg))
            store.outbox_put(destination_of("PANIC"), msg.headers(), msg.encode())
            store.close()
            print(f"fitsflow: no broker reachable; the panic waits in {panic_outbox(cfg)}", file=sys.stderr)
            return "outbox"
        except (FitsflowError, OSError) as exc:
            print(f"fitsflow: panic outbox unusable ({exc}); writing to the journal", file=sys.stderr)
    _to_journal(text + ("\n" + msg.data["traceback"] if msg.data.get("traceback") else ""))
    return "journal"


def _to_journal(text: str) -> None:
    if not os.path.exists(JOURNAL_SOCKET):
        return  # stderr above is all there is
    handler = JournalHandler("fitsflow-panic", "panic")
    record = logging.LogRecord("fitsflow.panic", logging.CRITICAL, __file__, 0, text, None, None)
    handler.emit(record)


def panic(message: str, *, config: str | os.PathLike[str] | None = None) -> str:
    """Raise a panic from any Python program (see the module docstring). Never raises."""
    try:
        msg = build_panic(message)
    except Exception as exc:  # noqa: BLE001 - a panic must get out whatever happens
        print(f"fitsflow: PANIC (could not build the message: {exc}): {message}", file=sys.stderr)
        _to_journal(message)
        return "journal"
    try:
        cfg: Config | None = load_config(config, check_dirs=False, role="panic")
    except ConfigError as exc:
        print(f"fitsflow: no usable configuration for the panic ({exc})", file=sys.stderr)
        cfg = None
    return deliver(msg, cfg)
