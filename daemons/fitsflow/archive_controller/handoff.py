"""The hand-off of delivered files, as resumable steps. Each file has its own recorded state,
committed after each step, and each step is safe to repeat, so a crash (or kill -9) between
any two steps is completed exactly once by the next attempt. The files of one delivery go
through the steps together (:func:`run_handoff`): one fsync per directory, one transaction
and one INGEST_REQUEST per target for all of them.

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
from fitsflow.core.faults import is_environmental
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


def link_step(row: HandOffRow, dir_mode: int, sync: bool = True) -> set[Path]:
    """Link the verified file into every target's staging directory; returns those
    directories (fsynced here unless ``sync`` is False: :func:`link_rows` syncs each once)."""
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
    dirs = {t.parent for t in targets}
    if sync:
        for d in dirs:
            fsync_dir(d)
    return dirs


def unlink_step(row: HandOffRow, sync: bool = True) -> None:
    """Remove the incoming name, if it is still the verified file (a repeat after a crash
    finds it gone). The staged names may already be consumed by the ingesters: not checked."""
    src = Path(row.incoming)
    if src.exists():
        if not _same_file(src, row.inode) and not redelivered_copy(row):
            raise HandOffError(f"{src} is not the file verified for this hand-off ({row.inode}); not removed")
        os.unlink(src)
    if sync:
        fsync_dir(src.parent)


Failures = list[tuple[HandOffRow, HandOffError]]


def _each(rows: list[HandOffRow], step: Callable[[HandOffRow], set[Path] | None]) -> tuple[Failures, set[Path]]:
    """Run ``step`` on every row: a row whose step cannot succeed is set aside with its error
    and the others go on; a fault of the machine stops the batch (raised)."""
    failed: Failures = []
    dirs: set[Path] = set()
    for row in rows:
        try:
            dirs |= step(row) or set()
        except HandOffError as exc:
            if is_environmental(exc):
                raise
            failed.append((row, exc))
    return failed, dirs


def link_rows(rows: list[HandOffRow], dir_mode: int) -> Failures:
    """:func:`link_step` for a batch, each staging directory fsynced once."""
    failed, dirs = _each(rows, lambda row: link_step(row, dir_mode, sync=False))
    for d in dirs:
        fsync_dir(d)
    return failed


def unlink_rows(rows: list[HandOffRow]) -> Failures:
    """:func:`unlink_step` for a batch, each incoming directory fsynced once."""
    failed, _ = _each(rows, lambda row: unlink_step(row, sync=False))
    for d in {Path(row.incoming).parent for row in rows}:
        fsync_dir(d)
    return failed


async def run_handoff(book: Book, rows: list[HandOffRow], request: Callable[[list[HandOffRow]], Awaitable[None]],
                      dir_mode: int, to_thread: Callable) -> Failures:  # type: ignore[type-arg]
    """Take ``rows`` from their recorded states to ``requested``, together: each step once
    for the batch (one fsync per directory, one transaction, one INGEST_REQUEST per target).
    Returns the rows that cannot go on, each with why (they stay at their state); a fault of
    the machine raises, every row at its last recorded state."""
    failed: Failures = []
    for state, step, after, point in (("verified", lambda rs: link_rows(rs, dir_mode), "linked", "handoff.linked"),
                                      ("linked", unlink_rows, "unlinked", "handoff.unlinked")):
        batch = [r for r in rows if r.state == state]
        if not batch:
            continue
        stopped = await to_thread(step, batch)
        failed += stopped
        moved = [r for r in batch if all(r is not f for f, _ in stopped)]
        if moved:
            await to_thread(book.set_handoff_states, moved, after)
            for r in moved:
                r.state = after
            failpoint(point)
    batch = [r for r in rows if r.state == "unlinked"]
    if batch:
        await request(batch)
        failpoint("handoff.sent")
        await to_thread(book.set_handoff_states, batch, "requested")
        for r in batch:
            r.state = "requested"
    return failed
