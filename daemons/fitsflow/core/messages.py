"""The message catalogue and the envelope every fitsflow message travels in.

A message on the wire is a STOMP frame whose body is JSON::

    {"version": 1, "type": "READOUT_COMPLETE", "id": "<uuid4 hex>", "sent": "<ISO-8601 UTC>",
     "sender": "receiver@host", "image": "CC_O_20261121_000042", "data": {...}}

and whose headers repeat what selectors and people need: ``MsgClass: fitsflow``,
``MsgType``, ``MsgId``, ``Image`` (when there is one), ``persistent: true``.

:data:`CATALOGUE` lists every type with its destination and the fields of ``data``;
``docs/messages.md`` documents the same table (a test keeps the two in step). Decoding
checks the body's size, the envelope and the fields of its type, so a daemon's handler only
ever sees a well-formed message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from fitsflow.core.errors import MessageError

SCHEMA_VERSION = 1
MSG_CLASS = "fitsflow"
#: Bodies above this size are refused (a memory guard, not a data path: pixels never travel
#: through the broker).
MAX_BODY_BYTES = 256 * 1024

# A field spec: the Python types its JSON value may have. ``OPTIONAL`` marks fields that
# may be absent.
Num = (int, float)


@dataclass(frozen=True)
class MessageType:
    """One entry of the catalogue."""

    name: str
    destination: str
    required: Mapping[str, tuple[type, ...] | type]
    optional: Mapping[str, tuple[type, ...] | type] = field(default_factory=dict)
    has_image: bool = True
    doc: str = ""


def _t(name: str, destination: str, doc: str, required: dict, optional: dict | None = None,
       has_image: bool = True) -> MessageType:
    return MessageType(name, destination, required, optional or {}, has_image, doc)


CAMERA_EVENTS = "/topic/fitsflow.camera.events"
TELEMETRY = "/topic/fitsflow.telemetry"

#: Every message type fitsflow sends. Destinations with ``{…}`` are templates.
CATALOGUE: dict[str, MessageType] = {t.name: t for t in [
    _t("START_INTEGRATION", CAMERA_EVENTS, "The camera starts exposing an image.",
       {"group": str, "snap": int, "exptime": Num, "sensors": list, "timestamp": str}),
    _t("END_READOUT", CAMERA_EVENTS, "The camera has sent every sensor of the image.",
       {"timestamp": str, "sensors": list}),
    _t("END_OF_IMAGE_TELEMETRY", CAMERA_EVENTS, "No more telemetry will be published for the image.",
       {"timestamp": str}),
    _t("RESEND_IMAGE", "/queue/fitsflow.camera.resend",
       "Ask the camera to send a stored image again (catch-up).", {"reason": str}),
    _t("TELEMETRY", TELEMETRY, "A telemetry sample of one device topic.",
       {"topic": str, "timestamp": str, "values": dict}, has_image=False),
    _t("READOUT_COMPLETE", "/topic/fitsflow.readout",
       "The receiver has stored every sensor of the image that arrived.",
       {"present": list, "missing": list, "partial": list}, {"timed_out": bool}),
    _t("RECEIVER_STATS", "/topic/fitsflow.stats",
       "A receiver's per-stream counters since it started (packets, heaps, loss).",
       {"receiver": str, "streams": list}, has_image=False),
    _t("HEADER_READY", "/topic/fitsflow.header", "The header service has written the image's header.",
       {"path": str, "partial": bool, "missing_keywords": list}),
    _t("FORWARD_IMAGE", "/queue/fitsflow.forwarder.{forwarder}",
       "The archive controller assigns sensors of an image to one forwarder.",
       {"sensors": list, "assignment": str}),
    _t("FORWARDER_HEARTBEAT", "/topic/fitsflow.forwarder.heartbeat",
       "A forwarder is alive; load = assignments in progress.",
       {"forwarder": str, "load": int, "capacity": int}, has_image=False),
    _t("FILE_DELIVERED", "/queue/fitsflow.archive.delivered",
       "A forwarder has written one sensor's FITS file into the hand-off directory.",
       {"path": str, "size": int, "checksum": str, "data_id": dict, "assignment": str}),
    _t("INGEST_REQUEST", "/queue/fitsflow.{target}.ingest",
       "The archive controller has staged a file for the OODS or the archive.",
       {"path": str, "data_id": dict, "checksum": str}),
    _t("IMAGE_IN_OODS", "/topic/fitsflow.oods",
       "OODS ingest result: status 0 ok, 1 ingest failure, 2 metadata failure.",
       {"status": int, "description": str, "path": str}, {"data_id": dict}),
    _t("IMAGE_IN_ARCHIVE", "/topic/fitsflow.archive",
       "Archive ingest result: status 0 ok, 1 ingest failure, 2 metadata failure.",
       {"status": int, "description": str, "path": str}, {"data_id": dict}),
    _t("PANIC", "/queue/fitsflow.panic", "A serious error that a person must hear about now.",
       {"message": str, "host": str, "program": str}, {"argv": list, "cwd": str, "user": str,
                                                        "pid": int, "traceback": str, "time": str},
       has_image=False),
    _t("ALERT", "/topic/fitsflow.alerts", "A condition that operators should see (not e-mailed).",
       {"severity": str, "source": str, "message": str}, {"details": dict}, has_image=False),
    _t("DAEMON_STATE", "/topic/fitsflow.state",
       "A daemon instance's state (INIT, ON, STANDBY, ALARM, FAULT, OFF) and a one-line status.",
       {"daemon": str, "host": str, "state": str, "status": str}, {"target": str, "details": dict},
       has_image=False),
]}


@dataclass(frozen=True)
class Message:
    """A decoded fitsflow message."""

    type: str
    data: Mapping[str, Any]
    image: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent: str = field(default_factory=lambda: utcnow_iso())
    sender: str = ""
    version: int = SCHEMA_VERSION
    #: Where it was received from (not part of the body).
    destination: str = field(default="", compare=False)

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
    """Build a message of a catalogue type, checking its fields now rather than at the consumer."""
    msg = Message(type=type_, data=data, image=image, sender=sender or default_sender())
    validate(msg)
    return msg


def destination_of(type_: str, **params: str) -> str:
    """The destination of a message type, with template parameters filled in."""
    try:
        return CATALOGUE[type_].destination.format(**params)
    except KeyError as exc:
        raise MessageError(f"destination of {type_} needs parameter {exc}") from None


def decode(body: str | bytes, destination: str = "") -> Message:
    """Parse and validate a message body; raises MessageError with the reason."""
    if len(body) > MAX_BODY_BYTES:
        raise MessageError(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("body is not a JSON object")
    for key, tp in (("version", int), ("type", str), ("id", str), ("sent", str), ("data", dict)):
        if not isinstance(obj.get(key), tp):
            raise MessageError(f"envelope field {key!r} missing or not {tp.__name__}")
    if obj["version"] != SCHEMA_VERSION:
        raise MessageError(f"schema version {obj['version']} not supported (this is {SCHEMA_VERSION})")
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise MessageError("envelope field 'image' is not a string")
    msg = Message(type=obj["type"], data=obj["data"], image=image, id=obj["id"], sent=obj["sent"],
                  sender=str(obj.get("sender", "")), version=obj["version"], destination=destination)
    validate(msg)
    return msg


def validate(msg: Message) -> None:
    """Check a message against its catalogue entry."""
    spec = CATALOGUE.get(msg.type)
    where = f"{msg.type} {msg.id}" + (f" (image {msg.image})" if msg.image else "")
    if spec is None:
        raise MessageError(f"{where}: unknown message type")
    if spec.has_image and not msg.image:
        raise MessageError(f"{where}: an image name is required")
    for name, tp in spec.required.items():
        if name not in msg.data:
            raise MessageError(f"{where}: field {name!r} is missing")
        _check_type(where, name, msg.data[name], tp)
    for name, value in msg.data.items():
        if name in spec.required:
            continue
        if name not in spec.optional:
            raise MessageError(f"{where}: unknown field {name!r}")
        _check_type(where, name, value, spec.optional[name])


def _check_type(where: str, name: str, value: Any, tp: tuple[type, ...] | type) -> None:
    types_ = tp if isinstance(tp, tuple) else (tp,)
    # JSON true/false are Python bools, which are ints: do not let them pass as numbers.
    if isinstance(value, bool) and bool not in types_:
        raise MessageError(f"{where}: field {name!r} must be {'/'.join(t.__name__ for t in types_)}, not bool")
    if not isinstance(value, types_):
        raise MessageError(
            f"{where}: field {name!r} must be {'/'.join(t.__name__ for t in types_)}, "
            f"not {type(value).__name__}")


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
