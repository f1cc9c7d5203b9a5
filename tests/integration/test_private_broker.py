"""The test harness's private ActiveMQ: ready means its STOMP connector answers, a port taken
between its choice and the broker's bind is chosen again, and a broker that dies says so."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from fitsflow.testing.broker import PrivateBroker, stomp_answers

pytestmark = pytest.mark.broker


def test_a_port_taken_before_the_broker_binds_is_chosen_again(tmp_path: Path) -> None:
    b = PrivateBroker(tmp_path / "amq", name="taken")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", b.stomp_port))
    squatter.listen()  # a listener that never speaks STOMP: not mistaken for the broker
    taken = b.stomp_port
    try:
        assert not stomp_answers(taken, timeout=0.5)
        b.start()
        assert b.stomp_port != taken and stomp_answers(b.stomp_port)
        assert b.starts == 1 and "Address already in use" in b.log_path.read_text()
    finally:
        squatter.close()
        b.kill()


def test_a_broker_that_died_says_how(tmp_path: Path) -> None:
    b = PrivateBroker(tmp_path / "amq", name="dies").start()
    try:
        assert b.died() is None
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait()
        said = b.died()
        assert said is not None and "exited with -9" in said and str(b.log_path) in said
    finally:
        b.kill()
