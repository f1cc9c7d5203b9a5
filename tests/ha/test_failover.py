"""No single node's failure stops the flow or loses data — on a real 3-node Pacemaker/corosync
cluster (tests/ha/halab.py) running the shipped units under the shipped fitsflow-cib.

Each scenario streams images through the cluster, breaks a node the way a data centre does
(power cut, pulled cable), and measures: time from the failure to the service being back,
images lost and duplicated (goal 0 and 0, catch-up closing the receiver's gap), and when
the cluster fenced the victim (fencing is on, as in production: see halab.py). The figures
are printed at the end of the run (tests/ha/conftest.py) and kept in $FITSFLOW_ARTIFACTS.
Skip locally with ``-m "not ha"``.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from typing import Callable, Iterator

import numpy as np
import pytest
from astropy.io import fits

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.core.bus.stomp_link import StompLink
from fitsflow.core.config import load_config
from fitsflow.core.errors import Disconnected
from fitsflow.core.ingest.registry import Registry
from fitsflow.testing.config import make_site
from fitsflow.testing.stomp_tools import drain

from .camera import Camera
from .report import record
from .halab import Lab
from .vagrantlab import VagrantLab

AnyLab = Lab | VagrantLab

pytestmark = [pytest.mark.ha, pytest.mark.slow, pytest.mark.timeout(1800)]


def _missing(*tools: str) -> bool:
    return os.geteuid() != 0 or not all(shutil.which(t) for t in tools)


#: The nspawn lab (containers, seconds) always; the Vagrant cluster (VMs, minutes under
#: emulation) when FITSFLOW_VAGRANT=1 (.ci/run; vagrant/README.md) — both run the same scenarios.
LABS = [
    pytest.param("nspawn", marks=pytest.mark.skipif(
        _missing("systemd-nspawn", "corosync", "pacemakerd", "pcs", "ip"),
        reason="needs root, systemd-nspawn, corosync, pacemaker, pcs and iproute2")),
    pytest.param("vagrant", marks=[pytest.mark.vagrant, pytest.mark.skipif(
        os.environ.get("FITSFLOW_VAGRANT") != "1" or _missing("vagrant", "virsh"),
        reason="the Vagrant cluster runs with FITSFLOW_VAGRANT=1 (needs vagrant, libvirt: vagrant/host-setup.sh)")]),
]

#: Service restored within this many seconds: the issue's goal (reported; see _restored).
GOAL_S = 5.0
SINGLETONS = {"archive-controller": "fitsflow-archive-controller", "oods": "fitsflow-oods",
              "archive-ingest": "fitsflow-archive-ingest", "header-service": "fitsflow-header-service",
              "panic-mailer": "fitsflow-panic-mailer", "recorder": "fitsflow-recorder",
              "receiver-r1": "fitsflow-receiver@r1", "activemq": "activemq-fitsflow"}


@pytest.fixture(scope="module", params=LABS)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyLab]:
    """The cluster of this module. Its teardown is checked: an HA lab that leaves network
    namespaces, containers, VMs or processes behind fails the run (as a teardown error),
    whatever order the scenarios ran in."""
    lab: AnyLab = (Lab if request.param == "nspawn" else VagrantLab)(tmp_path_factory.mktemp(request.param))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert lab.leftovers() == []


@pytest.fixture(scope="module")
def camera(lab: AnyLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Camera]:
    host = tmp_path_factory.mktemp("camera-host")
    cfg = load_config(make_site(host, [lab.broker_url], instrument=lab.instrument, extra={
        "bus": {**lab.host_bus(), "heartbeat_ms": 2000, "reconnect_max_s": 1.0, "receipt_timeout_s": 3.0}}))
    cam = Camera(cfg, host / "camera-store", (lab.vips["receiver"], lab.stream_port), lab.sensors, lab.instrument)
    cam.start()
    yield cam
    cam.close()
    assert cam.error is None, cam.error


@pytest.fixture(autouse=True)
def whole_cluster(lab: AnyLab) -> Iterator[None]:
    """After each scenario, pass or fail: every node powered and plugged in, the cluster
    settled. A failed scenario left its victim off, and the next one, killing another node
    of the remaining two, lost quorum and failed for that reason only."""
    yield
    if not lab.live():
        return  # torn down (the last test)
    for name, node in lab.nodes.items():
        if node.up:
            lab.plug(name)  # a no-op unless a partition was left in place
        else:
            lab.boot(name)
    lab.wait_settled(online=list(lab.nodes))


def test_the_cluster_runs_the_shipped_broker_configuration(lab: AnyLab) -> None:
    """The broker the scenarios fail over is the one admins deploy: STOMP over TLS only, no
    anonymous or wrong-password login, each role limited to its destinations (a receiver may
    not ask the OODS to ingest). The daemons log in as their own roles (halab.py): one that
    used another role's destination would be refused, and the scenarios would fail."""
    from fitsflow.core.bus.stomp_link import TlsSettings
    from fitsflow.core.errors import Refused

    tls = TlsSettings(ca_file=lab.pki.ca_cert)
    with pytest.raises(Disconnected):  # plaintext STOMP to the TLS port: no session
        StompLink(lab.broker_url.replace("stomp+ssl://", "stomp://"), heartbeat_ms=0,
                  connect_timeout_s=3.0).connect("lab-plain")
    for creds in (None, ("receiver", "not-its-password")):
        with pytest.raises(Refused):
            StompLink(lab.broker_url, heartbeat_ms=0, credentials=creds, tls=tls).connect("lab-anon")
    receiver = StompLink(lab.broker_url, heartbeat_ms=0, credentials=("receiver", lab.passwords["receiver"]), tls=tls)
    receiver.connect("lab-receiver")
    try:
        with pytest.raises(Refused):
            receiver.send("/queue/fitsflow.oods.ingest", "{}", {"persistent": "true"}).result(10)
    finally:
        receiver.close()


