"""Containers that boot this machine's systemd (systemd-nspawn over the host's /usr), for tests
of the shipped units and of the Pacemaker cluster.

The root is a fresh tmpfs (``--volatile=yes``): /usr comes from the host read-only, /etc is
the host's /etc under a private writable overlay (the test writes units and configuration
there, before or after boot), /var is empty. Commands run inside with ``nsenter``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

#: A venv made with the system Python (/usr is all a container sees of the host's Python);
#: outside /root, /home and /tmp, which the units' ProtectHome=/PrivateTmp= hide.
SYSTEM_VENV = Path("/opt/fitsflow-test-venv")
#: Services of this machine's packages that would start in a container and are not wanted.
DEFAULT_MASK = ("corosync", "pacemaker", "pcsd", "pcsd-ruby", "logd", "activemq", "postgresql",
                "systemd-firstboot")


def system_venv(repo: Path, venv: Path = SYSTEM_VENV) -> Path:
    """``repo`` installed (not editable) into ``venv``, made with /usr/bin/python3."""
    if not (venv / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True)
    pip = [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--force-reinstall", "--no-deps", repo], check=True, capture_output=True)
    subprocess.run([*pip, repo], check=True, capture_output=True)
    return venv


def _join_cgroup(name: str) -> Callable[[], None]:
    """A preexec function that moves the child into its own cgroup, in every hierarchy
    systemd uses (several containers may run at once only from separate cgroups)."""
    dirs = [Path("/sys/fs/cgroup", h, name) for h in ("systemd", "unified") if Path("/sys/fs/cgroup", h).is_dir()]
    if not dirs:  # pure cgroup v2
        dirs = [Path("/sys/fs/cgroup", name)]

    def join() -> None:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / "cgroup.procs").write_text(str(os.getpid()))
    return join


def remove_cgroup(name: str) -> None:
    """Remove a container's (now empty) cgroups, children first."""
    for root in (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        top = root / name
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


class Container:
    """systemd as PID 1 of a systemd-nspawn container over this host's /usr."""

    def __init__(self, *, machine: str | None = None, etc_upper: Path | None = None, netns: str | None = None,
                 binds: Sequence[tuple[Path | str, str]] = (), binds_ro: Sequence[Path | str] = (),
                 overlays_ro: Sequence[tuple[Path | str, str]] = (),
                 mask: Sequence[str] = DEFAULT_MASK, capabilities: Sequence[str] = (), cgroup: str | None = None,
                 log: Path | None = None,
                 boot_timeout: float = 120.0) -> None:
        """``etc_upper``: a directory overlaid on /etc (pre-populate it to configure the
        node before boot); ``netns``: a named network namespace (``ip netns``) to join, else
        the host's network; ``capabilities``: beyond nspawn's default set (e.g. CAP_NET_ADMIN for
        virtual IPs); ``binds``: (host path, container path) read-write bind mounts;
        ``overlays_ro``: (host directory, container directory): the files of the first added
        to the second, read-only (e.g. a fence agent into /usr/sbin, where Pacemaker looks)."""
        self.machine = machine
        args = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--directory=/", "--volatile=yes",
                "--boot", "--console=pipe"]
        if machine:
            args.append(f"--machine={machine}")
        if etc_upper is not None:
            args.append(f"--overlay=/etc:{etc_upper}:/etc")
        if netns:
            args.append(f"--network-namespace-path=/run/netns/{netns}")
        args += [f"--bind={src}:{dst}" for src, dst in binds]
        args += [f"--bind-ro={p}" for p in binds_ro]
        args += [f"--overlay-ro={dst}:{src}:{dst}" for src, dst in overlays_ro]
        if capabilities:
            args.append(f"--capability={','.join(capabilities)}")
        args += [f"systemd.mask={m}.service" for m in mask]
        self.cgroup = cgroup
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=_join_cgroup(cgroup) if cgroup else None)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.init = 0
        self._wait_booted(boot_timeout)

    def _wait_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.init:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn ({self.machine}) exited with {self.proc.returncode}")
            # nspawn's child that has become systemd (a helper child may come and go first).
            kids = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split("\n")
            self.init = next((int(k.split()[0]) for k in kids if k.split()[1:] == ["systemd"]), 0)
            time.sleep(0.1)
        state = ""
        while self.init and time.monotonic() < deadline:
            # basic.target is enough; "starting" may last while an unrelated unit of this
            # machine's packages waits for something a container lacks.
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            basic = self.run("systemctl", "is-active", "basic.target", check=False).stdout.strip()
            if state in ("running", "degraded") or (state == "starting" and basic == "active"):
                return
            time.sleep(0.2)
        jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False).stdout if self.init else ""
        self.kill()
        raise TimeoutError(f"the container's systemd did not boot (state {state!r}); jobs:\n{jobs}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, *cmd: str, check: bool = True, input: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside (every namespace of the container's init)."""
        proc = subprocess.run(["nsenter", "-t", str(self.init), "-a", *cmd], capture_output=True, text=True,
                              input=input, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{self.machine or 'container'}: {' '.join(cmd)}: {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}", input=text)

    def show(self, unit: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p",
                       "ActiveState,SubState,StatusText,MainPID,NRestarts,Result").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, unit: str, what: str, cond: Callable[[dict[str, str]], bool],
             timeout: float = 90.0) -> dict[str, str]:
        """Poll ``systemctl show unit`` until ``cond`` holds; fail with the unit's journal."""
        deadline = time.monotonic() + timeout
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = self.show(unit)
            if cond(state):
                return state
            time.sleep(0.2)
        raise AssertionError(f"{unit}: {what} not reached; last {state}\n"
                             + self.run("journalctl", "-u", unit, "-n", "40", "--no-pager", check=False).stdout)

    def kill(self) -> None:
        """Power cut: SIGKILL the container's init; the kernel kills everything in its PID
        namespace at once."""
        if self.init:
            try:
                os.kill(self.init, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.cgroup:
            remove_cgroup(self.cgroup)

    def close(self, timeout: float = 30.0) -> None:
        """Clean shutdown (nspawn halts the container on SIGTERM); a power cut after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
