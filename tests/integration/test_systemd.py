"""The shipped units under a real systemd (PID 1 of a systemd-nspawn container over this
machine's /usr): Type=notify start (active only after READY=1), STATUS= in systemctl, restart
after SIGKILL, restart of a daemon whose main loop hangs (watchdog) — with the units' full
hardening (User=fitsflow, ProtectSystem=strict, PrivateUsers...)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from fitsflow.core.bus.stomp_link import StompLink
from fitsflow.core.messages import destination_of, make
from fitsflow.testing.broker import PrivateBroker, free_port
from fitsflow.testing.config import to_toml
from fitsflow.testing.nspawn import Container, system_venv

REPO = Path(__file__).resolve().parents[2]
UNIT = "fitsflow-archive-ingest.service"

pytestmark = [pytest.mark.slow, pytest.mark.broker,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
                                 reason="needs root and systemd-nspawn (Debian's systemd-container)")]


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    venv = system_venv(REPO)
    c = Container(binds_ro=[venv])
    try:
        # The packages' drop-ins: the service user and the data tree.
        c.write("/etc/sysusers.d/fitsflow.conf", (REPO / "etc/sysusers.d/fitsflow.conf").read_text())
        c.write("/etc/tmpfiles.d/fitsflow.conf", (REPO / "etc/tmpfiles.d/fitsflow.conf").read_text())
        c.run("systemd-sysusers")
        c.run("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/fitsflow.conf")
        # The shipped unit, as the RPM installs it but for ExecStart= (the test venv), and a
        # short watchdog so that the hang test takes seconds, not the shipped 30 s.
        unit = (REPO / "units" / UNIT).read_text().replace("ExecStart=/usr/bin/", f"ExecStart={venv}/bin/")
        c.write(f"/etc/systemd/system/{UNIT}", unit)
        for conf in (REPO / "units" / "fitsflow-.service.d").glob("*.conf"):
            c.write(f"/etc/systemd/system/fitsflow-.service.d/{conf.name}", conf.read_text())
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


def test_fitsflows_fields_reach_the_journal(container: Container, broker: PrivateBroker) -> None:
    """The daemon's records carry fitsflow's fields into the real journal: read back with
    ``journalctl -o json`` (a dead-lettered INGEST_REQUEST names its image and type)."""
    c = container
    configure(c, broker.url)
    c.run("systemctl", "start", UNIT)
    try:
        c.wait(UNIT, "active", lambda s: s["ActiveState"] == "active" and "brokers 1/1" in s["StatusText"])
        image = f"TESTCAM_O_20261127_{int(time.time()) % 1000000:06d}"
        msg = make("INGEST_REQUEST", image, path="/etc/passwd", checksum="crc32:00000000", sender="test@systemd",
                   data_id={"instrument": "TESTCAM", "image": image, "raft": "R22", "sensor": "S00",
                            "obs_day": "20261127"})
        link = StompLink(broker.url, heartbeat_ms=0)
        link.connect(f"systemd-test-{image}")
        try:
            link.send(destination_of("INGEST_REQUEST", target="archive"), msg.encode(), msg.headers()).result(10)
        finally:
            link.close()
        deadline, entries = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            out = c.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager", f"IMAGE={image}", check=False).stdout
            entries = [json.loads(line) for line in out.splitlines() if line.strip()]
            if entries:
                break
            time.sleep(0.5)
        assert entries, "no journal record with the image's IMAGE= field"
        e = entries[0]
        assert e["MSGTYPE"] == "INGEST_REQUEST" and e["FITSFLOW_DAEMON"].startswith("archive-ingest"), e
        assert e["SYSLOG_IDENTIFIER"] == "fitsflow-archive-ingest" and e["PRIORITY"] == "3", e
        assert e["CODE_FILE"].endswith(".py") and e["LOGGER"].startswith("fitsflow."), e
    finally:
        c.run("systemctl", "stop", UNIT)
