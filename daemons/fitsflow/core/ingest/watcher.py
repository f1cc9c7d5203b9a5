"""Finds files in a staging tree by every means, because each alone loses files:

- inotify (inotify_simple) on every directory: IN_CREATE (a hard link gives no
  IN_CLOSE_WRITE), IN_MOVED_TO, IN_CLOSE_WRITE; new subdirectories are watched as they
  appear and scanned (files may land before the watch);
- a full scan at start-up, a periodic rescan, and a full rescan on IN_Q_OVERFLOW.

Every path found goes to ``found(path)``; the same path found twice is the consumer's
business (the ingester handles each path once).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable

from inotify_simple import INotify, flags

from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.handoff import TEMP_PREFIX
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)
WATCH = flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.DELETE_SELF | flags.MOVE_SELF


class StagingWatcher:
    """Role: watch ``root`` recursively and report regular files."""

    def __init__(self, root: Path, found: Callable[[Path], None], rescan_s: float, *, spawn: Spawn) -> None:
        self._spawn = spawn
        self.root = Path(root)
        self.found = found
        self.rescan_s = rescan_s
        self._inotify: INotify | None = None
        self._dirs: dict[int, Path] = {}
        self._task: asyncio.Task[None] | None = None
        self.overflows = 0
        self.scans = 0
        self.events = 0

    async def start(self) -> None:
        self._inotify = INotify()
        self._watch_tree(self.root)
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._readable)
        self.scan()  # whatever arrived while nobody was watching
        self._task = self._spawn(self._rescans(), f"rescan {self.root}", forever=True)

    async def stop(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        await cancel_and_wait(self._task)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def scan(self, top: Path | None = None) -> int:
        """Report every file under ``top`` (default: the whole tree); returns how many."""
        self.scans += 1
        n = 0
        for dirpath, dirnames, filenames in os.walk(top or self.root):
            d = Path(dirpath)
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    self.found(d / name)
                    n += 1
            for sub in list(dirnames):
                if (d / sub).is_symlink():  # not followed: reported, so the ingester quarantines it
                    dirnames.remove(sub)
                    self.found(d / sub)
                    n += 1
                elif self._inotify is not None:  # directories made between watch and scan
                    self._add_watch(d / sub)
        return n

    def _watch_tree(self, top: Path) -> None:
        for dirpath, _dirnames, _files in os.walk(top):
            self._add_watch(Path(dirpath))

    def _add_watch(self, path: Path) -> None:
        assert self._inotify is not None
        if path in self._dirs.values() or path.is_symlink():
            return
        try:
            wd = self._inotify.add_watch(path, WATCH)
        except OSError as exc:  # vanished, or out of watches (fs.inotify.max_user_watches)
            _log.warning("cannot watch %s: %s; the periodic rescan covers it", path, exc)
            return
        self._dirs[wd] = path

    def _readable(self) -> None:
        assert self._inotify is not None
        for ev in self._inotify.read(timeout=0):
            self.events += 1
            if ev.mask & flags.Q_OVERFLOW:
                self.overflows += 1
                _log.warning("inotify queue overflowed under %s: events were lost; full rescan", self.root)
                self.scan()
                continue
            if ev.mask & flags.IGNORED:
                self._dirs.pop(ev.wd, None)
                continue
            parent = self._dirs.get(ev.wd)
            if parent is None or not ev.name:
                continue
            path = parent / ev.name
            if ev.mask & flags.ISDIR:
                if ev.mask & (flags.CREATE | flags.MOVED_TO):
                    self._add_watch(path)
                    self.scan(path)  # files may have landed before the watch existed
            elif not ev.name.startswith(TEMP_PREFIX):
                self.found(path)

    async def _rescans(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_s)
            self.scan()
