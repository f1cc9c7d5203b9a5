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
