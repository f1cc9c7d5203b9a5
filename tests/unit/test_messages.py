"""The message envelope and the catalogue's schema checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsflow.core import messages as m
from fitsflow.core.errors import MessageError

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_and_headers() -> None:
    msg = m.make("READOUT_COMPLETE", "IMG_1", present=["R22_S00"], missing=[], partial=[], sender="t")
    back = m.decode(msg.encode(), "/topic/fitsflow.readout")
    assert back == msg
    h = msg.headers()
    assert h["MsgClass"] == "fitsflow" and h["MsgType"] == "READOUT_COMPLETE"
    assert h["MsgId"] == msg.id and h["Image"] == "IMG_1" and h["persistent"] == "true"


SENT = "2026-11-21T00:00:00Z"


def body(type_: str = "ALERT", data: object = None, **envelope: object) -> str:
    env = {"version": 1, "type": type_, "id": "a1", "sent": SENT, "sender": "t", "image": None,
           "data": {"severity": "error", "source": "y", "message": "m"} if data is None else data}
    env.update(envelope)
    return json.dumps(env)


HEARTBEAT = {"forwarder": "f1", "load": 0, "capacity": 1}


@pytest.mark.parametrize("raw,words", [
    ("not json", "not JSON"),
    ("[1,2]", "envelope: Expected `object`"),
    (body("X", {}), "unknown message type"),
    (body(version=2), "schema version"),
    (json.dumps({"version": 1, "type": "ALERT", "id": "a", "sent": SENT}), "missing required field `data`"),
    (body(data={"severity": "error", "source": "y"}), "missing required field `message`"),
    (body(data={"severity": "error", "source": "y", "message": 1}), "Expected `str`, got `int` - at `$.message`"),
    (body(data={"severity": "error", "source": "y", "message": "m", "z": 1}), "unknown field `z`"),
    (body(data={"severity": "bogus", "source": "y", "message": "m"}), "at `$.severity`"),
    (body("FORWARDER_HEARTBEAT", {**HEARTBEAT, "load": True}), "Expected `int`, got `bool` - at `$.load`"),
    (body("READOUT_COMPLETE", {"present": [], "missing": [], "partial": []}), "image name is required"),
    # The classes of issue 16: nesting, timestamps, forged names, lone surrogates, wrong types.
    ('{"version":1,"type":"ALERT","id":"a","sent":"' + SENT + '","data":' + "[" * 5000 + "]" * 5000 + "}",
     "nested too deeply"),
    (body("TELEMETRY", {"topic": "t", "timestamp": SENT, "values": {"a": [[1]]}}), "got `array` - at `$.values[...][0]`"),
    (body("START_INTEGRATION", {"group": "g", "snap": 0, "exptime": 1.0, "sensors": ["R22_S00"],
                                "timestamp": "not a time"}, image="IMG_1"), "at `$.timestamp`"),
    (body("START_INTEGRATION", {"group": "g", "snap": 0, "exptime": 1.0, "sensors": ["R22_S00"],
                                "timestamp": "2026-13-45T99:00:00Z"}, image="IMG_1"), "data.timestamp is not"),
    (body("FORWARDER_HEARTBEAT", {**HEARTBEAT, "forwarder": "../../x"}), "at `$.forwarder`"),
    (body("FORWARDER_HEARTBEAT", {**HEARTBEAT, "forwarder": "../../../../etc/passwd"}), "at `$.forwarder`"),
    (body("FORWARDER_HEARTBEAT", {**HEARTBEAT, "forwarder": "\ud800"}), "lone UTF-16 surrogate"),
    (body("START_INTEGRATION", {"group": "g", "snap": 0, "exptime": float("nan"), "sensors": [],
                                "timestamp": SENT}, image="IMG_1"), "not JSON"),
    (body("FILE_DELIVERED", {"path": "/x", "size": 1, "checksum": "crc32:00000000", "assignment": "a",
                             "data_id": {"image": "I", "raft": "R22", "sensor": "S/../00"}}, image="I"),
     "at `$.data_id.sensor`"),
    (body("FILE_DELIVERED", {"assignment": "a", "files": [
        {"path": "/x", "size": 1, "checksum": "crc32:00000000", "data_id": {"image": "I", "raft": "R22", "sensor": "S00"}},
        {"path": "/y", "size": 1, "checksum": "crc32:00000000", "data_id": {"image": "I", "raft": "R22", "sensor": "S/"}}]},
          image="I"), "at `$.files[1].data_id.sensor`"),
    (body("INGEST_REQUEST", {"files": []}, image="I"), "length >= 1 - at `$.files`"),
    (body("INGEST_REQUEST", 5, image="I"), "Expected `object`, got `int`"),
    (body("FILE_DELIVERED", True, image="I"), "Expected `object`, got `bool`"),
    (body("INGEST_REQUEST", {"files": [{"path": "/x", "checksum": "crc32:00000000",
                                        "data_id": {"image": "I", "raft": "R22", "sensor": "S00"}}] * 33}, image="I"),
     "length <= 32 - at `$.files`"),
    (body("INGEST_REQUEST", {"files": [{"path": "/x", "checksum": "crc32:00000000",
                                        "data_id": {"image": "OTHER", "raft": "R22", "sensor": "S00"}}]}, image="I"),
     "a file of another image (OTHER)"),
    (body(image="../etc"), "at `$.image`"),
])
def test_bad_bodies_rejected_with_reason(raw: str, words: str) -> None:
    with pytest.raises(MessageError, match=re.escape(words)):
        m.decode(raw)


def test_a_one_file_body_of_before_the_batches_is_read_as_a_batch_of_one() -> None:
    """FILE_DELIVERED and INGEST_REQUEST carried one file each before they carried ``files``:
    such a message (queued in the broker or an outbox across an upgrade) is still handled."""
    data_id = {"image": "I", "raft": "R22", "sensor": "S00", "instrument": "TC", "obs_day": "20261121"}
    old = m.decode(body("FILE_DELIVERED", {"path": "/in/a.fits", "size": 5, "checksum": "crc32:0000abcd",
                                           "data_id": data_id, "assignment": "a1", "written_on": "node1",
                                           "identity": "1:2:3", "adler32": "0000abcd"}, image="I"))
    assert old.data == {"assignment": "a1", "written_on": "node1", "files": [
        {"path": "/in/a.fits", "size": 5, "checksum": "crc32:0000abcd", "data_id": data_id, "identity": "1:2:3",
         "adler32": "0000abcd"}]}
    assert m.decode(old.encode()) == old  # sent on as the current shape
    request = m.decode(body("INGEST_REQUEST", {"path": "/s/a.fits", "data_id": data_id, "checksum": "crc32:0000abcd",
                                               "verified": "1:2:3"}, image="I"), "/queue/fitsflow.oods.ingest")
    assert request.data == {"files": [{"path": "/s/a.fits", "data_id": data_id, "checksum": "crc32:0000abcd",
                                       "verified": "1:2:3"}]}
    # An old body that is wrong is refused with its own field named, not the new shape's.
    with pytest.raises(MessageError, match=re.escape("at `$.checksum`")):
        m.decode(body("INGEST_REQUEST", {"path": "/s/a.fits", "data_id": data_id, "checksum": "md5:1"}, image="I"))


def test_a_body_must_match_its_headers_and_destination() -> None:
    panic = m.make("PANIC", message="x", host="h", program="p")
    with pytest.raises(MessageError, match="PANIC is not sent to /topic/fitsflow.archive"):
        m.decode(panic.encode(), "/topic/fitsflow.archive")
    with pytest.raises(MessageError, match="header MsgType 'ALERT' differs"):
        m.decode(panic.encode(), "/queue/fitsflow.panic", {**panic.headers(), "MsgType": "ALERT"})
    assert m.decode(panic.encode(), "/queue/fitsflow.panic", panic.headers()) == panic
    forward = m.make("FORWARD_IMAGE", "IMG_1", sensors=["R22_S00"], assignment="a1")
    assert m.decode(forward.encode(), "/queue/fitsflow.forwarder.f9").body.sensors == ["R22_S00"]


def test_any_text_survives_in_free_text_fields() -> None:
    text = "line 1\nline 2\r\n\x00\x1b[31m \u00e9\u4e2d \U0001f525 " + "y" * 100_000
    back = m.decode(m.make("PANIC", message=text, host="h", program="p").encode())
    assert back.data["message"] == text


def test_size_limit() -> None:
    big = json.dumps({"version": 1, "type": "ALERT", "id": "a", "sent": "t",
                      "data": {"severity": "x", "source": "y", "message": "z" * m.MAX_BODY_BYTES}})
    with pytest.raises(MessageError, match="exceeds the limit"):
        m.decode(big)


def test_template_destinations() -> None:
    assert m.destination_of("FORWARD_IMAGE", forwarder="f1") == "/queue/fitsflow.forwarder.f1"
    with pytest.raises(MessageError):
        m.destination_of("FORWARD_IMAGE")


def test_docs_catalogue_lists_every_type_with_its_destination() -> None:
    doc = (REPO / "docs" / "messages.md").read_text()
    for name, spec in m.CATALOGUE.items():
        assert f"`{name}`" in doc, f"{name} missing from docs/messages.md"
        assert f"`{spec.destination}`" in doc, f"destination of {name} missing from docs/messages.md"
        for fld in list(spec.required) + list(spec.optional):
            assert f"`{fld}`" in doc, f"field {fld} of {name} missing from docs/messages.md"


# -- property-based: whatever arrives, decode() returns a valid message or says why ----------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                        max_size=4),
                     max_leaves=30)


def _decodes_or_says_why(raw: str | bytes) -> None:
    try:
        msg = m.decode(raw)
    except MessageError as exc:
        assert str(exc)
        return
    assert msg.type in m.CATALOGUE and msg.body is not None
    assert m.decode(msg.encode()) == msg  # what passed the gate survives a round trip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_any_bytes(raw: bytes) -> None:
    _decodes_or_says_why(raw)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(m.CATALOGUE)), st.dictionaries(st.sampled_from(
    ["group", "snap", "exptime", "sensors", "timestamp", "topic", "values", "present", "missing", "partial",
     "forwarder", "load", "capacity", "path", "size", "checksum", "data_id", "assignment", "status",
     "description", "message", "host", "program", "severity", "source", "details", "daemon", "state", "status"]),
    _json, max_size=8), st.one_of(st.none(), st.text(max_size=20)))
def test_fuzz_structured_bodies(type_: str, data: dict, image: str | None) -> None:
    raw = json.dumps({"version": 1, "type": type_, "id": "a1", "sent": SENT, "image": image, "data": data})
    _decodes_or_says_why(raw)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=20_000), st.sampled_from(["[", "{\"a\":"]))
def test_fuzz_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    raw = body("TELEMETRY").replace('"data":{', '"data":{"deep":' + opener * depth + closer * depth + ',', 1)
    _decodes_or_says_why(raw)
