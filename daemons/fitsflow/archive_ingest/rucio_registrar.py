"""Role of the archive ingest (``[rucio] enabled``): every archived file registered in Rucio.

The work list is the site database (archive_ingest/rucio_book.py): archived files without a
registration are taken on (their adler32 as carried from the write, recorded as pending; the
file is read only for an md5 if ``[rucio] md5``, or for an adler32 nobody carried), pending registrations are sent to Rucio in batches, and each confirmed one is
announced (IMAGE_IN_RUCIO) and marked registered. Everything Rucio is asked is idempotent:

- the file DID and its replica on the site's RSE (``add_replicas``, the archive's own path:
  nothing is copied). If Rucio has the name already, its size and checksums are compared:
  the same is a registration done earlier (a crash before the book's commit); different is a
  **conflict**: set aside, announced with status 1 and a panic, never overwritten;
- the container per instrument, the dataset per night and its attachment, each made once;
- the site's replication rules per dataset ("2 copies on BASE|USDF").

A Rucio that does not answer (or refuses: wrong account, unknown RSE or scope) is a fault of
the site, not of a file: the registrations stay pending, the daemon shows ALARM with Rucio's
answer, retries with back-off, and completes by itself once Rucio answers. Archiving itself
never waits for Rucio.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

from sqlalchemy.exc import SQLAlchemyError

from fitsflow.archive_ingest.rucio_book import Registration, RucioBook
from fitsflow.archive_ingest.rucio_config import RucioConfig
from fitsflow.core.bus import MessageBus
from fitsflow.core.checksum import file_adler32_md5, file_crc32_adler32
from fitsflow.core.config import read_credentials
from fitsflow.core.faults import FaultEpisodes, is_environmental, retry_delay
from fitsflow.core.messages import make
from fitsflow.core.tasks import Spawn

_log = logging.getLogger(__name__)
RUCIO_FAULT = "rucio"
#: The client logs each failed request as an ERROR, three per attempt during an outage; the
#: registrar's fault episode says it once (ALARM, with Rucio's answer) and when it clears.
_CLIENT_LOG = logging.getLogger("fitsflow.rucio.client")
_CLIENT_LOG.setLevel(logging.CRITICAL)
#: how often the book is looked at without a wake-up (files archived by another instance)
POLL_S = 10.0
#: how often the whole archive is searched for files without a registration; in between only
#: files archived since the last one taken on are (an archive of years is millions of rows)
FULL_SCAN_S = 3600.0


class RucioUnavailable(Exception):
    """Rucio did not answer, or refused a request that does not depend on the file."""


def make_client(cfg: RucioConfig) -> Any:
    """A rucio.client.Client from ``[rucio]`` (imported here: only archive hosts need it)."""
    from rucio.client import Client

    assert cfg.credentials_file is not None  # checked by RucioConfig.validate
    username, password = read_credentials(cfg.credentials_file)
    return Client(rucio_host=cfg.url, auth_host=cfg.auth_url or cfg.url, account=cfg.account,
                  auth_type=cfg.auth_type, creds={"username": username, "password": password},
                  ca_cert=cfg.ca_cert or None, timeout=int(cfg.timeout_s), logger=_CLIENT_LOG)


class RucioCatalogue:
    """The Rucio side, blocking (the registrar calls it from a worker thread)."""

    def __init__(self, cfg: RucioConfig, repo: Path, client_factory: Callable[[RucioConfig], Any] = make_client):
        self.cfg = cfg
        self.repo = repo
        self._factory = client_factory
        self._client: Any = None
        #: datasets made, attached and given their rules by this process
        self._datasets: set[tuple[str, str]] = set()

    def _rucio(self) -> Any:
        if self._client is None:
            self._client = self._factory(self.cfg)
        return self._client

    def register(self, regs: list[Registration]) -> tuple[list[Registration], list[tuple[Registration, str]]]:
        """(registered, conflicts with their reason); raises RucioUnavailable."""
        from rucio.common import exception as rex

        try:
            for scope, container, dataset in sorted({(r.scope, r.container, r.dataset) for r in regs}):
                self._ensure_dataset(scope, container, dataset)
            done, conflicts = self._add_replicas(regs)
            by_dataset: dict[tuple[str, str], list[dict[str, str]]] = {}
            for r in done:
                by_dataset.setdefault((r.scope, r.dataset), []).append({"scope": r.scope, "name": r.name})
            if by_dataset:
                self._rucio().attach_dids_to_dids([{"scope": s, "name": d, "dids": dids}
                                                   for (s, d), dids in by_dataset.items()], ignore_duplicate=True)
        except rex.RucioException as exc:
            self._client = None  # a new session (token) at the next attempt
            raise RucioUnavailable(f"{type(exc).__name__}: {exc}") from None
        except (OSError, ValueError) as exc:  # requests' connection errors are OSErrors
            self._client = None
            raise RucioUnavailable(f"{type(exc).__name__}: {exc}") from None
        return done, conflicts

    def _file(self, r: Registration) -> dict[str, Any]:
        # md5 only when we have one: Rucio's schema refuses a null
        return {"scope": r.scope, "name": r.name, "bytes": r.size, "adler32": r.adler32,
                "pfn": f"file://{(self.repo / r.path).as_posix()}", **({"md5": r.md5} if r.md5 else {})}

    def _add_replicas(self, regs: list[Registration]) -> tuple[list[Registration], list[tuple[Registration, str]]]:
        """Add the replicas, then compare what Rucio holds under each name with the file:
        Rucio (41) answers an add of an existing name with success and keeps what it had,
        whatever checksums were sent, so the answer alone cannot tell a repeat from a conflict."""
        c = self._rucio()
        c.add_replicas(rse=self.cfg.rse, files=[self._file(r) for r in regs])
        held = {(m["scope"], m["name"]): m for m in c.get_metadata_bulk(
            [{"scope": r.scope, "name": r.name} for r in regs])}
        done: list[Registration] = []
        conflicts: list[tuple[Registration, str]] = []
        for r in regs:
            m = held.get((r.scope, r.name), {})
            theirs = (m.get("bytes"), m.get("adler32"), m.get("md5"))
            # without an md5 of ours, Rucio's (if any) cannot be compared: size and adler32 are
            if theirs[:2] == (r.size, r.adler32) and (not r.md5 or theirs[2] == r.md5):
                done.append(r)
            else:
                conflicts.append((r, f"Rucio has {r.did} with size {theirs[0]}, adler32 {theirs[1]}, md5 {theirs[2]}; "
                                     f"the archived file has {r.size}, {r.adler32}, {r.md5}"))
        return done, conflicts

    def _ensure_dataset(self, scope: str, container: str, dataset: str) -> None:
        from rucio.common import exception as rex

        if (scope, dataset) in self._datasets:
            return
        c = self._rucio()
        for add, name in ((c.add_container, container), (c.add_dataset, dataset)):
            try:
                add(scope, name)
            except rex.DataIdentifierAlreadyExists:
                pass
        c.attach_dids_to_dids([{"scope": scope, "name": container, "dids": [{"scope": scope, "name": dataset}]}],
                              ignore_duplicate=True)
        for rule in self.cfg.rules:
            try:
                c.add_replication_rule([{"scope": scope, "name": dataset}], rule.copies, rule.rse_expression,
                                       lifetime=int(rule.lifetime_days * 86400) or None,
                                       comment="fitsflow: the site's rule for every dataset")
            except rex.DuplicateRule:
                pass
        self._datasets.add((scope, dataset))


class RucioRegistrar:
    """See the module docstring."""

    def __init__(self, cfg: RucioConfig, book: RucioBook, repo: Path, bus: MessageBus, *, ident: str,
                 faults: FaultEpisodes, spawn: Spawn, panic: Callable[[str], Any],
                 catalogue: RucioCatalogue | None = None) -> None:
        self.cfg = cfg
        self.book = book
        self.repo = repo
        self.bus = bus
        self.ident = ident
        self.faults = faults
        self._spawn = spawn
        self._panic = panic
        self.catalogue = catalogue or RucioCatalogue(cfg, repo)
        self._wake = asyncio.Event()
        #: the last archived file taken on (archive_files.id), and when the archive was last
        #: searched in full; None: not yet since start
        self._taken_to = 0
        self._full_scan_at: float | None = None
        #: (instrument, obs_day, image) → the image's place in its night (for {block})
        self._ranks: dict[tuple[str, str, str], int] = {}
        #: since start: registered, set aside, files read for their checksums
        self.registered = self.conflicts = self.summed = 0

    async def start(self) -> None:
        self._spawn(self._run(), "rucio registrar", forever=True)

    async def stop(self) -> None:
        pass  # its task belongs to the daemon's supervisor

    def wake(self) -> None:
        """A file was archived: look at the book now rather than at the next poll."""
        self._wake.set()

    def status(self) -> str:
        fault = self.faults.active.get(RUCIO_FAULT)
        return (f"Rucio: {self.registered} registered, {self.conflicts} set aside"
                + (f", waiting for Rucio: {fault.detail}" if fault else ""))

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                more = await self.step()
            except RucioUnavailable as exc:
                failures += 1
                self.faults.report(RUCIO_FAULT, str(exc)[:500])
                await asyncio.sleep(min(retry_delay(failures), self.cfg.retry_max_s))
                continue
            except (OSError, SQLAlchemyError) as exc:
                if not is_environmental(exc):
                    raise
                failures += 1
                self.faults.report(RUCIO_FAULT, f"the Rucio book: {exc}"[:500])
                await asyncio.sleep(min(retry_delay(failures), self.cfg.retry_max_s))
                continue
            if failures:
                failures = 0
                self.faults.clear(RUCIO_FAULT)
            if not more:
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                except TimeoutError:
                    pass

    async def step(self) -> bool:
        """Take new archived files on and register one batch; True if more may be waiting."""
        batch = self.cfg.batch
        now = asyncio.get_running_loop().time()
        if self._full_scan_at is None or now - self._full_scan_at >= FULL_SCAN_S:
            self._taken_to, self._full_scan_at = 0, now
        new = await asyncio.to_thread(self.book.unregistered, batch, self._taken_to)
        if new:
            self._taken_to = max(self._taken_to, max(f.file_id for f in new))
            for reg, why in await asyncio.to_thread(self._take_on, new):
                await self._set_aside(reg, why)
        retake = await asyncio.to_thread(self.book.in_state, "retake", batch)
        if retake:
            for reg, why in await asyncio.to_thread(self._resum, retake):
                await self._set_aside(reg, why)
        pending = await asyncio.to_thread(self.book.pending, batch)
        if not pending:
            return len(new) == batch
        done, conflicts = await asyncio.to_thread(self.catalogue.register, pending)
        for reg in done:
            await self._announce(reg, 0, "registered")
        if done:
            await asyncio.to_thread(self.book.set_state, [r.file_id for r in done], "registered")
            self.registered += len(done)
        for reg, why in conflicts:
            await self._set_aside(reg, why)
        return len(new) == batch or len(pending) == batch

    def _take_on(self, new: Iterable[Any]) -> list[Registration]:
        """Archived files with their checksums and Rucio names, recorded pending; returns
        those set aside (recorded in conflict): the file is gone from the archive, or differs
        from what its writer summed."""
        rows, problems = [], []
        for f in new:
            scope, container, dataset = self.cfg.names(f.data_id, self._rank(f.data_id))
            reg = Registration(f.file_id, scope, container=container, dataset=dataset, size=f.size,
                               adler32=f.adler32 or "0" * 8, md5="", state="pending", path=f.path,
                               data_id=f.data_id, name=Path(f.path).name)
            problem = self._sum(reg, carried=f.adler32)
            if problem:
                reg.state = "conflict"
                problems.append((reg, problem))
            rows.append(reg)
        self.book.start(rows)
        return problems

    def _rank(self, data_id: dict[str, Any]) -> int:
        if not self.cfg.dataset_images:
            return 0
        key = (data_id["instrument"], data_id["obs_day"], data_id["image"])
        if key not in self._ranks:
            if len(self._ranks) > 10000:
                self._ranks.clear()  # bounded; a rank is the same when asked again
            self._ranks[key] = self.book.image_rank(*key)
        return self._ranks[key]

    def _resum(self, rows: list[Registration]) -> list[tuple[Registration, str]]:
        """Registrations a person asked for again: their checksums read again, then pending;
        returns those set aside again."""
        problems = []
        for r in rows:
            problem = self._sum(r, carried=None)
            r.state = "conflict" if problem else "pending"
            if problem:
                problems.append((r, problem))
        self.book.set_sums(rows)
        return problems

    def _sum(self, reg: Registration, carried: str | None) -> str | None:
        """Fill ``reg``'s checksums: the carried adler32 as it is (no read: the file is the
        one its writer summed, checked by CRC-32 when it was archived), unless md5 is wanted
        or nothing was carried (one read). Returns why it cannot be registered, or None."""
        path = self.repo / reg.path
        try:
            if carried and not self.cfg.md5:
                size = path.stat().st_size
                if size != reg.size:
                    return f"{path} has {size} bytes, {reg.size} archived"
                return None
            if self.cfg.md5:
                reg.adler32, reg.md5 = file_adler32_md5(path)
            else:
                reg.adler32, reg.md5 = file_crc32_adler32(path)[1], ""
            self.summed += 1
        except FileNotFoundError:
            return f"{path} is gone from the archive"
        if carried and reg.adler32 != carried:
            return f"{path} has adler32 {reg.adler32}, its writer summed {carried}: changed since it was archived"
        return None

    async def _set_aside(self, reg: Registration, why: str) -> None:
        _log.error("%s: %s not registered in Rucio: %s", self.ident, reg.did, why, extra={"IMAGE": reg.data_id["image"]})
        await self._announce(reg, 1, why)
        await self._panic(f"archived file {self.repo / reg.path} not registered in Rucio: {why}")
        await asyncio.to_thread(self.book.set_state, [reg.file_id], "conflict", why)
        self.conflicts += 1

    async def _announce(self, reg: Registration, status: int, description: str) -> None:
        await self.bus.send(make("IMAGE_IN_RUCIO", reg.data_id["image"], status=status,
                                 description=description[:2000], path=str(self.repo / reg.path), did=reg.did,
                                 dataset=f"{reg.scope}:{reg.dataset}", rse=self.cfg.rse, adler32=reg.adler32,
                                 size=reg.size, data_id=reg.data_id, sender=self.ident,
                                 **({"md5": reg.md5} if reg.md5 else {})))
