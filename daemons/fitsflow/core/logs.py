"""Logging: structured fields to the journal under systemd, readable lines on stderr otherwise.

Handlers pass fields with ``extra={"IMAGE": ..., "MSGTYPE": ...}``; upper-case extras become
journal fields (``journalctl FITSFLOW_DAEMON=forwarder IMAGE=...``) and are appended to the
stderr line. The journal is written by python-systemd (sd_journal_sendv: the native protocol,
with a memfd for records too large for one datagram).
"""

from __future__ import annotations

import logging
import os
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
    """Sends records to journald with fitsflow's fields (python-systemd's ``journal.send``)."""

    def __init__(self, identifier: str, daemon: str) -> None:
        # Imported here: only a program under journald needs it (the CLI starts without).
        from systemd import journal

        super().__init__()
        self.identifier = identifier
        self.daemon = daemon
        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._send(message, PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                       SYSLOG_IDENTIFIER=self.identifier, FITSFLOW_DAEMON=self.daemon, LOGGER=record.name,
                       CODE_FILE=record.pathname, CODE_LINE=record.lineno, CODE_FUNC=record.funcName,
                       **record_fields(record))
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


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
