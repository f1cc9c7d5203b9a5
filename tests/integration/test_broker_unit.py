"""The shipped broker unit (units/activemq-fitsflow.service, package fitsflow-broker) under a
real systemd (PID 1 of a systemd-nspawn container over this machine's /usr): fitsflow's
instance configuration as an admin installs it in /etc/fitsflow/activemq, the ActiveMQ
distribution named by the site file (here Debian's; on EL the apache-activemq package),
the unit's full hardening. Checked: TLS login and a message through it, the store in
/var/lib/activemq-fitsflow, a restart after SIGKILL with the store kept, a clean stop."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from fitsflow.core.bus.stomp_link import StompLink, TlsSettings
from fitsflow.testing.broker import ACTIVEMQ_HOME, free_ports, identities
from fitsflow.testing.nspawn import Container
from fitsflow.testing.pki import TestPKI
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
UNIT = "activemq-fitsflow.service"
CONF = "/etc/fitsflow/activemq"

pytestmark = [pytest.mark.slow, pytest.mark.broker,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
                                 reason="needs root and systemd-nspawn (Debian's systemd-container)"),
              pytest.mark.skipif(shutil.which("java") is None or not (ACTIVEMQ_HOME / "bin" / "activemq.jar").exists(),
                                 reason="needs ActiveMQ and a JRE (dev.sh setup)")]


def copy_in(c: Container, src: Path, dst: str, mode: str = "0640") -> None:
    """A file (binary too) into the container, owned root:activemq."""
    c.run("sh", "-c", f"base64 -d > {dst} && chown root:activemq {dst} && chmod {mode} {dst}",
          input=base64.b64encode(src.read_bytes()).decode())


class Installed:
    """The container with fitsflow-broker's files installed and configured for this test."""

    def __init__(self, c: Container, pki: TestPKI, passwords: dict[str, str], stomp_port: int) -> None:
        self.c, self.pki, self.passwords, self.stomp_port = c, pki, passwords, stomp_port

    @property
    def url(self) -> str:
        return f"stomp+ssl://127.0.0.1:{self.stomp_port}"

    def link(self, identity: str) -> StompLink:
        link = StompLink(self.url, heartbeat_ms=0, connect_timeout_s=10.0,
                         credentials=(identity, self.passwords[identity]), tls=TlsSettings(ca_file=self.pki.ca_cert))
        link.connect(f"unit-test-{uuid.uuid4().hex[:8]}")
        return link


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("broker-unit")
    pki = TestPKI(tmp / "pki")
    stores = pki.server("localhost", "127.0.0.1", name="broker")
    passwords = {ident: f"pw-{ident}-{secrets.token_hex(8)}" for ident in identities(
        REPO / "etc/activemq/fitsflow/groups.properties")}
    stomp_port, openwire_port = free_ports(2)
    # The container's /etc is fresh: Debian's JRE reads its settings from /etc (java.security),
    # and /usr/bin/java is an alternative; the host's, read-only, as any Debian host has them.
    c = Container(binds_ro=[p for p in ("/etc/alternatives", "/etc/java-17-openjdk", "/etc/ssl/certs/java")
                            if Path(p).exists()])
    try:
        # What the package installs: the user (sysusers.d), the unit, the instance configuration.
        c.write("/etc/sysusers.d/activemq-fitsflow.conf", (REPO / "etc/sysusers.d/activemq-fitsflow.conf").read_text())
        c.run("systemd-sysusers")
        c.write(f"/etc/systemd/system/{UNIT}", (REPO / "units" / UNIT).read_text())
        c.run("install", "-d", "-o", "root", "-g", "activemq", "-m", "0750", CONF)
        for f in (REPO / "etc/activemq/fitsflow").iterdir():
            copy_in(c, f, f"{CONF}/{f.name}")
        # What the admin does (docs/install.md): key stores, passwords, ports.
        copy_in(c, stores.key_store, f"{CONF}/broker.p12")
        copy_in(c, stores.trust_store, f"{CONF}/trust.p12")
        c.write(f"{CONF}/users.properties", "".join(f"{u}={p}\n" for u, p in passwords.items()))
        props = {"stomp.bind": "127.0.0.1", "stomp.port": str(stomp_port), "openwire.port": str(openwire_port),
                 "ssl.keyStore": f"{CONF}/broker.p12", "ssl.trustStore": f"{CONF}/trust.p12",
                 "ssl.keyStorePassword": stores.password, "ssl.trustStorePassword": stores.password,
                 "store.limit": "1 gb", "temp.limit": "256 mb"}
        shipped = (REPO / "etc/activemq/fitsflow/broker.properties").read_text().splitlines()
        c.write(f"{CONF}/broker.properties", "".join(
            f"{line.split('=', 1)[0]}={props[line.split('=', 1)[0]]}\n" if line.split("=", 1)[0] in props else line + "\n"
            for line in shipped))
        c.run("sh", "-c", f"chown root:activemq {CONF}/* && chmod 0640 {CONF}/*")
        # The site file: Debian's ActiveMQ here, a small heap.
        site = (REPO / "etc/sysconfig/activemq-fitsflow").read_text()
        c.write("/etc/default/activemq-fitsflow", site + f"ACTIVEMQ_HOME={ACTIVEMQ_HOME}\nFITSFLOW_BROKER_HEAP=256m\n")
        c.run("systemctl", "daemon-reload")
        yield Installed(c, pki, passwords, stomp_port)
    finally:
        c.close()


