"""Logging: structured fields to the journal under systemd, readable lines on stderr otherwise.

Handlers pass fields with ``extra={"IMAGE": ..., "MSGTYPE": ...}``; upper-case extras become
journal fields (``journalctl FITSFLOW_DAEMON=forwarder IMAGE=...``) and are appended to the
stderr line. The journal is written with its native datagram protocol (a few lines here),
because the python-systemd bindings need libsystemd headers to build from PyPI.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import traceback

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: Record attributes that are not user extras.
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The upper-case ``extra`` fields of a record, empty ones left out."""
    return {k: str(v) for k, v in vars(record).items()
            if k not in _STD_ATTRS and k.isupper() and v not in (None, "")}


class JournalHandler(logging.Handler):
    """Sends records to journald over its native socket, with fitsflow's fields."""

    def __init__(self, identifier: str, daemon: str, socket_path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.daemon = daemon
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            fields = {"MESSAGE": message, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                      "SYSLOG_IDENTIFIER": self.identifier, "FITSFLOW_DAEMON": self.daemon,
                      "LOGGER": record.name, "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno),
                      "CODE_FUNC": record.funcName, **record_fields(record)}
            self._sock.sendto(encode_journal(fields), self.socket_path)
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


def encode_journal(fields: dict[str, str]) -> bytes:
    """journald's native format: ``KEY=value\\n``, or ``KEY\\n<u64 le length>value\\n`` for
    values containing newlines."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record_fields(record)
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in sorted(fields.items())) + "]"
        return line


def under_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:ino)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or not os.path.exists(JOURNAL_SOCKET):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(daemon: str, level: str = "INFO") -> None:
    """Configure the root logger once, for a daemon or a command."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_journal():
        handler = JournalHandler(f"fitsflow-{daemon}", daemon)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # stomp.py logs every connection attempt; the bus reports connections (with back-off) itself.
    logging.getLogger("stomp.py").setLevel(logging.ERROR)
