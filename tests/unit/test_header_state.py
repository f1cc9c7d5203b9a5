"""The header service's state on disk: what a restart finds, and the first version's files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fitsflow.header_service.builder import ImageRecord, Sample
from fitsflow.header_service.state import HeaderState

IMAGE = "TESTCAM_O_20261122_000001"


def test_records_and_samples_survive_a_restart_and_the_history_is_trimmed(tmp_path: Path) -> None:
    state = HeaderState(tmp_path, history_per_topic=3)
    rec = state.record(IMAGE)
    rec.events["START_INTEGRATION"] = "2026-11-22T03:00:00Z"
    asyncio.run(state.save(rec))
    for second in (4, 1, 3, 2, 5):  # late samples too
        sample = Sample(f"2026-11-22T03:00:0{second}Z", {"ra": float(second)})
        state.add_sample("mount.pointing", sample)
        rec.sampled["RA"] = float(second)
        asyncio.run(state.save_sample("mount.pointing", sample, [rec]))
    state.record("TESTCAM_O_20261122_000002")  # never saved: not there after a restart
    state.close()

    again = HeaderState(tmp_path, history_per_topic=3)
    assert set(again.records) == {IMAGE}
    assert again.records[IMAGE].events == rec.events and again.records[IMAGE].sampled == {"RA": 5.0}
    assert [s.values["ra"] for s in again.history["mount.pointing"]] == [3.0, 4.0, 5.0]
    asyncio.run(again.forget(IMAGE))
    again.close()
    assert HeaderState(tmp_path, history_per_topic=3).records == {}


def test_the_first_versions_json_state_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    old = ImageRecord(image=IMAGE, events={"START_INTEGRATION": "2026-11-22T03:00:00Z"}, sampled={"FILTER": "r"})
    (tmp_path / "images" / f"{IMAGE}.json").write_text(json.dumps(old.__dict__))
    (tmp_path / "telemetry.json").write_text(json.dumps(
        {"camera.filter": [{"timestamp": "2026-11-22T03:00:01Z", "values": {"name": "r"}}]}))
    state = HeaderState(tmp_path, history_per_topic=8)
    assert state.records[IMAGE] == old
    assert [s.values for s in state.history["camera.filter"]] == [{"name": "r"}]
    assert not list(tmp_path.glob("images/*.json")) and not (tmp_path / "telemetry.json").exists()
    state.close()
    assert HeaderState(tmp_path, history_per_topic=8).records[IMAGE] == old