def test_the_broker_unit_runs_fitsflows_instance_and_is_restarted(installed: Installed) -> None:
    c = installed.c
    c.run("systemctl", "start", UNIT)
    c.wait(UNIT, "active", lambda s: s["ActiveState"] == "active")

    def answers() -> bool:
        try:
            installed.link("operator").close()
            return True
        except Exception:  # noqa: BLE001 - not listening yet
            return False
    try:
        wait_for(answers, 180, 0.5, what="the broker's TLS port answers a login")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n" + c.run("journalctl", "-u", UNIT, "-n", "60", "--no-pager", check=False).stdout)
    state = c.show(UNIT)
    assert c.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip() == "activemq"

    # A persistent message from one role to another through the unit's broker, kept across
    # a SIGKILL (KahaDB in /var/lib/activemq-fitsflow).
    queue = "/queue/fitsflow.forwarder.fwd1"
    sender = installed.link("archive-controller")
    try:
        sender.send(queue, '{"unit": "test"}', {"persistent": "true"}).result(30)
    finally:
        sender.close()
    store = c.run("sh", "-c", "ls /var/lib/activemq-fitsflow/kahadb && stat -c %U /var/lib/activemq-fitsflow/kahadb").stdout
    assert "db.data" in store and store.split()[-1] == "activemq", store

    first = state["MainPID"]
    c.run("systemctl", "kill", "-s", "KILL", "--kill-whom=main", UNIT)
    c.wait(UNIT, "restarted after SIGKILL",
           lambda s: s["NRestarts"] == "1" and s["ActiveState"] == "active" and s["MainPID"] not in ("0", first), 120)
    wait_for(answers, 180, 0.5, what="the restarted broker answers a login")
    frames = drain(installed.url, queue, expect=1, timeout=60, credentials=("forwarder", installed.passwords["forwarder"]),
                   tls=TlsSettings(ca_file=installed.pki.ca_cert))
    got = [f.body for f in frames]
    assert got == ['{"unit": "test"}']

    # A clean stop: ActiveMQ's exit status 143 after SIGTERM is a success, not a failure.
    c.run("systemctl", "stop", UNIT)
    state = c.show(UNIT)
    assert state["ActiveState"] == "inactive" and state["Result"] == "success", state
    journal = c.run("journalctl", "-u", UNIT, "--no-pager", check=False).stdout
    assert "started" in journal.lower(), journal[-2000:]
