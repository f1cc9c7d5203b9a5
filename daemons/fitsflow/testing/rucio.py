"""A throw-away Rucio server for tests and benchmarks: the real Rucio REST server (gunicorn)
on a private PostgreSQL, on a free loopback port, with a POSIX RSE over a directory.

The server runs from its own virtualenv (``./dev.sh setup`` makes ``.venv/rucio-server``:
the server pins its own Flask, SQLAlchemy and Alembic); fitsflow talks to it with
rucio-clients from its own environment, as a site's archive host would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from fitsflow.testing.broker import free_port
from fitsflow.testing.postgres import PrivatePostgres

#: the root account's userpass identity made at bootstrap
USERNAME, PASSWORD, ACCOUNT = "fitsflow-test", "fitsflow-secret", "root"

_BOOTSTRAP = """
from rucio.db.sqla.util import build_database, create_base_vo, create_root_account
build_database()
create_base_vo()
create_root_account()
"""


def server_venv() -> Path:
    """Where ./dev.sh put the Rucio server ($FITSFLOW_RUCIO_SERVER overrides)."""
    return Path(os.environ.get("FITSFLOW_RUCIO_SERVER", Path(sys.prefix) / "rucio-server"))


class PrivateRucio:
    """A Rucio server with its database; :meth:`kill` (-9) and :meth:`start` again for outages."""

    def __init__(self) -> None:
        self.venv = server_venv()
        if not (self.venv / "bin" / "gunicorn").exists():
            raise RuntimeError(f"no Rucio server in {self.venv} (./dev.sh setup installs it)")
        self.base = Path(tempfile.mkdtemp(prefix="fitsflow-rucio-"))
        self.pg = PrivatePostgres()
        try:
            subprocess.run(["psql", "-qh", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres", "-c",
                            "create database rucio"], check=True, capture_output=True)
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._write_config()
            done = subprocess.run([str(self.venv / "bin" / "python"), "-c", _BOOTSTRAP], env=self.env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"Rucio bootstrap failed: {done.stderr[-2000:]}")
            self.proc: subprocess.Popen[bytes] | None = None
            self.start()
        except BaseException:
            self.pg.stop()
            raise

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RUCIO_CONFIG": str(self.base / "rucio.cfg"), "TMPDIR": str(self.base / "tmp")}

    def _write_config(self) -> None:
        (self.base / "tmp").mkdir()
        (self.base / "log").mkdir()
        db = f"postgresql+psycopg://postgres@127.0.0.1:{self.pg.port}/rucio"
        site = next((self.venv / "lib").glob("python3*/site-packages"))
        # Rucio's migration environment configures logging from this file: it needs the sections.
        (self.base / "alembic.ini").write_text(f"""[alembic]
sqlalchemy.url = {db}
script_location = {site}/rucio/db/sqla/migrate_repo/
[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARN
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
""")
        (self.base / "rucio.cfg").write_text(f"""[common]
logdir = {self.base}/log
loglevel = WARNING

[client]
rucio_host = {self.url}
auth_host = {self.url}
auth_type = userpass
username = {USERNAME}
password = {PASSWORD}
account = {ACCOUNT}
request_retries = 1

[database]
default = {db}
pool_size = 5
max_overflow = 5
pool_reset_on_return = rollback

[bootstrap]
userpass_identity = {USERNAME}
userpass_pwd = {PASSWORD}
userpass_email = test@example.org

[alembic]
cfg = {self.base}/alembic.ini

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash
support = test@example.org
support_rucio = test@example.org

[monitor]
enable_metrics = False
""")

    def start(self, timeout: float = 120.0) -> None:
        """Start the REST server and wait for its /ping."""
        log = open(self.base / "log" / "gunicorn.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
             "--threads", "4", "--timeout", "120", "--graceful-timeout", "5", "--no-control-socket",
             "rucio.web.rest.flaskapi.v1.main:application"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Rucio server exited ({self.proc.returncode}); see {self.base}/log")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the Rucio server did not answer /ping in {timeout:.0f} s")

    def kill(self) -> None:
        """kill -9 the server (master and worker): an outage, as a crash makes it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def client(self) -> Any:
        from rucio.client import Client

        return Client(rucio_host=self.url, auth_host=self.url, account=ACCOUNT, auth_type="userpass",
                      creds={"username": USERNAME, "password": PASSWORD})

    def add_posix_rse(self, rse: str, prefix: Path, *, deterministic: bool = False) -> None:
        """An RSE whose file protocol's prefix is ``prefix`` (e.g. the archive repository)."""
        c = self.client()
        c.add_rse(rse, deterministic=deterministic)
        c.add_protocol(rse, {
            "scheme": "file", "hostname": "", "port": 0, "prefix": f"{prefix}/",
            "impl": "rucio.rse.protocols.posix.Default",
            "domains": {"lan": {"read": 1, "write": 1, "delete": 1},
                        "wan": {"read": 1, "write": 1, "delete": 1,
                                "third_party_copy_read": 1, "third_party_copy_write": 1}}})
        c.set_local_account_limit(ACCOUNT, rse, -1)

    def stop(self) -> None:
        self.kill()
        self.pg.stop()
        shutil.rmtree(self.base, ignore_errors=True)
