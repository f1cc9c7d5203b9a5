"""Raw buffer clean-up: only images the archive holds whole, only after the grace period."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fitsflow.core.errors import UnsafePath
from fitsflow.receiver.janitor import clean, mark_archived

SENSORS = ["R22_S00", "R22_S01"]


def stored(root: Path, image: str, sensors: list[str] = SENSORS, summary: bool = True) -> Path:
    d = root / image
    d.mkdir()
    for s in sensors:
        (d / f"{s}.raw").write_bytes(b"\0" * 64)
        (d / f"{s}.json").write_text("{}")
    if summary:
        (d / "READOUT.json").write_text("{}")
    return d


def archive(root: Path, image: str, sensors: list[str] = SENSORS, age_s: float = 0.0) -> None:
    for s in sensors:
        raft, sensor = s.split("_")
        assert mark_archived(root, image, raft, sensor)
        mark = root / image / f".{s}.archived"
        os.utime(mark, (time.time() - age_s, time.time() - age_s))


def test_only_wholly_archived_images_past_the_grace_period_go(tmp_path: Path) -> None:
    done, recent, half, open_, empty = (f"TESTCAM_O_20261122_00000{i}" for i in range(5))
    for image in (done, recent, half):
        stored(tmp_path, image)
    stored(tmp_path, open_, summary=False)  # readout not complete
    stored(tmp_path, empty, sensors=[])  # nothing arrived: a re-send may fill it
    archive(tmp_path, done, age_s=7200)
    archive(tmp_path, recent, age_s=10)
    archive(tmp_path, half, SENSORS[:1], age_s=7200)
    archive(tmp_path, open_, age_s=7200)
    (tmp_path / ".trash-TESTCAM_O_20261122_000009-abcd").mkdir()  # a crash mid-clean

    result = clean(tmp_path, keep_s=3600)
    assert result.removed == [done]
    assert result.waiting == 2  # half, empty
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent, half, open_, empty])
    assert clean(tmp_path, keep_s=0).removed == [recent]


def test_being_assembled_again_is_not_removed(tmp_path: Path) -> None:
    image = "TESTCAM_O_20261122_000001"
    d = stored(tmp_path, image)
    archive(tmp_path, image, age_s=7200)
    (d / ".R22_S00.assembling").write_bytes(b"")  # a re-send is arriving
    assert clean(tmp_path, keep_s=0).removed == []


def test_marks_for_images_elsewhere_or_bad_names(tmp_path: Path) -> None:
    assert mark_archived(tmp_path, "TESTCAM_O_20261122_000001", "R22", "S00") is False
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnsafePath):
        mark_archived(tmp_path, "../etc", "R22", "S00")
    with pytest.raises(UnsafePath):
        mark_archived(tmp_path, "TESTCAM_O_20261122_000001", "R22/..", "S00")
