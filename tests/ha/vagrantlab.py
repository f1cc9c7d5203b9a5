"""The Vagrant cluster (vagrant/Vagrantfile) driven from the host for the HA scenarios of
tests/ha: the same questions and the same failures as the nspawn lab (halab.py), asked of
and done to libvirt VMs.

- Nodes are reached over SSH on Vagrant's management network (``vagrant ssh-config``).
- A power cut is ``virsh destroy``; a pulled cable is the node's link on the cluster network
  set down (``virsh domif-setlink``), its management link staying up for the test's questions.
- Fencing is the cluster's own: fence_virsh on the nodes powers VMs off through this host's
  libvirt over SSH. :class:`LibvirtWatch` reads libvirt's lifecycle events, so the time a
  node was fenced is taken on the host, as the nspawn lab's Fencer takes it.

    python tests/ha/vagrantlab.py up|status|down
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from fitsflow.core.bus.stomp_link import TlsSettings

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ha.cluster import ClusterQueries
else:
    from .cluster import ClusterQueries

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
SECRETS = VAGRANT_DIR / ".build" / "secrets"
NODES = {"n1": "192.168.56.11", "n2": "192.168.56.12", "n3": "192.168.56.13"}
NAS = "192.168.56.10"
PREFIX = "fitsflow-"                  # libvirt domain names (the Vagrantfile's PREFIX)
CLUSTER_NET = "fitsflow-net"
HOST_ROLE = "operator"


def sh(*cmd: str, check: bool = True, timeout: float | None = None, cwd: Path | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    return proc


@dataclass
class VagrantNode:
    name: str
    ip: str
    ssh_config: Path

    @property
    def domain(self) -> str:
        return PREFIX + self.name

    @property
    def up(self) -> bool:
        return sh("virsh", "domstate", self.domain, check=False).stdout.strip() == "running"

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``cmd`` as root on the node, over SSH; RuntimeError if the node cannot be reached."""
        if not self.up:
            raise RuntimeError(f"node {self.name} is down")
        ssh = ["ssh", "-F", str(self.ssh_config), "-o", "ConnectTimeout=5", "-o", "BatchMode=yes", self.name,
               "sudo", "-n", "--", *(shlex.quote(c) for c in cmd)]
        try:
            proc = subprocess.run(ssh, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"node {self.name}: {' '.join(cmd)} timed out") from None
        if proc.returncode == 255:  # ssh's own failure: the node is not answering
            raise RuntimeError(f"node {self.name} unreachable: {proc.stderr.strip()}")
        if check and proc.returncode:
            raise RuntimeError(f"{self.name}: {' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc


@dataclass
class LibvirtWatch:
    """libvirt's lifecycle events of the cluster's VMs, with host monotonic times. The lab's own
    power actions are marked, so that what remains is what the cluster's fencing did."""

    #: (node, event, time.monotonic(), own) in arrival order; event e.g. "Stopped Destroyed"
    events: list[tuple[str, str, float, bool]] = field(default_factory=list)
    _own: dict[tuple[str, str], int] = field(default_factory=dict)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._proc = subprocess.Popen(["virsh", "event", "--loop", "--event", "lifecycle"],
                                      stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, name="libvirt-events", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._proc is not None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def expect_own(self, node: str, kind: str) -> None:
        """The lab is about to cause a ``kind`` ("Stopped" or "Started") event of ``node``."""
        with self._lock:
            self._own[(node, kind)] = self._own.get((node, kind), 0) + 1

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        pattern = re.compile(rf"for domain '?{PREFIX}(\w+)'?: (\w+)(?: (\w+))?")
        for line in self._proc.stdout:
            m = pattern.search(line)
            if not m:
                continue
            node, kind = m.group(1), m.group(2)
            with self._lock:
                own = self._own.get((node, kind), 0) > 0
                if own:
                    self._own[(node, kind)] -= 1
                self.events.append((node, f"{kind} {m.group(3) or ''}".strip(), time.monotonic(), own))

    def fenced_since(self, node: str, since: float) -> float | None:
        """Seconds after ``since`` of the first power action on ``node`` that the lab did not
        do itself (fence_virsh: off, or on for a node that was off already), or None."""
        with self._lock:
            return next((t - since for n, event, t, own in self.events
                         if n == node and t >= since and not own
                         and event.split()[0] in ("Stopped", "Started")), None)


class VagrantLab(ClusterQueries):
    """``vagrant up`` (vagrant/Vagrantfile), the scenarios' questions, ``vagrant destroy``."""

    instrument = "VAGRANTCAM"
    sensors = ["R22_S00", "R22_S01", "R22_S10", "R22_S11"]
    vips = {"broker": "192.168.56.100", "controller": "192.168.56.101", "receiver": "192.168.56.111"}
    stream_port = 7148
    #: Emulated CPUs (TCG): a node boots and joins in minutes, daemons start in tens of seconds.
    settle_timeout_s = 900.0
    restore_timeout_s = 300.0

    def __init__(self, base: Path, vagrant_dir: Path = VAGRANT_DIR) -> None:
        self.base = Path(base)
        self.vagrant_dir = vagrant_dir
        self.ssh_config = self.base / "ssh-config"
        self.nodes = {n: VagrantNode(n, ip, self.ssh_config) for n, ip in NODES.items()}  # type: ignore[misc]
        self.fencer = LibvirtWatch()
        self.passwords: dict[str, str] = {}
        self.pki = SimpleNamespace(ca_cert=SECRETS / "ca.pem")

    # -- what the host side uses -----------------------------------------------------------
    @property
    def broker_url(self) -> str:
        return f"stomp+ssl://{self.vips['broker']}:61612"

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://fitsflow:{(SECRETS / 'database.password').read_text().strip()}@{NAS}/fitsflow"

    def host_bus(self) -> dict[str, object]:
        return {"credentials_file": str(self.base / f"{HOST_ROLE}.toml"), "tls_ca_file": str(self.pki.ca_cert)}

    def link_kwargs(self) -> dict[str, object]:
        return {"credentials": (HOST_ROLE, self.passwords[HOST_ROLE]), "tls": TlsSettings(ca_file=self.pki.ca_cert)}

    def read_data(self, rel: str) -> bytes:
        """A file of the data tree (``rel`` below /var/lib/fitsflow), read on the NAS."""
        proc = subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "nas", "sudo", "-n", "cat",
                               shlex.quote(f"/srv/fitsflow/{rel}")], capture_output=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"cannot read {rel} on the NAS: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    # -- build and tear down ---------------------------------------------------------------
    def vagrant(self, *args: str, timeout: float = 3600.0) -> subprocess.CompletedProcess[str]:
        return sh("vagrant", *args, cwd=self.vagrant_dir, timeout=timeout)

    def up(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.vagrant("up")
        self.connect()
        print(f"vagrantlab: up in {time.monotonic() - t0:.0f} s", flush=True)
        self.wait_settled(online=list(self.nodes))

    def connect(self) -> None:
        """Use a cluster that is up: SSH settings, passwords, the libvirt event watch."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.ssh_config.write_text(self.vagrant("ssh-config", timeout=120).stdout)
        for line in (SECRETS / "users.properties").read_text().splitlines():
            ident, _, password = line.partition("=")
            self.passwords[ident] = password
        creds = self.base / f"{HOST_ROLE}.toml"
        creds.write_text(f'username = "{HOST_ROLE}"\npassword = "{self.passwords[HOST_ROLE]}"\n')
        creds.chmod(0o600)
        if not self.fencer.running:
            self.fencer.start()

    @property
    def keep(self) -> bool:
        """FITSFLOW_VAGRANT_KEEP=1: leave the cluster up after the tests (for the next run)."""
        return os.environ.get("FITSFLOW_VAGRANT_KEEP") == "1"

    def down(self) -> None:
        self.fencer.stop()
        if not self.keep:
            sh("vagrant", "destroy", "-f", cwd=self.vagrant_dir, check=False, timeout=600)

    def leftovers(self) -> list[str]:
        if self.keep:
            return []
        names = sh("virsh", "list", "--all", "--name", check=False).stdout.split()
        return [f"domain {n}" for n in names if n.startswith(PREFIX)]

    # -- failures --------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """Power cut: the VM is destroyed (no shutdown, no flush)."""
        self.fencer.expect_own(name, "Stopped")
        if sh("virsh", "destroy", PREFIX + name, check=False).returncode:
            raise RuntimeError(f"virsh destroy {PREFIX + name} failed")

    def boot(self, name: str) -> None:
        """Power on (if off) and wait until the node answers over SSH."""
        if not self.nodes[name].up:
            self.fencer.expect_own(name, "Started")
            sh("virsh", "start", PREFIX + name)
        deadline = time.monotonic() + self.settle_timeout_s
        while time.monotonic() < deadline:
            try:
                self.nodes[name].run("true", timeout=20)
                return
            except RuntimeError:
                time.sleep(2)
        raise TimeoutError(f"{name} did not answer over SSH after power on")

    def _cluster_nic(self, name: str) -> str:
        out = sh("virsh", "domiflist", PREFIX + name).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[2] == CLUSTER_NET:
                return fields[4]  # its MAC
        raise RuntimeError(f"{name} has no interface on {CLUSTER_NET}:\n{out}")

    def unplug(self, name: str) -> None:
        """The cluster network's cable pulled (the management network stays, for the test)."""
        sh("virsh", "domif-setlink", PREFIX + name, self._cluster_nic(name), "down")

    def plug(self, name: str) -> None:
        if self.nodes[name].up:
            sh("virsh", "domif-setlink", PREFIX + name, self._cluster_nic(name), "up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "status", "down"])
    args = parser.parse_args()
    lab = VagrantLab(Path(tempfile.mkdtemp(prefix="vagrantlab-")))
    if args.action == "up":
        lab.up()
        print(lab.crm_mon())
    elif args.action == "status":
        lab.connect()
        print(lab.crm_mon())
        lab.fencer.stop()
    else:
        lab.down()
        print("\n".join(lab.leftovers()) or "destroyed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
