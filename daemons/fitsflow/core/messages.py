"""The message catalogue and the envelope every fitsflow message travels in.

A message on the wire is a STOMP frame whose body is JSON::

    {"version": 1, "type": "READOUT_COMPLETE", "id": "<uuid4 hex>", "sent": "<ISO-8601 UTC>",
     "sender": "receiver@host", "image": "CC_O_20261121_000042", "data": {...}}

and whose headers repeat what selectors and people need: ``MsgClass: fitsflow``,
``MsgType``, ``MsgId``, ``Image`` (when there is one), ``persistent: true``.

:data:`CATALOGUE` lists every type with its destination and the schema of ``data``
(:mod:`fitsflow.core.schemas`); ``docs/messages.md`` documents the same table (a test keeps
the two in step). :func:`decode` is the one gate every received message passes: size, JSON,
envelope, the type's schema (names, nesting, numbers, timestamps, text), and agreement of
the body with its headers and destination. A message that fails is dead-lettered with the
reason; a handler only ever sees a valid message, with its body typed (``msg.body``) and as
plain data (``msg.data``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import socket
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgspec

from fitsflow.core import schemas as sc
from fitsflow.core.errors import MessageError

SCHEMA_VERSION = 1
MSG_CLASS = "fitsflow"
#: Bodies above this size are refused (a memory guard, not a data path: pixels never travel
#: through the broker).
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class MessageType:
    """One entry of the catalogue."""

    name: str
    destination: str
    schema: type[sc.Body]
    has_image: bool = True
    doc: str = ""
    #: An earlier shape of ``data`` still accepted (it has ``upgraded()`` → ``schema``):
    #: messages queued or outboxed by the previous release are not lost at an upgrade.
    legacy: type[sc.Body] | None = None

    @property
    def required(self) -> list[str]:
        return [f.name for f in msgspec.structs.fields(self.schema) if f.required]

    @property
    def optional(self) -> list[str]:
        return [f.name for f in msgspec.structs.fields(self.schema) if not f.required]

    def accepts(self, destination: str) -> bool:
        """Whether this type may arrive on ``destination`` (templates match one name)."""
        return self._pattern.fullmatch(destination) is not None

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        # Built once: every received message is checked against it (and, on a destination
        # of no type of its own, against every type's), so building it per call was a sixth
        # of a bus's CPU per message (bench bus under py-spy).
        return re.compile(re.escape(self.destination).replace(r"\{forwarder\}", "[^/]+")
                          .replace(r"\{target\}", "[^/]+"))


def _t(name: str, destination: str, doc: str, schema: type[sc.Body], has_image: bool = True,
       legacy: type[sc.Body] | None = None) -> MessageType:
    return MessageType(name, destination, schema, has_image, doc, legacy)


CAMERA_EVENTS = "/topic/fitsflow.camera.events"
TELEMETRY = "/topic/fitsflow.telemetry"

#: Every message type fitsflow sends. Destinations with ``{…}`` are templates.
CATALOGUE: dict[str, MessageType] = {t.name: t for t in [
    _t("START_INTEGRATION", CAMERA_EVENTS, "The camera starts exposing an image.", sc.StartIntegration),
    _t("END_READOUT", CAMERA_EVENTS, "The camera has sent every sensor of the image.", sc.EndReadout),
    _t("END_OF_IMAGE_TELEMETRY", CAMERA_EVENTS, "No more telemetry will be published for the image.",
       sc.EndOfImageTelemetry),
    _t("RESEND_IMAGE", "/queue/fitsflow.camera.resend",
       "Ask the camera to send a stored image again (catch-up).", sc.ResendImage),
    _t("TELEMETRY", TELEMETRY, "A telemetry sample of one device topic.", sc.Telemetry, has_image=False),
    _t("READOUT_COMPLETE", "/topic/fitsflow.readout",
       "The receiver has stored every sensor of the image that arrived.", sc.ReadoutComplete),
    _t("RECEIVER_STATS", "/topic/fitsflow.stats",
       "A receiver's per-stream counters since it started (packets, heaps, loss).", sc.ReceiverStats,
       has_image=False),
    _t("HEADER_READY", "/topic/fitsflow.header", "The header service has written the image's header.",
       sc.HeaderReady),
    _t("FORWARD_IMAGE", "/queue/fitsflow.forwarder.{forwarder}",
       "The archive controller assigns sensors of an image to one forwarder.", sc.ForwardImage),
    _t("FORWARDER_HEARTBEAT", "/topic/fitsflow.forwarder.heartbeat",
       "A forwarder is alive; load = assignments in progress.", sc.ForwarderHeartbeat, has_image=False),
    _t("FILE_DELIVERED", "/queue/fitsflow.archive.delivered",
       "A forwarder has written the FITS files of an assignment into the hand-off directory.", sc.FileDelivered,
       legacy=sc.FileDeliveredV1),
    _t("INGEST_REQUEST", "/queue/fitsflow.{target}.ingest",
       "The archive controller has staged files for the OODS, the archive or a site's target.", sc.IngestRequest,
       legacy=sc.IngestRequestV1),
    _t("IMAGE_IN_OODS", "/topic/fitsflow.oods",
       "OODS ingest result: status 0 ok, 1 ingest failure, 2 metadata failure.", sc.IngestResult),
    _t("IMAGE_IN_ARCHIVE", "/topic/fitsflow.archive",
       "Archive ingest result: status 0 ok, 1 ingest failure, 2 metadata failure.", sc.IngestResult),
    _t("IMAGE_IN_RUCIO", "/topic/fitsflow.rucio",
       "An archived file registered in Rucio (status 0), or set aside for a person (1: a conflict).", sc.InRucio),
    _t("PANIC", "/queue/fitsflow.panic", "A serious error that a person must hear about now.", sc.Panic,
       has_image=False),
    _t("ALERT", "/topic/fitsflow.alerts", "A condition that operators should see (not e-mailed).", sc.Alert,
       has_image=False),
    _t("DAEMON_STATE", "/topic/fitsflow.state",
       "A daemon instance's state (INIT, ON, STANDBY, ALARM, FAULT, OFF) and a one-line status.",
       sc.DaemonState, has_image=False),
]}



@functools.lru_cache(maxsize=1024)  # destinations are few; the bound guards against a flood of names
def _known_destination(destination: str) -> bool:
    """Whether the catalogue sends anything to ``destination``: a message arriving there
    must then be of such a type (a PANIC body on the archive topic is refused at the door)."""
    return any(t.accepts(destination) for t in CATALOGUE.values())


class Envelope(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What every body carries around its ``data``."""

    version: int
    type: str
    id: sc.MessageId
    sent: sc.Timestamp
    data: msgspec.Raw
    sender: sc.ShortText = ""
    image: sc.ImageName | None = None


