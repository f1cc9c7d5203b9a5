"""BrokerLink over stomp.py — the only module of fitsflow that imports stomp."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import stomp
import stomp.exception

from fitsflow.core.bus.link import BrokerLink, Frame, Subscription
from fitsflow.core.config import BrokerAddress, BusConfig, parse_broker_url, read_credentials
from fitsflow.core.errors import Disconnected, Refused

_log = logging.getLogger(__name__)


class _RedactPasscode(logging.Filter):
    """stomp.py logs every frame it sends at DEBUG, the CONNECT frame's passcode included:
    blank it before any handler sees the record."""

    _PASSCODE = re.compile(r"passcode:[^\\'\n]*")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "passcode:" in text:
            record.msg, record.args = self._PASSCODE.sub("passcode:********", text), None
        return True


logging.getLogger("stomp.py").addFilter(_RedactPasscode())
_receipts = itertools.count(1)


@dataclass(frozen=True)
class TlsSettings:
    """How a stomp+ssl:// link checks the broker and proves who it is (bus.tls_*)."""

    ca_file: Path | None = None  # None: the system's CA store
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_config(cls, bus: BusConfig) -> TlsSettings:
        return cls(bus.tls_ca_file, bus.tls_cert_file, bus.tls_key_file)


class StompLink(BrokerLink):
    """One STOMP 1.1 connection with heart-beats, receipts and client-individual acks.

    ``stomp+ssl://`` URLs speak TLS with certificate and host-name verification always on."""

    def __init__(self, url: str, *, heartbeat_ms: int = 10_000, credentials: tuple[str, str] | None = None,
                 connect_timeout_s: float = 5.0, tls: TlsSettings | None = None) -> None:
        super().__init__(url)
        self.address: BrokerAddress = parse_broker_url(url)
        self._tls = tls or TlsSettings()
        self._heartbeat_ms = heartbeat_ms
        self._credentials = credentials
        self._timeout = connect_timeout_s
        self._conn: stomp.Connection | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, concurrent.futures.Future[None]] = {}
        self._last_error = ""

    @classmethod
    def for_brokers(cls, bus: BusConfig, **kwargs: object) -> list[StompLink]:
        """One link per configured broker, with the configured credentials and TLS settings."""
        creds = read_credentials(bus.credentials_file) if bus.credentials_file else None
        kwargs.setdefault("heartbeat_ms", bus.heartbeat_ms)
        return [cls(url, credentials=creds, tls=TlsSettings.from_config(bus), **kwargs)  # type: ignore[arg-type]
                for url in bus.brokers]

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.is_connected()

    def connect(self, client_id: str) -> None:
        conn = stomp.Connection(
            [(self.address.host, self.address.port)],
            heartbeats=(self._heartbeat_ms, self._heartbeat_ms),
            # ActiveMQ may send its heart-beat up to twice the negotiated interval after the
            # last frame (AMQ-4710); stomp.py's default 1.5 then drops healthy connections.
            heart_beat_receive_scale=2.5,
            reconnect_attempts_max=1,  # the bus owns reconnection, with its own back-off
            timeout=self._timeout,
            keepalive=True,
        )
        if self.address.tls:
            # stomp.py builds an SSLContext(PROTOCOL_TLS_CLIENT): hostname check and
            # CERT_REQUIRED are on as long as verify=True.
            conn.set_ssl(for_hosts=[(self.address.host, self.address.port)], verify=True,
                         ca_certs=str(self._tls.ca_file) if self._tls.ca_file else None,
                         cert_file=str(self._tls.cert_file) if self._tls.cert_file else None,
                         key_file=str(self._tls.key_file) if self._tls.key_file else None)
        generation = self.generation + 1
        listener = _Listener(self, generation)
        conn.set_listener("fitsflow", listener)
        self._last_error = ""
        user, password = self._credentials or (None, None)
        try:
            # Not wait=True: stomp.py then waits for CONNECTED with no time limit (its own
            # timeout argument only changes the polling), so a broker that accepts TCP but
            # never answers would hold this thread for ever, silently.
            conn.connect(user, password, wait=False, headers={"client-id": client_id})
            deadline = time.monotonic() + self._timeout
            while not conn.is_connected():
                if conn.transport.connection_error:
                    # stomp.py flags the error before it hands the ERROR frame to listeners:
                    # wait for the frame, whose message tells a transient refusal from a final one.
                    listener.error_seen.wait(1.0)
                    if "already connected" in (self._last_error or ""):
                        # The broker has not yet noticed that our previous connection is
                        # gone (client-id still taken): transient, retried with back-off.
                        raise Disconnected(f"{self.address}: {self._last_error}")
                    raise Refused(f"{self.address}: login refused by the broker: "
                                  f"{self._last_error or 'no reason given'}")
                if time.monotonic() > deadline:
                    raise stomp.exception.ConnectFailedException(f"no CONNECTED within {self._timeout:.0f} s")
                time.sleep(0.01)
        except (stomp.exception.StompException, OSError, Disconnected) as exc:
            _abandon(conn)
            if isinstance(exc, Disconnected):  # Refused included
                raise
            raise Disconnected(f"{self.address}: cannot connect: {str(exc) or type(exc).__name__}") from None
        _no_delay(conn)
        with self._lock:
            self._conn = conn
            self.generation = generation

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception as exc:  # noqa: BLE001 - the socket may already be gone
                _log.debug("%s: disconnect: %s", self.address, exc)
            # The broker answers DISCONNECT with a receipt, on which stomp.py's io thread
            # ends the TLS session and closes the socket itself. Wait for that thread: a
            # second thread in the same TLS session (an unwrap of our own) aborts the process
            # inside OpenSSL (seen in CI: "Fatal Python error: Aborted" in ssl.unwrap).
            thread = getattr(conn.transport, "io_thread", None)
            if thread is not None and thread is not threading.current_thread():
                thread.join(self._timeout)
            _abandon(conn)  # a broker that did not answer in time
        self._fail_pending(f"{self.address}: connection closed")

    def send(self, destination: str, body: str, headers: Mapping[str, str]) -> concurrent.futures.Future[None]:
        return self._with_receipt(f"send to {destination}",
                                  lambda conn, r: conn.send(destination, body, headers=dict(headers), receipt=r))

    def subscribe(self, sub: Subscription) -> concurrent.futures.Future[None]:
        headers = {"activemq.prefetchSize": str(sub.prefetch), **sub.extra_headers}
        if sub.selector:
            headers["selector"] = sub.selector
        if sub.durable_name:
            headers["activemq.subscriptionName"] = sub.durable_name
        return self._with_receipt(f"subscribe to {sub.destination}", lambda conn, r: conn.subscribe(
            sub.destination, id=sub.id, ack="client-individual", headers=dict(headers, receipt=r)))

    def _with_receipt(self, what: str, action: Callable[[stomp.Connection, str], None]) -> concurrent.futures.Future[None]:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        conn = self._conn
        if conn is None or not conn.is_connected():
            fut.set_exception(Disconnected(f"{self.address}: not connected"))
            return fut
        receipt = f"r{next(_receipts)}"
        self._pending[receipt] = fut
        try:
            action(conn, receipt)
        except (stomp.exception.StompException, OSError) as exc:
            self._pending.pop(receipt, None)
            _settle(fut, Disconnected(f"{self.address}: {what} failed: {exc}"))
        return fut

    def ack(self, frame: Frame, sub_id: str) -> None:
        conn = self._require()
        try:
            conn.ack(frame.headers["message-id"], sub_id)
        except (stomp.exception.StompException, OSError) as exc:
            # The connection broke under the ACK (reset by the broker after a stall): the
            # same outcome as not connected — the broker redelivers, the bus drops it as seen.
            raise Disconnected(f"{self.address}: ack failed: {exc}") from None

    def _require(self) -> stomp.Connection:
        conn = self._conn
        if conn is None or not conn.is_connected():
            raise Disconnected(f"{self.address}: not connected")
        return conn

    # -- called from stomp.py's receiver thread through _Listener ------------------------

    def _receipt(self, receipt_id: str, error: str | None) -> None:
        fut = self._pending.pop(receipt_id, None)
        if fut is not None:
            _settle(fut, None if error is None else Refused(f"{self.address}: broker refused: {error}"))

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            _settle(fut, Disconnected(reason))


