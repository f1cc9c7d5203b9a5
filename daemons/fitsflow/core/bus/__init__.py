"""The message bus: :class:`MessageBus` over :class:`BrokerLink` s (STOMP or in-memory)."""

from fitsflow.core.bus.bus import BusStats, MessageBus, dlq_for
from fitsflow.core.bus.link import BrokerLink, Frame

__all__ = ["BrokerLink", "BusStats", "Frame", "MessageBus", "dlq_for"]
