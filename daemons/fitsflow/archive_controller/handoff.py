"""The hand-off of one delivered file, as resumable steps. The state is committed after each
step, and each step is safe to repeat, so a crash (or kill -9) between any two steps is
completed exactly once by the next attempt:

    verified  the file in incoming/ has the announced size and checksum (row inserted)
    linked    hard links in oods/staging/<obs-day>/, archive/staging/<obs-day>/ and each of the
              site's extra staging directories (paths.extra_staging), dirs fsynced
    unlinked  the incoming/ name removed (only now: every link exists), dir fsynced
    requested INGEST_REQUEST sent to every target (persistent, receipted or outboxed)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

from fitsflow.archive_controller.book import Book, HandOffRow
from fitsflow.core.checksum import file_crc32
from fitsflow.core.failpoints import failpoint
from fitsflow.core.handoff import file_identity, fsync_dir, link_into

_log = logging.getLogger(__name__)


class HandOffError(Exception):
    """A step that cannot succeed (a link refused, a file missing or different)."""


def verify(path: Path, size: int, checksum: str, check_crc: bool, written_as: str | None = None) -> str:
    """Check size (and CRC) against the announcement; returns the file's identity.

    ``written_as``: the identity the forwarder announced for the file it wrote on this host.
    When the file still has it, its bytes are the ones the forwarder summed while writing
    them, and reading them back (from the page cache) would prove nothing more: the CRC is
    trusted. A file from elsewhere, or one that changed since, is read in full.

    The steps after this one recognise the file by that identity, never by another name:
    the ingesters may consume the staged names at any moment after the links exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise HandOffError(f"{path} does not exist") from None
    if st.st_size != size:
        raise HandOffError(f"{path} has {st.st_size} bytes, {size} announced")
    ident = file_identity(st)
    if check_crc and ident != written_as:
        crc = file_crc32(path)
        if crc != checksum:
            raise HandOffError(f"{path} has checksum {crc}, {checksum} announced")
    return ident


def _same_file(path: Path, ident: str) -> bool:
    try:
        return file_identity(path.stat()) == ident
    except FileNotFoundError:
        return False


def redelivered_copy(row: HandOffRow) -> bool:
    """True if the file now at the incoming name is not the verified one but has the same
    size and checksum: another forwarder delivered the same sensor again (a reassignment
    after a hang; FITS output is deterministic), which can stand in for it."""
    src = Path(row.incoming)
    try:
        verify(src, row.size, row.checksum, True)
    except HandOffError:
        return False
    return not _same_file(src, row.inode)


def link_step(row: HandOffRow, dir_mode: int) -> None:
    src = Path(row.incoming)
    targets = [Path(p) for p in row.staged().values()]
    if not _same_file(src, row.inode):
        if not redelivered_copy(row):
            raise HandOffError(f"{src} is gone or replaced since it was verified (expected file {row.inode})")
        row.inode = file_identity(src.stat())  # the identical copy takes the original's place
    for target in targets:
        target.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
        try:
            link_into(src, target)
        except OSError as exc:  # EXDEV (another filesystem), EEXIST (a different file), EACCES...
            raise HandOffError(f"cannot link {src} to {target}: {exc}") from exc
    for d in {t.parent for t in targets}:
        fsync_dir(d)


def unlink_step(row: HandOffRow) -> None:
    """Remove the incoming name, if it is still the verified file (a repeat after a crash
    finds it gone). The staged names may already be consumed by the ingesters: not checked."""
    src = Path(row.incoming)
    if src.exists():
        if not _same_file(src, row.inode) and not redelivered_copy(row):
            raise HandOffError(f"{src} is not the file verified for this hand-off ({row.inode}); not removed")
        os.unlink(src)
    fsync_dir(src.parent)


async def run_handoff(book: Book, row: HandOffRow, request: Callable[[HandOffRow], Awaitable[None]],
                      dir_mode: int, to_thread: Callable) -> None:  # type: ignore[type-arg]
    """Take ``row`` from its recorded state to ``requested``."""
    if row.state == "verified":
        await to_thread(link_step, row, dir_mode)
        await to_thread(book.set_handoff_state, row.key, "linked", inode=row.inode)
        row.state = "linked"
        failpoint("handoff.linked")
    if row.state == "linked":
        await to_thread(unlink_step, row)
        await to_thread(book.set_handoff_state, row.key, "unlinked")
        row.state = "unlinked"
        failpoint("handoff.unlinked")
    if row.state == "unlinked":
        await request(row)
        failpoint("handoff.sent")
        await to_thread(book.set_handoff_state, row.key, "requested")
        row.state = "requested"