def _settle(fut: concurrent.futures.Future[None], error: BaseException | None) -> None:
    """Complete ``fut`` (with ``error``, if any) unless another thread did first. A broken
    connection fails every pending receipt from stomp.py's thread while the send that met
    the broken socket fails its own in the caller's: whichever comes second must not raise
    (it did: InvalidStateError ended the chaos test's camera when the broker was killed)."""
    try:
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass


class _Listener(stomp.ConnectionListener):
    def __init__(self, link: StompLink, generation: int) -> None:
        self.link = link
        self.generation = generation
        self.error_seen = threading.Event()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        if self.link.callbacks:
            self.link.callbacks.on_message(self.link, self.generation, Frame(dict(frame.headers), frame.body))

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        self.link._receipt(frame.headers.get("receipt-id", ""), None)

    def on_error(self, frame: stomp.utils.Frame) -> None:
        message = frame.headers.get("message", "") or frame.body[:200]
        receipt = frame.headers.get("receipt-id")
        _log.warning("%s: broker ERROR frame: %s", self.link.address, message)
        self.link._last_error = message
        self.error_seen.set()
        if receipt:
            self.link._receipt(receipt, message)
        else:  # a connection-level error (e.g. frame too large): the broker closes the connection
            self.link._fail_pending(f"{self.link.address}: broker error: {message}")

    def on_disconnected(self) -> None:
        self.link._fail_pending(f"{self.link.address}: connection lost")
        if self.link.callbacks:
            self.link.callbacks.on_disconnected(self.link, self.generation)


def _abandon(conn: stomp.Connection) -> None:
    """Close a connection's socket whatever its state. stomp.py's ``disconnect()`` does
    nothing for a connection that never got CONNECTED — its socket stays open, and a broker
    that was hung (SIGSTOP, GC pause) answers the queued CONNECT when it resumes: the
    abandoned connection then holds the client-id, heart-beats keep it alive, and every
    later connection is refused "already connected" (seen for minutes in the fault tests)."""
    try:
        conn.remove_listener("fitsflow")
    except Exception:  # noqa: BLE001 - best effort
        pass
    transport = conn.transport
    sock = transport.socket
    if sock is None:
        return
    thread = getattr(transport, "io_thread", None)
    try:
        if thread is not None and thread.is_alive():
            # The io thread owns the socket and its TLS state: only wake it at the OS level
            # (no TLS call from this thread, see close()); it then closes the socket itself.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:
            sock.close()
    except OSError as exc:  # closed meanwhile by the io thread
        _log.debug("closing an abandoned connection: %s", exc)


def _no_delay(conn: stomp.Connection) -> None:
    """Send each frame at once (TCP_NODELAY). With Nagle's algorithm a small frame that
    follows another before its TCP ACK — the second of two INGEST_REQUESTs, an ACK after a
    SEND — waits for the peer's delayed ACK: 40 ms per hop on Linux, measured in the
    hand-off (bench/handoff.py)."""
    sock = getattr(conn.transport, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # not fatal: frames are only later
            _log.debug("TCP_NODELAY not set: %s", exc)
