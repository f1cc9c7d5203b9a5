"""A 3-node Pacemaker/corosync cluster on one machine, running fitsflow from the shipped units
and the shipped pacemaker/fitsflow-cib — the HA lab of tests/ha (docs/ha-lab.md).

Each node is a systemd-nspawn container booting this machine's systemd (nspawn.Container) in
a network namespace of its own, wired by a veth to a bridge in the switch namespace
``halab-sw``; the host joins the switch too (``halab0``, 10.99.0.2) so that the test's camera
simulator and bus clients reach the virtual IPs. Inside, systemd starts corosync and
pacemaker; Pacemaker starts fitsflow's units (``systemd:`` resources) and ActiveMQ.

Shared storage stands in for the SAN/NAS: one host directory bind-mounted into every node as
/var/lib/fitsflow (data tree, state, registries) and one as ActiveMQ's store (KahaDB).

Killing a node is a power cut: SIGKILL to the container's init (the kernel kills everything
in it), then its network namespace is deleted, taking its veth and any VIP with it.

Fencing is on, as in production: the CIB has a stonith device with the lab's fence agent
(tests/ha/fence-agent/fence_halab, overlaid on the nodes' /usr/sbin), which asks the host
(:class:`Fencer`) to power a node off, or off and on again, through a shared directory.

    python tests/ha/halab.py up [--base DIR]     build and start the lab, leave it running
    python tests/ha/halab.py status|down         crm_mon of the first live node | tear down
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import inotify_simple

from fitsflow.core.bus.stomp_link import TlsSettings
from fitsflow.core.config import DAEMON_NAMES
from fitsflow.testing.broker import ACTIVEMQ_HOME, broker_command, identities
from fitsflow.testing.pki import TestPKI
from fitsflow.testing.config import to_toml
from fitsflow.testing.nspawn import DEFAULT_MASK, Container, remove_cgroup, system_venv

from .cluster import ClusterQueries

REPO = Path(__file__).resolve().parents[2]
SWITCH = "halab-sw"
HOST_IF = "halab0"
HOST_IP = "10.99.0.2"
NODES = {"n1": "10.99.0.11", "n2": "10.99.0.12", "n3": "10.99.0.13"}
BROKER_VIP = "10.99.0.100"
CONTROLLER_VIP = "10.99.0.101"
RECEIVER_VIP = "10.99.0.111"
STOMP_PORT = 61613
STREAM_PORT = 7148
SENSORS = ["R22_S00", "R22_S01", "R22_S10", "R22_S11"]
INSTRUMENT = "LABCAM"
#: Pacemaker runs ActiveMQ through this unit (the lab's BROKER_AGENT).
BROKER_UNIT = "activemq-fitsflow"
#: In the nodes: every default mask but the cluster stack, which must start at boot.
NODE_MASK = [m for m in DEFAULT_MASK if m not in ("corosync", "pacemaker")]
FENCE_AGENT_DIR = REPO / "tests" / "ha" / "fence-agent"
#: The broker configuration an admin installs (TLS STOMP, JAAS, the authorization map).
SHIPPED_BROKER = REPO / "etc" / "activemq" / "fitsflow"
BROKER_CONF_IN_NODE = "/etc/fitsflow-lab/activemq"
#: The identity of the host side (camera simulator, probes): group admins.
HOST_ROLE = "operator"
#: Where fence_halab and the host's Fencer exchange requests, in the nodes.
FENCE_DIR_IN_NODE = "/var/lib/halab-fence"


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def in_switch(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", SWITCH, *cmd, check=check)


@dataclass
class Node:
    name: str
    ip: str
    container: Container | None = None

    @property
    def netns(self) -> str:
        return f"halab-{self.name}"

    @property
    def up(self) -> bool:
        return self.container is not None and self.container.alive()

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        if not self.up:
            raise RuntimeError(f"node {self.name} is down")
        assert self.container is not None
        return self.container.run(*cmd, check=check, timeout=timeout)


class Lab(ClusterQueries):
    """Build, run, break and tear down the cluster. Every path lives under ``base``."""

    def __init__(self, base: Path, venv: Path | None = None, token_ms: int = 1000) -> None:
        self.base = Path(base)
        self.venv = venv
        self.token_ms = token_ms
        self.nodes = {n: Node(n, ip) for n, ip in NODES.items()}
        self.shared = self.base / "shared"
        #: Held by every power action: the fencer's and the test's never interleave.
        self.power = threading.RLock()
        self.fencer = Fencer(self, self.base / "fence")

    # -- paths of the shared storage, as the host sees them ----------------------------
    @property
    def fitsflow_dir(self) -> Path:
        return self.shared / "fitsflow"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.fitsflow_dir}/state/fitsflow.db"

    @property
    def broker_url(self) -> str:
        return f"stomp+ssl://{BROKER_VIP}:{STOMP_PORT}"

    instrument = INSTRUMENT
    sensors = SENSORS
    vips = {"broker": BROKER_VIP, "controller": CONTROLLER_VIP, "receiver": RECEIVER_VIP}
    stream_port = STREAM_PORT

    def read_data(self, rel: str) -> bytes:
        """A file of the shared /var/lib/fitsflow (``rel`` below it)."""
        return (self.fitsflow_dir / rel).read_bytes()

    def host_bus(self) -> dict[str, object]:
        """``[bus]`` keys for a program on the host: the operator's identity, the lab CA."""
        return {"credentials_file": str(self.base / "host" / f"{HOST_ROLE}.toml"),
                "tls_ca_file": str(self.pki.ca_cert)}

    def link_kwargs(self) -> dict[str, object]:
        """StompLink keyword arguments for the host side (as :meth:`host_bus`)."""
        return {"credentials": (HOST_ROLE, self.passwords[HOST_ROLE]), "tls": TlsSettings(ca_file=self.pki.ca_cert)}

    # -- build -------------------------------------------------------------------------
    def up(self) -> None:
        """Tear down leftovers, then build everything and wait for a settled cluster."""
        self.down()
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.mkdir(parents=True)
        self.venv = self.venv or system_venv(REPO)
        self._identities()
        self._switch()
        self._corosync_conf()
        self._cib()
        self._node_etc()
        self.fencer.start()
        self.fencer.power_on_again = True  # a node fenced while the cluster forms (a slow boot)
        for n in self.nodes:
            self.boot(n)
        self.wait_settled(online=list(self.nodes))
        self.fencer.power_on_again = False

    def _identities(self) -> None:
        """A CA, the broker's certificate (for its VIP), a random password per identity of the
        shipped groups.properties; the host's own credentials file."""
        self.pki = TestPKI(self.base / "pki", name="halab-ca")
        self.passwords = {ident: secrets.token_urlsafe(18) for ident in identities(SHIPPED_BROKER / "groups.properties")}
        host = self.base / "host"
        host.mkdir()
        creds = host / f"{HOST_ROLE}.toml"
        creds.write_text(f'username = "{HOST_ROLE}"\npassword = "{self.passwords[HOST_ROLE]}"\n')
        creds.chmod(0o600)

    def _switch(self) -> None:
        sh("ip", "netns", "add", SWITCH)
        in_switch("ip", "link", "set", "lo", "up")
        in_switch("ip", "link", "add", "br0", "type", "bridge")  # STP off: ports forward at once
        in_switch("ip", "link", "set", "br0", "up")
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "host", "netns", SWITCH)
        in_switch("ip", "link", "set", "host", "master", "br0", "up")
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")

    def _corosync_conf(self) -> None:
        d = self.base / "corosync"
        d.mkdir()
        args = ["pcs", "cluster", "setup", "halab"]
        for n, ip in NODES.items():
            args += [n, f"addr={ip}"]
        sh(*args, "transport", "knet", "totem", f"token={self.token_ms}",
           "--corosync_conf", str(d / "corosync.conf"), "--overwrite")
        # Logs to the journal only: /var/log is a fresh tmpfs in the nodes.
        conf = (d / "corosync.conf").read_text().replace("to_logfile: yes", "to_logfile: no")
        conf = "\n".join(line for line in conf.splitlines() if "logfile:" not in line or "to_logfile" in line) + "\n"
        (d / "corosync.conf").write_text(conf)
        sh("corosync-keygen", "-l", "-k", str(d / "authkey"))

    def _cib(self) -> None:
        """The project's own script, offline, on a lab cluster.conf; then crm_verify."""
        conf = self.base / "cluster.conf"
        conf.write_text(
            f'NODES="{" ".join(NODES)}"\nVIP_NIC="eth0"\nVIP_CIDR="24"\n'
            f'BROKER_VIP="{BROKER_VIP}"\nBROKER_FS_DEVICE=""\nBROKER_AGENT="systemd:{BROKER_UNIT}"\n'
            f'DATA_FS_DEVICE=""\nCONTROLLER_VIP="{CONTROLLER_VIP}"\n'
            f'RECEIVERS="r1 n1 n2 {RECEIVER_VIP}"\nFENCING="required"\n'
            f'STONITH_DEVICES="lab-fence fence_halab pcmk_host_list={",".join(NODES)}"\n')
        cib = self.base / "cib.xml"
        cib.write_text(sh("cibadmin", "--empty").stdout)
        sh(str(REPO / "pacemaker" / "fitsflow-cib"), "--config", str(conf), "-f", str(cib))
        # The lab's own: elect a DC 2 s after start (default 20 s), as in ../shared/notes/ha-lab.md;
        # fencing powers a node off and leaves it off (the default, reboot, would bring it back
        # by itself within seconds, and a scenario could not tell failover from its return).
        sh("pcs", "-f", str(cib), "property", "set", "dc-deadtime=2s", "stonith-action=off")
        sh("crm_verify", "-x", str(cib))

    def _node_etc(self) -> None:
        """What every node's /etc adds to the host's: the cluster, fitsflow and the broker."""
        assert self.venv is not None
        for d in (self.fitsflow_dir, self.shared / "activemq"):
            d.mkdir(parents=True)
        etc = self.base / "etc"
        (etc / "corosync").mkdir(parents=True)
        for f in ("corosync.conf", "authkey"):
            shutil.copy(self.base / "corosync" / f, etc / "corosync" / f)
        os.chmod(etc / "corosync" / "authkey", 0o400)
        (etc / "fitsflow").mkdir()
        (etc / "fitsflow" / "fitsflow.toml").write_text(to_toml(self.site_config()))
        shutil.copy(self.pki.ca_cert, etc / "fitsflow" / "ca.pem")
        # One file per role a node runs (every daemon, and "panic" for fitsflow-wrap): each
        # daemon logs in as itself, as docs/install.md sets a site up.
        (etc / "fitsflow" / "credentials").mkdir()  # root's (tmpfiles refuses a user's dir above root's files)
        for role in (*DAEMON_NAMES, "panic"):
            f = etc / "fitsflow" / "credentials" / f"{role}.toml"
            f.write_text(f'username = "{role}"\npassword = "{self.passwords[role]}"\n')
            f.chmod(0o600)
        for sub in ("sysusers.d", "tmpfiles.d"):
            (etc / sub).mkdir()
            shutil.copy(REPO / "etc" / sub / "fitsflow.conf", etc / sub / "fitsflow.conf")
        # /var is a fresh tmpfs at every boot: what the cluster stack's packages made there.
        # The credentials belong to the service user, who exists only once the node booted.
        (etc / "tmpfiles.d" / "halab.conf").write_text("d /var/lib/corosync 0700 root root -\n"
                                                       "d /var/log/corosync 0700 root root -\n"
                                                       "z /etc/fitsflow/credentials/*.toml 0600 fitsflow fitsflow -\n"
                                                       f"z {BROKER_CONF_IN_NODE}/* 0640 root activemq -\n")
        units = etc / "systemd" / "system"
        units.mkdir(parents=True)
        for dropins in (REPO / "units").glob("*.d"):  # the shared settings, the receiver's own
            shutil.copytree(dropins, units / dropins.name)
        for unit in (REPO / "units").glob("fitsflow-*.service"):
            # As the RPM installs them, but for ExecStart= (the lab venv).
            text = unit.read_text().replace("ExecStart=/usr/bin/", f"ExecStart={self.venv}/bin/")
            (units / unit.name).write_text(text)
        self._broker_unit(etc)

    def _broker_unit(self, etc: Path) -> None:
        """ActiveMQ as a plain foreground unit on the shared store, with the shipped instance
        configuration (etc/activemq/fitsflow: TLS STOMP on every address, JAAS, the
        authorization map), the lab's certificate and passwords. It only ever runs where
        Pacemaker put the broker's VIP."""
        conf = etc / "fitsflow-lab" / "activemq"
        shutil.copytree(SHIPPED_BROKER, conf)
        (conf / "users.properties").write_text("".join(f"{u}={p}\n" for u, p in self.passwords.items()))
        stores = self.pki.server("broker.halab", BROKER_VIP, name="broker")
        shutil.copy(stores.key_store, conf / "broker.p12")
        shutil.copy(stores.trust_store, conf / "trust.p12")
        for f in conf.iterdir():  # root:activemq by tmpfiles at boot (a copy of /etc loses owners)
            f.chmod(0o640)
        properties = {"stomp.bind": "0.0.0.0", "stomp.needClientAuth": "false",
                      "ssl.keyStore": f"{BROKER_CONF_IN_NODE}/broker.p12", "ssl.keyStorePassword": stores.password,
                      "ssl.trustStore": f"{BROKER_CONF_IN_NODE}/trust.p12", "ssl.trustStorePassword": stores.password,
                      "store.limit": "2gb", "temp.limit": "1gb",  # no spaces: an ExecStart= word
                      # the path is the node's: broker_command cannot see it from the host
                      "java.security.auth.login.config": f"{BROKER_CONF_IN_NODE}/login.config"}
        store = "/var/lib/activemq-fitsflow"
        cmd = broker_command(Path(store), Path(BROKER_CONF_IN_NODE), Path(store), name="halab",
                             stomp_port=STOMP_PORT, openwire_port=61616, heap_mb=256, properties=properties)
        cmd[0] = shutil.which("java") or "/usr/bin/java"
        (etc / "systemd" / "system" / f"{BROKER_UNIT}.service").write_text(
            "[Unit]\nDescription=ActiveMQ for fitsflow (HA lab; store on shared storage)\n"
            "After=network-online.target\n\n"
            "[Service]\nType=simple\nUser=activemq\nGroup=activemq\n"
            f"WorkingDirectory={store}\nExecStart={' '.join(cmd)}\n"
            # ActiveMQ exits 143 on SIGTERM after a clean shutdown.
            "SuccessExitStatus=143\nTimeoutStopSec=30\n")
        shutil.chown(self.shared / "activemq", "activemq", "activemq")

    def site_config(self) -> dict[str, dict[str, object]]:
        """The one fitsflow.toml of every node (short timeouts: failures are the point)."""
        return {
            "site": {"instrument": INSTRUMENT, "state_dir": "/var/lib/fitsflow/state",
                     "database_url": "sqlite:////var/lib/fitsflow/state/fitsflow.db"},
            "bus": {"brokers": [self.broker_url], "credentials_file": "/etc/fitsflow/credentials/{role}.toml",
                    "tls_ca_file": "/etc/fitsflow/ca.pem", "heartbeat_ms": 2000,
                    "receipt_timeout_s": 3.0, "reconnect_max_s": 1.0, "retry_delay_s": 0.2},
            "paths": {"root": "/var/lib/fitsflow/data"},
            "receiver": {"streams": [f"{RECEIVER_VIP}:{STREAM_PORT}"], "image_timeout_s": 3.0,
                         "socket_buffer_bytes": 8 << 20, "max_heap_bytes": 1 << 20, "expected_sensors": SENSORS},
            "forwarder": {"heartbeat_s": 1.0, "join_timeout_s": 30.0},
            "archive_controller": {"liveness_timeout_s": 5.0, "partial_grace_s": 20.0, "catchup_after_s": 10.0,
                                   "catchup_interval_s": 2.0, "catchup_max_resends": 8},
            "oods": {"rescan_s": 5.0}, "archive_ingest": {"rescan_s": 5.0},
            "panic_mailer": {"smtp_host": HOST_IP, "smtp_port": 8025, "starttls": False,
                             "sender": "fitsflow@halab", "recipients": ["oncall@halab"]},
        }

    # -- nodes -------------------------------------------------------------------------
    def boot(self, name: str) -> None:
        """Power a node on: fresh network namespace and veth, systemd boots, corosync and
        pacemaker start (the node joins the cluster by itself)."""
        with self.power:
            self._boot(name)

    def _boot(self, name: str) -> None:
        node = self.nodes[name]
        if node.up:
            return
        nd = self.base / "nodes" / name
        lib, log, upper, journal = nd / "lib-pacemaker", nd / "log-pacemaker", nd / "etc", nd / "journal"
        if not upper.exists():  # first boot: the seed CIB and the node's /etc
            for sub in ("cib", "pengine", "blackbox", "cores"):
                (lib / sub).mkdir(parents=True)
            shutil.copy(self.base / "cib.xml", lib / "cib" / "cib.xml")
            log.mkdir(parents=True)
            journal.mkdir(parents=True)
            shutil.copytree(self.base / "etc", upper, symlinks=True)
            (upper / "hostname").write_text(f"{name}\n")
            (upper / "machine-id").write_text(secrets.token_hex(16) + "\n")
            sh("chown", "-R", "hacluster:haclient", str(lib), str(log))
        sh("ip", "netns", "del", node.netns, check=False)
        # The old switch port: deleting the namespace ends its veth only once nothing holds
        # the namespace any more (an nsenter still running in the powered-off node may).
        sh("ip", "-n", SWITCH, "link", "del", name, check=False)
        sh("ip", "netns", "add", node.netns)
        sh("ip", "-n", SWITCH, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
        sh("ip", "-n", SWITCH, "link", "set", name, "master", "br0", "up")
        sh("ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        sh("ip", "-n", node.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", node.netns, "link", "set", "lo", "up")
        assert self.venv is not None
        node.container = Container(
            machine=name, etc_upper=upper, netns=node.netns, mask=NODE_MASK, cgroup=f"halab/{name}",
            capabilities=["CAP_NET_ADMIN", "CAP_NET_RAW"],  # IPaddr2: ip addr add, arping
            log=nd / "nspawn.log", overlays_ro=[(FENCE_AGENT_DIR, "/usr/sbin")],
            # The journal on the host: it outlives a power cut, for the post-mortem of a failed scenario.
            binds=[(lib, "/var/lib/pacemaker"), (log, "/var/log/pacemaker"), (journal, "/var/log/journal"),
                   (self.fitsflow_dir, "/var/lib/fitsflow"), (self.shared / "activemq", "/var/lib/activemq-fitsflow"),
                   (self.fencer.directory, FENCE_DIR_IN_NODE)],
            binds_ro=[self.venv, ACTIVEMQ_HOME])

    def kill(self, name: str) -> None:
        """Power cut of a node: every process at once, its NIC (and any VIP) gone."""
        with self.power:
            node = self.nodes[name]
            if node.container is not None:
                node.container.kill()
                node.container = None
            sh("ip", "netns", "del", node.netns, check=False)

    def unplug(self, name: str) -> None:
        """Cut a node off the switch (its side stays up: a cable pulled at the switch)."""
        with self.power:
            sh("ip", "-n", SWITCH, "link", "set", name, "down")

    def plug(self, name: str) -> None:
        with self.power:  # not while the fencer is booting it (its switch port is being made)
            sh("ip", "-n", SWITCH, "link", "set", name, "up")

    # -- teardown ----------------------------------------------------------------------
    def down(self) -> None:
        """Kill every node, delete every namespace, link and cgroup of the lab."""
        self.fencer.stop()  # nobody powers nodes on again now
        for node in self.nodes.values():
            if node.container is not None:
                node.container.kill()
                node.container = None
        self._kill_strays()
        for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
            ns = ns.split(" ")[0]
            if ns.startswith("halab-"):
                sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)
        remove_cgroup("halab")

    def _kill_strays(self) -> None:
        """Containers of an earlier run of this lab that this process did not start."""
        for h in ("systemd", "unified"):
            procs = Path("/sys/fs/cgroup", h, "halab")
            for f in procs.rglob("cgroup.procs") if procs.is_dir() else []:
                for pid in f.read_text().split():
                    try:
                        os.kill(int(pid), 9)
                    except (ProcessLookupError, ValueError):
                        pass
        time.sleep(0.2)

    def leftovers(self) -> list[str]:
        """Anything of the lab still present on the host (for the teardown test)."""
        out = []
        out += [ns for ns in sh("ip", "netns", "list", check=False).stdout.split() if ns.startswith("halab")]
        if sh("ip", "link", "show", HOST_IF, check=False).returncode == 0:
            out.append(f"link {HOST_IF}")
        for h in ("systemd", "unified"):
            if Path("/sys/fs/cgroup", h, "halab").exists():
                out.append(f"cgroup {h}/halab")
        ps = sh("ps", "-eo", "pid=,args=", check=False).stdout
        out += [line.strip() for line in ps.splitlines() if "--machine=n" in line and "systemd-nspawn" in line]
        mounts = Path("/proc/self/mountinfo").read_text()
        out += [f"mount {line.split()[4]}" for line in mounts.splitlines() if str(self.base) in line]
        return out


