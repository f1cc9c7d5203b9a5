"""The whole pipeline as real processes, for tests that kill and restart its parts.

Every daemon runs as its own process (``python -m fitsflow.<daemon> --instance I``) with the
site configuration in ``FITSFLOW_CONFIG``, as under systemd; :meth:`Pipeline.kill` is a real
``kill -9`` and :meth:`Pipeline.start` brings a daemon back on the same state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: (module, instance) of every daemon of a one-machine site.
DAEMONS = [("receiver", "r1"), ("header_service", "h1"), ("archive_controller", "c1"), ("forwarder", "f1"),
           ("forwarder", "f2"), ("oods", "o1"), ("archive_ingest", "a1"), ("recorder", "r1")]


def daemon_name(module: str, instance: str) -> str:
    return f"{module.replace('_', '-')}@{instance}"


class Pipeline:
    """Start, kill -9, stop (SIGSTOP/SIGCONT) and restart the daemons of one site."""

    def __init__(self, site: Path, logs: Path, daemons: list[tuple[str, str]] | None = None, *,
                 profile: Path | None = None, log_level: str = "INFO") -> None:
        """``profile``: run every daemon under cProfile, one ``<daemon>.prof`` there each
        (written at a clean stop)."""
        self.site = site
        self.profile = profile
        self.log_level = log_level
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.daemons = {daemon_name(m, i): (m, i) for m, i in (daemons or DAEMONS)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: dict[str, int] = {name: 0 for name in self.daemons}

    def start(self, name: str) -> None:
        module, instance = self.daemons[name]
        env = dict(os.environ, FITSFLOW_CONFIG=str(self.site))
        env.pop("NOTIFY_SOCKET", None)
        runner = ["-m", "cProfile", "-o", str(self.profile / f"{name}.prof")] if self.profile else []
        with open(self.logs / f"{module}-{instance}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, *runner, "-m", f"fitsflow.{module}", "--instance",
                                                 instance, "--log-level", self.log_level],
                                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def start_all(self) -> None:
        for name in self.daemons:
            self.start(name)

    def kill(self, name: str) -> None:
        """kill -9, no warning, as a crash or the OOM killer would."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.kills[name] += 1

    def pause(self, name: str) -> None:
        """SIGSTOP: the process hangs (alive, silent) until :meth:`resume`."""
        os.kill(self.procs[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop_all(self, timeout: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        module, instance = self.daemons[name]
        try:
            text = (self.logs / f"{module}-{instance}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
