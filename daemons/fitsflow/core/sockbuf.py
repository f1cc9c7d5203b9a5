"""The kernel's caps on UDP socket buffers (``net.core.rmem_max`` / ``wmem_max``).

A socket asking for more than the cap silently gets the cap, and a burst then overflows it.
The receiver warns about it; the camera simulator asks only for what it can get and says so
in one line; the demo and the benchmarks raise the caps for their run when they are root
(restored afterwards).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

_log = logging.getLogger(__name__)

Direction = Literal["rmem", "wmem"]
_SYSCTL = Path("/proc/sys/net/core")


def kernel_cap(direction: Direction) -> int | None:
    """``net.core.<direction>_max`` in bytes, or None where it cannot be read."""
    try:
        return int((_SYSCTL / f"{direction}_max").read_text())
    except (OSError, ValueError):
        return None


def cap_warning(direction: Direction, requested: int, what: str) -> str | None:
    """A one-line explanation when the kernel caps ``what``'s buffer below ``requested``."""
    cap = kernel_cap(direction)
    if cap is None or cap >= requested:
        return None
    return (f"{what}: net.core.{direction}_max is {cap} bytes, below the requested socket buffer of "
            f"{requested}: bursts may lose packets. Raise it: sysctl -w net.core.{direction}_max={requested}")


def grantable(direction: Direction, requested: int, what: str) -> int:
    """The buffer size to ask for: ``requested``, or the kernel's cap when that is smaller
    (logged once, so a smaller buffer is never a surprise)."""
    warning = cap_warning(direction, requested, what)
    if warning is None:
        return requested
    cap = kernel_cap(direction)
    assert cap is not None
    _log.warning("%s; using %d", warning, cap)
    return cap


class RaisedCaps:
    """Raise ``rmem_max`` and ``wmem_max`` to at least ``size`` for a run, as root, and put
    the old values back on exit. ``notes`` says what was done (or why not)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.notes: list[str] = []
        self._old: dict[Direction, int] = {}

    def __enter__(self) -> RaisedCaps:
        for direction in ("rmem", "wmem"):
            cap = kernel_cap(direction)  # type: ignore[arg-type]
            if cap is None or cap >= self.size:
                continue
            try:
                (_SYSCTL / f"{direction}_max").write_text(str(self.size))
            except OSError as exc:
                self.notes.append(f"net.core.{direction}_max is {cap} and cannot be raised ({exc.strerror}); "
                                  "expect loss at high rates")
                continue
            self._old[direction] = cap  # type: ignore[index]
            self.notes.append(f"raised net.core.{direction}_max from {cap} to {self.size} (restored at exit)")
        return self

    def __exit__(self, *exc: object) -> None:
        for direction, cap in self._old.items():
            try:
                (_SYSCTL / f"{direction}_max").write_text(str(cap))
            except OSError as err:
                _log.warning("cannot restore net.core.%s_max to %d: %s", direction, cap, err)
        self._old.clear()
