"""systemd units and drop-ins: systemd-analyze verify (with empty stderr — it exits 0 on
unknown keys), the hardening score, and sysusers/tmpfiles applied to a scratch root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fitsflow.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
#: The daemons' units (the shared drop-in applies to them) and every unit fitsflow ships
#: (activemq-fitsflow.service, the broker, too).
UNITS = sorted((REPO / "units").glob("fitsflow-*.service"))
ALL_UNITS = sorted((REPO / "units").glob("*.service"))
#: The settings every daemon unit shares (a top-level drop-in: systemd.unit(5)).
SHARED = REPO / "units" / "fitsflow-.service.d"
MAX_EXPOSURE = 2.0  # the security goal (issue 7 asked for 2.5); the units reach 1.2 today

# No skip when the tools are missing: ./dev.sh installs them (Debian package 'systemd'), and a
# check that silently skips never runs.


def installed_copy(tmp_path: Path, unit: Path) -> Path:
    """The unit as an admin would have it: an instance name for templates, ExecStart pointing
    at the installed scripts (here: this environment's)."""
    name = unit.name.replace("@.service", "@t1.service")
    text = unit.read_text().replace("/usr/bin/fitsflow", f"{Path(sys.executable).parent}/fitsflow")
    (tmp_path / name).write_text(text)
    shutil.copy(REPO / "units" / "fitsflow.target", tmp_path / "fitsflow.target")
    for d in (SHARED, unit.with_name(unit.name + ".d")):
        if d.is_dir():
            shutil.copytree(d, tmp_path / d.name, dirs_exist_ok=True)  # a template drop-in stays one
    return tmp_path / name


def effective(unit: Path) -> str:
    """The unit with the shared drop-in, as `systemctl cat` shows it."""
    return unit.read_text() + "".join(f.read_text() for f in sorted(SHARED.glob("*.conf")))


@pytest.mark.parametrize("unit", ALL_UNITS, ids=lambda p: p.name)
def test_verify_is_clean(tmp_path: Path, unit: Path) -> None:
    copy = installed_copy(tmp_path, unit)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("unit", ALL_UNITS, ids=lambda p: p.name)
def test_hardening_score(tmp_path: Path, unit: Path) -> None:
    copy = installed_copy(tmp_path, unit)
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
                           str(copy)], capture_output=True, text=True, cwd=tmp_path)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout).group(1))
    assert done.returncode == 0 and score <= MAX_EXPOSURE, done.stdout[-2000:]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_service_contract(unit: Path) -> None:
    text = effective(unit)
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartPreventExitStatus=78", "User=fitsflow",
                 "StateDirectory=fitsflow", "ReadWritePaths=/var/lib/fitsflow\n", "PartOf=fitsflow.target",
                 "WantedBy=fitsflow.target"):
        assert line in text, f"{unit.name}: {line!r} missing"
    # Documentation= names fitsflow's own pages, which the package installs (from docs/).
    docs = re.search(r"^Documentation=(.*)$", text, re.M).group(1).split()
    assert docs and all(d.startswith("file:///usr/share/doc/fitsflow/") for d in docs), docs
    assert all((REPO / "docs" / d.rsplit("/", 1)[1]).is_file() for d in docs), docs


def test_tmpfiles_make_the_tree_the_default_config_expects(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for sub in ("etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
        (root / sub).mkdir(parents=True)
    shutil.copy(REPO / "etc/sysusers.d/fitsflow.conf", root / "usr/lib/sysusers.d")
    shutil.copy(REPO / "etc/tmpfiles.d/fitsflow.conf", root / "usr/lib/tmpfiles.d")
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    assert "fitsflow:" in (root / "etc/passwd").read_text()
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}"], check=True, capture_output=True)
    shipped = (REPO / "etc/fitsflow/fitsflow.toml").read_text()
    moved = shipped.replace("/var/lib/fitsflow", str(root / "var/lib/fitsflow"))
    cfg_path = tmp_path / "fitsflow.toml"
    cfg_path.write_text(moved)
    cfg = load_config(cfg_path)  # every data directory exists, one filesystem
    assert (cfg.paths.resolved().incoming.stat().st_mode & 0o7777) == 0o2775


def test_the_shared_drop_in_is_applied(tmp_path: Path) -> None:
    """systemd reads fitsflow-.service.d for every fitsflow-* unit: the watchdog and the
    hardening really are in force (seen by systemd itself, not by reading the files)."""
    copy = installed_copy(tmp_path, REPO / "units" / "fitsflow-oods.service")
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert re.search(r"✓ PrivateDevices=", done.stdout) and re.search(r"✓ User=/DynamicUser=", done.stdout), \
        done.stdout[-3000:]
    (tmp_path / SHARED.name / "10-fitsflow.conf").unlink()
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert re.search(r"✗ PrivateDevices=", done.stdout), done.stdout[-3000:]


def test_the_receiver_may_read_the_kernel_settings(tmp_path: Path) -> None:
    """Its own drop-in comes after the shared one: ProcSubset=all wins over pid."""
    copy = installed_copy(tmp_path, REPO / "units" / "fitsflow-receiver@.service")
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert re.search(r"✗ ProcSubset=", done.stdout), done.stdout[-3000:]
    oods = installed_copy(tmp_path, REPO / "units" / "fitsflow-oods.service")
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(oods)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert re.search(r"✓ ProcSubset=", done.stdout), done.stdout[-3000:]


def test_the_broker_unit_contract() -> None:
    """activemq-fitsflow.service runs ActiveMQ (not a fitsflow daemon: no notify, no watchdog,
    not under the daemons' drop-in), restarts it, and counts its clean exit (143) as success."""
    text = (REPO / "units" / "activemq-fitsflow.service").read_text()
    assert not (REPO / "units" / "activemq-fitsflow.service").name.startswith("fitsflow-")
    for line in ("Type=simple", "User=activemq", "SuccessExitStatus=143", "Restart=on-failure",
                 "StateDirectory=activemq-fitsflow", "EnvironmentFile=-/etc/sysconfig/activemq-fitsflow",
                 "-Dactivemq.data=/var/lib/activemq-fitsflow", "-jar ${ACTIVEMQ_HOME}/bin/activemq.jar start"):
        assert line in text, line
    assert "MemoryDenyWriteExecute=yes" not in text  # the JVM's JIT needs W+X memory
