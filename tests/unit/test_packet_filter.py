"""The receiver's packet filter: when the kernel refuses it for lack of option memory (the
default net.core.optmem_max of Debian 12's and EL9's kernels), the error says which sysctl
to raise and that fitsflow's drop-in raises it."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from fitsflow.receiver import packet_filter

REPO = Path(__file__).resolve().parents[2]


class NoOptionMemory(socket.socket):
    def setsockopt(self, *args: object) -> None:  # type: ignore[override]
        raise OSError(errno.ENOMEM, "Cannot allocate memory")


def test_a_refused_filter_names_the_sysctl_and_the_drop_in_that_raises_it() -> None:
    with NoOptionMemory(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError) as refused:
            packet_filter.attach(sock, 1 << 20)
    assert refused.value.errno == errno.ENOMEM
    assert "net.core.optmem_max" in str(refused.value) and "90-fitsflow-receiver.conf" in str(refused.value)
    dropin = (REPO / "etc/sysctl.d/90-fitsflow-receiver.conf").read_text()
    value = int(dropin.split("net.core.optmem_max =")[1].split()[0])
    # what the drop-in grants holds the filter with room (the kernel charges more than 8
    # bytes per classic instruction once converted)
    assert value >= 64 * len(packet_filter._program(1 << 20))


def test_the_filter_attaches_on_this_machine() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        packet_filter.attach(sock, 1 << 20)
