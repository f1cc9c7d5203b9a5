"""The RPMs: `make rpm` builds them on this Debian machine, they lay files out where the FHS and
Fedora put them, rpmlint finds no error, and dnf installs, upgrades and removes them in a
scratch root (a test-only base stub stands in for EL), running their scriptlets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("rpmbuild", "rpmlint", "createrepo_c", "dnf", "make")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS) or not Path("/bin/busybox").exists(),
                                 reason="rpm, rpmlint, createrepo-c, dnf, busybox-static needed (dev.sh setup)")]


def run(*cmd: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    top = tmp_path_factory.mktemp("rpmtop")
    run("make", "-C", REPO, "rpm", "deps-rpm", f"TOP={top}", "RELEASE=1")
    yield top


def rpms(top: Path) -> list[Path]:
    return sorted((top / "RPMS" / "noarch").glob("*.rpm"))


def test_one_package_per_daemon_and_files_where_fedora_puts_them(built: Path) -> None:
    names = {p.name.rsplit("-", 2)[0] for p in rpms(built)}
    assert names == {"python3-inotify_simple", "python3-fitsflow", "fitsflow-receiver", "fitsflow-header-service", "fitsflow-forwarder",
                     "fitsflow-archive-controller", "fitsflow-oods", "fitsflow-archive-ingest",
                     "fitsflow-panic-mailer", "fitsflow-recorder", "fitsflow-pacemaker", "fitsflow-demo"}
    files = {p.name.rsplit("-", 2)[0]: run("rpm", "-qlp", p).stdout.split() for p in rpms(built)}
    lib = files["python3-fitsflow"]
    assert "/etc/fitsflow/fitsflow.toml" in lib and "/usr/bin/fitsflow" in lib
    assert "/usr/lib/sysusers.d/fitsflow.conf" in lib and "/usr/lib/tmpfiles.d/fitsflow.conf" in lib
    assert any(f.startswith("/usr/lib/python3.") and "/site-packages/fitsflow/core/" in f for f in lib)
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


def test_rpmlint_finds_no_error(built: Path) -> None:
    lint = run("rpmlint", "-r", REPO / "rpm" / "rpmlintrc", REPO / "rpm" / "fitsflow.spec",
               *[p for p in rpms(built) if "fitsflow" in p.name], *(built / "SRPMS").glob("fitsflow-*.rpm"), check=False)
    assert " 0 errors" in lint.stdout, lint.stdout[-4000:]


def test_dnf_installs_upgrades_and_removes_in_a_scratch_root(built: Path, tmp_path: Path) -> None:
    repo, root = tmp_path / "repo", tmp_path / "root"
    repo.mkdir()
    stub_top = tmp_path / "stubtop"
    run("rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {stub_top}", "--define", "busybox /bin/busybox",
        REPO / "tests" / "rpm" / "fitsflow-test-base.spec")
    for p in [*rpms(built), *(stub_top / "RPMS").rglob("*.rpm")]:
        shutil.copy(p, repo)
    run("createrepo_c", "-q", repo)
    dbpath = tmp_path / "rpmdb"  # Debian's rpm keeps its database under the caller's home otherwise
    dnf = ["dnf", "-y", "-q", f"--installroot={root}", f"--repofrompath=local,file://{repo}", "--disablerepo=*",
           "--enablerepo=local", "--nogpgcheck", "--setopt=reposdir=/dev/null", "--releasever=9",
           f"--setopt=cachedir={tmp_path / 'cache'}", "--setopt=install_weak_deps=False"]
    env = dict(os.environ, HOME=str(tmp_path))

    def rpmq(*args: str) -> str:
        return run("rpm", f"--root={root}", *args, env=env, check=False).stdout

    # Every role package, and what pulls in all of them (the demo), with their dependencies.
    roles = [p.name.rsplit("-", 2)[0] for p in rpms(built) if p.name.startswith("fitsflow-")]
    out = run(*dnf, "install", *roles, env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert (root / "usr/bin/fitsflow-receiver").is_file() and (root / "etc/fitsflow/fitsflow.toml").is_file()
    assert sorted(r for r in roles if r not in rpmq("-qa")) == [], rpmq("-qa")
    assert (root / "usr/lib/systemd/system/fitsflow-.service.d/10-fitsflow.conf").is_file()
    assert "python3-fitsflow-0.1.0-1" in rpmq("-qa") and "python3-inotify_simple-1.3.5-1" in rpmq("-qa")
    calls = root / "var/log/fitsflow-test-scriptlets.log"
    # %pre made the service user (getent says "absent": exit 2), %post installed the units.
    log = calls.read_text().splitlines()
    assert "groupadd -r fitsflow" in log and any(c.startswith("useradd -r -g fitsflow") for c in log), log
    assert "systemd-update-helper install-system-units fitsflow-receiver@.service" in log, log
    calls.write_text("")
    # An admin edits the configuration; an upgrade keeps the edit (%config(noreplace)).
    conf = root / "etc/fitsflow/fitsflow.toml"
    conf.write_text(conf.read_text() + "\n# site edit\n")

    run("make", "-C", REPO, "rpm", f"TOP={tmp_path / 'top2'}", "RELEASE=2")
    for p in (tmp_path / "top2" / "RPMS" / "noarch").glob("*.rpm"):
        shutil.copy(p, repo)
    run("createrepo_c", "-q", "--update", repo)
    out = run(*dnf, "--refresh", "upgrade", env=env)
    assert "scriptlet" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    installed = rpmq("-qa")
    assert "fitsflow-receiver-0.1.0-2" in installed and "python3-fitsflow-0.1.0-2" in installed
    assert "-0.1.0-1." not in installed.replace("fitsflow-test-base", "")
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
