"""pacemaker/fitsflow-cib, without a cluster: build the CIB offline with pcs -f, check it with
crm_verify, and ask Pacemaker's own scheduler (crm_simulate) where everything runs when all
nodes are up and when nodes fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "pacemaker" / "fitsflow-cib"
NODES = ["node1", "node2", "node3"]

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("pcs", "crm_verify", "crm_simulate", "crm_mon")),
                                reason="pcs and pacemaker-cli-utils are not installed (dev.sh setup installs them)")


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def cib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("cib")
    conf = d / "cluster.conf"
    conf.write_text((REPO / "pacemaker" / "fitsflow-cluster.conf").read_text()
                    .replace('FENCING="required"', 'FENCING="none"')
                    .replace('DATA_FS_DEVICE=""', 'DATA_FS_DEVICE="nas:/export/fitsflow"'))
    path = d / "cib.xml"
    path.write_text(_run("cibadmin", "--empty").stdout)
    built = _run(SCRIPT, "--config", conf, "-f", path)
    assert built.returncode == 0, built.stderr
    yield path


def placement(cib: Path, tmp_path: Path, *, up: list[str], down: list[str] = ()) -> dict[str, list[str]]:
    """Run the scheduler on ``cib`` with nodes brought up and then down; resource → nodes."""
    state = tmp_path / "up.xml"
    args = [a for n in up for a in ("-u", n)]
    assert _run("crm_simulate", "-x", cib, "-q", "1", *args, "-S", "-O", state).returncode == 0
    if down:
        after = tmp_path / "down.xml"
        args = [a for n in down for a in ("-d", n)]
        assert _run("crm_simulate", "-x", state, "-q", "1", *args, "-S", "-O", after).returncode == 0
        state = after
    mon = _run("crm_mon", "-1", "--output-as=xml", env={"CIB_file": str(state)})
    assert mon.returncode == 0, mon.stderr
    where: dict[str, list[str]] = {}
    for res in ET.fromstring(mon.stdout).iter("resource"):
        where.setdefault(res.get("id", ""), []).extend(n.get("name", "") for n in res.iter("node"))
    return where


def test_cib_verifies_clean(cib: Path) -> None:
    verify = _run("crm_verify", "-x", cib, "-V")
    assert verify.returncode == 0 and verify.stdout == "" and verify.stderr == "", verify.stdout + verify.stderr


def test_everything_runs_where_it_should_with_all_nodes_up(cib: Path, tmp_path: Path) -> None:
    where = placement(cib, tmp_path, up=NODES)
    singletons = ["broker-vip", "activemq", "controller-vip", "archive-controller", "oods", "archive-ingest",
                  "header-service", "panic-mailer", "recorder"]
    assert all(len(where[r]) == 1 for r in singletons), where
    assert where["broker-vip"] == where["activemq"]
    # The controller with its VIP, the ingesters with the controller (they share its staging).
    assert where["controller-vip"] == where["archive-controller"] == where["oods"] == where["archive-ingest"]
    assert sorted(where["forwarder"]) == NODES and sorted(where["data-fs"]) == NODES
    assert where["receiver-r1"] == where["recv-r1-vip"] == ["node1"]  # preferred nodes
    assert where["receiver-r2"] == where["recv-r2-vip"] == ["node2"]


def test_a_failed_receive_node_moves_its_stream_to_the_spare(cib: Path, tmp_path: Path) -> None:
    where = placement(cib, tmp_path, up=NODES, down=["node1"])
    assert where["receiver-r1"] == where["recv-r1-vip"] == ["node2"]
    assert "node1" not in sum(where.values(), [])
    assert len(where["activemq"]) == 1 and len(where["archive-controller"]) == 1


def test_a_receiver_never_runs_outside_its_two_nodes(cib: Path, tmp_path: Path) -> None:
    where = placement(cib, tmp_path, up=NODES, down=["node1", "node2"])
    assert where.get("receiver-r1", []) == []  # node3 is neither preferred nor spare for r1
    assert where["receiver-r2"] == ["node3"]  # r2's spare
    assert where["activemq"] == ["node3"] and where["archive-controller"] == ["node3"]


def test_the_script_refuses_to_configure_twice(cib: Path, tmp_path: Path) -> None:
    again = _run(SCRIPT, "--config", REPO / "pacemaker" / "fitsflow-cluster.conf", "-f", cib)
    assert again.returncode == 1 and "already has fitsflow resources" in again.stderr


def test_fencing_is_required_unless_a_lab_says_otherwise(tmp_path: Path) -> None:
    """The shipped configuration enables fencing: without a stonith device, Pacemaker refuses to
    start anything — never a silent cluster without fencing."""
    path = tmp_path / "cib.xml"
    path.write_text(_run("cibadmin", "--empty").stdout)
    assert _run(SCRIPT, "--config", REPO / "pacemaker" / "fitsflow-cluster.conf", "-f", path).returncode == 0
    verify = _run("crm_verify", "-x", path, "-V")
    assert verify.returncode != 0 and "STONITH" in (verify.stdout + verify.stderr), verify.stderr


def test_the_stonith_devices_configured_are_created(tmp_path: Path) -> None:
    """STONITH_DEVICES lines become stonith resources; with one, the CIB verifies clean."""
    conf = tmp_path / "cluster.conf"
    conf.write_text((REPO / "pacemaker" / "fitsflow-cluster.conf").read_text().replace(
        'STONITH_DEVICES=""', 'STONITH_DEVICES="fence-node1 fence_ipmilan ip=10.0.1.11 username=admin '
                              'password=x lanplus=1 pcmk_host_list=node1\n'
                              'fence-vms fence_virsh ip=10.0.1.1 username=root password=x '
                              'pcmk_host_map=node2:vm2;node3:vm3"'))
    path = tmp_path / "cib.xml"
    path.write_text(_run("cibadmin", "--empty").stdout)
    built = _run(SCRIPT, "--config", conf, "-f", path)
    assert built.returncode == 0, built.stderr
    primitives = {p.get("id"): p for p in ET.parse(path).iter("primitive") if p.get("class") == "stonith"}
    assert sorted(primitives) == ["fence-node1", "fence-vms"]
    assert primitives["fence-node1"].get("type") == "fence_ipmilan"
    attrs = {n.get("name"): n.get("value") for n in primitives["fence-vms"].iter("nvpair")}
    assert attrs["pcmk_host_map"] == "node2:vm2;node3:vm3" and attrs["ip"] == "10.0.1.1"
    verify = _run("crm_verify", "-x", path, "-V")
    assert verify.returncode == 0, verify.stdout + verify.stderr
