"""Configuration: one TOML file, validated once at start-up into frozen dataclasses.

Where the file comes from: ``--config PATH``, else ``$FITSFLOW_CONFIG``, else
``/etc/fitsflow/fitsflow.toml``. A missing file is an error, never "run on defaults".

Every problem raises :class:`ConfigError` naming the file and the key (``section.key``):
unknown keys, wrong types, out-of-range values, missing data directories, and data
directories on different filesystems (hand-offs are hard links, which need one filesystem).

Each daemon's section is a dataclass registered through the ``fitsflow.config_sections``
entry-point group; the validator is generic over the field types used here (str, int, float, bool, Path, optional, tuple,
dict and nested dataclasses), so adding a setting means adding a typed field, nothing more.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import ipaddress
import json
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from fitsflow.core.errors import ConfigError

DEFAULT_PATH = Path("/etc/fitsflow/fitsflow.toml")
ENV_VAR = "FITSFLOW_CONFIG"


@dataclass(frozen=True)
class SiteConfig:
    """``[site]``: facts shared by every daemon."""

    instrument: str = "FITSFLOW"
    state_dir: Path = Path("/var/lib/fitsflow/state")
    database_url: str = "sqlite:////var/lib/fitsflow/state/fitsflow.db"

    def validate(self, check: _Checker) -> None:
        check.pattern("site.instrument", self.instrument, r"[A-Za-z][A-Za-z0-9]{0,31}")
        check.directory("site.state_dir", self.state_dir)


#: Replaced in bus.credentials_file by the broker identity of the program reading it.
ROLE_FIELD = "{role}"
#: The broker identities of programs that are not daemons (etc/activemq/fitsflow/groups.properties).
TOOL_ROLES = ("panic", "operator", "camera")


@dataclass(frozen=True)
class BusConfig:
    """``[bus]``: the ActiveMQ brokers and how fitsflow uses them."""

    #: Load-shared brokers that do not talk to each other. Producers send to any
    #: reachable one; consumers subscribe on all of them.
    brokers: tuple[str, ...] = ("stomp://127.0.0.1:61613",)
    #: TOML file with ``username`` and ``password`` (mode 0600, owned by the service user).
    #: ``{role}`` in the path is replaced by the program's broker identity (its daemon name,
    #: ``panic`` for programs raising panics, ``operator`` for the CLI, ``camera``), so one
    #: fitsflow.toml serves every daemon of a host, each logging in as its own role.
    credentials_file: Path | None = None
    #: CA certificates (PEM) that sign the brokers' certificates, for stomp+ssl:// URLs; the
    #: system's CA store when unset. The broker's name must match its certificate.
    tls_ca_file: Path | None = None
    #: Client certificate and key (PEM) for brokers that require one; the key mode 0600.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Allow stomp:// (plaintext) to a broker that is not on this host's loopback.
    allow_plaintext: bool = False
    #: STOMP heart-beat in both directions; a silent broker is declared lost after 2×.
    heartbeat_ms: int = 10_000
    #: Handler failures before a message goes to its dead-letter queue.
    max_attempts: int = 5
    #: First retry delay after a handler failure; doubles each attempt, capped at 60 s.
    retry_delay_s: float = 1.0
    #: How long a send waits for the broker's receipt before the message goes to the outbox.
    receipt_timeout_s: float = 5.0
    #: Cap of the reconnect back-off.
    reconnect_max_s: float = 2.0
    #: Unacked messages the broker may push to one subscription (activemq.prefetchSize).
    prefetch: int = 100

    def validate(self, check: _Checker) -> None:
        if not self.brokers:
            check.fail("bus.brokers", "at least one broker URL is needed")
        for url in self.brokers:
            try:
                address = parse_broker_url(url)
            except ValueError as exc:
                check.fail("bus.brokers", str(exc))
            if not address.tls and not self.allow_plaintext and not _is_loopback(address.host):
                check.fail("bus.brokers", f"{mask_url(url)}: a password must not cross the network in clear; "
                                          "use stomp+ssl:// (or set bus.allow_plaintext = true on a closed network)")
        check.positive("bus.heartbeat_ms", self.heartbeat_ms)
        check.positive("bus.max_attempts", self.max_attempts)
        check.positive("bus.retry_delay_s", self.retry_delay_s)
        check.positive("bus.receipt_timeout_s", self.receipt_timeout_s)
        check.positive("bus.reconnect_max_s", self.reconnect_max_s)
        check.positive("bus.prefetch", self.prefetch)
        if self.credentials_file is not None:
            pattern = str(self.credentials_file)
            if ROLE_FIELD not in pattern:
                check.secret_file("bus.credentials_file", self.credentials_file)
            elif check.role is not None:
                check.secret_file("bus.credentials_file", Path(pattern.replace(ROLE_FIELD, check.role)))
            # without a role (a tool reading the file for another program) nothing to resolve
        if self.tls_ca_file is not None and not self.tls_ca_file.is_file():
            check.fail("bus.tls_ca_file", f"{self.tls_ca_file} is not a readable file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            check.fail("bus.tls_cert_file", "tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and not self.tls_cert_file.is_file():
            check.fail("bus.tls_cert_file", f"{self.tls_cert_file} is not a readable file")
        if self.tls_key_file is not None:
            check.secret_file("bus.tls_key_file", self.tls_key_file)

    def for_role(self, role: str) -> BusConfig:
        """This configuration as ``role`` uses it: ``{role}`` in credentials_file resolved."""
        if self.credentials_file is None or ROLE_FIELD not in str(self.credentials_file):
            return self
        return dataclasses.replace(self, credentials_file=Path(str(self.credentials_file)
                                                                .replace(ROLE_FIELD, role)))


#: The daemons that can serve metrics (their ``Daemon.name``).
DAEMON_NAMES = ("receiver", "header-service", "forwarder", "archive-controller", "oods", "archive-ingest",
                "panic-mailer", "recorder")


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus endpoints (core.metrics), opt-in per daemon."""

    #: Address the endpoints bind to (127.0.0.1: scraped by a local Prometheus or agent).
    address: str = "127.0.0.1"
    #: Daemon name, or ``name@instance`` for one of several instances on a host (two
    #: forwarders), → TCP port of its /metrics; a daemon not listed serves none.
    ports: dict[str, int] = dataclasses.field(default_factory=dict)

    def port_of(self, name: str, instance: str) -> int:
        """The port of daemon ``name@instance`` (0: none): its own entry, else its name's."""
        return self.ports.get(f"{name}@{instance}", self.ports.get(name, 0))

    def validate(self, check: _Checker) -> None:
        for key, port in self.ports.items():
            name = key.split("@", 1)[0]
            if name not in DAEMON_NAMES:
                check.fail(f"metrics.ports.{key}", f"unknown daemon; known: {', '.join(DAEMON_NAMES)}")
            if not 0 < port < 65536:
                check.fail(f"metrics.ports.{key}", f"port {port} out of range")
        taken = [p for p in self.ports.values()]
        if len(set(taken)) != len(taken):
            check.fail("metrics.ports", "two daemons on one port")


