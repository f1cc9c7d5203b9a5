"""A forwarder's assignment book: what is written is the state at the time of the call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fitsflow.forwarder.assignments import Assignment, AssignmentBook


def test_saved_state_is_the_state_at_the_call_and_a_restart_reads_it(tmp_path: Path) -> None:
    book = AssignmentBook(tmp_path)
    a = Assignment("IMG-f1-1", "IMG", ["R22_S00", "R22_S01"])
    a.delivered["R22_S00"] = {"path": "/x", "size": 1, "checksum": "crc32:00000000"}
    asyncio.run(book.save(a))
    a.delivered["R22_S01"] = {"path": "/y", "size": 1, "checksum": "crc32:00000000"}  # afterwards, in the loop
    assert list(json.loads((tmp_path / "IMG-f1-1.json").read_text())["delivered"]) == ["R22_S00"]
    again = AssignmentBook(tmp_path)
    assert again.items["IMG-f1-1"].pending() == ["R22_S01"]
    assert [x.assignment for x in again.open_items()] == ["IMG-f1-1"]
