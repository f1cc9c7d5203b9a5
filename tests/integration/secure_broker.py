"""fitsflow's shipped broker configuration (etc/activemq/fitsflow) running privately, with a
test CA, one random password per identity, and per-identity fitsflow configurations."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

from fitsflow.core.bus.stomp_link import TlsSettings
from fitsflow.core.config import Config, load_config
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.broker import identities as shipped_identities
from fitsflow.testing.config import make_site
from fitsflow.testing.pki import TestPKI

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "activemq" / "fitsflow"


def identities() -> list[str]:
    """Every identity named in the shipped groups.properties."""
    return shipped_identities(SHIPPED / "groups.properties")


class SecureBroker:
    """Start with :meth:`start`; ``passwords`` maps identity → its random password."""

    def __init__(self, base: Path, *, host: str = "localhost", ip: str | None = "127.0.0.1",
                 need_client_auth: bool = False, pki: TestPKI | None = None, name: str = "broker") -> None:
        self.base = base
        self.pki = pki or TestPKI(base / "pki")
        self.passwords = {ident: f"pw-{ident}-{secrets.token_hex(8)}" for ident in identities()}
        conf = base / "conf-src"
        shutil.copytree(SHIPPED, conf, dirs_exist_ok=True)
        (conf / "users.properties").write_text("".join(f"{u}={p}\n" for u, p in self.passwords.items()))
        stores = self.pki.server(host, ip, name=name)
        props = stores.broker_properties() | {"stomp.bind": "127.0.0.1",
                                              "stomp.needClientAuth": str(need_client_auth).lower()}
        self.broker = PrivateBroker(base / "amq", name=name, config=conf, properties=props, tls=True)
        self.host = host

    def start(self) -> SecureBroker:
        self.broker.start()
        return self

    def stop(self) -> None:
        self.broker.stop()

    def url(self, host: str | None = None) -> str:
        return f"stomp+ssl://{host or '127.0.0.1'}:{self.broker.stomp_port}"

    def link_kwargs(self, identity: str, **tls: Any) -> dict[str, Any]:
        """StompLink keyword arguments for ``identity`` (trusting the test CA)."""
        return {"credentials": (identity, self.passwords[identity]),
                "tls": TlsSettings(ca_file=self.pki.ca_cert, **tls)}

    def site(self, base: Path, identity: str, *, mode: int = 0o600, extra: dict[str, dict[str, Any]] | None = None,
             url: str | None = None, **bus: Any) -> Path:
        """A fitsflow.toml under ``base`` whose bus logs in as ``identity`` over TLS."""
        base.mkdir(parents=True, exist_ok=True)
        creds = base / f"{identity}.credentials"
        creds.write_text(f'username = "{identity}"\npassword = "{self.passwords[identity]}"\n')
        creds.chmod(mode)
        sections = dict(extra or {})
        sections["bus"] = {"credentials_file": str(creds), "tls_ca_file": str(self.pki.ca_cert),
                           **bus, **sections.get("bus", {})}
        return make_site(base, [url or self.url()], extra=sections)

    def config(self, base: Path, identity: str, **kwargs: Any) -> Config:
        return load_config(self.site(base, identity, **kwargs))
