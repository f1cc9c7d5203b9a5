"""Durable file operations: atomic writes and idempotent hard-link hand-offs.

A file a reader can see is always whole: writers write a temp file in the target directory,
fsync it, rename it into place and fsync the directory. A hand-off is one ``link(2)``; doing
it again is "already done" only if the existing name is the same file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".tmp-"


def file_identity(st: os.stat_result) -> str:
    """``dev:ino:mtime_ns`` of a file: which bytes a name stands for. The inode number alone
    is not enough (a freed inode is reused at once for the next file); linking changes ctime
    but not mtime, and nobody writes a delivered file again. A checksum computed for one
    identity vouches for any name with that identity (the OODS and archive links included)."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"


def fsync_dir(path: Path) -> None:
    """fsync a directory so the names created or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(owner: str) -> str:
    return TEMP_PREFIX + (f"{owner}-" if owner else "")


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644, owner: str = "") -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yields a binary file to fill; on normal exit it is fsynced
    and renamed into place, on an exception the temp file is removed and nothing appears.

    ``owner`` names the writer in the temp file's name, for directories several writers
    share: see :func:`remove_stale_temps`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(owner) + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _rename_into_place(Path(tmp), path)


def _rename_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished temp name over ``path`` (removing it if that fails), then fsync
    the directory: the new name is durable."""
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temp + fsync + rename + fsync dir)."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def publish_link(src: Path, path: Path, owner: str = "") -> None:
    """Make ``path`` another name of ``src``, atomically (link to a temp name, rename over
    it, fsync the directory); a crash leaves at most a temp name for remove_stale_temps."""
    path = Path(path)
    tmp = path.parent / f"{_temp_prefix(owner)}{path.name}.{secrets.token_hex(4)}"
    os.link(src, tmp)
    _rename_into_place(tmp, path)


def link_into(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` as ``dst`` (same filesystem). Returns True if this call made the
    link, False if ``dst`` already was the same file. Raises FileExistsError if ``dst`` is a
    different file (never overwritten), OSError for any other failure."""
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        if os.path.samefile(src, dst):
            return False
        raise FileExistsError(f"{dst} exists and is not the same file as {src}") from None


def remove_stale_temps(directory: Path, owner: str = "", others_after_s: float | None = None) -> list[Path]:
    """Remove temp files a crashed writer left in ``directory``; returns what was removed.

    Without ``owner``: every temp file (the directory has one writer, about to start). With
    it: that writer's own temp files, and other writers' only once ``others_after_s`` old —
    they may be writing right now (two forwarders share incoming/: one restarting removed
    the other's half-written file and made its rename fail)."""
    removed = []
    now = time.time()
    for p in Path(directory).glob(TEMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            if owner and not p.name.startswith(_temp_prefix(owner)):
                if others_after_s is None or now - p.stat().st_mtime < others_after_s:
                    continue
            p.unlink()
            removed.append(p)
    return removed
