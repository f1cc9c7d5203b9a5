"""Placing a file in the repository survives the expiry cleaner removing the (still empty)
directory the placement has just made (a race seen in CI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fitsflow.core.ingest import engine
from fitsflow.core.ingest.engine import Ingester, _Placing
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.ingest.verify import Inspected

DATA_ID = {"instrument": "TESTCAM", "image": "TESTCAM_O_20261121_000100", "group": "g", "snap": 0,
           "raft": "R22", "sensor": "S00", "obs_day": "20261121"}


def place(tmp_path: Path, registry: Registry, src: Path, target: Path) -> list[Exception | None]:
    """What the ingester's placement step does with one staged file."""
    async def announce(*_a: Any) -> None:
        return None
    ing = Ingester(name="oods", staging=tmp_path / "staging", repo=tmp_path / "repo", quarantine=tmp_path / "q",
                   registry=registry, placement=lambda d, n: n, announce=announce,
                   spawn=lambda c, n, **k: None)  # type: ignore[arg-type,return-value]
    return ing._place_all([_Placing(src, target, Inspected(DATA_ID, 2880, "crc32:00000000"), True)])


def test_the_directory_removed_under_the_placement_is_made_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    staging, repo = tmp_path / "staging", tmp_path / "repo"
    (staging / "20261121").mkdir(parents=True)
    src = staging / "20261121" / "f.fits"
    src.write_bytes(b"x" * 2880)
    target = repo / "TESTCAM" / "20261121" / "IMG" / "f.fits"
    real, calls = engine.link_into, []

    def cleaner_wins_once(path: Path, dst: Path) -> Any:
        calls.append(dst)
        if len(calls) == 1:
            dst.parent.rmdir()  # the cleaner, between mkdir and link
        return real(path, dst)
    monkeypatch.setattr(engine, "link_into", cleaner_wins_once)
    registry = Registry(f"sqlite:///{tmp_path / 'site.db'}", "oods_files")
    assert place(tmp_path, registry, src, target) == [None]
    assert len(calls) == 2 and target.read_bytes() == b"x" * 2880 and not src.exists()
    assert registry.count() == 1
    registry.close()


def test_a_parent_removed_between_the_mkdirs_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleaner takes the day directory just after the ingest made it and before the
    image's directory inside it is made (pathlib then raises FileNotFoundError from mkdir;
    seen in CI): the placement tries again instead of failing the file until a rescan."""
    staging, repo = tmp_path / "staging", tmp_path / "repo"
    (staging / "20261121").mkdir(parents=True)
    src = staging / "20261121" / "f.fits"
    src.write_bytes(b"x" * 2880)
    day = repo / "TESTCAM" / "20261121"
    target = day / "IMG" / "f.fits"
    real_mkdir, taken = os.mkdir, []

    def cleaner_takes_the_day(path: Any, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, *args, **kwargs)
        if Path(path) == day and not taken:
            taken.append(path)
            os.rmdir(path)  # the cleaner, between pathlib's two mkdirs
    monkeypatch.setattr(os, "mkdir", cleaner_takes_the_day)
    registry = Registry(f"sqlite:///{tmp_path / 'site.db'}", "oods_files")
    assert place(tmp_path, registry, src, target) == [None]
    assert taken and target.read_bytes() == b"x" * 2880 and not src.exists()
    registry.close()
