"""Cache management for the OODS: expire files older than a configured age from the
repository and the registry, never protected ones, never one being ingested; remove
directories left empty."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Callable

from fitsflow.core.runtime import cancel_and_wait
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.layout import inside
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)


class CacheCleaner:
    """Role: every ``interval_s``, expire entries ingested more than ``max_age_s`` ago."""

    def __init__(self, repo: Path, registry: Registry, max_age_s: float, interval_s: float,
                 busy: Callable[[], set[Path]], *, spawn: Spawn) -> None:
        self._spawn = spawn
        self.repo = Path(repo)
        self.registry = registry
        self.max_age_s = max_age_s
        self.interval_s = interval_s
        self.busy = busy
        self.expired = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = self._spawn(self._run(), "oods cleaner", forever=True)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.clean_once()
            except Exception:  # noqa: BLE001 - a cleanup failure must not stop ingestion
                _log.exception("cache cleaning failed; trying again in %.0f s", self.interval_s)

    async def clean_once(self) -> int:
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self.max_age_s)
        entries = await asyncio.to_thread(self.registry.expired, cutoff)
        busy = {p.resolve() for p in self.busy()}
        done = 0
        for entry in entries:
            path = inside(self.repo, entry.path)
            if path in busy:
                continue
            await asyncio.to_thread(self._expire, path, entry.data_id)
            done += 1
        if done:
            _log.info("expired %d files older than %.1f days", done, self.max_age_s / 86400)
        await asyncio.to_thread(self._remove_empty_dirs)
        self.expired += done
        return done

    def _expire(self, path: Path, data_id: dict) -> None:
        # Registry first: a reader never finds a registered file missing.
        self.registry.remove(data_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _remove_empty_dirs(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.repo, topdown=False):
            d = Path(dirpath)
            if d != self.repo and not dirnames and not filenames:
                try:
                    d.rmdir()
                except OSError:
                    pass  # something arrived meanwhile