# -- helpers ------------------------------------------------------------------------------

def registries(lab: AnyLab) -> dict[str, dict[tuple[str, str], list[str]]]:
    """{table: {(image, sensor): [paths]}} of the OODS and the archive, read on shared storage."""
    out = {}
    for table in ("oods_files", "archive_files"):
        reg = Registry(lab.database_url, table)
        try:
            entries: dict[tuple[str, str], list[str]] = {}
            for e in reg.query():
                key = (e.data_id["image"], f"{e.data_id['raft']}_{e.data_id['sensor']}")
                entries.setdefault(key, []).append(e.path)
            out[table] = entries
        finally:
            reg.close()
    return out


def wait_complete(lab: AnyLab, camera: Camera) -> tuple[int, int]:
    """Until every image the camera sent is in both registries (or timeout): (lost, duplicated)."""
    timeout = max(240.0, 2 * lab.restore_timeout_s)
    want = {(r.image, s) for r in camera.recipes for s in lab.sensors}
    deadline = time.monotonic() + timeout
    lost = dup = len(want)
    while time.monotonic() < deadline:
        regs = registries(lab)
        lost = max(len(want - set(entries)) for entries in regs.values())
        dup = sum(len(p) - 1 for entries in regs.values() for p in entries.values())
        if lost == 0:
            break
        time.sleep(2)
    else:
        for table, entries in registries(lab).items():  # for the post-mortem (node journals: the lab's nodes/*/journal)
            print(f"{table}: missing {sorted(want - set(entries))}")
    return lost, dup


def check_pixels(lab: AnyLab, camera: Camera, images: int = 3) -> None:
    """The last few images, bit-exact in the OODS repository."""
    entries = registries(lab)["oods_files"]
    for r in camera.recipes[-images:]:
        for index, s in enumerate(lab.sensors):
            with fits.open(io.BytesIO(lab.read_data(f"data/oods/repo/{entries[(r.image, s)][0]}"))) as hdul:
                assert np.array_equal(hdul[1].data, sensor_pixels(r.seed, r.image_seq, index, r.rows, r.cols,
                                                                   r.dtype)), f"{r.image} {s} differs"


def move_off(lab: AnyLab, resource: str, node: str, to: str | None = None) -> None:
    """Make sure ``resource`` (a group) does not run on ``node``: move it (to ``to`` or
    anywhere else) with a temporary constraint, then drop the constraint."""
    if node not in lab.where(resource) and (to is None or to in lab.where(resource)):
        return
    target = to or next(n for n in lab.nodes if n != node and lab.nodes[n].up)
    run = lab.live()[0].run
    run("crm_resource", "--move", "-r", resource, "-N", target)
    lab.wait_settled()
    run("crm_resource", "--clear", "-r", resource)
    lab.wait_settled()
    assert target in lab.where(resource), lab.crm_mon()


def check_single_copies(lab: AnyLab) -> None:
    """Every singleton unit active on exactly one node, each VIP held by exactly one node —
    asked of each node's own systemd and interfaces, not of Pacemaker."""
    running = {name: lab.active_units(unit) for name, unit in SINGLETONS.items()}
    assert all(len(nodes) == 1 for nodes in running.values()), running
    vips = {ip: lab.holders(ip) for ip in lab.vips.values()}
    assert all(len(nodes) == 1 for nodes in vips.values()), vips


