"""Names and places on disk (documented in docs/layout.md).

Everything that becomes a path comes from outside (camera events, message fields, FITS
headers), so names are checked against strict patterns and paths are resolved inside their
tree before use.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from fitsflow.core.errors import UnsafePath

#: Image names: letters, digits, ``_`` and ``-``; must start with a letter or digit.
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
#: Raft and sensor names, e.g. ``R22`` and ``S11``.
COMPONENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")
OBS_DAY = re.compile(r"\d{8}")


def check_name(value: object, what: str = "image name", pattern: re.Pattern[str] = IMAGE_NAME) -> str:
    """Return ``value`` if it is a safe name, else raise UnsafePath naming the value."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UnsafePath(f"{what} {value!r} does not match {pattern.pattern}")
    return value


def obs_day(when: dt.datetime) -> str:
    """The observing day of a UTC time: the date of (UTC − 12 h), as YYYYMMDD.

    A night that starts in the evening and ends after midnight belongs to one day (Rubin's rule).
    """
    if when.tzinfo is None:
        raise ValueError("obs_day needs an aware datetime")
    return (when.astimezone(dt.timezone.utc) - dt.timedelta(hours=12)).strftime("%Y%m%d")


def sensor_file_name(instrument: str, image: str, raft: str, sensor: str) -> str:
    """``<instrument>_<image>_<raft>_<sensor>.fits``, each part checked."""
    check_name(instrument, "instrument", COMPONENT_NAME if len(instrument) <= 16 else IMAGE_NAME)
    check_name(image)
    check_name(raft, "raft", COMPONENT_NAME)
    check_name(sensor, "sensor", COMPONENT_NAME)
    return f"{instrument}_{image}_{raft}_{sensor}.fits"


def inside(root: Path, relative: str | Path) -> Path:
    """``root / relative`` resolved, refusing anything that would leave ``root``
    (``..``, absolute paths, symlinks pointing out)."""
    rel = Path(relative)
    if rel.is_absolute():
        raise UnsafePath(f"path {str(relative)!r} is absolute; a path relative to {root} is needed")
    root_resolved = root.resolve()
    target = (root_resolved / rel).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise UnsafePath(f"path {str(relative)!r} leaves {root}")
    return target


def entry_within(root: Path, path: str | Path) -> Path:
    """An absolute ``path`` from a message or a scan, normalised but *not* resolved: a
    symlink stays the symlink (to be quarantined as such, never followed). It must lie
    inside ``root`` and no directory between ``root`` and it may be a symlink."""
    p = Path(path)
    if not p.is_absolute():
        raise UnsafePath(f"path {str(path)!r} is not absolute")
    p = Path(os.path.normpath(p))
    for base in (Path(os.path.normpath(root)), root.resolve()):
        if base in p.parents:
            break
    else:
        raise UnsafePath(f"path {str(path)!r} is outside {root}")
    for parent in list(p.relative_to(base).parents)[:-1]:
        if (base / parent).is_symlink():
            raise UnsafePath(f"path {str(path)!r} goes through the symlink {base / parent}")
    return p


def within(root: Path, path: str | Path) -> Path:
    """An absolute ``path`` from a message, resolved, that must lie inside ``root``."""
    p = Path(path)
    if not p.is_absolute():
        raise UnsafePath(f"path {str(path)!r} is not absolute")
    resolved = p.resolve()
    root_resolved = root.resolve()
    if root_resolved not in resolved.parents:
        raise UnsafePath(f"path {str(path)!r} is outside {root}")
    return resolved