#: A hand-off target's name: it becomes a queue name (fitsflow.<name>.ingest).
TARGET_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
#: Names whose queue would fall under one of fitsflow's own destinations (and so under its
#: broker authorization entries, e.g. "fitsflow.forwarder.>"), or that are built in.
RESERVED_TARGET_NAMES = frozenset({"oods", "archive", "forwarder", "camera", "readout", "stats", "header",
                                   "rucio", "panic", "alerts", "state", "telemetry", "ingest"})


@dataclass(frozen=True)
class PathsConfig:
    """``[paths]``: the data tree. Relative entries are taken relative to ``root``.

    All of them must exist and lie on one filesystem: files move between them by hard link.
    """

    root: Path = Path("/var/lib/fitsflow/data")
    raw_buffer: Path = Path("raw")
    headers: Path = Path("headers")
    incoming: Path = Path("handoff/incoming")
    oods_staging: Path = Path("oods/staging")
    oods_repo: Path = Path("oods/repo")
    archive_staging: Path = Path("archive/staging")
    archive_repo: Path = Path("archive/repo")
    quarantine: Path = Path("quarantine")
    #: Hand-off targets beyond the OODS and the archive: name → staging directory. The
    #: archive controller hard-links every delivered file there too (``<obs-day>/<file>``)
    #: and sends an INGEST_REQUEST to ``/queue/fitsflow.<name>.ingest`` for the site's own
    #: consumer (e.g. prompt processing), which takes the file out of its staging directory.
    extra_staging: dict[str, Path] = dataclasses.field(default_factory=dict)

    def resolved(self) -> PathsConfig:
        """The same paths, each made absolute against ``root``."""
        root = self.root
        return dataclasses.replace(
            self,
            **{f.name: root / getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("root", "extra_staging")},
            extra_staging={name: root / path for name, path in self.extra_staging.items()},
        )

    def data_dirs(self) -> dict[str, Path]:
        """Every data directory by key (``root`` excluded), resolved."""
        res = self.resolved()
        dirs = {f.name: getattr(res, f.name) for f in dataclasses.fields(res)
                if f.name not in ("root", "extra_staging")}
        dirs.update({f"extra_staging.{name}": path for name, path in res.extra_staging.items()})
        return dirs

    def handoff_targets(self) -> dict[str, Path]:
        """Every hand-off target's staging directory by target name, resolved: the OODS,
        the archive, then the site's ``extra_staging``."""
        res = self.resolved()
        return {"oods": res.oods_staging, "archive": res.archive_staging, **res.extra_staging}

    def validate(self, check: _Checker) -> None:
        if not self.root.is_absolute():
            check.fail("paths.root", f"must be an absolute path, not {str(self.root)!r}")
        for name in self.extra_staging:
            check.pattern(f"paths.extra_staging.{name}", name, TARGET_NAME)
            if name in RESERVED_TARGET_NAMES:
                check.fail(f"paths.extra_staging.{name}",
                           f"{name!r} names a destination of fitsflow's own (fitsflow.{name}.*); reserved: "
                           f"{', '.join(sorted(RESERVED_TARGET_NAMES))}")
        if not check.check_dirs:
            return
        check.directory("paths.root", self.root)
        root_dev = self.root.stat().st_dev
        for key, path in self.data_dirs().items():
            check.directory(f"paths.{key}", path)
            if path.stat().st_dev != root_dev:
                check.fail(
                    f"paths.{key}",
                    f"{path} is on a different filesystem from paths.root {self.root}; "
                    "hand-offs are hard links and need one filesystem",
                )


