"""Read raw frames from a destination (headers included), for tests and DLQ inspection."""

from __future__ import annotations

import queue
import time
import uuid

from fitsflow.core.bus.link import Frame, LinkCallbacks, Subscription
from fitsflow.core.bus.stomp_link import StompLink


def drain(url: str, destination: str, *, expect: int | None = None, timeout: float = 5.0,
          selector: str | None = None, **link_kwargs: object) -> list[Frame]:
    """Consume and ack messages of ``destination`` until ``expect`` arrived, or until
    ``timeout`` seconds pass without a new one when ``expect`` is None. ``link_kwargs``
    (credentials, tls) go to :class:`StompLink`."""
    got: queue.Queue[Frame] = queue.Queue()
    link = StompLink(url, heartbeat_ms=0, **link_kwargs)  # type: ignore[arg-type]
    link.callbacks = LinkCallbacks(lambda _l, _g, frame: got.put(frame), lambda _l, _g: None)
    link.connect(f"drain-{uuid.uuid4().hex[:8]}")
    sub = Subscription(id="drain", destination=destination, selector=selector, prefetch=1000)
    link.subscribe(sub)
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    try:
        while expect is None or len(frames) < expect:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                frame = got.get(timeout=remaining)
            except queue.Empty:
                break
            link.ack(frame, sub.id)
            frames.append(frame)
            if expect is None:
                deadline = time.monotonic() + min(timeout, 1.0)
    finally:
        link.close()
    return frames
