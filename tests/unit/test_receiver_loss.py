"""Where the receiver says packets were lost: its ring (the writes), its socket (reading)
or before the host. A shifter paged for packet loss acts on this line."""

from __future__ import annotations

import os
import socket

from fitsflow.receiver.metrics import LossMonitor, where_lost
from fitsflow.receiver.stream import StreamCounters, udp_socket_state


class FakeStream:
    """The parts of a SpeadStreamReceiver the monitor reads."""

    def __init__(self) -> None:
        self.address = "127.0.0.1:7148"
        self.counters = StreamCounters()
        self.ring_waits = 0
        self.drops = 0

    def spead_stats(self) -> dict[str, int]:
        return {"worker_blocked": self.ring_waits}

    def socket_drops(self) -> int:
        return self.drops


def test_the_loss_line_names_the_place_of_this_interval() -> None:
    s = FakeStream()
    monitor = LossMonitor([s], 0.001)  # type: ignore[list-item]
    s.counters.bytes_stored, s.counters.bytes_lost = 1000, 100
    s.ring_waits, s.drops = 3, 7
    (line,) = monitor.check()
    assert "100 of 1100 bytes lost" in line
    assert "dropped 7 packets at the socket while spead2 waited 3 times" in line and "receiver.writers" in line
    # The next interval: the ring's earlier waits are not counted again; the socket dropped.
    s.counters.bytes_stored, s.counters.bytes_lost = 2000, 200
    s.drops = 40
    (line,) = monitor.check()
    assert "spead2 waited" not in line and "dropped 33 packets at the socket" in line and "CPU" in line
    # Loss with neither: it happened before this host.
    s.counters.bytes_stored, s.counters.bytes_lost = 3000, 300
    (line,) = monitor.check()
    assert "before it (network, NIC, camera)" in line
    # spead2 waited but the socket dropped nothing: the buffer held the packets, the loss
    # was before the host (a loaded machine made the ring wait while a relay dropped).
    s.counters.bytes_stored, s.counters.bytes_lost = 4000, 400
    s.ring_waits = 5
    (line,) = monitor.check()
    assert "before it" in line and "waited 2 times for room in its ring, which the socket buffer absorbed" in line
    # No loss: no line.
    s.counters.bytes_stored += 1000
    assert monitor.check() == []


def test_unknown_socket_drops_are_said_to_be_unknown() -> None:
    """Without the kernel's count the loss is not put before the host."""
    assert "unknown" in where_lost(0, None) and "before" not in where_lost(0, None)
    assert "receiver.writers" in where_lost(2, None) and "unknown" in where_lost(2, None)


def test_both_places_are_named_when_both_lost() -> None:
    text = where_lost(2, 5)
    assert "waited 2 times" in text and "dropped 5 packets" in text


def test_socket_drops_are_read_from_the_kernel() -> None:
    """A real UDP socket with a small buffer that nobody reads: the kernel's drop count for
    that socket (and only it) grows."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rx.bind(("127.0.0.1", 0))
        inode = os.fstat(rx.fileno()).st_ino
        before = udp_socket_state(inode)
        assert before is not None and before[1] == 0
        for _ in range(200):
            tx.sendto(b"x" * 1024, rx.getsockname())
        queued, dropped = udp_socket_state(inode)  # type: ignore[misc]
        assert queued > 0 and dropped > 0
    finally:
        rx.close()
        tx.close()
