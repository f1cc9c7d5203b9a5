"""Raw buffer clean-up: an image's readouts leave the raw buffer store once the archive
holds every sensor of it, and a grace period has passed.

The receiver hears IMAGE_IN_ARCHIVE (status 0) for each sensor and records it durably next to
the readout (``<image>/.<raft>_<sensor>.archived``). Every ``raw_clean_interval_s`` it
deletes the images whose stored sensors all carry that mark, the newest mark older than
``raw_keep_s`` (the grace period: a forwarder finishing a reassigned duplicate still reads
the pixels). Nothing else is ever deleted: a sensor the archive never took (quarantined,
failed) keeps its image in the buffer for a person, and the status line counts them.

An image is renamed out of the way first (``.trash-<image>-<random>``, one atomic step, so
the assembler never sees half an image), then removed; a crash in between leaves a
``.trash-*`` directory that the next round removes. Receivers sharing one store may race
for an image: the rename decides.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fitsflow.core.handoff import atomic_write_bytes, fsync_dir
from fitsflow.core.layout import IMAGE_NAME
from fitsflow.core.rawstore import image_dir, sensor_key

_log = logging.getLogger(__name__)

TRASH_PREFIX = ".trash-"
ARCHIVED_SUFFIX = ".archived"
SUMMARY = "READOUT.json"


def mark_archived(root: Path, image: str, raft: str, sensor: str) -> bool:
    """Record that the archive holds this sensor; False if its image is not in this store."""
    d, key = image_dir(root, image), sensor_key(raft, sensor)  # both refuse unsafe names
    if not d.is_dir():
        return False
    atomic_write_bytes(d / f".{key}{ARCHIVED_SUFFIX}", b"")
    return True


@dataclass
class CleanResult:
    removed: list[str]
    #: images whose readout is complete but not every stored sensor is archived (yet)
    waiting: int


def archived_since(d: Path) -> float | None:
    """When the last stored sensor of the image in ``d`` was archived (its mark's mtime),
    or None while the readout is not complete, a sensor is being assembled or is not
    archived."""
    if not (d / SUMMARY).exists() or any(d.glob(".*.assembling")):
        return None
    sensors = {p.stem for p in d.glob("*.json") if p.name != SUMMARY}
    if not sensors:
        return None  # nothing arrived (yet): a re-send may still fill it
    marks = {p.name[1:-len(ARCHIVED_SUFFIX)]: p.stat().st_mtime for p in d.glob(f".*{ARCHIVED_SUFFIX}")}
    if not sensors <= marks.keys():
        return None
    return max(marks[s] for s in sensors)


def clean(root: Path, keep_s: float, now: float | None = None) -> CleanResult:
    """Delete the images archived at least ``keep_s`` ago; see the module docstring."""
    now = time.time() if now is None else now
    removed: list[str] = []
    waiting = 0
    for d in sorted(root.iterdir()):
        if not d.is_dir() or not IMAGE_NAME.fullmatch(d.name):
            continue
        try:
            since = archived_since(d)
        except FileNotFoundError:
            continue  # another receiver took it meanwhile
        if since is None:
            waiting += (d / SUMMARY).exists()
            continue
        if now - since < keep_s:
            continue
        trash = root / f"{TRASH_PREFIX}{d.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            continue
        removed.append(d.name)
    for trash in root.glob(TRASH_PREFIX + "*"):
        shutil.rmtree(trash, ignore_errors=True)
    if removed:
        fsync_dir(root)
    return CleanResult(removed, waiting)