@dataclass(frozen=True)
class Config:
    """The whole validated configuration: one typed object per section."""

    source: Path
    sections: Mapping[str, Any]

    @property
    def site(self) -> SiteConfig:
        return self.sections["site"]

    @property
    def bus(self) -> BusConfig:
        return self.sections["bus"]

    @property
    def paths(self) -> PathsConfig:
        return self.sections["paths"]

    @property
    def metrics(self) -> MetricsConfig:
        return self.sections["metrics"]

    def section(self, name: str) -> Any:
        """A daemon's section (its defaults when the file has none)."""
        return self.sections[name]

    def describe(self) -> dict[str, Any]:
        """The resolved configuration as plain data, secrets masked (for ``config check``)."""
        out: dict[str, Any] = {"source": str(self.source)}
        out.update({name: _plain(sec) for name, sec in self.sections.items()})
        out["paths"].update({k: str(v) for k, v in self.paths.data_dirs().items() if "." not in k})
        out["paths"]["extra_staging"] = {k: str(v) for k, v in self.paths.resolved().extra_staging.items()}
        out["site"]["database_url"] = mask_url(self.site.database_url)
        out["bus"]["brokers"] = [mask_url(u) for u in self.bus.brokers]
        return out


# -- broker URLs ------------------------------------------------------------------------

