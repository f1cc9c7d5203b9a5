"""Faults of the machine are episodes, not poison.

A full disk, a directory made unwritable, a read-only remount, an I/O error: none of them is
a defect of the message or file being handled, and all of them pass (someone frees space,
fixes a mode). The work waits and is retried with back-off; the daemon says ALARM with the
cause (STATUS=, DAEMON_STATE); a person hears once per episode — one ALERT and one panic
when it starts, one ALERT when it clears — and never one mail per file; when the fault
clears, everything completes by itself.

:func:`is_environmental` tells such an error from a defect; :class:`FaultEpisodes` keeps the
episodes of one daemon.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from fitsflow.core.errors import FitsflowError
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)

#: errno values of the machine, not of the input: retried, never dead-lettered.
ENVIRONMENTAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EPERM, errno.EACCES, errno.EROFS, errno.EIO,
                                  errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENODEV, errno.ESTALE,
                                  errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY})


#: What SQLite says when its file system is full, read-only or failing.
_SQLITE_ENVIRONMENTAL = ("disk is full", "disk i/o error", "readonly database", "unable to open database",
                         "database is locked")


class MachineFault(FitsflowError):
    """Work that cannot be done now because of the machine (e.g. no broker and no disk to keep
    a message on): the caller waits and retries, like an ENOSPC."""


def is_environmental(exc: BaseException | None) -> bool:
    """An error caused by the machine (full, unwritable, failing storage; also as SQLite or
    SQLAlchemy report it), as opposed to one that says the input is wrong (ENOENT of a path
    a message named, EXDEV, EEXIST...)."""
    while exc is not None:
        if isinstance(exc, MachineFault):
            return True
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENTAL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.OperationalError) and any(t in str(exc).lower() for t in _SQLITE_ENVIRONMENTAL):
            return True
        exc = exc.__cause__ or getattr(exc, "orig", None)
    return False


def retry_delay(attempt: int, first: float = 1.0, cap: float = 30.0) -> float:
    """Back-off for work waiting on a fault: 1, 2, 4 … 30 s."""
    return min(cap, first * 2 ** max(0, attempt - 1))


@dataclass
class Episode:
    condition: str
    detail: str
    since: float
    count: int = 1


#: notify(condition, detail, started): tell people that an episode started (or, started
#: False, cleared).
Notify = Callable[[str, str, bool], Awaitable[None]]


class FaultEpisodes:
    """The open fault episodes of one daemon, by condition (e.g. ``"raw buffer store"``)."""

    def __init__(self, owner: str, notify: Notify, spawn: Spawn) -> None:
        self.owner = owner
        self.notify = notify
        self.spawn = spawn
        self.active: dict[str, Episode] = {}
        self.episodes = 0

    def report(self, condition: str, detail: str) -> int:
        """The fault happened (again); returns how often in this episode (for back-off)."""
        ep = self.active.get(condition)
        if ep is not None:
            ep.count += 1
            ep.detail = detail
            return ep.count
        self.active[condition] = Episode(condition, detail, time.time())
        self.episodes += 1
        _log.error("%s: ALARM: %s: %s (work waits and is retried until it clears)", self.owner, condition, detail)
        self.spawn(self.notify(condition, detail, True), f"fault {condition}")
        return 1

    def clear(self, condition: str) -> None:
        """The work that failed succeeded: the episode (if any) is over."""
        ep = self.active.pop(condition, None)
        if ep is None:
            return
        detail = f"cleared after {time.time() - ep.since:.0f} s and {ep.count} failed attempts"
        _log.warning("%s: %s: %s", self.owner, condition, detail)
        self.spawn(self.notify(condition, detail, False), f"fault {condition} cleared")

    def describe(self) -> str:
        """For STATUS=: every open episode, or '' when there is none."""
        return "; ".join(f"ALARM {e.condition}: {e.detail} (since {time.strftime('%H:%M:%S', time.localtime(e.since))}"
                         f", {e.count}x)" for e in self.active.values())
