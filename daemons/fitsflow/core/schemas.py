"""The typed schema of every message body: one msgspec ``Struct`` per message type.

msgspec decodes JSON straight into these types and checks them in the same pass, strictly
(``"1"`` is not an int, ``true`` is not a number, NaN and infinities are not JSON, unknown
fields are refused, names must match their patterns), and its errors name the field
(``Expected `int`, got `str` - at `$.data.snap```). It was chosen over pydantic for that
strictness by default, for decoding without building an intermediate ``dict`` (the bus
decodes every message of a night), and for having no dependencies; over hand-written checks
because the previous ones missed nesting, patterns and timestamps.

Nothing here is recursive or free-form: every container's element type is spelled out, so
a body's nesting depth is bounded by its schema, not by the sender.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, TypeVar, Union

from msgspec import Meta, Struct
from fitsflow.core.states import State

# -- names and values (patterns shared with core/layout.py and docs/messages.md) ------------

#: An image name; also a file-name component: no separators, no dots.
MessageId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
ImageName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")]
#: A raft, sensor or instrument code.
Component = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,15}$")]
#: ``RAFT_SENSOR``, e.g. ``R22_S00``.
SensorRef = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,15}_[A-Za-z0-9][A-Za-z0-9-]{0,15}$")]
GroupName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")]
#: A daemon instance (forwarder ``f1``...): used in queue names and state-file names.
InstanceName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
#: ``daemon@instance``.
Ident = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,31}@[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
AssignmentId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,127}$")]
HostName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")]
ObsDay = Annotated[str, Meta(pattern=r"^[0-9]{8}$")]
Checksum = Annotated[str, Meta(pattern=r"^crc32:[0-9a-f]{8}$")]
#: Adler-32 as Rucio keeps it: 8 lower-case hex digits
Adler32 = Annotated[str, Meta(pattern=r"^[0-9a-f]{8}$")]
#: core.handoff.file_identity: dev:ino:mtime_ns
FileIdentity = Annotated[str, Meta(pattern=r"^[0-9]{1,20}:[0-9]{1,20}:[0-9]{1,20}$")]
TopicName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
KeyName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
#: ISO-8601 with a time zone; :func:`check_timestamps` also parses it.
Timestamp = Annotated[str, Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,20}(Z|[+-][0-9]{2}:?[0-9]{2})$")]
#: A path as a sender wrote it; the daemons check it against their own tree (core/layout).
PathText = Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
ShortText = Annotated[str, Meta(max_length=1024)]
#: Free text (a panic's message, a traceback): any characters, bounded only by the body size.
Text = str
Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0)]

Scalar = Union[str, int, float, bool, None]
#: A telemetry value: a scalar or a flat list of scalars.
TelemetryValue = Union[str, int, float, bool, None, list[Union[str, int, float, bool, None]]]
#: Details of an alert or a state: scalars, flat lists and one level of mapping.
Detail = Union[str, int, float, bool, None, list[Scalar], dict[str, Scalar]]


class Body(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Base of every body: unknown fields are an error; absent optional fields stay absent."""


_B = TypeVar("_B", bound=Body)


class DataId(Body):
    """Where a sensor's file belongs (the registries' data ID)."""

    image: ImageName
    raft: Component
    sensor: Component
    instrument: Component | None = None
    group: GroupName | None = None
    snap: Count | None = None
    obs_day: ObsDay | None = None


class StartIntegration(Body):
    group: GroupName
    snap: Count
    exptime: Seconds
    sensors: list[SensorRef]
    timestamp: Timestamp


class EndReadout(Body):
    timestamp: Timestamp
    sensors: list[SensorRef]


class EndOfImageTelemetry(Body):
    timestamp: Timestamp


class ResendImage(Body):
    reason: ShortText


class Telemetry(Body):
    topic: TopicName
    timestamp: Timestamp
    values: dict[KeyName, TelemetryValue]


class ReadoutComplete(Body):
    present: list[SensorRef]
    missing: list[SensorRef]
    partial: list[SensorRef]
    timed_out: bool | None = None


class ReceiverStats(Body):
    receiver: Ident
    streams: list[dict[KeyName, Detail]]
    #: Packets spead2 refused (the packet filter's among them), by reason.
    rejected: dict[ShortText, Count] | None = None


class HeaderReady(Body):
    path: PathText
    partial: bool
    missing_keywords: list[ShortText]


class ForwardImage(Body):
    sensors: list[SensorRef]
    assignment: AssignmentId


