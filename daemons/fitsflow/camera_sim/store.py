"""The simulator's image store, like a camera DAQ's "2-day store": the last K images, kept on
disk so any of them can be sent again (the catch-up path asks for that).

Pixels are a pure function of the recipe (seed, image_seq, sensor index, shape — see
pixels.py), so the store keeps each image's recipe, written atomically, and regenerates the
bytes bit for bit on a re-send.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fitsflow.core.handoff import atomic_write_bytes
from fitsflow.core.layout import check_name


@dataclass(frozen=True)
class ImageRecipe:
    image: str
    image_seq: int
    group: str
    snap: int
    seed: int
    rows: int
    cols: int
    dtype: str
    stripe_count: int
    sensors: list[str]  # RAFT_SENSOR, in sensor-index order
    exptime: float
    t_start: float
    t_end: float


class ImageStore:
    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def put(self, recipe: ImageRecipe) -> None:
        atomic_write_bytes(self.directory / f"{check_name(recipe.image)}.json", json.dumps(asdict(recipe)).encode())
        stored = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in stored[: max(0, len(stored) - self.keep)]:
            old.unlink(missing_ok=True)

    def get(self, image: str) -> ImageRecipe | None:
        try:
            return ImageRecipe(**json.loads((self.directory / f"{check_name(image)}.json").read_text()))
        except FileNotFoundError:
            return None

    def images(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))