_BROKER_URL = re.compile(r"^(stomp|stomp\+ssl)://(?:[^@/]*@)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class BrokerAddress:
    """One broker endpoint parsed from ``stomp://host:port`` or ``stomp+ssl://host:port``."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'stomp+ssl' if self.tls else 'stomp'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; raises ValueError with the reason."""
    m = _BROKER_URL.match(url)
    if not m:
        raise ValueError(f"{mask_url(url)!r} is not stomp://HOST:PORT or stomp+ssl://HOST:PORT")
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise ValueError(f"{mask_url(url)!r}: port {port} out of range")
    return BrokerAddress(m.group(2).strip("[]"), port, m.group(1) == "stomp+ssl")


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); raises ValueError."""
    m = _HOST_PORT.match(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return m.group(1).strip("[]"), int(m.group(2))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host``."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:****@", url)


# -- loading ----------------------------------------------------------------------------

#: The core's sections. Daemons add theirs through the ``fitsflow.config_sections``
#: entry-point group (name = section, value = dataclass), so the core imports no daemon.
CORE_SECTIONS: dict[str, type] = {"site": SiteConfig, "bus": BusConfig, "paths": PathsConfig,
                                  "metrics": MetricsConfig}
ENTRY_POINT_GROUP = "fitsflow.config_sections"


def known_sections() -> dict[str, type | None]:
    """Every section name with its dataclass; None for a daemon not installed on this host."""
    sections: dict[str, type | None] = dict(CORE_SECTIONS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            sections[ep.name] = ep.load()
        except ImportError:
            sections.setdefault(ep.name, None)
    return sections


def config_path(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """Which configuration file to read: ``--config``, ``$FITSFLOW_CONFIG``, the default."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load_config(path: str | os.PathLike[str] | None = None, *, check_dirs: bool = True,
                role: str | None = None) -> Config:
    """Read, type-check and validate the configuration file.

    ``check_dirs=False`` skips the checks that look at the filesystem (for tools that only
    want to print the configuration of another machine). ``role``: the broker identity of
    the program (a daemon name, or one of TOOL_ROLES); ``{role}`` in bus.credentials_file
    becomes it.
    """
    source = config_path(path).absolute()
    try:
        with open(source, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(source), None, "no such file (give --config or set FITSFLOW_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(str(source), None, f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), None, f"not valid TOML: {exc}") from None

    check = _Checker(str(source), check_dirs, role)
    known = known_sections()
    sections: dict[str, Any] = {}
    for name, table in raw.items():
        if name not in known:
            check.fail(name, f"unknown section; known: {', '.join(sorted(known))}")
        cls = known[name]
        if cls is not None:  # a section for a daemon that runs on other hosts: not ours to check
            sections[name] = _build(cls, table, name, check)
    # Core sections are checked always; a daemon's only when the file has it (its defaults
    # must be valid for every other daemon; the daemon itself checks what it cannot default).
    checked = set(sections) | set(CORE_SECTIONS)
    for name, cls in known.items():
        if cls is not None and name not in sections:
            sections[name] = cls()
    for name, sec in sections.items():
        validate = getattr(sec, "validate", None)
        if validate is not None and name in checked:
            validate(check)
    if role is not None:
        sections["bus"] = sections["bus"].for_role(role)
    return Config(source=source, sections=MappingProxyType(sections))


class _Checker:
    """Collects the context a validator needs to raise one clear ConfigError."""

    def __init__(self, source: str, check_dirs: bool, role: str | None = None) -> None:
        self.source = source
        self.check_dirs = check_dirs
        self.role = role

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(self.source, key, problem)

    def positive(self, key: str, value: float) -> None:
        if value <= 0:
            self.fail(key, f"must be > 0, not {value}")

    def pattern(self, key: str, value: str, regex: str) -> None:
        if not re.fullmatch(regex, value):
            self.fail(key, f"{value!r} does not match {regex}")

    def secret_file(self, key: str, path: Path) -> None:
        """A file holding a secret: must exist, be owned by the user running fitsflow (root
        may check anyone's) and be neither group- nor world-accessible."""
        try:
            st = path.stat()
        except OSError as exc:
            self.fail(key, f"{path}: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            self.fail(key, f"{path} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.fail(key, f"{path} is accessible to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                           f"chmod 600 {path}")
        euid = os.geteuid()
        if euid != 0 and st.st_uid != euid:
            self.fail(key, f"{path} is owned by uid {st.st_uid}, not by uid {euid} that runs fitsflow")

    def directory(self, key: str, path: Path) -> None:
        if not self.check_dirs:
            return
        if not path.exists():
            self.fail(key, f"directory {path} does not exist")
        if not path.is_dir():
            self.fail(key, f"{path} is not a directory")


def _build(cls: type, table: Any, where: str, check: _Checker) -> Any:
    """Turn a TOML table into dataclass ``cls``, rejecting unknown keys and wrong types."""
    if not isinstance(table, dict):
        check.fail(where, f"must be a table, not {_tname(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - fields)
    if unknown:
        check.fail(f"{where}.{unknown[0]}", f"unknown key; known keys: {', '.join(sorted(fields))}")
    values = {key: _convert(hints[key], value, f"{where}.{key}", check) for key, value in table.items()}
    return cls(**values)


def _convert(tp: Any, value: Any, where: str, check: _Checker) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value, where, check)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            check.fail(where, f"must be a list, not {_tname(value)}")
        return tuple(_convert(item_tp, v, f"{where}[{i}]", check) for i, v in enumerate(value))
    if origin is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            check.fail(where, f"must be a table, not {_tname(value)}")
        return {k: _convert(val_tp, v, f"{where}.{k}", check) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, check)
    if tp is Path:
        if not isinstance(value, str) or not value:
            check.fail(where, f"must be a non-empty path string, not {_tname(value)}")
        return Path(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            check.fail(where, f"must be a number, not {_tname(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            check.fail(where, f"must be an integer, not {_tname(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            check.fail(where, f"must be {'a string' if tp is str else 'true or false'}, not {_tname(value)}")
        return value
    raise TypeError(f"config type {tp!r} of {where} is not supported")  # a bug in a dataclass


def toml_value(value: Any) -> str:
    """A value as TOML writes it (scalars, arrays, inline tables): for ``config check``'s
    output, which must read back as the file it describes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def _tname(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__) + f" ({value!r})"


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_credentials(path: Path) -> tuple[str, str]:
    """Read ``username``/``password`` from a credentials TOML file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), None, f"cannot read credentials: {exc}") from None
    user, password = data.get("username"), data.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ConfigError(str(path), "username/password", "both must be strings")
    return user, password
