"""On-disk naming, path safety, atomic writes and idempotent hard-link hand-offs."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from fitsflow.core.errors import UnsafePath
from fitsflow.core.handoff import atomic_write_bytes, atomic_writer, link_into, remove_stale_temps
from fitsflow.core.layout import check_name, inside, obs_day, sensor_file_name, within

UTC = dt.timezone.utc


def test_obs_day_is_utc_minus_12h() -> None:
    assert obs_day(dt.datetime(2026, 11, 21, 11, 59, tzinfo=UTC)) == "20261120"
    assert obs_day(dt.datetime(2026, 11, 21, 12, 0, tzinfo=UTC)) == "20261121"
    chile = dt.timezone(dt.timedelta(hours=-3))
    assert obs_day(dt.datetime(2026, 11, 21, 23, 0, tzinfo=chile)) == "20261121"  # 02:00 UTC next day
    with pytest.raises(ValueError):
        obs_day(dt.datetime(2026, 1, 1))


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a b", "x" * 81, None, 5, "é"])
def test_unsafe_names_refused(bad: object) -> None:
    with pytest.raises(UnsafePath):
        check_name(bad)


def test_sensor_file_name() -> None:
    assert sensor_file_name("CC", "CC_O_20261121_000001", "R22", "S11") == "CC_CC_O_20261121_000001_R22_S11.fits"
    with pytest.raises(UnsafePath):
        sensor_file_name("CC", "IMG", "../R22", "S11")


def test_inside_and_within(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a/b.fits") == (tmp_path / "a/b.fits").resolve()
    for bad in ["../etc/passwd", "/etc/passwd", "a/../../x"]:
        with pytest.raises(UnsafePath):
            inside(tmp_path, bad)
    os.symlink("/etc", tmp_path / "a" / "out")
    with pytest.raises(UnsafePath):
        inside(tmp_path, "a/out/passwd")
    assert within(tmp_path, tmp_path / "a" / "f") == (tmp_path / "a" / "f").resolve()
    for bad in ["relative", "/etc/passwd", str(tmp_path / ".." / "x"), str(tmp_path)]:
        with pytest.raises(UnsafePath):
            within(tmp_path, bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b"half")
            raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_stale_temps_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-x.fits.abc").write_bytes(b"")
    (tmp_path / "keep.fits").write_bytes(b"")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".tmp-x.fits.abc"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.fits"]


def test_a_writer_removes_its_own_temps_and_only_old_ones_of_others(tmp_path: Path) -> None:
    import os
    import time

    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "x.fits", owner="f2") as fh:
        names = [p.name for p in tmp_path.iterdir()]
        assert len(names) == 1 and names[0].startswith(".tmp-f2-x.fits."), names
        fh.write(b"half")
        raise RuntimeError("the test's doing")
    (tmp_path / ".tmp-f1-a.fits.1").write_bytes(b"")  # f1 crashed writing it
    (tmp_path / ".tmp-f2-b.fits.1").write_bytes(b"")  # f2 is writing it right now
    (tmp_path / ".tmp-f2-c.fits.1").write_bytes(b"")  # f2 crashed writing it yesterday
    old = time.time() - 86400
    os.utime(tmp_path / ".tmp-f2-c.fits.1", (old, old))
    removed = remove_stale_temps(tmp_path, "f1", others_after_s=3600)
    assert sorted(p.name for p in removed) == [".tmp-f1-a.fits.1", ".tmp-f2-c.fits.1"]
    assert [p.name for p in tmp_path.iterdir()] == [".tmp-f2-b.fits.1"]


def test_link_into_is_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "src.fits"
    src.write_bytes(b"data")
    dst = tmp_path / "dst.fits"
    assert link_into(src, dst) is True
    assert link_into(src, dst) is False  # done already: same inode
    assert os.stat(src).st_nlink == 2
    other = tmp_path / "other.fits"
    other.write_bytes(b"other")
    with pytest.raises(FileExistsError, match="not the same file"):
        link_into(other, dst)
    assert dst.read_bytes() == b"data"
