"""A private ActiveMQ broker (Debian's ``activemq`` package) for tests and the demo.

Runs the broker jar in the foreground with its own base, configuration and data directories
and free ports, so it shares nothing with a system broker and several can run at once.
:meth:`PrivateBroker.kill` is a real ``kill -9``; :meth:`PrivateBroker.start` again recovers
from the same KahaDB store, as a restarted production broker would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

ACTIVEMQ_HOME = Path(os.environ.get("FITSFLOW_ACTIVEMQ_HOME", "/usr/share/activemq"))

_JAVA_OPENS = [
    "--add-reads=java.xml=java.logging",
    "--add-opens", "java.base/java.security=ALL-UNNAMED", "--add-opens", "java.base/java.net=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED", "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.naming/javax.naming.spi=ALL-UNNAMED",
    "--add-opens", "java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
]


def broker_command(base: Path, conf_dir: Path, data_dir: Path, *, name: str, stomp_port: int,
                   openwire_port: int, heap_mb: int = 256, properties: dict[str, str] | None = None) -> list[str]:
    """The java command line of a foreground ActiveMQ with its instance in ``conf_dir``
    (activemq.xml, and login.config when present) and its store in ``data_dir``."""
    return ["java", "-Xms64M", f"-Xmx{heap_mb}M", *_JAVA_OPENS,
            f"-Dactivemq.classpath={conf_dir}", f"-Dactivemq.home={ACTIVEMQ_HOME}",
            f"-Dactivemq.base={base}", f"-Dactivemq.conf={conf_dir}",
            f"-Dactivemq.data={data_dir}", f"-Dbroker.name={name}",
            f"-Dstomp.port={stomp_port}", f"-Dopenwire.port={openwire_port}",
            *(f"-D{k}={v}" for k, v in (properties or {}).items()),
            *([f"-Djava.security.auth.login.config={conf_dir / 'login.config'}"]
              if (conf_dir / "login.config").is_file() else []),
            "-jar", str(ACTIVEMQ_HOME / "bin" / "activemq.jar"), "start",
            f"xbean:file:{conf_dir / 'activemq.xml'}"]


def identities(groups_properties: Path) -> list[str]:
    """Every identity named in an ActiveMQ groups.properties (group=user,user,...)."""
    names: set[str] = set()
    for line in groups_properties.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            names.update(n.strip() for n in line.split("=", 1)[1].split(","))
    return sorted(names)


class BrokerUnavailable(RuntimeError):
    """ActiveMQ is not installed or did not come up."""


class _PortTaken(Exception):
    """The broker exited because a port was in use."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports free on 127.0.0.1 right now. Bound all at once: two calls
    of :func:`free_port` in a row return the same port about once in 18,000 (measured), and
    a broker given one port for two connectors dies when the second cannot bind."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def stomp_answers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Whether a STOMP server answers a CONNECT frame on ``port`` (CONNECTED, or ERROR from a
    broker that wants credentials): the connector is up, not merely some listener on the port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
            reply = b""
            while b"\n" not in reply:
                chunk = s.recv(256)
                if not chunk:
                    return False
                reply += chunk
            return reply.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r") in (b"CONNECTED", b"ERROR")
    except OSError:
        return False


class PrivateBroker:
    """An ActiveMQ process of our own. Use as a context manager or start()/stop()."""

    def __init__(self, base: Path, *, name: str = "fitsflow-test", stomp_port: int | None = None,
                 config: Path | None = None, properties: dict[str, str] | None = None,
                 heap_mb: int = 256, tls: bool = False) -> None:
        self.base = Path(base)
        self.name = name
        self._own_ports = stomp_port is None  # chosen here: may be chosen again if taken meanwhile
        if stomp_port is None:
            self.stomp_port, self.openwire_port = free_ports(2)
        else:
            self.stomp_port, self.openwire_port = stomp_port, next(p for p in free_ports(2) if p != stomp_port)
        self.heap_mb = heap_mb
        self.conf_dir = self.base / "conf"
        self.data_dir = self.base / "data"
        self.log_path = self.base / "broker.log"
        self._config = config
        self.properties = dict(properties or {})
        self.tls = tls  # the STOMP connector of the configuration speaks stomp+ssl
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"{'stomp+ssl' if self.tls else 'stomp'}://127.0.0.1:{self.stomp_port}"

    def _prepare(self) -> None:
        jar = ACTIVEMQ_HOME / "bin" / "activemq.jar"
        if not jar.is_file():
            raise BrokerUnavailable(f"{jar} not found: install Debian's 'activemq' package "
                                    "(or set FITSFLOW_ACTIVEMQ_HOME)")
        if shutil.which("java") is None:
            raise BrokerUnavailable("java not found (ActiveMQ needs a JRE)")
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        target = self.conf_dir / "activemq.xml"
        if self._config is not None and self._config.is_dir():
            # A complete instance directory (activemq.xml, login.config, *.properties)
            shutil.copytree(self._config, self.conf_dir, dirs_exist_ok=True)
        elif self._config is not None:
            shutil.copyfile(self._config, target)
        else:
            target.write_text(resources.files("fitsflow.testing").joinpath("activemq.xml").read_text())

    def start(self, timeout: float = 60.0) -> PrivateBroker:
        """Start (or restart on the same store) and wait until its STOMP connector answers.

        On a first start with ports chosen here, a port some other process took between the
        choice and the broker's bind is chosen again (nobody has the URL yet)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        attempts = 3 if self._own_ports and self.starts == 0 else 1
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                self.starts += 1
                return self
            except _PortTaken:
                if attempt == attempts - 1:
                    raise BrokerUnavailable(f"ActiveMQ could not bind its ports ({self.stomp_port}, "
                                            f"{self.openwire_port}); see {self.log_path}:\n" + self.log_tail())
                self.stomp_port, self.openwire_port = free_ports(2)
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        self._prepare()
        cmd = broker_command(self.base, self.conf_dir, self.data_dir, name=self.name, stomp_port=self.stomp_port,
                             openwire_port=self.openwire_port, heap_mb=self.heap_mb, properties=self.properties)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.base, start_new_session=True)
        log.close()
        # A TLS connector (maybe demanding client certificates) is only probed for a listener.
        ready = (lambda: port_open(self.stomp_port)) if self.tls else (lambda: stomp_answers(self.stomp_port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (rc := self.proc.poll()) is not None:
                self.proc = None
                with open(self.log_path, "rb") as f:
                    f.seek(log_start)
                    if b"Address already in use" in f.read():
                        raise _PortTaken()
                raise BrokerUnavailable(f"ActiveMQ exited with {rc}; see {self.log_path}:\n" + self.log_tail())
            if ready():
                return
            time.sleep(0.05)
        self.kill()
        raise BrokerUnavailable(f"ActiveMQ did not answer on port {self.stomp_port} in {timeout} s; "
                                f"see {self.log_path}:\n" + self.log_tail())

    def died(self) -> str | None:
        """If the broker process has exited since it was started: how, with its log's tail."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"ActiveMQ {self.name} exited with {self.proc.returncode}; {self.log_path}:\n{self.log_tail()}"

    def kill(self) -> None:
        """kill -9: no shutdown, the store recovers on the next start."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 15.0) -> None:
        """A clean SIGTERM shutdown (SIGKILL after ``timeout``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
