"""Journal output: the fields fitsflow hands to python-systemd's journal.send (the real journal
is read back with journalctl -o json in tests/integration/test_systemd.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from systemd import journal

from fitsflow.core.logs import JournalHandler


def test_handler_sends_structured_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(journal, "send", lambda message, **fields: sent.append((message, fields)))
    log = logging.getLogger("fitsflow.test.journal")
    log.propagate = False
    handler = JournalHandler("fitsflow-forwarder", "forwarder")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.error("cannot write %s", "x.fits", exc_info=True,
                      extra={"IMAGE": "IMG1", "MSGTYPE": "FORWARD_IMAGE", "EMPTY": ""})
    finally:
        log.removeHandler(handler)
    (message, fields), = sent
    assert message.startswith("cannot write x.fits\nTraceback") and "ValueError: boom" in message
    assert fields["PRIORITY"] == "3"
    assert fields["IMAGE"] == "IMG1" and fields["MSGTYPE"] == "FORWARD_IMAGE" and "EMPTY" not in fields
    assert fields["SYSLOG_IDENTIFIER"] == "fitsflow-forwarder" and fields["FITSFLOW_DAEMON"] == "forwarder"
    assert fields["CODE_FUNC"] == "test_handler_sends_structured_fields"


def test_a_failing_journal_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(message: str, **fields: Any) -> None:
        raise OSError("journald gone")
    monkeypatch.setattr(journal, "send", broken)
    monkeypatch.setattr(logging, "raiseExceptions", False)
    log = logging.getLogger("fitsflow.test.journal2")
    log.propagate = False
    handler = JournalHandler("fitsflow-oods", "oods")
    log.addHandler(handler)
    try:
        log.warning("still alive")  # must not raise
    finally:
        log.removeHandler(handler)
