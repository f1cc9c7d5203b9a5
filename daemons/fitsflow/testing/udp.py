"""UDP helpers for tests: free ports and a lossy SPEAD relay that drops chosen packets."""

from __future__ import annotations

import socket
import struct
import threading


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spead_header_items(packet: bytes) -> dict[int, int] | None:
    """Item pointers of a SPEAD-64-48 packet ({id: value}), or None if it is not one."""
    if len(packet) < 8 or packet[0] != 0x53 or packet[1] != 4 or packet[2] != 2 or packet[3] != 6:
        return None
    (n_items,) = struct.unpack(">H", packet[6:8])
    items = {}
    for i in range(n_items):
        (word,) = struct.unpack(">Q", packet[8 + 8 * i:16 + 8 * i])
        items[(word >> 48) & 0x7FFF] = word & ((1 << 48) - 1)
    return items


class LossyRelay:
    """Forwards UDP from ``listen_port`` to ``target_port`` on 127.0.0.1, dropping the
    second packet (payload offset > 0) of each heap whose counter is in ``drop_heaps``."""

    HEAP_CNT, PAYLOAD_OFFSET = 0x01, 0x03

    def __init__(self, target_port: int, drop_heaps: set[int]) -> None:
        self.target_port = target_port
        self.drop_heaps = set(drop_heaps)
        self.dropped: list[int] = []
        self.forwarded = 0
        self._in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._in.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._in.bind(("127.0.0.1", 0))
        self._in.settimeout(0.2)
        self.listen_port = int(self._in.getsockname()[1])
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self._in.recv(65536)
            except socket.timeout:
                continue
            items = spead_header_items(packet) or {}
            cnt = items.get(self.HEAP_CNT)
            if cnt in self.drop_heaps and items.get(self.PAYLOAD_OFFSET, 0) > 0:
                self.drop_heaps.discard(cnt)
                self.dropped.append(cnt)
                continue
            self._out.sendto(packet, ("127.0.0.1", self.target_port))
            self.forwarded += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._in.close()
        self._out.close()
