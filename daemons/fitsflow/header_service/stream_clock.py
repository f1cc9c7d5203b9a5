"""When is an image's deadline really past? Judged against the stream, not the wall clock.

An image is closed (its header written, partial if telemetry is missing) at its deadline:
START_INTEGRATION + exposure + timeout_margin_s. Judged against the wall clock alone, a
service that was stopped or starved for a while (SIGSTOP, swapping, a broker outage) wakes
up with every open image past its deadline and closes them before it has read the
telemetry that is queued for them — 104 files with incomplete headers after a 90 s stall.

:class:`StreamClock` closes an image when the *processed stream* has passed its deadline
(on every subscription, the newest message handled was sent after it: events and telemetry
arrive on separate subscriptions, and one may run ahead of the other), or when the wall clock has and the service
is caught up: it did not just wake from a stall or reconnect, and the last message it
handled was not old when it handled it (no backlog), or nothing came for a while (an idle
stream has no backlog).
"""

from __future__ import annotations

import datetime as dt
import time

#: A message handled more than this after it was sent means a backlog is being worked off
#: (also allows for this much clock difference between the sender's host and this one).
BACKLOG_LAG_S = 5.0
#: After a stall of the service or a reconnect, the backlog gets this long to arrive
#: before the wall clock may close images again.
SETTLE_S = 5.0


class StreamClock:
    def __init__(self) -> None:
        self.latest: dict[str, dt.datetime] = {}
        self.lag_s = 0.0
        self._last_message = 0.0
        self._settle_until = 0.0

    def observe(self, stream: str, sent: dt.datetime) -> None:
        """A message of ``stream`` (a subscription) sent at ``sent`` is being handled now."""
        now = dt.datetime.now(dt.timezone.utc)
        self.latest[stream] = max(self.latest.get(stream, sent), sent)
        self.lag_s = (now - sent).total_seconds()
        self._last_message = time.monotonic()

    def interrupted(self) -> None:
        """The service stalled or reconnected: a backlog may be on its way."""
        self._settle_until = time.monotonic() + SETTLE_S

    def caught_up(self) -> bool:
        mono = time.monotonic()
        if mono < self._settle_until:
            return False
        return self.lag_s < BACKLOG_LAG_S or mono - self._last_message > BACKLOG_LAG_S

    @property
    def stream_time(self) -> dt.datetime | None:
        """How far every subscription has been processed (the slowest one's newest message)."""
        return min(self.latest.values()) if self.latest else None

    def past(self, deadline: dt.datetime) -> bool:
        """Whether an image with this deadline may be closed now."""
        stream_time = self.stream_time
        if stream_time is not None and stream_time >= deadline:
            return True
        return dt.datetime.now(dt.timezone.utc) >= deadline and self.caught_up()
