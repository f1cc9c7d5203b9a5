"""The header store: the header service writes one header object per image, the forwarder
reads it. ``<paths.headers>/<image>.json``, written atomically::

    {"image": "...", "partial": false, "missing_keywords": [],
     "cards": [["DATE-OBS", "2026-11-21T03:04:05.123", "Start of exposure (UTC)"], ...],
     "written_at": "2026-11-21T03:04:21.000Z"}

Card values are JSON strings, numbers, booleans or null (FITS undefined).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitsflow.core.errors import FitsflowError
from fitsflow.core.handoff import atomic_write_bytes
from fitsflow.core.layout import check_name, inside

Card = tuple[str, Any, str]


@dataclass
class ImageHeader:
    image: str
    cards: list[Card]
    partial: bool = False
    missing_keywords: list[str] = field(default_factory=list)
    written_at: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"image": self.image, "partial": self.partial, "missing_keywords": self.missing_keywords,
                           "cards": [list(c) for c in self.cards], "written_at": self.written_at}, indent=1).encode()


class BadHeader(FitsflowError):
    """A header object that cannot be used (unreadable, wrong types)."""


def header_path(root: Path, image: str) -> Path:
    return inside(root, f"{check_name(image)}.json")


def write_header(root: Path, header: ImageHeader) -> Path:
    path = header_path(root, header.image)
    atomic_write_bytes(path, header.to_json())
    return path


def read_header(root: Path, image: str) -> ImageHeader | None:
    """The image's header, None if not written yet; BadHeader if it is unusable."""
    path = header_path(root, image)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BadHeader(f"header {path}: unreadable: {exc}") from None
    try:
        cards = [(str(k), v, str(c)) for k, v, c in data["cards"]]
        for key, value, _ in cards:
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise TypeError(f"card {key} has a {type(value).__name__} value")
        return ImageHeader(image=str(data["image"]), cards=cards, partial=bool(data["partial"]),
                           missing_keywords=[str(k) for k in data["missing_keywords"]],
                           written_at=str(data.get("written_at", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadHeader(f"header {path}: wrong structure: {exc}") from None