@dataclass
class Fencer:
    """The host's side of fence_halab: the lab's power switch. Answers each request the
    nodes' fence agent drops into ``directory`` (inotify), recording what it did."""

    lab: Lab
    directory: Path
    #: (node, action, time.monotonic()) of every fencing done, in order.
    done: list[tuple[str, str, float]] = field(default_factory=list)
    #: Power a node fenced "off" on again at once (while the lab starts: nobody else would).
    power_on_again: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="halab-fencer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def fenced_since(self, node: str, since: float) -> float | None:
        """Seconds after ``since`` at which ``node`` was fenced (powered off), or None."""
        return next((t - since for n, action, t in self.done if n == node and t >= since and action != "status"
                     and action != "on"), None)

    def _run(self) -> None:
        with inotify_simple.INotify() as ino:
            ino.add_watch(self.directory, inotify_simple.flags.MOVED_TO | inotify_simple.flags.CLOSE_WRITE)
            while not self._stop.is_set():
                for req in sorted(self.directory.glob("*.req")):  # also those from before a wake-up
                    self._answer(req)
                ino.read(timeout=500)

    def _answer(self, req: Path) -> None:
        try:
            action, target = req.read_text().split()
        except (OSError, ValueError):
            return
        answer, reboot = "ok", False
        if target not in self.lab.nodes:
            answer = f"error no node {target}"
        elif action == "status":
            answer = "ok" if self.lab.nodes[target].up else "off"
        elif action in ("off", "reboot"):
            self.lab.kill(target)
            self.done.append((target, action, time.monotonic()))
            print(f"halab: fenced {target} ({action})", flush=True)
            reboot = action == "reboot" or self.power_on_again
        elif action == "on":
            reboot = True
        else:
            answer = f"error unknown action {action}"
        done = req.with_suffix(".done")
        done.with_suffix(".tmp").write_text(answer + "\n")
        os.rename(done.with_suffix(".tmp"), done)
        req.unlink(missing_ok=True)
        if reboot and not self._stop.is_set():  # powered off (confirmed above), now on again
            try:
                self.lab.boot(target)
            except (RuntimeError, TimeoutError) as exc:
                print(f"halab: {target} did not boot after fencing: {exc}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "status", "down"])
    parser.add_argument("--base", type=Path, default=Path("/var/tmp/fitsflow-halab"))
    args = parser.parse_args()
    lab = Lab(args.base)
    if args.action == "up":
        lab.up()
        print(lab.crm_mon())
        print(json.dumps({"broker": lab.broker_url, "stream": f"{RECEIVER_VIP}:{STREAM_PORT}",
                          "shared": str(lab.shared)}))
        # The containers are children of this process: stay, and tear down on Ctrl-C.
        print("lab up; Ctrl-C tears it down", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            lab.down()
    elif args.action == "status":
        for name in NODES:
            ns = f"halab-{name}"
            print(name, "up" if ns in sh("ip", "netns", "list", check=False).stdout else "down")
    else:
        lab.down()
        print("\n".join(lab.leftovers()) or "torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
