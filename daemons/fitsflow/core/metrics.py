"""Prometheus metrics of any fitsflow daemon, read from its live counters at scrape time.

Every daemon exposes (opt-in: ``[metrics] ports``, one TCP port per daemon on a host):

- ``fitsflow_daemon_state{daemon, state}``: 1 for the state shown (INIT, ON, STANDBY, ALARM,
  FAULT, OFF), 0 for the others;
- ``fitsflow_fault_active{daemon, condition}`` and ``fitsflow_fault_episodes_total{daemon}``:
  the open fault episodes of the machine (core.faults) and how many there were;
- ``fitsflow_bus_messages_total{daemon, outcome}``: the bus's counters (sent, handled,
  retried, dead-lettered, refused, outboxed, flushed, duplicates...), and the gauges
  ``fitsflow_bus_outbox_messages`` and ``fitsflow_bus_brokers_connected``;
- ``fitsflow_<daemon>_<counter>_total{daemon}``: the daemon's own work counters
  (``Daemon.counters``), e.g. ``fitsflow_archive_controller_handoffs_total``;
- ``fitsflow_<daemon>_<stage>_seconds{daemon}``: histograms of its stages' durations (a
  FITS write, a hand-off, an ingest, a header), from ``stage_histogram``;
- whatever extra collectors the daemon adds (the receiver's per-stream heap counters).

Reading live values at scrape time means no second copy to keep in step with the code.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fitsflow.core.states import State

if TYPE_CHECKING:
    from fitsflow.core.runtime import Daemon

_log = logging.getLogger(__name__)

#: The states a daemon shows (docs/states.md).
STATES = tuple(State)


def metric_name(*parts: str) -> str:
    """``fitsflow_<parts>`` in Prometheus' alphabet (``archive-controller`` → ``archive_controller``)."""
    return "_".join(re.sub(r"[^a-zA-Z0-9_]", "_", p) for p in ("fitsflow", *parts))


class DaemonCollector:
    """The metrics of one daemon, as listed in the module docstring."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        who = [d.ident]
        state = GaugeMetricFamily("fitsflow_daemon_state", "1 for the state the daemon shows, 0 for the others",
                                  labels=["daemon", "state"])
        shown = d.effective_state()
        for s in STATES:
            state.add_metric(who + [s], 1.0 if s == shown else 0.0)
        yield state
        active = GaugeMetricFamily("fitsflow_fault_active", "An open fault episode of the machine (1)",
                                   labels=["daemon", "condition"])
        for condition in d.faults.active:
            active.add_metric(who + [condition], 1.0)
        yield active
        yield _one(CounterMetricFamily, "fitsflow_fault_episodes", "Fault episodes of the machine since start",
                   who, d.faults.episodes)
        bus = CounterMetricFamily("fitsflow_bus_messages", "Messages by outcome, since start",
                                  labels=["daemon", "outcome"])
        links = CounterMetricFamily("fitsflow_bus_connections", "Broker connections made and lost, since start",
                                    labels=["daemon", "event"])
        for outcome, value in dataclasses.asdict(d.bus.stats).items():
            if outcome in ("connects", "disconnects"):
                links.add_metric(who + [outcome], value)
            else:
                bus.add_metric(who + [outcome], value)
        yield bus
        yield links
        yield _one(GaugeMetricFamily, "fitsflow_bus_outbox_messages", "Messages waiting in the outbox for a broker",
                   who, d.bus.outbox_size)
        yield _one(GaugeMetricFamily, "fitsflow_bus_brokers_connected", "Brokers this daemon is connected to",
                   who, len(d.bus.connected_brokers))
        for name, (value, text) in d.counters().items():
            yield _one(CounterMetricFamily, metric_name(d.name, name), text, who, value)
        for histogram in d.stage_histograms():
            yield from histogram.collect()


def _one(family: type, name: str, text: str, who: list[str], value: float) -> Metric:
    """A metric family with the one sample of this daemon."""
    metric = family(name, text, labels=["daemon"])
    metric.add_metric(who, value)
    return metric


#: Buckets of the stage histograms (seconds): from a quick hand-off to a slow disk.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def stage_histogram(daemon_name: str, stage: str, text: str) -> Histogram:
    """A histogram of one stage's duration, ``fitsflow_<daemon>_<stage>_seconds``, registered
    nowhere: the daemon's collector reads it at each scrape (not the process-global registry,
    so in-process tests can build a daemon twice)."""
    return Histogram(metric_name(daemon_name, stage, "seconds"), text, labelnames=["daemon"],
                     buckets=STAGE_BUCKETS, registry=None)


def serve(daemon: Daemon, address: str, port: int) -> threading.Thread:
    """Serve ``daemon``'s metrics (and its extra collectors) on http://address:port/metrics;
    returns the server's thread (for the daemon to supervise: core.tasks.watch_thread)."""
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))  # type: ignore[arg-type]
    for collector in daemon.collectors():
        registry.register(collector)
    _server, thread = start_http_server(port, addr=address, registry=registry)
    _log.info("%s: Prometheus metrics on http://%s:%d/metrics", daemon.ident, address, port)
    return thread
