"""The archive controller's hand-off steps, each interleaving with the ingesters made explicit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fitsflow.archive_controller.book import HandOffRow
from fitsflow.archive_controller.handoff import HandOffError, link_step, unlink_step, verify


def setup(tmp_path: Path) -> HandOffRow:
    for d in ("incoming", "oods", "archive"):
        (tmp_path / d).mkdir()
    src = tmp_path / "incoming" / "f.fits"
    src.write_bytes(b"x" * 100)
    ident = verify(src, 100, "ignored", check_crc=False)
    return HandOffRow("IMG/R22_S00", "IMG", str(src), str(tmp_path / "oods" / "d" / "f.fits"),
                      str(tmp_path / "archive" / "d" / "f.fits"), 100, "crc32:0", ident, {}, "verified")


def test_unlink_after_the_ingesters_consumed_the_staged_names(tmp_path: Path) -> None:
    """The OODS may ingest (and unlink) its staged name before the controller removes the
    incoming one: the controller must not need that name (a race the demo found)."""
    row = setup(tmp_path)
    link_step(row, 0o2775)
    os.unlink(row.oods)
    os.unlink(row.archive)  # both ingesters were faster
    unlink_step(row)
    assert not Path(row.incoming).exists()
    unlink_step(row)  # a repeat after a crash: nothing left to do, no error


def test_steps_refuse_a_replaced_file(tmp_path: Path) -> None:
    row = setup(tmp_path)
    src = Path(row.incoming)
    src.unlink()
    src.write_bytes(b"y" * 100)  # same name and size, another file
    with pytest.raises(HandOffError, match="replaced"):
        link_step(row, 0o2775)
    with pytest.raises(HandOffError, match="not the file verified"):
        unlink_step(row)
    assert src.exists()


def test_link_step_is_idempotent(tmp_path: Path) -> None:
    row = setup(tmp_path)
    link_step(row, 0o2775)
    link_step(row, 0o2775)  # a crash before "linked" was recorded
    assert os.stat(row.incoming).st_nlink == 3


def test_a_local_write_is_trusted_only_while_unchanged(tmp_path: Path) -> None:
    """The forwarder's announced identity spares the re-read of a file it wrote here; a file
    changed since (new mtime) or replaced (new inode) is read in full and its CRC checked."""
    src = tmp_path / "f.fits"
    src.write_bytes(b"x" * 100)
    written_as = verify(src, 100, "ignored", check_crc=False)
    assert verify(src, 100, "crc32:00000000", check_crc=True, written_as=written_as) == written_as  # not read
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # written again since
    with pytest.raises(HandOffError, match="checksum"):
        verify(src, 100, "crc32:00000000", check_crc=True, written_as=written_as)
    src.unlink()
    src.write_bytes(b"x" * 100)  # another file under the name
    with pytest.raises(HandOffError, match="checksum"):
        verify(src, 100, "crc32:00000000", check_crc=True, written_as=written_as)