@dataclass(frozen=True)
class Message:
    """A decoded fitsflow message: ``data`` as plain JSON data, ``body`` as its typed struct."""

    type: str
    data: Mapping[str, Any]
    image: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent: str = field(default_factory=lambda: utcnow_iso())
    sender: str = ""
    version: int = SCHEMA_VERSION
    #: Where it was received from (not part of the body).
    destination: str = field(default="", compare=False)
    #: The typed body (set by :func:`make` and :func:`decode`).
    body: Any = field(default=None, compare=False, repr=False)

    def headers(self) -> dict[str, str]:
        """STOMP headers of this message (selectors filter on MsgType and Image)."""
        h = {"MsgClass": MSG_CLASS, "MsgType": self.type, "MsgId": self.id,
             "persistent": "true", "content-type": "application/json"}
        if self.image is not None:
            h["Image"] = self.image
        return h

    def encode(self) -> str:
        return json.dumps({"version": self.version, "type": self.type, "id": self.id,
                           "sent": self.sent, "sender": self.sender, "image": self.image,
                           "data": dict(self.data)}, separators=(",", ":"), default=_json_default)


def make(type_: str, image: str | None = None, *, sender: str = "", **data: Any) -> Message:
    """Build a message of a catalogue type, checking it now (against the schema its
    consumers check) rather than at the consumer."""
    msg = Message(type=type_, data=data, image=image, sender=sender or default_sender())
    # Through JSON and back: exactly what a consumer will see, and the same checks.
    return decode(msg.encode())


