"""The message envelope and the catalogue's schema checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("body,words", [
    ("not json", "not JSON"),
    ("[1,2]", "not a JSON object"),
    ('{"version":1,"type":"X","id":"a","sent":"t","data":{}}', "unknown message type"),
    ('{"version":2,"type":"ALERT","id":"a","sent":"t","data":{}}', "schema version"),
    ('{"version":1,"type":"ALERT","id":"a","sent":"t"}', "'data'"),
    ('{"version":1,"type":"ALERT","id":"a","sent":"t","data":{"severity":"x","source":"y"}}', "'message' is missing"),
    ('{"version":1,"type":"ALERT","id":"a","sent":"t","data":{"severity":"x","source":"y","message":1}}', "must be str"),
    ('{"version":1,"type":"ALERT","id":"a","sent":"t","data":{"severity":"x","source":"y","message":"m","z":1}}',
     "unknown field"),
    ('{"version":1,"type":"FORWARDER_HEARTBEAT","id":"a","sent":"t","data":{"forwarder":"f","load":true,'
     '"capacity":1}}', "not bool"),
    ('{"version":1,"type":"READOUT_COMPLETE","id":"a","sent":"t","data":{"present":[],"missing":[],"partial":[]}}',
     "image name is required"),
])
def test_bad_bodies_rejected_with_reason(body: str, words: str) -> None:
    with pytest.raises(MessageError, match=re.escape(words)):
        m.decode(body)


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
