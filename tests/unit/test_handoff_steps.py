"""The archive controller's hand-off steps, each interleaving with the ingesters made explicit."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from fitsflow.archive_controller.book import Book, HandOffRow
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


def test_extra_targets_are_linked_with_the_others_and_kept_in_the_book(tmp_path: Path) -> None:
    """A site's extra target (paths.extra_staging) gets its link in the same step as the OODS
    and the archive, and the book keeps it with the hand-off (a hand-off finishes with the
    targets it began with, whatever the configuration says after a restart)."""
    row = setup(tmp_path)
    row.extra = {"prompt": str(tmp_path / "prompt" / "d" / "f.fits")}
    link_step(row, 0o2775)
    assert os.path.samefile(row.incoming, row.extra["prompt"]) and os.stat(row.incoming).st_nlink == 4
    assert list(row.staged()) == ["oods", "archive", "prompt"]
    book = Book(f"sqlite:///{tmp_path / 'site.db'}")
    book.start_handoff(row)
    book.start_handoff(dataclasses.replace(row, key="IMG/R22_S01", extra={}))
    assert book.handoff(row.key) == row
    assert book.handoff("IMG/R22_S01").extra == {}
    book.close()


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
