"""An in-memory broker and BrokerLink: the test double for unit tests of the bus and daemons.

It keeps the semantics fitsflow relies on from ActiveMQ: queues deliver each message to one
subscriber, topics to all; durable topic subscriptions keep messages while their client is
away; client-individual acks; unacked messages are redelivered when their connection drops;
selectors of the form ``Key = 'value'`` joined by AND. Integration tests use a real ActiveMQ.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

from fitsflow.core.bus.link import BrokerLink, Frame, Subscription
from fitsflow.core.errors import Disconnected

_ids = itertools.count(1)
_SELECTOR_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*'([^']*)'\s*$")


def _matches(selector: str | None, headers: Mapping[str, str]) -> bool:
    if not selector:
        return True
    for term in re.split(r"\s+AND\s+", selector, flags=re.I):
        m = _SELECTOR_TERM.match(term)
        if not m:
            raise ValueError(f"selector {selector!r} is beyond the memory broker")
        if headers.get(m.group(1)) != m.group(2):
            return False
    return True


@dataclass
class _Consumer:
    link: MemoryLink
    sub: Subscription
    unacked: dict[str, Frame] = field(default_factory=dict)


class MemoryBroker:
    """A broker living in this process. ``up = False`` makes it refuse connections."""

    def __init__(self) -> None:
        self.up = True
        self._lock = threading.RLock()
        self._queues: dict[str, deque[Frame]] = {}
        self._durable: dict[tuple[str, str], deque[Frame]] = {}  # (client, name) -> backlog
        self._durable_dest: dict[tuple[str, str], str] = {}
        self._consumers: list[_Consumer] = []
        self._links: set[MemoryLink] = set()
        self._rr = itertools.count()
        self.sent: list[Frame] = []

    def link(self, url: str = "memory://broker") -> MemoryLink:
        return MemoryLink(url, self)

    def messages(self, destination: str) -> list[Frame]:
        """Messages waiting in a queue (for assertions)."""
        with self._lock:
            return list(self._queues.get(destination, ()))

    def crash(self) -> None:
        """Drop every connection (unacked messages go back) and refuse new ones."""
        self.up = False
        with self._lock:
            links = set(self._links)
        for link in links:
            link._drop()

    # -- used by MemoryLink -------------------------------------------------------------

    def _publish(self, destination: str, body: str, headers: Mapping[str, str]) -> None:
        frame_headers = dict(headers, destination=destination, **{"message-id": f"ID:mem-{next(_ids)}"})
        frame = Frame(frame_headers, body)
        with self._lock:
            self.sent.append(frame)
            if destination.startswith("/topic/"):
                for (client, name), backlog in self._durable.items():
                    sub_dest = self._durable_dest.get((client, name))
                    active = any(c.sub.durable_name == name and c.link.client_id == client for c in self._consumers)
                    if sub_dest == destination and not active:
                        backlog.append(frame)
                targets = [c for c in self._consumers if c.sub.destination == destination]
            else:
                self._queues.setdefault(destination, deque()).append(frame)
                targets = []
        for c in targets:
            if _matches(c.sub.selector, frame.headers):
                self._deliver(c, frame)
        self._pump()

    def _deliver(self, c: _Consumer, frame: Frame) -> None:
        with self._lock:
            c.unacked[frame.headers["message-id"]] = frame
        c.link._dispatch(Frame(dict(frame.headers, subscription=c.sub.id), frame.body))

    def _pump(self) -> None:
        """Hand queued messages to queue consumers with room in their prefetch window."""
        while True:
            with self._lock:
                job = None
                for dest, q in self._queues.items():
                    cands = [c for c in self._consumers if c.sub.destination == dest
                             and len(c.unacked) < c.sub.prefetch]
                    for frame in list(q):
                        ok = [c for c in cands if _matches(c.sub.selector, frame.headers)]
                        if ok:
                            q.remove(frame)
                            job = (ok[next(self._rr) % len(ok)], frame)
                            break
                    if job:
                        break
            if job is None:
                return
            self._deliver(*job)

    def _add(self, link: MemoryLink, sub: Subscription) -> None:
        c = _Consumer(link, sub)
        backlog: list[Frame] = []
        with self._lock:
            self._consumers.append(c)
            if sub.durable_name:
                key = (link.client_id, sub.durable_name)
                self._durable.setdefault(key, deque())
                self._durable_dest[key] = sub.destination
                backlog = list(self._durable[key])
                self._durable[key].clear()
        for frame in backlog:
            if _matches(sub.selector, frame.headers):
                self._deliver(c, frame)
        self._pump()

    def _ack(self, link: MemoryLink, sub_id: str, message_id: str) -> None:
        with self._lock:
            for c in self._consumers:
                if c.link is link and c.sub.id == sub_id:
                    c.unacked.pop(message_id, None)
        self._pump()

    def _remove_link(self, link: MemoryLink) -> None:
        with self._lock:
            mine = [c for c in self._consumers if c.link is link]
            self._consumers = [c for c in self._consumers if c.link is not link]
            for c in mine:
                for frame in c.unacked.values():
                    if c.sub.durable_name:
                        self._durable[(link.client_id, c.sub.durable_name)].appendleft(frame)
                    elif not frame.destination.startswith("/topic/"):
                        self._queues.setdefault(frame.destination, deque()).appendleft(frame)
        self._pump()


class MemoryLink(BrokerLink):
    """A connection to a :class:`MemoryBroker`."""

    def __init__(self, url: str, broker: MemoryBroker) -> None:
        super().__init__(url)
        self.broker = broker
        self.client_id = ""
        self._up = False

    @property
    def connected(self) -> bool:
        return self._up

    def connect(self, client_id: str) -> None:
        if not self.broker.up:
            raise Disconnected(f"{self.url}: broker down")
        self.client_id = client_id
        self.generation += 1
        self._up = True
        with self.broker._lock:
            self.broker._links.add(self)

    def close(self) -> None:
        if self._up:
            self._up = False
            with self.broker._lock:
                self.broker._links.discard(self)
            self.broker._remove_link(self)

    def send(self, destination: str, body: str, headers: Mapping[str, str]) -> concurrent.futures.Future[None]:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self._up or not self.broker.up:
            fut.set_exception(Disconnected(f"{self.url}: not connected"))
        else:
            self.broker._publish(destination, body, headers)
            fut.set_result(None)
        return fut

    def subscribe(self, sub: Subscription) -> concurrent.futures.Future[None]:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self._up:
            fut.set_exception(Disconnected(f"{self.url}: not connected"))
        else:
            self.broker._add(self, sub)
            fut.set_result(None)
        return fut

    def ack(self, frame: Frame, sub_id: str) -> None:
        if not self._up:
            raise Disconnected(f"{self.url}: not connected")
        self.broker._ack(self, sub_id, frame.headers["message-id"])

    def _dispatch(self, frame: Frame) -> None:
        if self.callbacks and self._up:
            self.callbacks.on_message(self, self.generation, frame)

    def _drop(self) -> None:
        gen = self.generation
        self.close()
        if self.callbacks:
            self.callbacks.on_disconnected(self, gen)
