"""fitsflow's SPEAD wire format (docs/spead.md is the normative description).

A sensor readout travels as ``stripe_count`` heaps, each a band of whole rows of one sensor
with the full identity of the readout, so every heap stands on its own: a lost packet costs
one stripe, whose rows are then recorded as missing, and never the attribution of the rest.
Every heap carries the descriptors of all items, so a receiver started late or restarted
decodes from its first complete heap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: SPEAD flavour: version 4, 64-bit item pointers, 48-bit heap addresses, no bug compat.
HEAP_ADDRESS_BITS = 48
NAME_BYTES = {"image_name": 80, "group_id": 64, "raft": 8, "sensor": 8}


@dataclass(frozen=True)
class ItemSpec:
    id: int
    name: str
    description: str
    shape: tuple[int | None, ...]
    dtype: str


ITEMS: tuple[ItemSpec, ...] = (
    ItemSpec(0x1000, "image_seq", "Camera's image sequence number", (), "<u8"),
    ItemSpec(0x1001, "image_name", "Image name, ASCII, NUL-padded", (NAME_BYTES["image_name"],), "u1"),
    ItemSpec(0x1002, "group_id", "Group id, ASCII, NUL-padded", (NAME_BYTES["group_id"],), "u1"),
    ItemSpec(0x1003, "snap", "Snap number within the group", (), "<i4"),
    ItemSpec(0x1004, "raft", "Raft name, ASCII, NUL-padded", (NAME_BYTES["raft"],), "u1"),
    ItemSpec(0x1005, "sensor", "Sensor name, ASCII, NUL-padded", (NAME_BYTES["sensor"],), "u1"),
    ItemSpec(0x1006, "sensor_rows", "Rows of the whole sensor", (), "<u4"),
    ItemSpec(0x1007, "sensor_cols", "Columns of the whole sensor", (), "<u4"),
    ItemSpec(0x1008, "stripe_index", "Index of this stripe, 0-based", (), "<u4"),
    ItemSpec(0x1009, "stripe_count", "Stripes of this sensor readout", (), "<u4"),
    ItemSpec(0x100A, "row_start", "First sensor row in this stripe", (), "<u4"),
    ItemSpec(0x100B, "t_readout_start", "Readout start, Unix time (s, UTC)", (), "<f8"),
    ItemSpec(0x100C, "t_readout_end", "Readout end, Unix time (s, UTC)", (), "<f8"),
    ItemSpec(0x1010, "pixels", "Pixels of this stripe, row-major, rows x sensor_cols", (None,), "<i4"),
)
ITEM_BY_NAME = {i.name: i for i in ITEMS}
#: Pixel types a receiver accepts in the descriptor of ``pixels``.
PIXEL_DTYPES = frozenset({"<i4", "<u2", "<i2", "<f4", "<u4"})


def encode_name(value: str, item: str) -> np.ndarray:
    raw = value.encode("ascii")
    size = NAME_BYTES[item]
    if len(raw) > size:
        raise ValueError(f"{item} {value!r} longer than {size} bytes")
    return np.frombuffer(raw.ljust(size, b"\0"), dtype=np.uint8)


def decode_name(value: np.ndarray) -> str:
    """ASCII up to the first NUL; raises UnicodeDecodeError on other bytes."""
    return bytes(np.asarray(value, dtype=np.uint8)).split(b"\0", 1)[0].decode("ascii")


@dataclass(frozen=True)
class Stripe:
    """One decoded heap."""

    image_seq: int
    image: str
    group: str
    snap: int
    raft: str
    sensor: str
    rows: int
    cols: int
    index: int
    count: int
    row_start: int
    t_start: float
    t_end: float
    pixels: np.ndarray  # 1-D, rows_in_stripe * cols elements
    #: What owns the memory ``pixels`` views (the spead2 heap): kept until the stripe is
    #: stored, or the heap's memory goes back to spead2's pool and the next heap overwrites
    #: pixels still waiting to be written (seen in the chaos test under load).
    owner: object = field(default=None, repr=False, compare=False)


def stripe_bounds(rows: int, count: int, index: int) -> tuple[int, int]:
    """Rows [start, end) of stripe ``index`` when ``rows`` are cut into ``count`` stripes
    as evenly as possible (the first ``rows % count`` stripes get one row more)."""
    base, extra = divmod(rows, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)
