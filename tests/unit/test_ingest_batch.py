"""An INGEST_REQUEST's files are ingested together (Ingester.ingest_many) over real files and
a real SQLite registry: one registry transaction and one fsync per directory for all of
them, and still each file on its own where it matters (a bad file, a path outside staging,
a link refused, the same path twice)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from fitsflow.core.errors import UnsafePath
from fitsflow.core.ingest import engine
from fitsflow.core.ingest.engine import Ingester, Staged
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.ingest.verify import STATUS_OK
from fitsflow.testing.files import make_sensor_file

IMAGE = "TESTCAM_O_20261121_000100"
SENSORS = ["S00", "S01", "S02", "S10"]


def ingester(tmp_path: Path, registry: Registry, announced: list[tuple[Any, ...]]) -> Ingester:
    async def announce(*args: Any) -> None:
        announced.append(args)
    return Ingester(name="oods", staging=tmp_path / "staging", repo=tmp_path / "repo", quarantine=tmp_path / "q",
                    registry=registry, placement=lambda d, n: f"{d['obs_day']}/{d['image']}/{n}",
                    announce=announce, spawn=lambda c, n, **k: None)  # type: ignore[arg-type,return-value]


def staged_files(tmp_path: Path) -> list[Path]:
    day = tmp_path / "staging" / "20261121"
    day.mkdir(parents=True)
    return [make_sensor_file(day, IMAGE, sensor=s, index=i)[0].path for i, s in enumerate(SENSORS)]


def test_a_requests_files_share_one_transaction_and_one_fsync_per_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four good files, a file that is not FITS and a path outside staging in one request:
    the four are registered in one commit with one fsync of their repository directory and
    one of staging, and announced; the bad one is quarantined and the unsafe one fails alone."""
    good = staged_files(tmp_path)
    bad = good[0].parent / "TESTCAM_TESTCAM_O_20261121_000100_R22_S11.fits"
    bad.write_bytes(b"not FITS" * 400)
    registry = Registry(f"sqlite:///{tmp_path / 'site.db'}", "oods_files")
    registry.count()  # the table exists before the commits are counted
    commits: list[int] = []
    event.listen(registry.engine, "commit", lambda conn: commits.append(1))
    synced: list[Path] = []
    real_fsync_dir = engine.fsync_dir

    def counting(directory: Path) -> None:
        synced.append(Path(directory))
        real_fsync_dir(directory)
    monkeypatch.setattr(engine, "fsync_dir", counting)
    announced: list[tuple[Any, ...]] = []
    ing = ingester(tmp_path, registry, announced)

    outcomes = asyncio.run(ing.ingest_many([*(Staged(p) for p in good), Staged(bad), Staged(Path("/etc/passwd"))]))

    assert outcomes[:4] == [STATUS_OK] * 4
    assert isinstance(outcomes[4], int) and outcomes[4] != STATUS_OK
    assert isinstance(outcomes[5], UnsafePath) and "/etc/passwd" in str(outcomes[5])
    assert registry.count() == 4 and len(commits) == 1
    repo_dir = tmp_path / "repo" / "20261121" / IMAGE
    assert synced.count(repo_dir) == 1
    assert all((repo_dir / p.name).exists() and not p.exists() for p in good)
    assert (tmp_path / "q" / "20261121" / bad.name).exists()
    assert sorted(a[0] for a in announced) == [STATUS_OK] * 4 + [outcomes[4]]
    assert ing.stats.ingested == 4 and ing.stats.quarantined == 1
    registry.close()


def test_one_refused_link_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """A different file already sits where one file goes (never overwritten): that file
    fails with the reason and stays staged; the others are placed and registered. The same
    path twice in one request is ingested once, and both get its status."""
    good = staged_files(tmp_path)
    repo_dir = tmp_path / "repo" / "20261121" / IMAGE
    repo_dir.mkdir(parents=True)
    (repo_dir / good[1].name).write_bytes(b"someone else's file")
    registry = Registry(f"sqlite:///{tmp_path / 'site.db'}", "oods_files")
    announced: list[tuple[Any, ...]] = []
    ing = ingester(tmp_path, registry, announced)

    outcomes = asyncio.run(ing.ingest_many([Staged(good[0]), Staged(good[1]), Staged(good[2]), Staged(good[2])]))

    assert outcomes[0] == outcomes[2] == outcomes[3] == STATUS_OK
    assert isinstance(outcomes[1], FileExistsError) and good[1].name in str(outcomes[1])
    assert good[1].exists() and not good[0].exists() and not good[2].exists()
    assert registry.count() == 2 and len(announced) == 2
    registry.close()


def test_a_data_id_registered_meanwhile_makes_add_many_go_row_by_row(tmp_path: Path) -> None:
    """Another ingest registered one of the data IDs between look-up and insert: the others
    are still recorded, that one is reported as there already, and nothing is doubled."""
    registry = Registry(f"sqlite:///{tmp_path / 'site.db'}", "oods_files")
    ids = [{"instrument": "TESTCAM", "image": IMAGE, "group": "G1", "snap": 0, "raft": "R22", "sensor": s,
            "obs_day": "20261121"} for s in SENSORS[:3]]
    assert registry.add(ids[1], "b.fits", 2880, "crc32:00000001")
    rows = [(d, f"{n}.fits", 2880, f"crc32:0000000{n}", None) for n, d in enumerate(ids)]
    assert registry.add_many(rows) == [True, False, True]
    assert registry.count() == 3
    assert registry.find(ids[1]).path == "b.fits"  # type: ignore[union-attr]
    assert registry.add_many([]) == []
    registry.close()
