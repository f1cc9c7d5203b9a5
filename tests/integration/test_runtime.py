"""The daemon runtime's contract with systemd, over a real NOTIFY_SOCKET and a real broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fitsflow.core.errors import EX_CONFIG, EX_SOFTWARE
from fitsflow.core.messages import make
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.wait import wait_for

pytestmark = pytest.mark.broker
TOY = Path(__file__).with_name("toy_daemon.py")


class NotifySocket:
    """What systemd sees of sd_notify: a datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for m in self.poll() for line in m.splitlines())

    def close(self) -> None:
        self.sock.close()


def start_toy(site: Path, notify: NotifySocket, instance: str, watchdog_usec: int = 0,
              **env_extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), FITSFLOW_CONFIG=str(site), **env_extra)
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen([sys.executable, str(TOY), "--instance", instance], env=env, text=True,
                            stderr=subprocess.PIPE)


def send(url: str, queue: str, text: str) -> None:
    import asyncio

    from fitsflow.core.bus import MessageBus
    from fitsflow.core.bus.stomp_link import StompLink
    from fitsflow.core.bus.store import BusStore
    from fitsflow.core.config import BusConfig
    import tempfile

    async def main() -> None:
        bus = MessageBus(BusConfig(brokers=(url,)), "sender", BusStore(Path(tempfile.mkdtemp()) / "s.sqlite"),
                         [StompLink(url)])
        await bus.start()
        await bus.wait_connected(10)
        await bus.send(make("ALERT", severity="info", source="test", message=text), queue)
        await bus.stop()
    asyncio.run(main())


def test_ready_status_watchdog_and_clean_stop(tmp_path: Path, site: Path, broker: PrivateBroker) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_toy(site, notify, "t1", watchdog_usec=1_000_000)
    try:
        wait_for(lambda: notify.seen("READY=1"), 30, what="READY=1")
        # READY came after the broker connection: STATUS at READY shows 1/1 brokers.
        ready = next(m for m in notify.poll() if "READY=1" in m)
        assert "brokers 1/1" in ready
        wait_for(lambda: sum("WATCHDOG=1" in m for m in notify.poll()) >= 3, 10, what="watchdog pings")
        send(broker.url, "/queue/toy.t1", "hello")
        echoed = drain(broker.url, "/queue/toy.echo.t1", expect=1, timeout=15)
        assert [f.headers["MsgType"] for f in echoed] == ["ALERT"]
        wait_for(lambda: any("STATUS=handled 1;" in m for m in notify.poll()), 10, what="STATUS= with the count")
        state = drain(broker.url, "/topic/fitsflow.state", expect=1, timeout=10)
        assert state and "toy@t1" in state[0].body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert notify.seen("STOPPING=1")
    finally:
        proc.kill()
        notify.close()


def test_sigterm_stops_at_once_not_at_the_next_wakeup(tmp_path: Path, site: Path, broker: PrivateBroker) -> None:
    """SIGTERM ends the main loop itself: with the periodic wake-up an hour away, the daemon
    still stops. (The loop once waited for *all* of its wake-up reasons: every stop took up
    to one status period, and Pacemaker's stop of a partitioned node's daemons tens of s.)"""
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_toy(site, notify, "t3", TOY_STATUS_PERIOD_S="3600")
    try:
        wait_for(lambda: notify.seen("READY=1"), 30, what="READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        assert notify.seen("STOPPING=1")
    finally:
        proc.kill()
        notify.close()


def test_config_error_exits_78_naming_file_and_key(tmp_path: Path, site: Path) -> None:
    site.write_text(site.read_text().replace("[bus]\n", "[bus]\nbrokerz = 1\n"))
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_toy(site, notify, "t2")
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        notify.close()
    assert proc.returncode == EX_CONFIG
    assert str(site) in err and "bus.brokerz" in err
    assert not notify.messages  # never claimed to be ready


def test_dead_role_ends_the_daemon_with_70(tmp_path: Path, site: Path, broker: PrivateBroker) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_toy(site, notify, "t3")
    try:
        wait_for(lambda: notify.seen("READY=1"), 30)
        send(broker.url, "/queue/toy.t3", "die")
        assert proc.wait(30) == EX_SOFTWARE
        assert "role failed on purpose" in proc.stderr.read()
    finally:
        proc.kill()
        notify.close()


def test_hung_loop_stops_watchdog_pings(tmp_path: Path, site: Path, broker: PrivateBroker) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_toy(site, notify, "t4", watchdog_usec=400_000)
    try:
        wait_for(lambda: notify.seen("READY=1"), 30)
        wait_for(lambda: sum("WATCHDOG=1" in m for m in notify.poll()) >= 2, 10)
        send(broker.url, "/queue/toy.t4", "hang")
        # Once the hang starts, pings stop: count is stable over several watchdog periods.
        def stalled() -> bool:
            before = sum("WATCHDOG=1" in m for m in notify.poll())
            import time
            time.sleep(1.0)
            return sum("WATCHDOG=1" in m for m in notify.poll()) == before
        wait_for(stalled, 20, what="watchdog pings to stop")
    finally:
        proc.kill()
        proc.wait()
        notify.close()
