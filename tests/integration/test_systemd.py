"""The shipped units under a real systemd (PID 1 of a systemd-nspawn container over this
machine's /usr): Type=notify start (active only after READY=1), STATUS= in systemctl, restart
after SIGKILL, restart of a daemon whose main loop hangs (watchdog) — with the units' full
hardening (User=fitsflow, ProtectSystem=strict, PrivateUsers...)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from fitsflow.testing.broker import PrivateBroker, free_port
from fitsflow.testing.config import to_toml

REPO = Path(__file__).resolve().parents[2]
#: A venv made with the system Python (/usr is all the container sees of the host); outside
#: /root, /home and /tmp, which the units' ProtectHome=/PrivateTmp= hide from the daemon.
VENV = Path("/opt/fitsflow-test-venv")
UNIT = "fitsflow-archive-ingest.service"
#: Services of this machine's packages that would start in the container and are not ours.
MASK = ["corosync", "pacemaker", "pcsd", "pcsd-ruby", "logd", "activemq", "postgresql", "systemd-firstboot"]

pytestmark = [pytest.mark.slow, pytest.mark.broker,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
                                 reason="needs root and systemd-nspawn (Debian's systemd-container)")]


def _venv() -> Path:
    """The container's fitsflow: the checkout installed (not editable) into VENV."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", VENV], check=True)
    subprocess.run([VENV / "bin" / "pip", "install", "-q", "--force-reinstall", "--no-deps", REPO], check=True,
                   capture_output=True)
    subprocess.run([VENV / "bin" / "pip", "install", "-q", REPO], check=True, capture_output=True)
    return VENV


class Container:
    """systemd as PID 1 over this host's /usr, with a volatile root; commands via nsenter."""

    def __init__(self) -> None:
        args = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--directory=/", "--volatile=yes",
                f"--bind-ro={VENV}", "--boot", "--console=pipe", *(f"systemd.mask={m}.service" for m in MASK)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.init = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.init:
            kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
            self.init = int(kids.stdout.split()[0]) if kids.stdout.split() else 0
            time.sleep(0.1)
        state = ""
        while self.init and time.monotonic() < deadline:
            # basic.target is all the test needs; "starting" may last while some unrelated
            # unit of this machine's packages waits for something a container lacks.
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            basic = self.run("systemctl", "is-active", "basic.target", check=False).stdout.strip()
            if state in ("running", "degraded") or (state == "starting" and basic == "active"):
                return
            time.sleep(0.2)
        jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False).stdout if self.init else ""
        self.close()
        raise TimeoutError(f"the container's systemd did not boot (state {state!r}); jobs:\n{jobs}")

    def run(self, *cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", "-t", str(self.init), "-a", *cmd], capture_output=True, text=True,
                              input=input, timeout=120)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(cmd)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}", input=text)

    def show(self, unit: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p",
                       "ActiveState,SubState,StatusText,MainPID,NRestarts,Result").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, unit: str, what: str, cond, timeout: float = 90.0) -> dict[str, str]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.show(unit)
            if cond(state):
                return state
            time.sleep(0.2)
        raise AssertionError(f"{unit}: {what} not reached; last {state}\n"
                             + self.run("journalctl", "-u", unit, "-n", "40", "--no-pager", check=False).stdout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn halts the container
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    _venv()
    c = Container()
    try:
        # The packages' drop-ins: the service user and the data tree.
        c.write("/etc/sysusers.d/fitsflow.conf", (REPO / "etc/sysusers.d/fitsflow.conf").read_text())
        c.write("/etc/tmpfiles.d/fitsflow.conf", (REPO / "etc/tmpfiles.d/fitsflow.conf").read_text())
        c.run("systemd-sysusers")
        c.run("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/fitsflow.conf")
        # The shipped unit, as the RPM installs it but for ExecStart= (the test venv), and a
        # short watchdog so that the hang test takes seconds, not the shipped 30 s.
        unit = (REPO / "units" / UNIT).read_text().replace("ExecStart=/usr/bin/", f"ExecStart={VENV}/bin/")
        c.write(f"/etc/systemd/system/{UNIT}", unit)
        c.write(f"/etc/systemd/system/{UNIT}.d/test.conf", "[Service]\nWatchdogSec=6\n")
        c.run("systemctl", "daemon-reload")
        yield c
    finally:
        c.close()


def configure(c: Container, broker_url: str) -> None:
    c.write("/etc/fitsflow/fitsflow.toml", to_toml({
        "site": {"instrument": "TESTCAM"},
        "bus": {"brokers": [broker_url], "heartbeat_ms": 2000, "reconnect_max_s": 1.0},
    }))


def test_the_unit_runs_under_systemd_and_is_restarted(container: Container, broker: PrivateBroker) -> None:
    c = container
    # 1. No broker reachable: the daemon waits (EXTEND_TIMEOUT_USEC + STATUS=) before READY=1,
    #    and systemd keeps the unit "activating" meanwhile.
    configure(c, f"stomp://127.0.0.1:{free_port()}")
    c.run("systemctl", "start", "--no-block", UNIT)
    state = c.wait(UNIT, "activating, waiting for a broker",
                   lambda s: s["ActiveState"] == "activating" and "waiting for a broker" in s["StatusText"], 60)
    time.sleep(2)
    assert c.show(UNIT)["ActiveState"] == "activating", "active before READY=1"
    c.run("systemctl", "stop", UNIT)

    # 2. With the broker: active once READY=1 came, and STATUS= shows in systemctl status.
    configure(c, broker.url)
    c.run("systemctl", "start", UNIT)  # Type=notify: returns once READY=1 arrived
    state = c.wait(UNIT, "active with a status", lambda s: s["ActiveState"] == "active" and "brokers 1/1" in s["StatusText"])
    status = c.run("systemctl", "status", "--no-pager", UNIT, check=False).stdout
    assert "Status:" in status and "brokers 1/1" in status, status
    assert c.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip() == "fitsflow"

    # 3. kill -9: Restart=on-failure brings it back (RestartSec=2).
    first = state["MainPID"]
    c.run("systemctl", "kill", "-s", "KILL", "--kill-whom=main", UNIT)
    state = c.wait(UNIT, "restarted after SIGKILL",
                   lambda s: s["NRestarts"] == "1" and s["ActiveState"] == "active" and s["MainPID"] not in ("0", first))

    # 4. A main loop that stops (SIGSTOP): no more WATCHDOG=1, systemd kills and restarts it.
    second = state["MainPID"]
    c.run("systemctl", "kill", "-s", "STOP", "--kill-whom=main", UNIT)
    c.wait(UNIT, "restarted by the watchdog",
           lambda s: s["NRestarts"] == "2" and s["ActiveState"] == "active" and s["MainPID"] not in ("0", second))
    journal = c.run("journalctl", "-u", UNIT, "--no-pager", check=False).stdout
    assert "Watchdog timeout" in journal, journal[-3000:]
    c.run("systemctl", "stop", UNIT)
    assert c.show(UNIT)["ActiveState"] == "inactive"
