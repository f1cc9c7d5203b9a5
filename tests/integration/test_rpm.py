"""The RPMs: `make rpm` builds them on this Debian machine for EL10 and for EL9, they lay files
out where the FHS and Fedora put them, for the target release's Python, rpmlint finds no error,
and dnf installs, upgrades and removes them in a scratch root (a test-only base stub stands in
for EL), running their scriptlets. On EL9, fitsflow-runtime's interpreter imports every daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("rpmbuild", "rpmlint", "createrepo_c", "dnf", "make")

# The first test of each release builds its packages in its fixture (EL10: spead2, msgspec and
# isal compiled from source, 4-6 min on 2 cores), which pytest-timeout counts as the test's.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS) or not Path("/bin/busybox").exists(),
                                 reason="rpm, rpmlint, createrepo-c, dnf, busybox-static needed (dev.sh setup)")]


def run(*cmd: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1500, **kw)  # type: ignore[call-overload]
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """fitsflow's packages for EL10 and what EL10 + EPEL 10 lack."""
    top = tmp_path_factory.mktemp("rpmtop")
    run("make", "-C", REPO, "rpm", "deps-rpm", f"TOP={top}", "RELEASE=1", "DIST=el10")
    yield top


@pytest.fixture(scope="module")
def built_el9(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """fitsflow's packages for EL9 and fitsflow-runtime (its dependencies' wheels, downloaded
    and checked against rpm/runtime/el9-requirements.txt)."""
    top = tmp_path_factory.mktemp("rpmtop-el9")
    run("make", "-C", REPO, "rpm", "runtime-rpm", f"TOP={top}", "RELEASE=1", "DIST=el9")
    yield top


def rpms(top: Path) -> list[Path]:
    return sorted((top / "RPMS").glob("*/*.rpm"))


def name_of(rpm: Path) -> str:
    return rpm.name.rsplit("-", 2)[0]


def base_stub(tmp_path: Path, rhel: int) -> list[Path]:
    """The test-only stand-in for an EL base system of that release."""
    top = tmp_path / f"stubtop{rhel}"
    run("rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", "--define", "busybox /bin/busybox",
        "--define", f"rhel {rhel}", REPO / "tests" / "rpm" / "fitsflow-test-base.spec")
    return list((top / "RPMS").rglob("*.rpm"))


def scratch_dnf(tmp_path: Path, packages: list[Path], rhel: int) -> tuple[list[str], Path, Path, dict[str, str]]:
    """A local repository of ``packages`` and the dnf command line of a scratch root."""
    repo, root = tmp_path / "repo", tmp_path / "root"
    repo.mkdir()
    for p in packages:
        shutil.copy(p, repo)
    run("createrepo_c", "-q", repo)
    dnf = ["dnf", "-y", "-q", f"--installroot={root}", f"--repofrompath=local,file://{repo}", "--disablerepo=*",
           "--enablerepo=local", "--nogpgcheck", "--setopt=reposdir=/dev/null", f"--releasever={rhel}",
           f"--setopt=cachedir={tmp_path / 'cache'}", "--setopt=install_weak_deps=False"]
    # Debian's rpm keeps its database under the caller's home otherwise.
    return dnf, repo, root, dict(os.environ, HOME=str(tmp_path))


def test_one_package_per_daemon_and_files_where_fedora_puts_them(built: Path) -> None:
    names = {name_of(p) for p in rpms(built)}
    assert names == {"python3-inotify_simple", "python3-spead2", "python3-msgspec", "python3-isal", "python3-fitsflow", "fitsflow-broker", "fitsflow-receiver", "fitsflow-header-service", "fitsflow-forwarder",
                     "fitsflow-archive-controller", "fitsflow-oods", "fitsflow-archive-ingest",
                     "fitsflow-panic-mailer", "fitsflow-recorder", "fitsflow-pacemaker", "fitsflow-demo"}
    files = {name_of(p): run("rpm", "-qlp", p).stdout.split() for p in rpms(built)}
    lib = files["python3-fitsflow"]
    # EL10's Python: /usr/lib/python3.12, and so python(abi) = 3.12
    assert any(f.startswith("/usr/lib/python3.12/site-packages/fitsflow/core/") for f in lib), lib[:20]
    requires = run("rpm", "-qp", "--requires", *rpms(built)).stdout.splitlines()
    assert {r for r in requires if r.startswith("python(abi)")} == {"python(abi) = 3.12"}
    # spead2 is compiled for EL10's Python: its extension module is named for CPython 3.12
    spead2 = files["python3-spead2"]
    assert "/usr/lib64/python3.12/site-packages/spead2/_spead2.cpython-312-x86_64-linux-gnu.so" in spead2, spead2
    assert "/etc/fitsflow/fitsflow.toml" in lib and "/usr/bin/fitsflow" in lib
    assert "/usr/lib/sysusers.d/fitsflow.conf" in lib and "/usr/lib/tmpfiles.d/fitsflow.conf" in lib
    assert "/usr/share/doc/fitsflow/operations.md" in lib  # the units' Documentation=
    # the harness, the demo and the camera simulator are not on a daemon host (fitsflow-demo)
    assert not [f for f in lib if "/fitsflow/testing/" in f or "/fitsflow/camera_sim/" in f or "-demo" in f]
    assert "/usr/bin/fitsflow-demo" in files["fitsflow-demo"] and "/usr/bin/fitsflow-camera-sim" in files["fitsflow-demo"]
    assert any("/site-packages/fitsflow/testing/broker.py" in f for f in files["fitsflow-demo"])
    assert "/usr/lib/systemd/system/fitsflow-.service.d/10-fitsflow.conf" in lib  # what every unit shares
    receiver = files["fitsflow-receiver"]
    assert [f for f in receiver if "/man/" not in f] == [
        "/usr/bin/fitsflow-receiver", "/usr/lib/sysctl.d/90-fitsflow-receiver.conf",
        "/usr/lib/systemd/system/fitsflow-receiver@.service", "/usr/lib/systemd/system/fitsflow-receiver@.service.d",
        "/usr/lib/systemd/system/fitsflow-receiver@.service.d/20-receiver.conf"]
    assert [f for f in receiver if "/man/" in f][0].startswith("/usr/share/man/man1/fitsflow-receiver.1"), receiver
    assert any(f.startswith("/usr/share/man/man1/fitsflow.1") for f in lib)  # tests/unit/test_manpages.py
    assert "/usr/sbin/fitsflow-cib" in files["fitsflow-pacemaker"]
    everything = sum(files.values(), [])
    assert not [f for f in everything if f.startswith(("/usr/local", "/usr/com", "/var/lib", "/opt"))]
    config = run("rpm", "-qp", "--configfiles", *[p for p in rpms(built) if p.name.startswith("python3-")]).stdout
    assert config.split() == ["/etc/fitsflow/fitsflow.toml"]
    flags = dict(reversed(line.split(" ", 1)) for line in run(
        "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]",
        *[p for p in rpms(built) if p.name.startswith("python3-")]).stdout.splitlines() if " " in line)
    assert set(flags["/etc/fitsflow/fitsflow.toml"]) >= {"c", "n"}  # %config(noreplace)


def built_from(top: Path, spec: str) -> list[Path]:
    """The source and binary packages of ``spec`` (by its source package's name)."""
    srpms = [p for p in (top / "SRPMS").glob("*.rpm") if name_of(p) == Path(spec).stem]
    binaries = [p for p in rpms(top) if run("rpm", "-qp", "--qf", "%{SOURCERPM}", p).stdout in {s.name for s in srpms}]
    return [*srpms, *binaries]


@pytest.mark.parametrize("release, spec, rpmlintrc", [
    ("el10", "rpm/fitsflow.spec", "rpm/rpmlintrc"),
    ("el10", "rpm/deps/python-spead2.spec", "rpm/deps/python-deps.rpmlintrc"),
    ("el10", "rpm/deps/python-inotify_simple.spec", "rpm/deps/python-deps.rpmlintrc"),
    ("el10", "rpm/deps/python-msgspec.spec", "rpm/deps/python-deps.rpmlintrc"),
    ("el10", "rpm/deps/python-isal.spec", "rpm/deps/python-deps.rpmlintrc"),
    ("el9", "rpm/fitsflow.spec", "rpm/rpmlintrc"),
    ("el9", "rpm/deps/fitsflow-runtime.spec", "rpm/deps/fitsflow-runtime.rpmlintrc"),
])
def test_rpmlint_finds_no_error(release: str, spec: str, rpmlintrc: str, request: pytest.FixtureRequest) -> None:
    top = request.getfixturevalue("built" if release == "el10" else "built_el9")
    mine = built_from(top, spec)
    assert len(mine) >= 2, mine
    lint = run("rpmlint", "-r", REPO / rpmlintrc, REPO / spec, *mine, check=False)
    assert " 0 errors" in lint.stdout, lint.stdout[-4000:]


def test_dnf_installs_upgrades_and_removes_in_a_scratch_root(built: Path, tmp_path: Path) -> None:
    dnf, repo, root, env = scratch_dnf(tmp_path, [*rpms(built), *base_stub(tmp_path, 10)], rhel=10)

    def rpmq(*args: str) -> str:
        return run("rpm", f"--root={root}", *args, env=env, check=False).stdout

    # Every role package, and what pulls in all of them (the demo), with their dependencies.
    # (fitsflow-broker needs apache-activemq: test_the_broker_package_installs_with_apache_activemq)
    roles = [name_of(p) for p in rpms(built) if p.name.startswith("fitsflow-") and name_of(p) != "fitsflow-broker"]
    out = run(*dnf, "install", *roles, env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert (root / "usr/bin/fitsflow-receiver").is_file() and (root / "etc/fitsflow/fitsflow.toml").is_file()
    assert sorted(r for r in roles if r not in rpmq("-qa")) == [], rpmq("-qa")
    assert (root / "usr/lib/systemd/system/fitsflow-.service.d/10-fitsflow.conf").is_file()
    assert "python3-fitsflow-0.1.0-1.el10" in rpmq("-qa") and "python3-inotify_simple-1.3.5-1" in rpmq("-qa")
    # The receiver's spead2 is fitsflow's package (EL10 + EPEL 10 have none), and works as installed.
    assert "python3-spead2-4.5.1-1.el10" in rpmq("-qa")
    udp_loopback_through(root / "usr/lib64/python3.12/site-packages", built / "el10-build-python" / "bin" / "python")
    calls = root / "var/log/fitsflow-test-scriptlets.log"
    # On EL10 rpm (>= 4.19) makes the service user from the sysusers.d file itself: no %pre
    # (Debian's rpm 4.18 does not, so the user is not checked here; the EL9 test checks %pre).
    log = calls.read_text().splitlines()
    assert not [c for c in log if c.startswith(("groupadd", "useradd"))], log
    assert "useradd" not in run("rpm", "-qp", "--scripts", *[p for p in rpms(built) if name_of(p) == "python3-fitsflow"]).stdout
    # %post installed the units.
    assert "systemd-update-helper install-system-units fitsflow-receiver@.service" in log, log
    calls.write_text("")
    # An admin edits the configuration; an upgrade keeps the edit (%config(noreplace)).
    conf = root / "etc/fitsflow/fitsflow.toml"
    conf.write_text(conf.read_text() + "\n# site edit\n")

    run("make", "-C", REPO, "rpm", f"TOP={tmp_path / 'top2'}", "RELEASE=2", "DIST=el10")
    for p in (tmp_path / "top2" / "RPMS" / "noarch").glob("*.rpm"):
        shutil.copy(p, repo)
    run("createrepo_c", "-q", "--update", repo)
    out = run(*dnf, "--refresh", "upgrade", env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    installed = rpmq("-qa")
    assert "fitsflow-receiver-0.1.0-2.el10" in installed and "python3-fitsflow-0.1.0-2.el10" in installed
    assert "-0.1.0-1." not in installed
    assert conf.read_text().endswith("# site edit\n")
    log = calls.read_text().splitlines()
    assert "systemd-update-helper mark-restart-system-units fitsflow-receiver@*.service" in log, log
    assert not any("install-system-units fitsflow-receiver" in c for c in log)  # not a first install
    calls.write_text("")

    out = run(*dnf, "remove", *roles, "python3-fitsflow", env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert not (root / "usr/bin/fitsflow-receiver").exists()
    assert not list((root / "usr/lib").glob("python3*/site-packages/fitsflow"))
    assert (root / "etc/fitsflow/fitsflow.toml.rpmsave").read_text().endswith("# site edit\n")
    log = calls.read_text().splitlines()
    assert "systemd-update-helper remove-system-units fitsflow-forwarder@*.service" in log, log


def udp_loopback_through(site: Path, python: Path) -> None:
    """A heap sent and received over UDP on loopback by the spead2 installed under ``site``,
    run by a Python of the package's version (``-I``: nothing from this machine's spead2)."""
    script = """
import asyncio, socket, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, spead2, spead2.recv.asyncio, spead2.send.asyncio
assert spead2.__file__.startswith(sys.argv[1]), spead2.__file__
async def run():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rx = spead2.recv.asyncio.Stream(spead2.ThreadPool())
    rx.add_udp_reader(port, bind_hostname="127.0.0.1")
    tx = spead2.send.asyncio.UdpStream(spead2.ThreadPool(), [("127.0.0.1", port)])
    items = spead2.send.ItemGroup()
    items.add_item(0x1000, "pixels", "", shape=(1000,), dtype=np.uint16, value=np.arange(1000, dtype=np.uint16))
    await tx.async_send_heap(items.get_heap())
    got = spead2.ItemGroup()
    got.update(await rx.get())
    assert (got["pixels"].value == np.arange(1000)).all()
    print("ok", spead2.__version__)
asyncio.run(asyncio.wait_for(run(), 30))
"""
    out = run(python, "-I", "-c", script, site)
    assert out.stdout.split() == ["ok", "4.5.1"], out.stdout + out.stderr


def test_el9_runs_on_python311_with_fitsflow_runtime(built_el9: Path, tmp_path: Path) -> None:
    """EL9: every role installs with dnf from AppStream's python3.11 and fitsflow-runtime alone,
    and the installed runtime's interpreter runs the programs (this machine's python3.11 stands
    in for AppStream's: the symlink of the runtime points at /usr/bin/python3.11)."""
    packages = rpms(built_el9)
    names = {name_of(p) for p in packages}
    assert "fitsflow-runtime" in names and "fitsflow-receiver" in names
    requires = run("rpm", "-qp", "--requires", *packages).stdout.splitlines()
    # Nothing for EL9's python3 (3.9), nothing EPEL 9 lacks: the runtime holds it all.
    assert not [r for r in requires if r.startswith(("python(abi)", "python3dist("))], requires
    lib = run("rpm", "-qlp", *[p for p in packages if name_of(p) == "python3-fitsflow"]).stdout.split()
    assert "/usr/lib/fitsflow-runtime/lib/python3.11/site-packages/fitsflow/core/bus/bus.py" in lib
    provides = run("rpm", "-qp", "--provides", *[p for p in packages if name_of(p) == "fitsflow-runtime"]).stdout
    assert "bundled(python3.11dist(astropy))" in provides and "bundled(python3.11dist(spead2))" in provides

    dnf, repo, root, env = scratch_dnf(tmp_path, [*packages, *base_stub(tmp_path, 9)], rhel=9)
    roles = sorted(n for n in names if n.startswith("fitsflow-") and n not in ("fitsflow-runtime", "fitsflow-broker"))
    out = run(*dnf, "install", *roles, env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    installed = run("rpm", f"--root={root}", "-qa", env=env).stdout
    assert "fitsflow-runtime-1-1.el9" in installed and "python3-fitsflow-0.1.0-1.el9" in installed
    log = (root / "var/log/fitsflow-test-scriptlets.log").read_text().splitlines()
    # %pre made the service user (getent says "absent": exit 2), as rpm 4.16 (EL9) needs.
    assert "groupadd -r fitsflow" in log and any(c.startswith("useradd -r -g fitsflow") for c in log), log

    python = root / "usr/lib/fitsflow-runtime/bin/python3"
    assert os.readlink(python) == "/usr/bin/python3.11"
    assert (root / "usr/bin/fitsflow-receiver").read_text().startswith("#!/usr/lib/fitsflow-runtime/bin/python3\n")
    # -I: nothing from this machine's own site directories; the runtime's environment alone.
    probe = run(python, "-I", "-c", "import sys, fitsflow.receiver.daemon, fitsflow.forwarder.daemon, "
                "fitsflow.archive_controller.daemon, fitsflow.oods.daemon, fitsflow.archive_ingest.daemon, "
                "fitsflow.header_service.daemon, fitsflow.panic_mailer.daemon, fitsflow.recorder.daemon, "
                "astropy, spead2, systemd.daemon; print(sys.prefix); print(fitsflow.receiver.daemon.__file__)")
    prefix, module = probe.stdout.split()
    assert prefix == str(root / "usr/lib/fitsflow-runtime")
    assert module.startswith(str(root / "usr/lib/fitsflow-runtime/lib/python3.11/site-packages/fitsflow/"))
    version = run(python, "-I", root / "usr/bin/fitsflow", "--version")
    assert "0.1.0" in version.stdout + version.stderr

    out = run(*dnf, "remove", *roles, "python3-fitsflow", "fitsflow-runtime", env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert not (root / "usr/lib/fitsflow-runtime").exists()


def test_the_broker_package_installs_with_apache_activemq(built: Path, tmp_path: Path) -> None:
    """fitsflow-broker and apache-activemq (rpm/deps/apache-activemq.spec). Apache's binary
    distribution cannot be downloaded here: the spec is built from a stand-in tarball of the
    same layout made of Debian's ActiveMQ jars (what activemq-fitsflow.service runs is tested
    under systemd in test_broker_unit.py)."""
    debian = Path("/usr/share/activemq")
    if not (debian / "bin" / "activemq.jar").exists():
        pytest.skip("Debian's activemq package is needed for the stand-in tarball (dev.sh setup)")
    top = tmp_path / "amqtop"
    dist = tmp_path / "apache-activemq-5.17.2"
    (dist / "bin").mkdir(parents=True)
    shutil.copy(debian / "bin" / "activemq.jar", dist / "bin")
    for jar in (debian / "lib").rglob("*.jar"):  # Apache's lib/ holds the jars themselves
        if jar.exists():  # (Debian links some optional jars whose packages are not installed)
            (dist / jar.parent.relative_to(debian)).mkdir(parents=True, exist_ok=True)
            shutil.copy(jar, dist / jar.relative_to(debian))
    for name in ("LICENSE", "NOTICE"):
        (dist / name).write_text("stand-in: Debian's activemq, /usr/share/doc/activemq/copyright\n")
    (top / "SOURCES").mkdir(parents=True)
    run("tar", "-czf", top / "SOURCES" / "apache-activemq-5.17.2-bin.tar.gz", "-C", tmp_path, dist.name)
    run("make", "-C", REPO, "activemq-rpm", f"TOP={top}", "ACTIVEMQ_VERSION=5.17.2", "DIST=el10")
    amq = list((top / "RPMS").rglob("apache-activemq-*.rpm"))
    broker = [p for p in rpms(built) if name_of(p) == "fitsflow-broker"]
    assert len(amq) == 1 and len(broker) == 1
    lint = run("rpmlint", "-r", REPO / "rpm" / "deps" / "apache-activemq.rpmlintrc", REPO / "rpm" / "deps" / "apache-activemq.spec",
               *amq, check=False)
    assert " 0 errors" in lint.stdout, lint.stdout[-4000:]

    # The instance's secrets are readable by the broker's group only; the key store paths are
    # the package's own directory.
    perms = run("rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]", *broker).stdout
    assert "-rw-r----- root:activemq /etc/fitsflow/activemq/users.properties" in perms, perms
    assert "drwxr-x--- root:activemq /etc/fitsflow/activemq\n" in perms, perms
    assert "/usr/lib/systemd/system/activemq-fitsflow.service" in perms
    config = run("rpm", "-qp", "--configfiles", *broker).stdout.split()
    assert "/etc/fitsflow/activemq/broker.properties" in config and "/etc/sysconfig/activemq-fitsflow" in config

    dnf, repo, root, env = scratch_dnf(tmp_path, [*rpms(built), *amq, *base_stub(tmp_path, 10)], rhel=10)
    out = run(*dnf, "install", "fitsflow-broker", env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert (root / "usr/share/apache-activemq/lib/activemq-broker.jar").is_file()
    props = (root / "etc/fitsflow/activemq/broker.properties").read_text()
    assert "ssl.keyStore=/etc/fitsflow/activemq/broker.p12" in props, props
    log = (root / "var/log/fitsflow-test-scriptlets.log").read_text().splitlines()
    assert "systemd-update-helper install-system-units activemq-fitsflow.service" in log, log
    out = run(*dnf, "remove", "fitsflow-broker", "apache-activemq", env=env)
    assert not (root / "usr/lib/systemd/system/activemq-fitsflow.service").exists()
