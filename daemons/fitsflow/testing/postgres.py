"""A throw-away PostgreSQL cluster for tests and benchmarks (Debian's ``postgresql`` package)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from fitsflow.testing.broker import free_port


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (Debian's postgresql package) on a free port."""

    def __init__(self) -> None:
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bindir:
            raise RuntimeError("PostgreSQL is not installed (Debian package 'postgresql'; ./dev.sh installs it)")
        self.bin = bindir[-1]
        # Its own directory: pytest's temp tree is private to root, and postgres must not run as root.
        self.base = Path(tempfile.mkdtemp(prefix="fitsflow-pg-"))
        self.base.chmod(0o755)
        shutil.chown(self.base, "postgres")
        self.port = free_port()
        self.data = self.base / "pgdata"
        base = self.base
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(base / "pg.log"),
                           "-o", f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1", "start"])

    def _as_postgres(self, cmd: list[str]) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip()}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)
