"""The transport boundary: one connection to one broker.

:class:`BrokerLink` is what the bus needs of a broker and nothing more. Two
implementations exist: :class:`~fitsflow.core.bus.stomp_link.StompLink` (the only module
that imports stomp.py) and :class:`~fitsflow.core.bus.memory_link.MemoryLink`, an in-memory
double for unit tests. Library errors become :class:`~fitsflow.core.errors.Disconnected`
here, at the edge.

Links call back from their own threads; the bus hands every callback to its event loop.
"""

from __future__ import annotations

import abc
import concurrent.futures
from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class Frame:
    """A MESSAGE frame as received."""

    headers: Mapping[str, str]
    body: str

    @property
    def destination(self) -> str:
        return self.headers.get("destination", "")


@dataclass(frozen=True)
class Subscription:
    """What a link needs to (re-)subscribe after every (re-)connection."""

    id: str
    destination: str
    selector: str | None = None
    #: Durable topic subscription name (activemq.subscriptionName); None for non-durable.
    durable_name: str | None = None
    prefetch: int = 100
    extra_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LinkCallbacks:
    """Set by the bus; called from the link's thread."""

    on_message: Callable[["BrokerLink", int, Frame], None]
    on_disconnected: Callable[["BrokerLink", int], None]


class BrokerLink(abc.ABC):
    """A connection to one broker. ``generation`` counts connections: acks and retries of a
    message are only valid on the connection that delivered it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.generation = 0
        self.callbacks: LinkCallbacks | None = None

    @abc.abstractmethod
    def connect(self, client_id: str) -> None:
        """Connect (blocking). Raises Disconnected when the broker cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect; a no-op when not connected."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while the connection is up."""

    @abc.abstractmethod
    def send(self, destination: str, body: str, headers: Mapping[str, str]) -> concurrent.futures.Future[None]:
        """Send with a receipt; the future completes when the broker has the message
        (for a persistent message: when it is in the broker's store). It fails with
        Disconnected if the connection drops first or the broker answers ERROR."""

    @abc.abstractmethod
    def subscribe(self, sub: Subscription) -> concurrent.futures.Future[None]:
        """Subscribe with client-individual acknowledgement; the future completes when the
        broker confirms (a receipt), so nothing published afterwards can be missed."""

    @abc.abstractmethod
    def ack(self, frame: Frame, sub_id: str) -> None:
        """Acknowledge one message received on this connection."""
