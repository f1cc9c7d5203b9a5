"""StompLink's mapping of a connection that breaks under an ACK (seen after a 30 s SIGSTOP of
the header service: the broker reset the connection, stomp.py's ack raised BrokenPipeError,
and the bus logged it as a failure of its own books, with a traceback, as an ERROR)."""

from __future__ import annotations

import pytest

from fitsflow.core.bus.link import Frame
from fitsflow.core.bus.stomp_link import StompLink
from fitsflow.core.errors import Disconnected


class _BrokenConnection:
    """stomp.py's Connection as it is when the broker has reset it and the receiver thread
    has not noticed yet: still 'connected', every frame written fails."""

    def is_connected(self) -> bool:
        return True

    def ack(self, message_id: str, subscription: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_an_ack_on_a_broken_connection_is_a_lost_ack() -> None:
    link = StompLink("stomp://127.0.0.1:61613")
    link._conn = _BrokenConnection()  # type: ignore[assignment]
    with pytest.raises(Disconnected, match="ack failed"):
        link.ack(Frame({"message-id": "ID:1"}, "{}"), "sub-1")


class _DyingConnection:
    """A connection that breaks during a SEND: stomp.py's receiver thread sees the broker go
    and fails every pending receipt (here: within the send) before the write itself fails."""

    def __init__(self, link: StompLink) -> None:
        self.link = link

    def is_connected(self) -> bool:
        return True

    def send(self, destination: str, body: str, headers: dict, receipt: str) -> None:
        self.link._fail_pending("stomp://127.0.0.1:61613: connection lost")
        raise OSError(9, "Bad file descriptor")


def test_a_send_that_fails_as_the_connection_dies_fails_once() -> None:
    """Both threads fail the same receipt: the send is one Disconnected, not an
    InvalidStateError (which ended the chaos test's camera when the broker was killed)."""
    link = StompLink("stomp://127.0.0.1:61613")
    link._conn = _DyingConnection(link)  # type: ignore[assignment]
    fut = link.send("/topic/x", "{}", {})
    with pytest.raises(Disconnected, match="connection lost"):
        fut.result(0)
    assert link._pending == {}
