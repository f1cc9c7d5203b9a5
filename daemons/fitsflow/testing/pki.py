"""A throw-away certificate authority for TLS tests (openssl and the JRE's keytool).

``TestPKI(dir).server("localhost")`` gives a broker key store and trust store (PKCS#12, what
ActiveMQ's sslContext reads); ``client(name)`` gives a PEM certificate and key for a client;
a second ``TestPKI`` is a rogue CA whose certificates the first one must refuse.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

STORE_PASSWORD = "test-store-pw"


def _run(*cmd: str | Path) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr}")


@dataclass(frozen=True)
class ServerStores:
    key_store: Path
    trust_store: Path
    password: str = STORE_PASSWORD

    def broker_properties(self) -> dict[str, str]:
        """The -D properties for etc/activemq/fitsflow/activemq.xml."""
        return {"ssl.keyStore": str(self.key_store), "ssl.keyStorePassword": self.password,
                "ssl.trustStore": str(self.trust_store), "ssl.trustStorePassword": self.password}


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


class TestPKI:
    """A CA in ``base`` (created on first use)."""

    __test__ = False  # not a pytest test class

    def __init__(self, base: Path, name: str = "fitsflow-test-ca") -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.ca_key = self.base / "ca.key"
        self.ca_cert = self.base / "ca.pem"
        if not self.ca_cert.exists():
            _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN={name}", "-keyout", self.ca_key, "-out", self.ca_cert)
        self._serial = 0

    def _issue(self, name: str, cn: str, ext: str) -> ClientCert:
        key, csr, cert = self.base / f"{name}.key", self.base / f"{name}.csr", self.base / f"{name}.pem"
        extfile = self.base / f"{name}.ext"
        extfile.write_text(ext)
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", key, "-out", csr)
        self._serial += 1
        _run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
             "-set_serial", str(1000 + self._serial), "-days", "2", "-extfile", extfile, "-out", cert)
        key.chmod(0o600)
        return ClientCert(cert, key)

    def server_pem(self, host: str = "localhost", ip: str | None = "127.0.0.1", name: str = "server") -> ClientCert:
        """A server certificate for ``host`` and ``ip`` with its key, in PEM (e.g. an SMTP server's)."""
        san = f"DNS:{host}" + (f",IP:{ip}" if ip else "")
        return self._issue(f"server-{name}", host, f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")

    def server(self, host: str = "localhost", ip: str | None = "127.0.0.1", name: str = "broker") -> ServerStores:
        """Broker key store (server certificate for ``host`` and ``ip``) and a trust store with this CA."""
        pem = self.server_pem(host, ip, name)
        key_store, trust_store = self.base / f"{name}.p12", self.base / f"{name}-trust.p12"
        _run("openssl", "pkcs12", "-export", "-in", pem.cert, "-inkey", pem.key, "-name", name,
             "-passout", f"pass:{STORE_PASSWORD}", "-out", key_store)
        trust_store.unlink(missing_ok=True)
        _run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", self.ca_cert, "-storetype", "PKCS12",
             "-keystore", trust_store, "-storepass", STORE_PASSWORD)
        return ServerStores(key_store, trust_store)

    def client(self, name: str) -> ClientCert:
        """A client certificate with CN ``name``."""
        return self._issue(f"client-{name}", name, "extendedKeyUsage=clientAuth\n")
