"""The message bus every daemon uses: durable sends with failover and an outbox, and
subscriptions whose acks follow the handler's outcome.

Sending (:meth:`MessageBus.send`)
    Goes to the first connected broker of the configured list, persistent, with a receipt.
    No receipt in time, or no broker up, or older messages still waiting: the message goes
    to the local outbox (SQLite, fsynced) and a flusher sends it, in order, when a broker is
    back. ``send`` therefore returns quickly and never loses an accepted message. A receipt
    that was lost in flight can make a message arrive twice; consumers drop the second copy
    by message id.

Receiving (:meth:`MessageBus.subscribe`)
    Subscribes on every configured broker (load-shared brokers do not forward to each other)
    with client-individual acks. The handler is awaited; the outcome decides the ack, in one
    place (:meth:`MessageBus._handle`):

    - normal return: id recorded as processed, then acked;
    - :class:`Requeue`: kept unacked, handled again after its delay (not counted);
    - :class:`Reject` or an undecodable body: sent to ``/queue/DLQ.<destination>`` with the
      reason in headers, then acked;
    - a fault of the machine (core.faults: a full disk, an unwritable directory): retried
      with back-off for as long as it lasts, never dead-lettered, reported through
      ``on_fault`` (the daemon's ALARM episode) and cleared by the next success;
    - any other exception: logged with its traceback, counted (durably), retried with
      exponential back-off; at ``max_attempts`` it is dead-lettered. Consumption goes on.

    ActiveMQ treats a STOMP NACK as a poison ack (straight to its DLQ, no redelivery), so
    retries are driven here, not by NACK; while a message waits for its retry it stays
    unacked, so a crash hands it back to the broker and the attempt count survives on disk.

Refusals
    A broker that refuses a send or a subscription (its authorization map does not let this
    identity write or read there) will not change its mind by itself: the message is kept in
    the store's ``refused`` table (back into the outbox at the next start), the refusal is
    logged and reported once per destination through ``on_refused`` (daemons raise a panic),
    and everything else carries on.

Connections
    One task per broker reconnects with capped exponential back-off and jitter, re-subscribes,
    and relies on STOMP heart-beats to notice a silent broker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import socket
import sqlite3
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Mapping

from fitsflow.core.aio import wait_event, wait_for
from fitsflow.core.bus.link import BrokerLink, Frame, LinkCallbacks, Subscription
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import BusConfig, Config
from fitsflow.core.errors import Disconnected, MessageError, Refused, Reject, Requeue, Retry
from fitsflow.core.faults import MachineFault, is_environmental, retry_delay
from fitsflow.core.messages import Message, decode, destination_of
from fitsflow.core.tasks import TaskSupervisor

_log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
#: Called after a message was dead-lettered: (destination, reason, message or None).
DeadLetterHook = Callable[[str, str, "Message | None"], Awaitable[None]]
#: Called once per destination the broker refuses: (destination, "send"|"subscribe", reason).
RefusedHook = Callable[[str, str, str], Awaitable[None]]

#: Headers the broker sets on delivery; they are not copied to a dead-lettered message.
_DELIVERY_HEADERS = {"message-id", "destination", "subscription", "ack", "redelivered", "expires",
                     "priority", "timestamp", "content-length"}
PROCESSED_RETENTION_S = 7 * 86400
#: The fault condition of a bus whose store (outbox, processed ids) cannot be written.
STORE_FAULT = "bus store"


def dlq_for(destination: str) -> str:
    """``/queue/fitsflow.x`` → ``/queue/DLQ.fitsflow.x`` (ActiveMQ's individual-DLQ naming)."""
    name = destination.split("/", 2)[-1]
    return f"/queue/DLQ.{name}"


@dataclass
class BusStats:
    """Counters of every outcome; daemons expose them in STATUS= and metrics."""

    sent: int = 0
    outboxed: int = 0
    flushed: int = 0
    received: int = 0
    handled: int = 0
    duplicates: int = 0
    requeued: int = 0
    failures: int = 0
    dead_lettered: int = 0
    refused: int = 0
    stale: int = 0
    connects: int = 0
    disconnects: int = 0


@dataclass
class _Delivery:
    link: BrokerLink
    generation: int
    frame: Frame


@dataclass
class _Sub:
    key: str
    destination: str
    handler: Handler
    selector: str | None
    durable: bool
    concurrency: int
    queue: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    busy: int = 0


class MessageBus:
    """See the module docstring. Create with :meth:`from_config` (or with links, in tests),
    ``subscribe`` what the daemon consumes, ``await start()``, and ``await stop()`` at the end."""

    def __init__(self, cfg: BusConfig, name: str, store: BusStore, links: list[BrokerLink], *,
                 on_dead_letter: DeadLetterHook | None = None, on_refused: RefusedHook | None = None) -> None:
        if not links:
            raise ValueError("a bus needs at least one broker link")
        self.cfg = cfg
        self.name = name
        self.store = store
        self.links = links
        self.stats = BusStats()
        self.on_dead_letter = on_dead_letter
        self.on_refused = on_refused
        self._refusals_reported: set[tuple[str, str]] = set()
        requeued = store.requeue_refused()
        if requeued:
            _log.warning("%s: %d message(s) refused by the broker earlier are tried again", name, requeued)
        self._subs: dict[str, _Sub] = {}
        #: The bus's own tasks (connections, outbox, consumers): if one dies the daemon ends.
        self.tasks = TaskSupervisor(f"bus {name}")
        #: (subscription, message id) → when it was first requeued (Requeue.give_up_after_s)
        self._waiting_since: dict[tuple[str, str], float] = {}
        #: (subscription, message id) → attempts that met a fault of the machine (back-off)
        self._waiting_faults: dict[tuple[str, str], int] = {}
        self._faulted: set[str] = set()
        #: on_fault(condition, detail) / on_fault_cleared(condition): a handler met a fault of
        #: the machine / a later message of that subscription went through (the daemon's
        #: fault episodes, core.faults)
        self.on_fault: Callable[[str, str], object] | None = None
        self.on_fault_cleared: Callable[[str], None] | None = None
        self._link_down: dict[int, asyncio.Event] = {}
        self._any_up = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._outbox_count = store.outbox_size()
        #: outbox entries being sent directly by send_raw (the flusher leaves them alone)
        self._inflight: set[int] = set()
        #: loop time (monotonic) of the latest (re)connection: what was published while this
        #: bus was away, on topics it does not hold durably, it never heard
        self.last_connected_at: float | None = None
        #: links whose subscriptions the broker has confirmed since their latest connect
        self._subscribed: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._consuming = False

    @classmethod
    def from_config(cls, cfg: Config, name: str, **kwargs: object) -> MessageBus:
        """A bus over STOMP links to the configured brokers, its store in site.state_dir."""
        from fitsflow.core.bus.stomp_link import StompLink  # the only route to stomp.py

        links: list[BrokerLink] = list(StompLink.for_brokers(cfg.bus))
        store = BusStore(Path(cfg.site.state_dir) / f"{name}.bus.sqlite")
        return cls(cfg.bus, name, store, links, **kwargs)  # type: ignore[arg-type]

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, consume: bool = True) -> None:
        """Start connecting (in the background) and flushing the outbox; returns at once.

        With ``consume=False`` messages are received but no handler runs until
        :meth:`start_consuming`: a daemon can send (and finish its recovery) before its
        handlers see anything."""
        self._loop = asyncio.get_running_loop()
        for link in self.links:
            link.callbacks = LinkCallbacks(self._on_message_threadsafe, self._on_disconnected_threadsafe)
            self.tasks.spawn(self._maintain(link), f"link {link.url}", forever=True)
        self.tasks.spawn(self._flush_outbox(), "outbox", forever=True)
        self.tasks.spawn(self._housekeeping(), "housekeeping", forever=True)
        if consume:
            self.start_consuming()

    def start_consuming(self) -> None:
        """Run the handlers of every subscription (and of later ones)."""
        self._consuming = True
        for sub in self._subs.values():
            if not sub.workers:
                self._start_workers(sub)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until at least one broker is connected; False on timeout."""
        return await wait_event(self._any_up, timeout)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop consuming, let busy handlers finish (up to ``grace_s``), try one last outbox
        flush, disconnect. A handler cut off is not acked: the broker hands it out again."""
        self._stopping = True
        busy_deadline = asyncio.get_running_loop().time() + grace_s
        while any(s.busy for s in self._subs.values()) and asyncio.get_running_loop().time() < busy_deadline:
            await asyncio.sleep(0.02)
        await self.tasks.close()
        if self._outbox_count:
            await self._flush_once()
        for link in self.links:
            link.callbacks = None  # nothing may call into this bus once its loop is gone
            await asyncio.to_thread(link.close)
        self._loop = None
        if self._outbox_count:
            _log.warning("%s: %d message(s) stay in the outbox %s until the next start",
                         self.name, self._outbox_count, self.store.path)
        self.store.close()

    @property
    def connected_brokers(self) -> list[str]:
        return [link.url for link in self.links if link.connected]

    @property
    def listening(self) -> bool:
        """True while at least one broker connection has every subscription confirmed: a
        connection that is up but still subscribing hears nothing yet."""
        return bool(self._subscribed)

    @property
    def outbox_size(self) -> int:
        """Messages waiting in the outbox for a broker (not those in flight right now)."""
        return self._waiting()

    def describe(self) -> str:
        """One line for STATUS=: brokers up, outbox, outcome counters."""
        s = self.stats
        return (f"brokers {len(self.connected_brokers)}/{len(self.links)}, outbox {self._waiting()}, "
                f"handled {s.handled}, retried {s.failures}, dead-lettered {s.dead_lettered}"
                + (f", refused {s.refused}" if s.refused else ""))

    # -- sending -----------------------------------------------------------------------

    async def send(self, msg: Message, destination: str | None = None) -> None:
        """Send a message durably (see the module docstring). ``destination`` is needed for
        catalogue entries with a template destination (``/queue/fitsflow.forwarder.{forwarder}``)."""
        await self.send_raw(destination or destination_of(msg.type), msg.encode(), msg.headers())

    async def send_raw(self, destination: str, body: str, headers: Mapping[str, str]) -> None:
        """Send a body as it is (dead-lettering and re-injection use this).

        Write-ahead: the message is in the outbox (fsynced) before it goes on the wire, and
        leaves it once the broker's receipt came. A crash at any instant — before the send,
        while the receipt is awaited — leaves it in the outbox, and the next start sends it
        (perhaps a second time; consumers drop the copy by id). Nothing a daemon decided to
        announce can be lost."""
        self.stats.sent += 1
        older_waiting = self._waiting()
        try:
            seq = self.store.outbox_put(destination, headers, body)
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            await self._send_without_outbox(destination, body, headers, exc)
            return
        if STORE_FAULT in self._faulted:
            self._faulted.discard(STORE_FAULT)
            if self.on_fault_cleared is not None:
                self.on_fault_cleared(STORE_FAULT)
        self._outbox_count += 1
        link = self._producer_link()
        if link is None or older_waiting > 0:
            # no broker, or older messages queue: the flusher sends them in order
            self._note_outboxed(destination, headers, "no broker connected" if link is None else "outbox not empty")
            return
        self._inflight.add(seq)
        try:
            await wait_for(asyncio.wrap_future(link.send(destination, body, headers)), self.cfg.receipt_timeout_s)
        except Refused as exc:
            self.store.refuse(destination, headers, body, str(exc), seq=seq)
            self._outbox_count -= 1
            await self._refused(destination, "send", str(exc))
            return
        except (Disconnected, TimeoutError) as exc:
            self._note_outboxed(destination, headers, str(exc) or "no receipt in time")
            return
        finally:
            self._inflight.discard(seq)
        try:
            self.store.outbox_remove(seq)
        except sqlite3.Error as exc:  # stays: sent again later, a copy the consumers drop by id
            _log.warning("%s: sent message %s stays in the outbox: %s", self.name, headers.get("MsgId", "?"), exc)
            self._note_outboxed(destination, headers, "outbox not writable")
            return
        self._outbox_count -= 1

    async def _send_without_outbox(self, destination: str, body: str, headers: Mapping[str, str],
                                   exc: BaseException) -> None:
        """The outbox's disk is full or failing: send straight to a broker (its receipt is the
        only safety left) and say so; with no broker either, the caller's work must wait."""
        self._faulted.add(STORE_FAULT)
        if self.on_fault is not None:
            self.on_fault(STORE_FAULT, f"cannot keep messages on disk ({self.store.path}): {exc}; "
                                       "sending without the outbox")
        link = self._producer_link()
        try:
            if link is None:
                raise Disconnected("no broker connected")
            await wait_for(asyncio.wrap_future(link.send(destination, body, headers)), self.cfg.receipt_timeout_s)
        except (Disconnected, TimeoutError) as why:
            raise MachineFault(f"{self.name}: cannot send ({why or 'no receipt in time'}) and cannot keep the "
                               f"message in the outbox {self.store.path}: {exc}") from exc

    def _waiting(self) -> int:
        """Messages in the outbox that are not being sent directly right now."""
        return self._outbox_count - len(self._inflight)

    async def _refused(self, destination: str, what: str, reason: str) -> None:
        self.stats.refused += 1
        _log.error("%s: %s %s refused by the broker: %s", self.name, what, destination, reason)
        if (destination, what) in self._refusals_reported or self.on_refused is None:
            return
        self._refusals_reported.add((destination, what))
        try:
            await self.on_refused(destination, what, reason)
        except Exception:  # noqa: BLE001 - reporting must not break sending
            _log.exception("%s: refusal hook failed", self.name)

    def _producer_link(self) -> BrokerLink | None:
        return next((link for link in self.links if link.connected), None)

    def _note_outboxed(self, destination: str, headers: Mapping[str, str], why: str) -> None:
        """A message stays in the outbox for the flusher: count it, say so (sparingly), wake it."""
        self.stats.outboxed += 1
        if self._waiting() == 1 or self._waiting() % 1000 == 0:
            _log.warning("%s: %s; message %s to %s kept in the outbox (%d waiting)", self.name, why,
                         headers.get("MsgId", "?"), destination, self._waiting())
        self._outbox_wake.set()

    async def _flush_outbox(self) -> None:
        while True:
            await wait_event(self._outbox_wake, 1.0)
            self._outbox_wake.clear()
            self._recount_outbox()
            if self._waiting() > 0:
                await self._flush_once()

    def _recount_outbox(self) -> None:
        """Take the outbox's size from the disk again. The count kept in memory is exact as
        long as this bus is the outbox's only writer; when it is not — two instances of one
        daemon on shared state during a split brain, an operator's tool — a count that
        drifted below the rows there kept messages unsent for ever (seen in the HA lab)."""
        try:
            self._outbox_count = self.store.outbox_size()
        except sqlite3.Error as exc:  # a failing disk: keep counting in memory
            _log.debug("%s: outbox not counted: %s", self.name, exc)

    async def _flush_once(self) -> None:
        while self._waiting() > 0:
            link = self._producer_link()
            if link is None:
                return
            entries = [e for e in self.store.outbox_head(100 + len(self._inflight)) if e.seq not in self._inflight]
            if not entries:  # the count drifted (another process emptied it): resync
                self._recount_outbox()
                return
            for entry in entries:
                try:
                    await wait_for(asyncio.wrap_future(link.send(entry.destination, entry.body, entry.headers)),
                                           self.cfg.receipt_timeout_s)
                except Refused as exc:
                    self.store.refuse(entry.destination, entry.headers, entry.body, str(exc), seq=entry.seq)
                    self._outbox_count -= 1
                    await self._refused(entry.destination, "send", str(exc))
                    continue
                except (Disconnected, TimeoutError) as exc:
                    # (a TimeoutError says nothing by itself: an exception is truthy, its text empty)
                    _log.info("%s: outbox flush paused: %s", self.name,
                              str(exc) or f"no receipt within {self.cfg.receipt_timeout_s:g} s")
                    return
                self.store.outbox_remove(entry.seq)
                self._outbox_count -= 1
                self.stats.flushed += 1
            if not self._waiting():
                _log.info("%s: outbox flushed", self.name)

    # -- receiving ---------------------------------------------------------------------

    def subscribe(self, destination: str, handler: Handler, *, name: str | None = None,
                  selector: str | None = None, durable: bool = False, concurrency: int = 1) -> None:
        """Consume ``destination`` with ``handler``.

        ``name`` keys the subscription's processed ids and attempts (and its durable name:
        a durable subscription keeps messages while the daemon is away, so keep the name
        stable). ``concurrency`` handlers may run at once for this subscription.
        """
        key = name or destination.split("/", 2)[-1]
        if key in self._subs:
            raise ValueError(f"{self.name}: subscription {key!r} exists already")
        if durable and not destination.startswith("/topic/"):
            raise ValueError(f"{self.name}: durable subscriptions are for topics, not {destination}")
        sub = _Sub(key, destination, handler, selector, durable, max(1, concurrency))
        self._subs[key] = sub
        if self._loop is not None:
            if self._consuming:
                self._start_workers(sub)
            for link in self.links:
                if link.connected:
                    fut = self._subscribe_link(link, sub)
                    # A failure means the connection dropped; the reconnect subscribes again.
                    fut.add_done_callback(lambda f: f.exception())

    def _start_workers(self, sub: _Sub) -> None:
        sub.workers = [self.tasks.spawn(self._worker(sub), f"consumer {sub.key}/{i}", forever=True)
                       for i in range(sub.concurrency)]

    def _subscribe_link(self, link: BrokerLink, sub: _Sub) -> concurrent.futures.Future[None]:
        return link.subscribe(Subscription(id=sub.key, destination=sub.destination, selector=sub.selector,
                                    durable_name=sub.key if sub.durable else None, prefetch=self.cfg.prefetch))

    def _call_in_loop(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile: the bus is stopped
            pass

    def _on_message_threadsafe(self, link: BrokerLink, generation: int, frame: Frame) -> None:
        # Unacked if dropped here: the broker hands it out again.
        self._call_in_loop(self._route, _Delivery(link, generation, frame))

    def _route(self, item: _Delivery) -> None:
        sub = self._subs.get(item.frame.headers.get("subscription", ""))
        if sub is None:
            _log.error("%s: message for unknown subscription %r dropped unacked", self.name,
                       item.frame.headers.get("subscription"))
            return
        self.stats.received += 1
        sub.queue.put_nowait(item)

    async def _worker(self, sub: _Sub) -> None:
        failures = 0
        while True:
            item = await sub.queue.get()
            if self._stopping:
                continue  # left unacked: the broker hands it out again
            sub.busy += 1
            try:
                await self._handle(sub, item)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the bus's own books failed (e.g. its store's disk)
                # Not the handler (its outcomes are mapped in _handle): the message stays
                # unacked and is tried again later; the consumer goes on with the others.
                failures += 1
                _log.exception("%s: consuming %s failed outside the handler; the message is kept and tried "
                               "again", self.name, sub.key)
                self._retry_later(sub, item, min(self.cfg.retry_delay_s * 2 ** failures, 30.0))
            finally:
                sub.busy -= 1

    async def _handle(self, sub: _Sub, item: _Delivery) -> None:
        """Run the handler and map its outcome to ack / retry / dead-letter (the one place)."""
        if item.generation != item.link.generation or not item.link.connected:
            self.stats.stale += 1  # its connection is gone; the broker redelivers it
            return
        try:
            msg = decode(item.frame.body, item.frame.destination, item.frame.headers)
        except MessageError as exc:
            await self._dead_letter(sub, item, f"malformed message: {exc}", None, attempts=0)
            return
        if self.store.is_processed(sub.key, msg.id):
            self.stats.duplicates += 1
            self._ack(sub, item)
            return
        try:
            await sub.handler(msg)
        except Requeue as exc:
            self.stats.requeued += 1
            now = asyncio.get_running_loop().time()
            since = self._waiting_since.setdefault((sub.key, msg.id), now)
            if exc.give_up_after_s is not None and now - since >= exc.give_up_after_s:
                del self._waiting_since[(sub.key, msg.id)]
                await self._dead_letter(sub, item, f"still not possible after {now - since:.1f} s: {exc}", msg,
                                        attempts=1)
                return
            _log.debug("%s: %s %s requeued: %s", self.name, msg.type, msg.id, exc)
            self._retry_later(sub, item, exc.delay)
            return
        except Reject as exc:
            await self._dead_letter(sub, item, f"rejected by handler: {exc}", msg, attempts=1)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler bug: count, retry, then dead-letter
            if is_environmental(exc):
                # The machine (full disk, unwritable directory), not the message: it waits,
                # retried with back-off, never dead-lettered; the daemon shows ALARM meanwhile.
                self.stats.requeued += 1
                n = self._waiting_faults[(sub.key, msg.id)] = self._waiting_faults.get((sub.key, msg.id), 0) + 1
                self._faulted.add(sub.key)
                if self.on_fault is not None:
                    self.on_fault(f"handling {sub.destination}", f"{msg.type}{f' of {msg.image}' if msg.image else ''}: "
                                                                 f"{type(exc).__name__}: {exc}")
                self._retry_later(sub, item, retry_delay(n))
                return
            self.stats.failures += 1
            attempts = self.store.record_failure(sub.key, msg.id, f"{type(exc).__name__}: {exc}")
            expected = isinstance(exc, Retry)
            _log.log(logging.WARNING if expected else logging.ERROR,
                     "%s: handler of %s failed for %s%s (attempt %d/%d)%s", self.name, sub.key, msg.type, f" image {msg.image}" if msg.image else "", attempts,
                     self.cfg.max_attempts, f": {exc}" if expected else "", exc_info=not expected,
                     extra={"IMAGE": msg.image or "", "MSGTYPE": msg.type})
            if attempts >= self.cfg.max_attempts:
                reason = f"handler failed {attempts} times; last: {type(exc).__name__}: {exc}\n" \
                         + "".join(traceback.format_exception(exc)[-3:])
                await self._dead_letter(sub, item, reason, msg, attempts=attempts)
            else:
                self._retry_later(sub, item, min(self.cfg.retry_delay_s * 2 ** (attempts - 1), 60.0))
            return
        self._waiting_since.pop((sub.key, msg.id), None)
        self._waiting_faults.pop((sub.key, msg.id), None)
        self.store.mark_processed(sub.key, msg.id)
        self.stats.handled += 1
        self._ack(sub, item)
        if sub.key in self._faulted:
            self._faulted.discard(sub.key)
            if self.on_fault_cleared is not None:
                self.on_fault_cleared(f"handling {sub.destination}")

    def _retry_later(self, sub: _Sub, item: _Delivery, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, sub.queue.put_nowait, item)

    def _ack(self, sub: _Sub, item: _Delivery) -> None:
        if item.generation != item.link.generation:
            self.stats.stale += 1
            return
        try:
            item.link.ack(item.frame, sub.key)
        except Disconnected as exc:
            _log.info("%s: ack lost with its connection (%s); the redelivery will be dropped as seen", self.name, exc)

    async def _dead_letter(self, sub: _Sub, item: _Delivery, reason: str, msg: Message | None, attempts: int) -> None:
        frame = item.frame
        dlq = dlq_for(frame.destination or sub.destination)
        headers = {k: v for k, v in frame.headers.items() if k not in _DELIVERY_HEADERS}
        flat = " | ".join(line.strip() for line in reason.splitlines() if line.strip())
        headers.update({"persistent": "true", "DLQReason": flat[:2000], "DLQOrigin": frame.destination,
                        "DLQSubscriber": f"{self.name}/{sub.key}@{socket.gethostname()}",
                        "DLQAttempts": str(attempts)})
        await self.send_raw(dlq, frame.body, headers)
        if msg is not None:
            self.store.mark_processed(sub.key, msg.id)
        self.stats.dead_lettered += 1
        self._ack(sub, item)
        _log.error("%s: message %s from %s dead-lettered to %s: %s", self.name,
                   headers.get("MsgId", frame.headers.get("message-id")), frame.destination, dlq, flat[:500],
                   extra={"IMAGE": headers.get("Image", ""), "MSGTYPE": headers.get("MsgType", "")})
        if self.on_dead_letter is not None:
            try:
                await self.on_dead_letter(dlq, flat, msg)
            except Exception:  # noqa: BLE001 - a failing hook must not stop consumption
                _log.exception("%s: dead-letter hook failed", self.name)

    # -- connections -------------------------------------------------------------------

    def _on_disconnected_threadsafe(self, link: BrokerLink, generation: int) -> None:
        self._call_in_loop(self._mark_down, link, generation)

    def _mark_down(self, link: BrokerLink, generation: int) -> None:
        if generation == link.generation and id(link) in self._link_down:
            self._link_down[id(link)].set()

    async def _maintain(self, link: BrokerLink) -> None:
        delay = 0.1
        down = self._link_down.setdefault(id(link), asyncio.Event())
        while True:
            try:
                await asyncio.to_thread(link.connect, self.name)
            except Refused as exc:  # wrong password, unknown identity: retrying fast is pointless
                await self._refused(link.url, "login", str(exc))
                await asyncio.sleep(self.cfg.reconnect_max_s * random.uniform(0.8, 1.2))
                continue
            except Disconnected as exc:
                if delay >= 1.0:
                    _log.warning("%s: %s; retrying in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            down.clear()
            try:
                # Up only once the broker confirmed every subscription: nothing sent after
                # wait_connected() can be missed.
                for sub in list(self._subs.values()):
                    try:
                        await wait_for(asyncio.wrap_future(self._subscribe_link(link, sub)),
                                               self.cfg.receipt_timeout_s)
                    except Refused as exc:
                        # The other subscriptions still work; this one is retried at reconnect.
                        await self._refused(sub.destination, "subscribe", str(exc))
            except (Disconnected, TimeoutError) as exc:
                _log.warning("%s: subscribing on %s failed (%s); reconnecting", self.name, link.url, exc)
                await asyncio.to_thread(link.close)
                await asyncio.sleep(delay)
                continue
            delay = 0.1
            self.stats.connects += 1
            self.last_connected_at = asyncio.get_running_loop().time()
            self._subscribed.add(id(link))
            _log.info("%s: connected to %s", self.name, link.url)
            self._update_any_up()
            self._outbox_wake.set()
            await down.wait()
            self._subscribed.discard(id(link))
            self.stats.disconnects += 1
            _log.warning("%s: lost broker %s; reconnecting", self.name, link.url)
            await asyncio.to_thread(link.close)
            self._update_any_up()

    def _update_any_up(self) -> None:
        if any(link.connected for link in self.links):
            self._any_up.set()
        else:
            self._any_up.clear()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(3600)
            self.store.forget_processed(PROCESSED_RETENTION_S)
