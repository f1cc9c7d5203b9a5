"""State that cannot be read at start-up is set aside, never fatal.

A daemon resumes from its state on disk. One record it cannot read — half-written by an older
version, damaged by a full disk, or holding a value that passed an older check — must not
stop it at every start (a crash loop that stops all other work too). Such a record is moved
out of the way with its reason (``<file>.rejected`` and ``<file>.rejected.why``, or a file
under ``rejected/`` for database rows), logged, and reported as an ALERT once the daemon
is up; the daemon starts with the rest. An operator reads the reason and decides.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

from fitsflow.core.handoff import atomic_write_bytes, fsync_dir

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: What reading a damaged record raises (a bad value, a missing or unknown field, bad JSON).
POISON_ERRORS = (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError)


def set_aside_file(path: Path, reason: str, problems: list[str]) -> None:
    """Rename ``path`` to ``<name>.rejected`` with the reason beside it; note it in ``problems``."""
    target = path.with_name(path.name + ".rejected")
    try:
        os.replace(path, target)
        atomic_write_bytes(target.with_name(target.name + ".why"), f"{reason}\n".encode())
        fsync_dir(path.parent)
    except OSError as exc:  # the disk refuses even that: leave it, say so, carry on
        _log.error("cannot set aside unreadable state %s (%s): %s", path, reason, exc)
    problem = f"unreadable state {path} set aside as {target.name}: {reason}"
    _log.error("%s", problem)
    problems.append(problem)


def load_file(path: Path, parse: Callable[[bytes], T], problems: list[str]) -> T | None:
    """``parse(path's bytes)``, or None if the file is gone or unreadable (then set aside)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return parse(data)
    except POISON_ERRORS as exc:
        set_aside_file(path, f"{type(exc).__name__}: {exc}"[:2000], problems)
        return None


def set_aside_row(directory: Path, what: str, row: object, reason: str, problems: list[str]) -> None:
    """Keep a database row that cannot be read as ``directory/rejected/<what>-<time>.json``."""
    target = Path(directory) / "rejected" / f"{what}-{time.time_ns()}.json"
    try:
        target.parent.mkdir(exist_ok=True)
        atomic_write_bytes(target, json.dumps({"reason": reason, "row": row}, default=repr).encode())
    except OSError as exc:
        _log.error("cannot keep the unreadable %s row (%s): %s", what, reason, exc)
    problem = f"unreadable {what} in {directory} set aside as {target.name}: {reason}"
    _log.error("%s", problem)
    problems.append(problem)