def wait_restored(what: str, probe, timeout: float) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got is not None:
            return float(got)
        time.sleep(0.1)
    raise AssertionError(f"{what}: not restored within {timeout} s")


def fitsflow_units(lab: AnyLab, node: str) -> list[str]:
    """fitsflow units active (or still stopping) on ``node``, by its own systemd."""
    out = lab.nodes[node].run("systemctl", "list-units", "--state=active,activating,deactivating", "--plain",
                              "--no-legend", "fitsflow-*", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_during_stream(lab: AnyLab, camera: Camera, victim: str, what: str,
                       back: Callable[[float], float | None]) -> tuple[float, float, int, int]:
    """Power ``victim`` off while images flow; ``back(t0)`` says how long after ``t0`` the
    service was back (None: not yet). Returns (restored after s, fenced after s, images
    lost, duplicated)."""
    camera.shoot(6)
    t0 = time.monotonic()
    lab.kill(victim)
    restored = wait_restored(what, lambda: back(t0), lab.restore_timeout_s)
    fenced = wait_fenced(lab, victim, t0)
    camera.shoot(8)
    camera.stop_shooting()
    lost, dup = wait_complete(lab, camera)
    return restored, fenced, lost, dup


def wait_fenced(lab: AnyLab, victim: str, t0: float) -> float:
    """Seconds after ``t0`` at which the cluster fenced ``victim``: Pacemaker recovers a lost
    node's resources only once it is fenced, so a failover implies it (asserted here)."""
    return wait_restored(f"fencing of {victim}", lambda: lab.fencer.fenced_since(victim, t0),
                          timeout=lab.restore_timeout_s)


def reboot(lab: AnyLab, node: str) -> None:
    """Power the node on again and wait until it is back in the cluster."""
    lab.boot(node)
    lab.wait_settled(online=list(lab.nodes))


# -- scenarios ----------------------------------------------------------------------------

def test_1_controller_node_killed(lab: AnyLab, camera: Camera) -> None:
    """The archive controller's node loses power mid-stream: controller and VIP come up on
    another node; the images in flight finish; nothing lost or duplicated."""
    # A node that runs the controller but neither the broker nor the receiver (one failure).
    victim = lab.where("archive-controller")[0]
    move_off(lab, "broker", victim)
    move_off(lab, "recv-r1", victim, to=next(n for n in ("n1", "n2") if n != victim))
    restored, fenced, lost, dup = kill_during_stream(
        lab, camera, victim, "archive controller", lambda t0: camera.back_on("archive-controller@", t0, not_host=victim))
    new = lab.where("archive-controller")
    record("1 controller node killed", victim, new, restored, lost, dup, len(camera.recipes),
           fenced_s=round(fenced, 2), vip=lab.holders(lab.vips['controller']))
    assert lost == 0 and dup == 0, (lost, dup)
    assert len(new) == 1 and new[0] != victim and lab.holders(lab.vips['controller']) == new
    check_pixels(lab, camera)
    reboot(lab, victim)
    check_single_copies(lab)


def test_2_broker_node_killed(lab: AnyLab, camera: Camera, unique: str) -> None:
    """The broker's node loses power: ActiveMQ restarts on another node from the shared
    KahaDB; persistent messages survive; producers' outboxes and consumers carry on."""
    victim = lab.where("activemq")[0]
    if victim in lab.where("receiver-r1"):  # the receiver's failure is scenario 3
        move_off(lab, "broker", victim)
        victim = lab.where("activemq")[0]
    # Persistent messages waiting in a queue nobody reads yet: they must survive the move.
    queue, sent = f"/queue/halab.probe.{unique}", 50
    link = StompLink(lab.broker_url, heartbeat_ms=0, **lab.link_kwargs())  # type: ignore[arg-type]
    link.connect(f"probe-{unique}")
    for n in range(sent):
        link.send(queue, f"probe {n}", {"persistent": "true"}).result(10)
    link.close()

    def answers(t0: float) -> float | None:
        probe = StompLink(lab.broker_url, heartbeat_ms=0, connect_timeout_s=1.0, **lab.link_kwargs())  # type: ignore[arg-type]
        try:
            probe.connect(f"probe-{unique}-{time.monotonic()}")
        except Disconnected:
            return None
        probe.close()
        return time.monotonic() - t0
    restored, fenced, lost, dup = kill_during_stream(lab, camera, victim, "broker", answers)
    bodies = drain(lab.broker_url, queue, expect=sent, timeout=30, **lab.link_kwargs())
    record("2 broker node killed", victim, lab.where("activemq"), restored, lost, dup, len(camera.recipes),
           fenced_s=round(fenced, 2), persistent=f"{len(bodies)}/{sent}")
    assert len(bodies) == sent, f"{sent - len(bodies)} persistent messages lost"
    assert lost == 0 and dup == 0, (lost, dup)
    assert lab.where("activemq") and lab.where("activemq")[0] != victim
    reboot(lab, victim)
    check_single_copies(lab)


def test_3_receive_node_killed(lab: AnyLab, camera: Camera) -> None:
    """The receive node loses power: its stream VIP and receiver move to the spare; the
    camera keeps sending to the VIP; the images sent during detection come back by catch-up."""
    victim = lab.where("receiver-r1")[0]
    for group in ("broker", "controller"):  # one failure at a time
        move_off(lab, group, victim)
    spare = next(n for n in ("n1", "n2") if n != victim)
    restored, fenced, lost, dup = kill_during_stream(lab, camera, victim, "receiver",
                                                     lambda t0: camera.back_on("receiver@r1", t0, host=spare))
    record("3 receive node killed", victim, lab.where("receiver-r1"), restored, lost, dup, len(camera.recipes),
           fenced_s=round(fenced, 2), vip=lab.holders(lab.vips['receiver']))
    assert lost == 0 and dup == 0, (lost, dup)
    assert lab.where("receiver-r1") == [spare] and lab.holders(lab.vips['receiver']) == [spare]
    check_pixels(lab, camera)
    reboot(lab, victim)
    check_single_copies(lab)


def test_4_partitioned_node(lab: AnyLab, camera: Camera) -> None:
    """A node's cable is pulled: the majority fences it (powers it off) and serves; the
    isolated node's singletons end with the fencing, never running beside their new copies
    for longer; powered on again, it rejoins and nothing runs twice."""
    victim = lab.where("archive-controller")[0]
    for group in ("broker", "recv-r1"):
        move_off(lab, group, victim, to=None if group == "broker" else next(n for n in ("n1", "n2") if n != victim))
    majority = [n for n in lab.nodes if n != victim]
    camera.shoot(6)
    units_before = set(fitsflow_units(lab, victim))
    gone: dict[str, float] = {}  # unit -> seconds after the cut when the isolated node had stopped it
    t0 = time.monotonic()
    lab.unplug(victim)

    def minority_stopped() -> float | None:
        fenced = lab.fencer.fenced_since(victim, t0)
        if fenced is not None:  # powered off: everything on it ended then
            for u in units_before - set(gone):
                gone[u] = round(fenced, 1)
            return fenced
        try:
            units = set(fitsflow_units(lab, victim))
        except RuntimeError:  # powered off between the two checks: the next round sees the fencing
            return None
        for u in units_before - units - set(gone):
            gone[u] = round(time.monotonic() - t0, 1)
        # (holders() skips a node fenced while it is being asked: seen once in CI)
        return time.monotonic() - t0 if not units and victim not in lab.holders(lab.vips['controller']) else None
    watcher = threading.Thread(target=lambda: gone.setdefault(
        "all", round(wait_restored("the isolated node's resources stopping", minority_stopped, lab.restore_timeout_s), 1)))
    watcher.start()
    restored = wait_restored("archive controller", lambda: camera.back_on("archive-controller@", t0, not_host=victim),
                             lab.restore_timeout_s)
    watcher.join()
    assert "all" in gone, \
        f"the isolated node still runs {lab.ask(lab.nodes[victim], 'systemctl', 'list-units', 'fitsflow-*')}"
    stopped = gone.pop("all")
    fenced = wait_fenced(lab, victim, t0)
    camera.shoot(8)
    camera.stop_shooting()
    if lab.nodes[victim].up:  # not fenced (the assertion below says so): heal the cut
        lab.plug(victim)
    else:  # fenced: powered off; power it on (with its cable in)
        lab.boot(victim)
    lab.wait_settled(on=majority[0], online=list(lab.nodes))
    lost, dup = wait_complete(lab, camera)
    record("4 node partitioned", victim, lab.where("archive-controller"), restored, lost, dup, len(camera.recipes),
           fenced_s=round(fenced, 2), minority_stopped_s=round(stopped, 2), minority_units_stopped_at=gone)
    assert lost == 0 and dup == 0, (lost, dup)
    check_single_copies(lab)
