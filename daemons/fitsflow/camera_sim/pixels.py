"""Deterministic, seeded pixel content, cheap enough to generate at GB/s.

Pixel ``i`` of a sensor is ``(i * a + b) mod 2**32`` viewed as int32, with odd ``a`` and ``b``
drawn from (seed, image_seq, sensor_index): every sensor of every image differs, and any
downstream file can be checked bit for bit by regenerating it.
"""

from __future__ import annotations

import numpy as np


def _coefficients(seed: int, image_seq: int, sensor_index: int) -> tuple[int, int]:
    rng = np.random.default_rng([seed, image_seq, sensor_index])
    a, b = (int(x) for x in rng.integers(1, 2**31, size=2))
    return a | 1, b


def sensor_pixels(seed: int, image_seq: int, sensor_index: int, rows: int, cols: int,
                  dtype: str = "<i4") -> np.ndarray:
    """The (rows, cols) pixels of one sensor of one image."""
    a, b = _coefficients(seed, image_seq, sensor_index)
    n = rows * cols
    values = np.arange(n, dtype=np.uint32)
    values *= np.uint32(a)
    values += np.uint32(b)
    out = values.view(np.int32) if np.dtype(dtype).itemsize == 4 else values.astype(np.dtype(dtype))
    return out.reshape(rows, cols).astype(np.dtype(dtype), copy=False)