def destination_of(type_: str, **params: str) -> str:
    """The destination of a message type, with template parameters filled in."""
    try:
        return CATALOGUE[type_].destination.format(**params)
    except KeyError as exc:
        raise MessageError(f"destination of {type_} needs parameter {exc}") from None


_ENVELOPE = msgspec.json.Decoder(Envelope)
_DECODERS = {name: msgspec.json.Decoder(t.schema) for name, t in CATALOGUE.items()}
_LEGACY_DECODERS = {name: msgspec.json.Decoder(t.legacy) for name, t in CATALOGUE.items() if t.legacy}


def decode(body: str | bytes, destination: str = "", headers: Mapping[str, str] | None = None) -> Message:
    """Parse and validate a message body (see the module docstring); raises MessageError
    with a reason that names the field at fault."""
    if len(body) > MAX_BODY_BYTES:
        raise MessageError(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    try:
        env = _ENVELOPE.decode(raw)
    except msgspec.ValidationError as exc:
        raise MessageError(f"envelope: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise MessageError(f"body is not JSON: {_reason(exc)}") from None
    where = f"{env.type} {env.id}" + (f" (image {env.image})" if env.image else "")
    if env.version != SCHEMA_VERSION:
        raise MessageError(f"{where}: schema version {env.version} not supported (this is {SCHEMA_VERSION})")
    spec = CATALOGUE.get(env.type)
    if spec is None:
        raise MessageError(f"{where}: unknown message type")
    if spec.has_image and not env.image:
        raise MessageError(f"{where}: an image name is required")
    try:
        typed = _decode_data(env.type, env.data)
    except msgspec.ValidationError as exc:
        raise MessageError(f"{where}: data: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise MessageError(f"{where}: data is not valid JSON: {_reason(exc)}") from None
    bad_time = sc.check_timestamps(typed)
    if bad_time:
        raise MessageError(f"{where}: data.{bad_time} is not an ISO-8601 time with a time zone")
    stray = [f.data_id.image for f in getattr(typed, "files", ()) if f.data_id.image != env.image]
    if stray:  # one message, one image: consumers key their work and their logs by it
        raise MessageError(f"{where}: data.files holds a file of another image ({stray[0]})")
    if headers is not None:
        for header, value in (("MsgType", env.type), ("Image", env.image)):
            if header in headers and headers[header] != (value or ""):
                raise MessageError(f"{where}: header {header} {headers[header]!r} differs from the body's {value!r}")
    if destination and not spec.accepts(destination) and _known_destination(destination):
        raise MessageError(f"{where}: {env.type} is not sent to {destination} (its destination is "
                           f"{spec.destination})")
    return Message(type=env.type, data=msgspec.to_builtins(typed), image=env.image, id=env.id, sent=env.sent,
                   sender=env.sender, version=env.version, destination=destination, body=typed)


def _decode_data(type_: str, data: msgspec.Raw) -> sc.Body:
    """``data`` as the type's schema; a body in the type's legacy shape is upgraded to it. A
    body that is neither is refused with the reason of the shape it looks like (a ``files``
    list: the current one)."""
    try:
        return _DECODERS[type_].decode(data)
    except msgspec.ValidationError:
        legacy = _LEGACY_DECODERS.get(type_)
        if legacy is None:
            raise
        try:
            return legacy.decode(data).upgraded()  # type: ignore[attr-defined, no-any-return]
        except msgspec.ValidationError:
            parsed = msgspec.json.decode(data)
            if not (isinstance(parsed, dict) and "files" in parsed):  # looks like the legacy shape
                raise
        raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, msgspec.DecodeError) and ("truncated" in str(exc) or "escape" in str(exc)):
        return f"{exc} (a string holds a lone UTF-16 surrogate, or is cut short)"
    return str(exc)[:200]


def utcnow_iso() -> str:
    """Now, as ISO-8601 UTC with microseconds and a Z."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_sender() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{prog}@{socket.gethostname()}"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
