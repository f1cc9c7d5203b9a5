"""``[receiver]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from fitsflow.core.config import parse_host_port

MiB = 1024 * 1024
@dataclass(frozen=True)
class ReceiverInstance:
    """``[receiver.instances.NAME]``: what differs between receiver instances on one host."""

    streams: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReceiverConfig:
    #: UDP streams of this receiver: "BIND_ADDRESS:PORT", one spead2 stream each.
    streams: tuple[str, ...] = ("127.0.0.1:7148",)
    #: Per-instance overrides, selected by --instance (template units pass %i).
    instances: dict[str, ReceiverInstance] = field(default_factory=dict)
    #: Kernel socket receive buffer per stream. net.core.rmem_max must allow it.
    socket_buffer_bytes: int = 64 * MiB
    #: Largest heap (stripe) accepted; bigger heaps are dropped and counted.
    max_heap_bytes: int = 16 * MiB
    #: Heaps assembled concurrently per stream (spead2 max_heaps).
    max_heaps: int = 4
    #: Complete heaps queued between spead2 and the writer per stream (spead2 ring heaps).
    ring_heaps: int = 8
    #: Stripes written at once per stream (in threads, while the next heaps arrive). With
    #: O_DIRECT each write waits for the device: 4 keep the disk busy through its latency
    #: spikes (bench receive into a virtio disk at 1 GB/s asked: 0-8 of 360 heaps lost with
    #: 2, 0 with 4).
    writers: int = 4
    #: Write the stripes' whole 4 KiB blocks with O_DIRECT (core.rawstore): no copy into the
    #: page cache, whose CPU was the largest part of the receiver's; ignored where the raw
    #: buffer's filesystem refuses it. Off: bursts faster than the disk are absorbed by the
    #: page cache (up to vm.dirty_ratio) instead of by the ring and the socket buffer.
    direct_io: bool = True
    #: After its first heap (or its START_INTEGRATION + exposure time), an image gets this
    #: long to arrive whole; then READOUT_COMPLETE lists what is missing.
    image_timeout_s: float = 10.0
    #: Sensors expected per image when no START_INTEGRATION names them ("RAFT_SENSOR").
    expected_sensors: tuple[str, ...] = ()
    #: Lost fraction of bytes, per stream and stats interval, above which an ALERT is raised.
    loss_alert_fraction: float = 0.001
    #: Period of RECEIVER_STATS messages and loss checks (s).
    stats_interval_s: float = 10.0
    #: A port that cannot be opened (address not here yet, port held, packet filter refused)
    #: is tried again, at most this long apart (s), with the daemon in ALARM meanwhile.
    reopen_max_s: float = 5.0
    #: Readouts leave the raw buffer store this long after the archive holds every sensor of
    #: their image (IMAGE_IN_ARCHIVE); images with a sensor the archive never took stay.
    raw_keep_s: float = 3600.0
    #: How often the raw buffer store is cleaned (s); 0 = never (the store grows).
    raw_clean_interval_s: float = 60.0
    #: Prometheus metrics on this TCP port (0 = off), bound to metrics_address.
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"

    def streams_for(self, instance: str) -> tuple[str, ...]:
        inst = self.instances.get(instance)
        return inst.streams if inst and inst.streams else self.streams

    def pool_heaps(self) -> int:
        """Memory-pool buffers per stream: every heap that can be alive at once, plus one
        (spead2's rule: max_heaps being assembled + ring_heaps queued + 1 being processed,
        and here the stripes still being written)."""
        return self.max_heaps + self.ring_heaps + self.writers + 1

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        for name, streams in [("receiver.streams", self.streams)] + [
                (f"receiver.instances.{k}.streams", v.streams) for k, v in self.instances.items()]:
            for s in streams:
                try:
                    parse_host_port(s)
                except ValueError as exc:
                    check.fail(name, str(exc))
        for key in ("socket_buffer_bytes", "max_heap_bytes", "max_heaps", "ring_heaps", "writers", "image_timeout_s",
                    "stats_interval_s", "reopen_max_s"):
            check.positive(f"receiver.{key}", getattr(self, key))
        for key in ("raw_keep_s", "raw_clean_interval_s"):
            if getattr(self, key) < 0:
                check.fail(f"receiver.{key}", "must not be negative")
        if not 0 <= self.loss_alert_fraction <= 1:
            check.fail("receiver.loss_alert_fraction", "must be between 0 and 1")
