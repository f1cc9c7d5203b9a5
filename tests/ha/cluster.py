"""What the HA scenarios ask of a cluster, whatever its nodes are (containers of the nspawn
lab, VMs of the Vagrant cluster): Pacemaker's view and each node's own (systemd, interfaces)."""

from __future__ import annotations

import subprocess
import time
from typing import Protocol


class ClusterNode(Protocol):
    name: str

    @property
    def up(self) -> bool: ...

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``cmd`` as root on the node; raises RuntimeError if the node is down."""
        ...


class ClusterQueries:
    """Mixed into a lab that has ``nodes``: name → ClusterNode."""

    nodes: dict[str, ClusterNode]
    #: How long the cluster may take to settle, and a failed-over service to come back.
    settle_timeout_s = 180.0
    restore_timeout_s = 90.0

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.up]


    # -- cluster state -----------------------------------------------------------------
    def crm_mon(self, on: str | None = None) -> str:
        node = self.nodes[on] if on else self.live()[0]
        return node.run("crm_mon", "-1", "-r", check=False).stdout

    def wait_settled(self, on: str | None = None, online: list[str] | None = None, timeout: float | None = None) -> None:
        """Until ``on`` sees exactly ``online`` (default: every live node) online, with
        quorum, and Pacemaker has no pending actions."""
        timeout = timeout or self.settle_timeout_s
        want = sorted(online or [n.name for n in self.live()])
        node = self.nodes[on] if on else self.live()[0]
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = node.run("crm_mon", "-1", check=False).stdout
            if f"Online: [ {' '.join(want)} ]" in out and "partition with quorum" in out:
                left = max(1, int(deadline - time.monotonic()))
                if node.run("crm_resource", "--wait", f"--timeout={left}s", check=False, timeout=left + 60).returncode == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"cluster not settled with {want} online in {timeout} s:\n{out}")

    def where(self, resource: str, on: str | None = None) -> list[str]:
        """The nodes where Pacemaker says ``resource`` runs (crm_resource --locate)."""
        node = self.nodes[on] if on else self.live()[0]
        out = node.run("crm_resource", "--locate", "-r", resource, check=False).stdout
        return sorted(line.rsplit(" ", 1)[-1] for line in out.splitlines() if "is running on:" in line)

    def ask(self, node: ClusterNode, *cmd: str) -> str | None:
        """``cmd``'s output on ``node``; None if the node is down, or went down meanwhile (the
        fencer may power it off at any moment of a scenario)."""
        try:
            return node.run(*cmd, check=False).stdout
        except RuntimeError:
            return None

    def active_units(self, unit: str) -> list[str]:
        """The nodes where systemd has ``unit`` active, asked of every live node itself."""
        return sorted(n.name for n in self.live()
                      if (self.ask(n, "systemctl", "is-active", unit) or "").strip() in ("active", "activating",
                                                                                          "deactivating"))

    def holders(self, ip: str) -> list[str]:
        """The live nodes that have ``ip`` on an interface."""
        return sorted(n.name for n in self.live() if f" {ip}/" in (self.ask(n, "ip", "-o", "addr") or ""))
