"""The raw buffer store: the receiver writes sensor readouts, the forwarder reads them.

Layout under ``paths.raw_buffer``::

    <image>/<raft>_<sensor>.raw          pixels, row-major, the readout's dtype; rows that
                                         never arrived are zeros
    <image>/<raft>_<sensor>.json         metadata (below); written last, so its presence
                                         means the .raw is whole
    <image>/.<raft>_<sensor>.assembling  the .raw being filled, stripe by stripe (pwrite)
    <image>/.<raft>_<sensor>.stripes     journal of stripes written so far (one per line)
    <image>/READOUT.json                 the readout summary, written before READOUT_COMPLETE

Metadata fields: image, image_seq, group, snap, raft, sensor, rows, cols, dtype,
t_start, t_end, stripe_count, stripes_received, missing_rows ([[start, end), ...]),
partial (bool), received_at.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitsflow.core.handoff import atomic_write_bytes, fsync_dir
from fitsflow.core.layout import COMPONENT_NAME, check_name, inside
from fitsflow.core.poison import load_file
from fitsflow.core.spead_format import stripe_bounds


@dataclass
class SensorMeta:
    image: str
    image_seq: int
    group: str
    snap: int
    raft: str
    sensor: str
    rows: int
    cols: int
    dtype: str
    t_start: float
    t_end: float
    stripe_count: int
    stripes_received: list[int] = field(default_factory=list)
    missing_rows: list[list[int]] = field(default_factory=list)
    partial: bool = False
    received_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.raft}_{self.sensor}"


def sensor_key(raft: str, sensor: str) -> str:
    check_name(raft, "raft", COMPONENT_NAME)
    check_name(sensor, "sensor", COMPONENT_NAME)
    return f"{raft}_{sensor}"


def image_dir(root: Path, image: str) -> Path:
    return inside(root, check_name(image))


class SensorWriter:
    """Assembles one sensor readout from its stripes, bounded in memory (each stripe is
    written where it belongs as it arrives) and resumable (a journal lists the stripes)."""

    def __init__(self, root: Path, meta: SensorMeta) -> None:
        self.meta = meta
        self.dir = image_dir(root, meta.image)
        self.dir.mkdir(exist_ok=True)
        key = sensor_key(meta.raft, meta.sensor)
        self.final = self.dir / f"{key}.raw"
        self.meta_path = self.dir / f"{key}.json"
        self.temp = self.dir / f".{key}.assembling"
        self.journal = self.dir / f".{key}.stripes"
        self.itemsize = np.dtype(meta.dtype).itemsize
        nbytes = meta.rows * meta.cols * self.itemsize
        if self.journal.exists() and not self.temp.exists() and self.final.exists():
            # The last run died inside finish(), between renaming the pixels into place and
            # writing the .json that publishes them: take them back (opening a fresh temp
            # file here would replace good pixels with zeros — the chaos test caught that).
            os.rename(self.final, self.temp)
        self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != nbytes:
            os.ftruncate(self._fd, nbytes)  # sparse: never-written rows read as zeros
        self.received: set[int] = set()
        if self.journal.exists():  # a restart: carry on where the last run stopped
            self.received = {int(x) for x in self.journal.read_text().split() if x.isdigit()}
        self._journal = open(self.journal, "a")
        self._claimed: set[int] = set(self.received)
        self._lock = threading.Lock()
        # Stripes being written right now (in worker threads). finish()/close() wait for them:
        # closing the fd under a pending pwrite lets the kernel give its number to the next
        # file opened, and the late pwrite lands in another sensor's file (the chaos test
        # caught exactly that when an image timed out during writes).
        self._inflight = 0
        self._idle = threading.Condition(self._lock)

    @classmethod
    def refill(cls, root: Path, meta: SensorMeta) -> SensorWriter:
        """Reopen a published *partial* sensor to add the stripes it lacks (a re-send by the
        camera): the published .raw stays readable until ``finish`` replaces it atomically."""
        writer_dir = image_dir(root, meta.image)
        key = sensor_key(meta.raft, meta.sensor)
        temp, journal = writer_dir / f".{key}.assembling", writer_dir / f".{key}.stripes"
        if not journal.exists():  # (a restart during a refill finds both already there)
            shutil.copyfile(writer_dir / f"{key}.raw", temp)
            atomic_write_bytes(journal, "".join(f"{i}\n" for i in meta.stripes_received).encode())
        fresh = SensorMeta(**{**asdict(meta), "stripes_received": [], "missing_rows": [], "partial": False})
        return cls(root, fresh)

    def claim(self, index: int) -> bool:
        """Reserve stripe ``index`` for writing; False if it is stored or being written
        (a duplicate heap). Call from the event loop before handing the write to a thread."""
        if index in self.received or index in self._claimed:
            return False
        self._claimed.add(index)
        return True

    def write_stripe(self, index: int, row_start: int, pixels: np.ndarray) -> bool:
        """Write one stripe; False if it was already there (a duplicate heap)."""
        with self._lock:
            if index in self.received or self._fd < 0:
                return False  # a duplicate, or the sensor was finished meanwhile (a late stripe)
            fd = self._fd
            self._inflight += 1
        try:
            data = memoryview(np.ascontiguousarray(pixels)).cast("B")
            offset = row_start * self.meta.cols * self.itemsize
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
            with self._lock:  # writes of different stripes may run in parallel threads
                self.received.add(index)
                self._journal.write(f"{index}\n")
                self._journal.flush()
        finally:
            with self._lock:
                self._inflight -= 1
                self._idle.notify_all()
        return True

    def _close_fd(self) -> bool:
        """Close the pixel file once no write is in flight; False if already closed."""
        with self._lock:
            while self._inflight:
                self._idle.wait()
            if self._fd < 0:
                return False
            fd, self._fd = self._fd, -1
        os.fsync(fd)
        os.close(fd)
        return True

    @property
    def complete(self) -> bool:
        return len(self.received) == self.meta.stripe_count

    def finish(self) -> SensorMeta:
        """fsync and publish the sensor (.raw then .json); partial if stripes are missing."""
        self._close_fd()  # after this no stripe can be added: `received` is final
        meta = self.meta
        meta.stripes_received = sorted(self.received)
        meta.missing_rows = _missing_rows(meta.rows, meta.stripe_count, self.received)
        meta.partial = bool(meta.missing_rows)
        meta.received_at = time.time()
        self._journal.close()
        os.rename(self.temp, self.final)
        atomic_write_bytes(self.meta_path, json.dumps(asdict(meta), indent=1).encode())
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
        fsync_dir(self.dir)
        return meta

    def close(self) -> None:
        """Stop without publishing (shutdown); the journal lets the next run resume."""
        if self._close_fd():
            self._journal.close()


def _missing_rows(rows: int, count: int, received: set[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for i in range(count):
        if i in received:
            continue
        start, end = stripe_bounds(rows, count, i)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
    return ranges


def parse_meta(data: bytes) -> SensorMeta:
    """A sensor's metadata from its JSON (raises on anything that is not valid)."""
    meta = SensorMeta(**json.loads(data))
    if not (meta.rows > 0 and meta.cols > 0 and 0 < meta.stripe_count <= meta.rows):
        raise ValueError(f"{meta.name}: impossible shape {meta.rows}x{meta.cols} in {meta.stripe_count} stripes")
    return meta


