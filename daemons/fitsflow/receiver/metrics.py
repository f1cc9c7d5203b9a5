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
        drops = CounterMetricFamily("fitsflow_receiver_socket_drops",
                                    "Packets the kernel dropped at the stream's socket (buffer full)", labels=["stream"])
        for s in self.streams:
            c = s.counters
            for outcome, value in (("complete", c.heaps_complete), ("incomplete", c.heaps_incomplete),
                                   ("bad", c.heaps_bad), ("duplicate", c.heaps_duplicate)):
                ours.add_metric([s.address, outcome], value)
            lost.add_metric([s.address], c.bytes_lost)
            stored.add_metric([s.address], c.bytes_stored)
            for stat, value in s.spead_stats().items():
                spead.add_metric([s.address, stat], value)
            socket_drops = s.socket_drops()
            if socket_drops is not None:
                drops.add_metric([s.address], socket_drops)
        rejected = CounterMetricFamily("fitsflow_receiver_rejected_packets", "Packets spead2 rejected")
        rejected.add_metric([], self.rejected.total)
        yield from (ours, lost, stored, spead, drops, rejected)


class LossMonitor:
    """Compares each stream's counters with the previous interval's, and says where the
    interval's packets were lost: a shifter paged for packet loss needs to know whether to
    look at the receive host's disk, its CPU or the network."""

    def __init__(self, streams: list[SpeadStreamReceiver], threshold: float) -> None:
        self.streams = streams
        self.threshold = threshold
        #: per stream: bytes lost, bytes stored, spead2's waits on its ring, socket drops
        self._last: dict[str, tuple[int, int, int, int]] = {}

    def check(self) -> list[str]:
        """Problems of this interval, one line per stream above the threshold."""
        problems = []
        for s in self.streams:
            c = s.counters
            ring = s.spead_stats().get("worker_blocked", 0)
            drops = s.socket_drops()  # None: the kernel's count cannot be read
            lost0, stored0, ring0, drops0 = self._last.get(s.address, (0, 0, 0, 0))
            lost, stored = c.bytes_lost - lost0, c.bytes_stored - stored0
            self._last[s.address] = (c.bytes_lost, c.bytes_stored, ring, drops if drops is not None else drops0)
            total = lost + stored
            if total and lost / total > self.threshold:
                problems.append(f"stream {s.address}: {lost} of {total} bytes lost ({100 * lost / total:.3f} %, "
                                f"threshold {100 * self.threshold:.3f} %); {c.heaps_incomplete} incomplete heaps; "
                                + where_lost(max(0, ring - ring0), None if drops is None else max(0, drops - drops0)))
        return problems

    def snapshot(self) -> list[dict]:
        return [{"stream": s.address, **{k: v for k, v in asdict(s.counters).items()}, "spead2": s.spead_stats(),
                 "socket_drops": s.socket_drops()} for s in self.streams]


def where_lost(ring_waits: int, socket_drops: int | None) -> str:
    """The likely place of an interval's loss. Packets are lost on this host only where the
    kernel drops them at the socket (``socket_drops``; None: unknown); spead2 waiting for room
    in its ring (the stripes' writes fell behind) loses nothing by itself — the socket buffer
    holds the packets meanwhile — but is why the socket overflowed when both happen."""
    waits = f"spead2 waited {ring_waits} times for room in its ring"
    if socket_drops is None:
        return (f"{waits}: the raw buffer's writes fell behind (its disk, or receiver.writers); the socket's "
                "drops are unknown") if ring_waits else "the socket's drops are unknown"
    if socket_drops:
        if ring_waits:
            return (f"the kernel dropped {socket_drops} packets at the socket while {waits}: the raw buffer's "
                    "writes fell behind (its disk, or receiver.writers)")
        return (f"the kernel dropped {socket_drops} packets at the socket: the receiver did not read in time "
                "(CPU, or receiver.socket_buffer_bytes)")
    return ("no drop on this host: packets were lost before it (network, NIC, camera)"
            + (f"; {waits}, which the socket buffer absorbed" if ring_waits else ""))
