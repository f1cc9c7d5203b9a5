"""Security against a real ActiveMQ configured by the shipped etc/activemq/fitsflow files:
TLS only, one identity per role, an authorization map, and what fitsflow does when refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from fitsflow.archive_controller.daemon import ArchiveControllerDaemon
from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.link import Subscription
from fitsflow.core.bus.stomp_link import StompLink, TlsSettings
from fitsflow.core.errors import Disconnected, Refused
from fitsflow.core.messages import CATALOGUE, MAX_BODY_BYTES, destination_of, make
from fitsflow.testing.broker import free_port
from fitsflow.testing.daemons import running
from fitsflow.testing.pki import TestPKI
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.wait import async_wait_for

from .secure_broker import SecureBroker

pytestmark = pytest.mark.broker

TOY = Path(__file__).with_name("toy_daemon.py")
#: Everything fitsflow printed during this module; the last test greps it for passwords.
CAPTURED: list[str] = []


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    b = SecureBroker(tmp_path_factory.mktemp("secure")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, secure: SecureBroker) -> Iterator[SecureBroker]:
    """A second broker that requires client certificates; its certificate names only localhost."""
    b = SecureBroker(tmp_path_factory.mktemp("mtls"), ip=None, need_client_auth=True, pki=secure.pki,
                     name="mtls").start()
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _capture_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("DEBUG")
    yield
    CAPTURED.append(caplog.text)


def connect(url: str, **kwargs: object) -> StompLink:
    link = StompLink(url, heartbeat_ms=0, connect_timeout_s=3.0, **kwargs)  # type: ignore[arg-type]
    # A client-id of its own each time: the broker may not yet have dropped the previous
    # connection of the same id (it then refuses "already connected").
    link.connect(f"sec-test-{uuid.uuid4().hex[:8]}")
    return link


def test_plaintext_stomp_is_refused(secure: SecureBroker) -> None:
    url = f"stomp://127.0.0.1:{secure.broker.stomp_port}"
    with pytest.raises(Disconnected):
        connect(url, credentials=("operator", secure.passwords["operator"]))


def test_login_needs_a_known_identity_and_its_password(secure: SecureBroker) -> None:
    tls = TlsSettings(ca_file=secure.pki.ca_cert)
    with pytest.raises(Refused, match="invalid"):
        connect(secure.url(), tls=tls)  # anonymous
    with pytest.raises(Refused, match=r"\[receiver\].*invalid"):
        connect(secure.url(), tls=tls, credentials=("receiver", "wrong"))
    with pytest.raises(Refused):
        connect(secure.url(), tls=tls, credentials=("stranger", secure.passwords["receiver"]))
    connect(secure.url(), **secure.link_kwargs("receiver")).close()


def test_the_broker_certificate_is_verified(secure: SecureBroker, tmp_path: Path) -> None:
    rogue = TestPKI(tmp_path / "rogue", name="rogue-ca")
    creds = ("operator", secure.passwords["operator"])
    with pytest.raises(Disconnected):  # signed by a CA we do not trust
        connect(secure.url(), credentials=creds, tls=TlsSettings(ca_file=rogue.ca_cert))
    with pytest.raises(Disconnected):  # the system's CA store does not know the test CA either
        connect(secure.url(), credentials=creds, tls=TlsSettings())


def test_client_certificates_when_the_broker_requires_them(mtls: SecureBroker, tmp_path: Path) -> None:
    good = mtls.pki.client("forwarder")
    bad = TestPKI(tmp_path / "rogue", name="rogue-ca").client("forwarder")
    creds = ("forwarder", mtls.passwords["forwarder"])
    ca = mtls.pki.ca_cert
    with pytest.raises(Disconnected):  # the certificate names localhost, not 127.0.0.1
        connect(mtls.url("127.0.0.1"), credentials=creds, tls=TlsSettings(ca, good.cert, good.key))
    with pytest.raises(Disconnected):  # no client certificate
        connect(mtls.url("localhost"), credentials=creds, tls=TlsSettings(ca))
    with pytest.raises(Disconnected):  # a client certificate from another CA
        connect(mtls.url("localhost"), credentials=creds, tls=TlsSettings(ca, bad.cert, bad.key))
    connect(mtls.url("localhost"), credentials=creds, tls=TlsSettings(ca, good.cert, good.key)).close()


#: Who sends each message type (the identity of groups.properties).
SENDER = {
    "START_INTEGRATION": "camera", "END_READOUT": "camera", "END_OF_IMAGE_TELEMETRY": "camera",
    "TELEMETRY": "camera", "RESEND_IMAGE": "archive-controller", "READOUT_COMPLETE": "receiver",
    "RECEIVER_STATS": "receiver", "HEADER_READY": "header-service", "FORWARD_IMAGE": "archive-controller",
    "FORWARDER_HEARTBEAT": "forwarder", "FILE_DELIVERED": "forwarder", "INGEST_REQUEST": "archive-controller",
    "IMAGE_IN_OODS": "oods", "IMAGE_IN_ARCHIVE": "archive-ingest", "IMAGE_IN_RUCIO": "archive-ingest",
    "PANIC": "panic",
    "ALERT": "receiver", "DAEMON_STATE": "oods",
}
_PARAMS = {"forwarder": "fwd1", "target": "oods"}


def _may_send(secure: SecureBroker, identity: str, destination: str) -> bool:
    link = connect(secure.url(), **secure.link_kwargs(identity))
    try:
        # Expires at once: nothing is left on a queue for the daemons of the other tests.
        link.send(destination, "{}", {"persistent": "false", "expires": "1"}).result(5)
        return True
    except Refused:
        return False
    finally:
        link.close()


def test_every_message_type_has_its_sender_in_the_authorization_map(secure: SecureBroker) -> None:
    assert set(SENDER) == set(CATALOGUE), "a new message type needs a line in SENDER and in activemq.xml"
    refused = [f"{t} by {who}" for t, who in SENDER.items()
               if not _may_send(secure, who, destination_of(t, **_PARAMS))]
    assert refused == []


@pytest.mark.parametrize("identity, destination", [
    ("receiver", "/queue/fitsflow.forwarder.fwd1"),  # only the controller assigns work
    ("forwarder", "/queue/fitsflow.forwarder.fwd1"),
    ("forwarder", "/queue/fitsflow.oods.ingest"),  # only the controller stages files
    ("oods", "/topic/fitsflow.archive"),  # the OODS cannot claim archive ingests
    ("panic", "/topic/fitsflow.readout"),  # a panic-only host sends panics, nothing else
    ("camera", "/topic/fitsflow.readout"),
    ("recorder", "/queue/fitsflow.oods.ingest"),  # the recorder listens (and states its own state)
])
def test_an_identity_cannot_write_what_it_does_not_own(secure: SecureBroker, identity: str, destination: str) -> None:
    assert not _may_send(secure, identity, destination)


@pytest.mark.parametrize("identity, destination, allowed", [
    ("panic-mailer", "/queue/fitsflow.panic", True),
    ("receiver", "/queue/fitsflow.panic", False),  # nobody else reads panics
    ("forwarder", "/queue/fitsflow.oods.ingest", False),
    ("recorder", "/topic/fitsflow.readout", True),
    ("recorder", "/topic/fitsflow.>", False),  # a wildcard would lock every other topic consumer out
    ("recorder", "/topic/mirror.fitsflow.>", True),  # queue traffic, mirrored by the broker
    ("oods", "/topic/mirror.fitsflow.>", False),
])
def test_reading_is_limited_to_consumers(secure: SecureBroker, identity: str, destination: str, allowed: bool) -> None:
    link = connect(secure.url(), **secure.link_kwargs(identity))
    try:
        fut = link.subscribe(Subscription(id="s", destination=destination, selector=None, prefetch=1))
        if allowed:
            fut.result(5)
        else:
            with pytest.raises(Refused, match="not authorized to read"):
                fut.result(5)
    finally:
        link.close()


def test_the_recorder_does_not_lock_other_consumers_out(secure: SecureBroker, tmp_path: Path) -> None:
    """With the recorder subscribed (as its daemon does), the other roles still subscribe to
    their topics — a wildcard subscription by the recorder would make the broker refuse them."""
    from fitsflow.recorder.daemon import RecorderDaemon

    cfg = secure.config(tmp_path, "recorder", extra={"recorder": {"http_port": free_port()}})

    async def scenario() -> None:
        async with running(RecorderDaemon, cfg, "sec"):
            for identity, topic in (("archive-controller", "/topic/fitsflow.readout"),
                                    ("forwarder", "/topic/fitsflow.header"), ("receiver", "/topic/fitsflow.camera.events")):
                link = connect(secure.url(), **secure.link_kwargs(identity))
                try:
                    await asyncio.wrap_future(link.subscribe(Subscription(id="s", destination=topic, selector=None,
                                                                          prefetch=1)))
                finally:
                    link.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_refused_sends_are_kept_and_reported_once(secure: SecureBroker, tmp_path: Path, unique: str) -> None:
    cfg = secure.config(tmp_path, "receiver")
    reports: list[tuple[str, str, str]] = []

    async def on_refused(destination: str, what: str, reason: str) -> None:
        reports.append((destination, what, reason))

    async def scenario() -> None:
        bus = MessageBus.from_config(cfg, f"receiver-{unique}", on_refused=on_refused)
        await bus.start()
        assert await bus.wait_connected(15)
        forward = make("FORWARD_IMAGE", f"IMG_{unique}", sensors=["R22_S11"], assignment="a1")
        await bus.send(forward, "/queue/fitsflow.forwarder.fwd1")
        await bus.send(forward, "/queue/fitsflow.forwarder.fwd1")
        readout = make("READOUT_COMPLETE", f"IMG_{unique}", present=["R22_S11"], missing=[], partial=[])
        await bus.send(readout)  # allowed: unaffected by the refusals
        assert bus.stats.refused == 2 and bus.store.refused_size() == 2 and bus.outbox_size == 0
        await bus.stop()
        # Kept across a restart and tried again (an operator may have fixed the map meanwhile).
        again = MessageBus.from_config(cfg, f"receiver-{unique}", on_refused=on_refused)
        assert again.outbox_size == 2 and again.store.refused_size() == 0
        await again.start()
        await async_wait_for(lambda: again.store.refused_size() == 2, 20, what="refused again after the restart")
        await again.stop()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    assert [(d, w) for d, w, _ in reports] == [("/queue/fitsflow.forwarder.fwd1", "send")] * 2  # once per bus
    assert "not authorized to write" in reports[0][2]


def _toy(site: Path, instance: str) -> subprocess.Popen[str]:
    env = dict(os.environ, FITSFLOW_CONFIG=str(site))
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen([sys.executable, str(TOY), "--instance", instance], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM and collect the output; a daemon that does not stop logs its asyncio tasks
    (SIGUSR1) before it is killed, so the failure shows where it was stuck."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"the daemon did not stop on SIGTERM:\n{out[-20000:]}")
    CAPTURED.append(out)
    return out


def test_a_daemon_refused_a_subscription_raises_a_panic(secure: SecureBroker, tmp_path: Path, unique: str) -> None:
    site = secure.site(tmp_path, "receiver")  # the toy daemon reads /queue/toy.*: not the receiver's
    proc = _toy(site, unique)
    try:
        frames = drain(secure.url(), "/queue/fitsflow.panic", expect=1, timeout=30,
                       **secure.link_kwargs("panic-mailer"))
    finally:
        out = _stop(proc)
    texts = [json.loads(f.body)["data"]["message"] for f in frames]
    assert any(f"refuses subscribe /queue/toy.{unique}" in t and "not authorized to read" in t for t in texts), texts
    assert proc.returncode == 0, out


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_credentials_readable_by_others_refuse_start(secure: SecureBroker, tmp_path: Path, mode: int) -> None:
    site = secure.site(tmp_path, "receiver", mode=mode)
    proc = subprocess.run([sys.executable, str(TOY), "--instance", "x"], env=dict(os.environ, FITSFLOW_CONFIG=str(site)),
                          capture_output=True, text=True, timeout=60)
    CAPTURED.append(proc.stdout + proc.stderr)
    assert proc.returncode == 78, proc.stderr
    assert "bus.credentials_file" in proc.stderr and "chmod 600" in proc.stderr
    check = subprocess.run([sys.executable, "-m", "fitsflow.cli", "config", "check", "--config", str(site)],
                           capture_output=True, text=True, timeout=60)
    CAPTURED.append(check.stdout + check.stderr)
    assert check.returncode == 78 and "accessible to group or others" in check.stderr


def test_untrusted_paths_and_oversized_bodies_are_dead_lettered(secure: SecureBroker, tmp_path: Path,
                                                                unique: str) -> None:
    cfg = secure.config(tmp_path / "controller", "archive-controller")
    op = secure.link_kwargs("operator")
    delivered = destination_of("FILE_DELIVERED")
    data_id = {"instrument": "TESTCAM", "image": f"TC_O_{unique}", "group": "g", "snap": 0, "raft": "R22",
               "sensor": "S11", "obs_day": "20261121"}

    def bad(path: str) -> str:
        return make("FILE_DELIVERED", f"TC_O_{unique}", path=path, size=1, checksum="crc32:00000000",
                    data_id=data_id, assignment="a").encode()

    async def scenario() -> list:
        async with running(ArchiveControllerDaemon, cfg, unique):
            link = connect(secure.url(), **op)
            try:
                oversized = bad("/x").replace('"/x"', json.dumps("/" + "x" * MAX_BODY_BYTES))  # make() refuses it
                for body in [bad("/etc/passwd"), bad(f"{cfg.paths.resolved().incoming}/../../../../etc/passwd"),
                             oversized]:
                    link.send(delivered, body, {"persistent": "true", "MsgClass": "fitsflow"}).result(5)
                with pytest.raises(Disconnected):  # above maxFrameSize: an ERROR frame or a dropped connection
                    link.send(delivered, "y" * (2 << 20), {"persistent": "true"}).result(5)
            finally:
                link.close()
            return await asyncio.to_thread(drain, secure.url(), "/queue/DLQ.fitsflow.archive.delivered",
                                           expect=3, timeout=30, **op)

    frames = asyncio.run(asyncio.wait_for(scenario(), 120))
    reasons = sorted(f.headers.get("DLQReason", "") for f in frames)
    assert len(frames) == 3, reasons
    assert sum("/etc/passwd" in r and "is outside" in r for r in reasons) == 2, reasons
    assert sum(f"exceeds the limit of {MAX_BODY_BYTES}" in r for r in reasons) == 1, reasons


def test_no_secret_appears_in_any_log(secure: SecureBroker, mtls: SecureBroker, tmp_path: Path, unique: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """Every log line of this module so far (ours, the daemons', the broker's), and of the
    paths that handle secrets, exercised here so that the check does not depend on which
    tests ran before it: logins refused and accepted at DEBUG, a refused send, a daemon
    started from a credentials file."""
    tls = TlsSettings(ca_file=secure.pki.ca_cert)
    for credentials in (("receiver", "wrong"), ("stranger", secure.passwords["receiver"])):
        with pytest.raises(Refused):
            connect(secure.url(), tls=tls, credentials=credentials)
    connect(secure.url(), tls=tls, credentials=("receiver", secure.passwords["receiver"])).close()

    async def refused_send() -> None:
        bus = MessageBus.from_config(secure.config(tmp_path / "bus", "receiver"), f"receiver-{unique}")
        await bus.start()
        assert await bus.wait_connected(15)
        await bus.send(make("FORWARD_IMAGE", f"IMG_{unique}", sensors=["R22_S11"], assignment="a1"),
                       "/queue/fitsflow.forwarder.fwd1")
        await bus.stop()
    asyncio.run(asyncio.wait_for(refused_send(), 60))
    proc = _toy(secure.site(tmp_path / "toy", "receiver"), unique)
    try:
        drain(secure.url(), "/queue/fitsflow.panic", expect=1, timeout=30, **secure.link_kwargs("panic-mailer"))
    finally:
        _stop(proc)
    text = "\n".join(CAPTURED + [caplog.text] + [b.broker.log_tail(100_000) for b in (secure, mtls)])
    assert "refused" in text and "connected to" in text  # the paths above did log
    leaked = [p for p in list(secure.passwords.values()) + list(mtls.passwords.values()) if p in text]
    assert leaked == []