class ForwarderHeartbeat(Body):
    forwarder: InstanceName
    load: Count
    capacity: Count


#: At most this many files in one FILE_DELIVERED or INGEST_REQUEST; a sender splits a larger
#: batch. 32 entries with paths of the longest allowed length stay below the body limit.
MAX_FILES = 32


class DeliveredFile(Body):
    """One sensor's file in a FILE_DELIVERED."""

    path: PathText
    size: Count
    checksum: Checksum
    data_id: DataId
    #: the written file's identity: on the writer's host, a file that still has it is the one
    #: the checksum was computed for while writing (no re-read)
    identity: FileIdentity | None = None
    #: the file's Adler-32, summed as it was written (for Rucio: no re-read to register it)
    adler32: Adler32 | None = None


class FileDelivered(Body):
    """The files one forwarder wrote for one assignment (one message per assignment, not per
    sensor: each message costs the broker and the controller more than its size)."""

    assignment: AssignmentId
    files: Annotated[list[DeliveredFile], Meta(min_length=1, max_length=MAX_FILES)]
    #: the forwarder's host (see DeliveredFile.identity)
    written_on: HostName | None = None


class FileDeliveredV1(DeliveredFile, kw_only=True):
    """FILE_DELIVERED as fitsflow sent it before files were batched: one file, its fields
    beside the assignment's. Still accepted, so messages queued or outboxed across an
    upgrade are not lost."""

    assignment: AssignmentId
    written_on: HostName | None = None

    def upgraded(self) -> FileDelivered:
        return FileDelivered(assignment=self.assignment, written_on=self.written_on,
                             files=[_as(DeliveredFile, self)])


class StagedFile(Body):
    """One staged file in an INGEST_REQUEST."""

    path: PathText
    data_id: DataId
    checksum: Checksum
    #: the identity of the file the controller verified (or trusted) against the checksum:
    #: a staged name that still has it needs no second read
    verified: FileIdentity | None = None
    #: the file's Adler-32 as its writer summed it, carried from FILE_DELIVERED
    adler32: Adler32 | None = None


class IngestRequest(Body):
    """The files of one hand-off batch staged for one target."""

    files: Annotated[list[StagedFile], Meta(min_length=1, max_length=MAX_FILES)]


class IngestRequestV1(StagedFile):
    """INGEST_REQUEST before files were batched (one file, its fields in ``data``): still
    accepted."""

    def upgraded(self) -> IngestRequest:
        return IngestRequest(files=[_as(StagedFile, self)])


def _as(kind: type[_B], body: Body) -> _B:
    """``body``'s fields as a ``kind`` (a base of its type)."""
    return kind(**{name: getattr(body, name) for name in kind.__struct_fields__})


class IngestResult(Body):
    """IMAGE_IN_OODS and IMAGE_IN_ARCHIVE."""

    status: Literal[0, 1, 2]
    description: Text
    path: PathText
    data_id: DataId | None = None


class InRucio(Body):
    """IMAGE_IN_RUCIO: an archived file registered in Rucio (status 0), or set aside (1: Rucio
    has this name with other content, or the file is gone)."""

    status: Literal[0, 1]
    description: Text
    path: PathText
    did: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.+-]{1,255}$")]
    dataset: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.+-]{1,255}$")]
    rse: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,255}$")]
    adler32: Adler32
    size: Count
    data_id: DataId
    #: only with [rucio] md5 = true
    md5: Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")] | None = None


class Panic(Body):
    message: Text
    host: HostName
    program: ShortText
    argv: list[Text] | None = None
    cwd: Text | None = None
    user: ShortText | None = None
    pid: Count | None = None
    traceback: Text | None = None
    time: Timestamp | None = None


class Alert(Body):
    severity: Literal["debug", "info", "warning", "error", "critical"]
    source: ShortText
    message: Text
    details: dict[KeyName, Detail] | None = None


class DaemonState(Body):
    daemon: Ident
    host: HostName
    state: State
    status: Text
    target: State | None = None
    details: dict[KeyName, Detail] | None = None


def check_timestamps(body: Body) -> str | None:
    """The name of a timestamp field of ``body`` that does not parse, or None. (The pattern
    lets through what only a calendar can refuse: month 13, 25 o'clock.)"""
    for name in ("timestamp", "time"):
        value = getattr(body, name, None)
        if value is None:
            continue
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return name
        if parsed.tzinfo is None:
            return name
    return None

