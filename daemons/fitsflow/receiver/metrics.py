"""Loss accounting: per-stream counters as Prometheus metrics, RECEIVER_STATS messages, and
an ALERT when a stream's lost fraction over an interval passes the configured threshold."""

from __future__ import annotations

import logging
from dataclasses import asdict

from prometheus_client.core import CounterMetricFamily

from fitsflow.receiver.stream import RejectedPacketCounter, SpeadStreamReceiver

_log = logging.getLogger(__name__)


class StreamCollector:
    """Prometheus collector reading the live counters (no copies to keep in step)."""

    def __init__(self, streams: list[SpeadStreamReceiver], rejected: RejectedPacketCounter) -> None:
        self.streams = streams
        self.rejected = rejected

    def collect(self):  # type: ignore[no-untyped-def]
        ours = CounterMetricFamily("fitsflow_receiver_heaps", "Heaps by outcome", labels=["stream", "outcome"])
        lost = CounterMetricFamily("fitsflow_receiver_lost_bytes", "Bytes of incomplete heaps", labels=["stream"])
        stored = CounterMetricFamily("fitsflow_receiver_stored_bytes", "Pixel bytes stored", labels=["stream"])
        spead = CounterMetricFamily("fitsflow_receiver_spead2", "spead2 stream statistics",
                                    labels=["stream", "stat"])
        for s in self.streams:
            c = s.counters
            for outcome, value in (("complete", c.heaps_complete), ("incomplete", c.heaps_incomplete),
                                   ("bad", c.heaps_bad), ("duplicate", c.heaps_duplicate)):
                ours.add_metric([s.address, outcome], value)
            lost.add_metric([s.address], c.bytes_lost)
            stored.add_metric([s.address], c.bytes_stored)
            for stat, value in s.spead_stats().items():
                spead.add_metric([s.address, stat], value)
        rejected = CounterMetricFamily("fitsflow_receiver_rejected_packets", "Packets spead2 rejected")
        rejected.add_metric([], self.rejected.total)
        yield from (ours, lost, stored, spead, rejected)


class LossMonitor:
    """Compares each stream's counters with the previous interval's."""

    def __init__(self, streams: list[SpeadStreamReceiver], threshold: float) -> None:
        self.streams = streams
        self.threshold = threshold
        self._last: dict[str, tuple[int, int]] = {}

    def check(self) -> list[str]:
        """Problems of this interval, one line per stream above the threshold."""
        problems = []
        for s in self.streams:
            c = s.counters
            lost0, stored0 = self._last.get(s.address, (0, 0))
            lost, stored = c.bytes_lost - lost0, c.bytes_stored - stored0
            self._last[s.address] = (c.bytes_lost, c.bytes_stored)
            total = lost + stored
            if total and lost / total > self.threshold:
                problems.append(f"stream {s.address}: {lost} of {total} bytes lost ({100 * lost / total:.3f} %, "
                                f"threshold {100 * self.threshold:.3f} %); {c.heaps_incomplete} incomplete heaps")
        return problems

    def snapshot(self) -> list[dict]:
        return [{"stream": s.address, **{k: v for k, v in asdict(s.counters).items()}, "spead2": s.spead_stats()}
                for s in self.streams]
