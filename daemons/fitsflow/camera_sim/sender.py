"""SPEAD sender for fitsflow's wire format (docs/spead.md), on spead2.

Sensors are spread over one or more UDP destinations (streams); each sensor readout goes out
as ``stripe_count`` heaps with every item's descriptor in every heap.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import spead2
import spead2.send

from fitsflow.core.sockbuf import grantable
from fitsflow.core.spead_format import HEAP_ADDRESS_BITS, ITEM_BY_NAME, ITEMS, encode_name, stripe_bounds

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadoutInfo:
    """Identity of one image's readout, shared by its sensors."""

    image: str
    image_seq: int
    group: str
    snap: int
    t_start: float
    t_end: float


class SpeadSender:
    """One spead2 UDP stream per destination. Close it explicitly: a spead2 sender left to
    the interpreter's exit spins its thread pool."""

    def __init__(self, destinations: list[tuple[str, int]], *, rate_bytes_s: float = 0.0,
                 packet_size: int = 8972, buffer_bytes: int = 8 * 1024 * 1024, pixel_dtype: str = "<i4") -> None:
        self.destinations = destinations
        self._pool = spead2.ThreadPool(1)
        config = spead2.send.StreamConfig(max_packet_size=packet_size, rate=rate_bytes_s / max(1, len(destinations)),
                                          max_heaps=8)
        # Ask for what the kernel grants (net.core.wmem_max), saying so once, rather than let
        # spead2 warn on every stream that it got less than it asked for.
        self.buffer_bytes = grantable("wmem", buffer_bytes, "camera simulator send buffer")
        self._streams = [spead2.send.UdpStream(self._pool, [dest], config, self.buffer_bytes)
                         for dest in destinations]
        self._groups = []
        self._locks: list[threading.Lock] = []
        for _ in destinations:
            ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, HEAP_ADDRESS_BITS, 0))
            for spec in ITEMS:
                if spec.name != "pixels":  # pixels: declared per heap, with that stripe's length
                    ig.add_item(spec.id, spec.name, spec.description, spec.shape, dtype=np.dtype(spec.dtype))
            self._groups.append(ig)
            self._locks.append(threading.Lock())
        self._pixel_spec = ITEM_BY_NAME["pixels"]
        self._pixel_dtype = np.dtype(pixel_dtype)
        self.heaps_sent = 0
        self.bytes_sent = 0

    def stream_of(self, sensor_index: int) -> int:
        if not self._streams:  # a RESEND_IMAGE after the camera stopped sending (seen in bench/e2e)
            raise RuntimeError("the camera's SPEAD sender is closed: nothing can be sent")
        return sensor_index % len(self._streams)

    def send_sensor(self, info: ReadoutInfo, sensor_index: int, raft: str, sensor: str, pixels: np.ndarray,
                    stripe_count: int, only_stripes: set[int] | None = None) -> None:
        """Send one sensor's pixels (rows, cols) as ``stripe_count`` heaps (blocking)."""
        k = self.stream_of(sensor_index)
        with self._locks[k]:
            self._send_sensor(k, info, raft, sensor, pixels, stripe_count, only_stripes)

    def _send_sensor(self, k: int, info: ReadoutInfo, raft: str, sensor: str, pixels: np.ndarray,
                     stripe_count: int, only_stripes: set[int] | None) -> None:
        # One ItemGroup per stream, filled item by item: two threads sending at once (a live
        # image and a re-send) would mix one heap's names with another's pixels — the chaos
        # test found image 46's rows inside image 111's file. Hence the per-stream lock.
        stream, ig = self._streams[k], self._groups[k]
        rows, cols = pixels.shape
        flat = pixels.reshape(-1)
        ig["image_seq"].value = np.uint64(info.image_seq)
        ig["image_name"].value = encode_name(info.image, "image_name")
        ig["group_id"].value = encode_name(info.group, "group_id")
        ig["snap"].value = np.int32(info.snap)
        ig["raft"].value = encode_name(raft, "raft")
        ig["sensor"].value = encode_name(sensor, "sensor")
        ig["sensor_rows"].value = np.uint32(rows)
        ig["sensor_cols"].value = np.uint32(cols)
        ig["stripe_count"].value = np.uint32(stripe_count)
        ig["t_readout_start"].value = np.float64(info.t_start)
        ig["t_readout_end"].value = np.float64(info.t_end)
        for index in range(stripe_count):
            if only_stripes is not None and index not in only_stripes:
                continue
            start, end = stripe_bounds(rows, stripe_count, index)
            ig["stripe_index"].value = np.uint32(index)
            ig["row_start"].value = np.uint32(start)
            # Every heap carries its descriptors, so each stripe declares its own length.
            spec = self._pixel_spec
            ig.add_item(spec.id, spec.name, spec.description, ((end - start) * cols,), dtype=self._pixel_dtype)
            ig["pixels"].value = flat[start * cols:end * cols]
            stream.send_heap(ig.get_heap(descriptors="all", data="all"))
            self.heaps_sent += 1
            self.bytes_sent += (end - start) * cols * pixels.itemsize

    def close(self) -> None:
        # No end-of-stream heap: a camera restarting must not end a receiver's stream.
        self._streams.clear()
        self._groups.clear()
        self._pool.stop()

    def __enter__(self) -> SpeadSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