def read_meta(root: Path, image: str, raft: str, sensor: str,
              problems: list[str] | None = None) -> SensorMeta | None:
    """A stored sensor's metadata, or None if it is not (yet) stored — or unreadable, in
    which case it is set aside (core.poison) and noted in ``problems``."""
    path = image_dir(root, image) / f"{sensor_key(raft, sensor)}.json"
    return load_file(path, parse_meta, [] if problems is None else problems)


def read_pixels(root: Path, meta: SensorMeta) -> np.ndarray:
    """The stored pixels as a read-only (rows, cols) memory map."""
    path = image_dir(root, meta.image) / f"{meta.name}.raw"
    return np.memmap(path, dtype=np.dtype(meta.dtype), mode="r", shape=(meta.rows, meta.cols))


def write_readout_summary(root: Path, image: str, summary: dict[str, Any]) -> None:
    atomic_write_bytes(image_dir(root, image) / "READOUT.json", json.dumps(summary, indent=1).encode())


def read_readout_summary(root: Path, image: str, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The image's announced READOUT summary, or None (not announced, or unreadable: set aside)."""
    def parse(data: bytes) -> dict[str, Any]:
        summary = json.loads(data)
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    return load_file(image_dir(root, image) / "READOUT.json", parse, [] if problems is None else problems)
