"""Role: wake the forwarder the moment an image header lands in the header store.

The header service renames each header into ``paths.headers`` and then announces it
(HEADER_READY). On one host, inotify (inotify_simple) sees the rename a message hop earlier:
an outbox commit, the broker's persistent store and receipt, the dispatch — 5-8 ms on an
idle pipeline, more on a busy one, and the header is usually the last thing a forwarder
waits for. The messages stay the way of record: a header store on another host (NFS gives no
inotify events), a watch that cannot be made, a lost event — the forwarder then wakes on
HEADER_READY or its periodic pass, as before. A watch is only ever a shortcut.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from inotify_simple import INotify, flags

from fitsflow.core.handoff import TEMP_PREFIX

_log = logging.getLogger(__name__)
#: A header arrives by rename (core.handoff.atomic_writer); a copy by hand closes a write.
WATCH = flags.MOVED_TO | flags.CLOSE_WRITE | flags.DELETE_SELF | flags.MOVE_SELF


class HeaderWatch:
    """Calls ``wake()`` when a header (``*.json``) appears in ``root``."""

    def __init__(self, root: Path, wake: Callable[[], None]) -> None:
        self.root = Path(root)
        self.wake = wake
        self._inotify: INotify | None = None
        self._told_why = ""
        #: headers seen arriving (for tests and status)
        self.seen = 0

    @property
    def watching(self) -> bool:
        return self._inotify is not None

    async def start(self) -> None:
        self.ensure()

    async def stop(self) -> None:
        self._close()

    def ensure(self) -> None:
        """Watch ``root`` if not watching yet (it may not exist at start, or have been
        replaced): called at start and from the forwarder's periodic pass."""
        if self._inotify is not None:
            return
        inotify = INotify()
        try:
            inotify.add_watch(self.root, WATCH)
        except OSError as exc:  # missing, or out of watches (fs.inotify.max_user_watches)
            inotify.close()
            why = f"{exc.strerror or exc}"
            if why != self._told_why:  # once per reason, not every pass
                _log.info("not watching %s for headers (%s); HEADER_READY messages wake the forwarder",
                          self.root, why)
                self._told_why = why
            return
        self._inotify = inotify
        self._told_why = ""
        asyncio.get_running_loop().add_reader(inotify.fileno(), self._readable)

    def _close(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None

    def _readable(self) -> None:
        assert self._inotify is not None
        arrived = False
        for ev in self._inotify.read(timeout=0):
            if ev.mask & (flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF):
                self._close()  # the directory went away: watched again by the next ensure()
                break
            if ev.mask & flags.Q_OVERFLOW or (ev.name.endswith(".json") and not ev.name.startswith(TEMP_PREFIX)):
                arrived = True
                self.seen += 1
        if arrived:
            self.wake()
