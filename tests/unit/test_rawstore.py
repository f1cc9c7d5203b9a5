"""SensorWriter: stripes written in threads never outlive their file descriptor."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fitsflow.core import rawstore
from fitsflow.core.rawstore import SensorMeta, SensorWriter


def meta(image: str = "IMG_1") -> SensorMeta:
    return SensorMeta(image=image, image_seq=1, group="g", snap=0, raft="R22", sensor="S00", rows=4, cols=4,
                      dtype="<i4", t_start=0.0, t_end=0.0, stripe_count=2)


def test_finish_waits_for_a_write_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SensorWriter(tmp_path, meta())
    started, real_pwrite = threading.Event(), os.pwrite

    def slow_pwrite(fd: int, data: memoryview, offset: int) -> int:
        started.set()
        time.sleep(0.3)  # the timeout path finishes the sensor meanwhile
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(rawstore.os, "pwrite", slow_pwrite)
    stripe = np.arange(8, dtype="<i4")
    t = threading.Thread(target=writer.write_stripe, args=(0, 0, stripe))
    t.start()
    started.wait(5)
    done = writer.finish()  # must wait: closing now would hand the fd number to the next file
    t.join()
    monkeypatch.setattr(rawstore.os, "pwrite", real_pwrite)
    assert done.stripes_received == [0] and done.partial
    got = np.fromfile(tmp_path / "IMG_1" / "R22_S00.raw", dtype="<i4")
    assert np.array_equal(got[:8], stripe) and not got[8:].any()
    # A stripe arriving after the finish is refused, not written anywhere.
    assert writer.write_stripe(1, 2, np.ones(8, dtype="<i4")) is False


def test_a_crash_inside_finish_keeps_the_pixels(tmp_path: Path) -> None:
    """Killed after renaming the pixels into place, before the .json: the next run must
    resume from those pixels, not from an empty temp file."""
    writer = SensorWriter(tmp_path, meta())
    for index in (0, 1):
        writer.write_stripe(index, 2 * index, np.full(8, index + 1, dtype="<i4"))
    writer._close_fd()
    os.rename(writer.temp, writer.final)  # ...and the process dies here
    again = SensorWriter(tmp_path, meta())
    assert again.complete
    done = again.finish()
    got = np.fromfile(tmp_path / "IMG_1" / "R22_S00.raw", dtype="<i4")
    assert not done.partial and np.array_equal(got, np.repeat([1, 2], 8))


def test_a_stripe_the_disk_refused_can_be_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk fails a stripe's write: its re-send (catch-up) must be taken, not refused
    as a duplicate of a stripe that was never stored."""
    writer = SensorWriter(tmp_path, meta())
    real_pwrite = os.pwrite

    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rawstore.os, "pwrite", full)
    assert writer.claim(0)
    with pytest.raises(OSError):
        writer.write_stripe(0, 0, np.ones(8, dtype="<i4"))
    monkeypatch.setattr(rawstore.os, "pwrite", real_pwrite)
    assert writer.claim(0), "the re-sent stripe was refused as a duplicate"
    assert writer.write_stripe(0, 0, np.ones(8, dtype="<i4"))
    assert 0 in writer.received
