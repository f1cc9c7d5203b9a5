"""Replay: an image's header rebuilt offline from recorded messages by the live service's own
handlers (``on_event``, ``on_telemetry``, the deadline's write), so that a replayed header is
the header the service would have written from those messages.

The daemon runs against a scratch state directory and data tree and an unconnected bus: its
HEADER_READY stays in the scratch outbox, nothing reaches the site's broker or files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.memory_link import MemoryBroker
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import Config
from fitsflow.core.errors import MessageError
from fitsflow.core.headerstore import read_header
from fitsflow.core.messages import decode
from fitsflow.header_service.daemon import HeaderServiceDaemon


class ReplayError(Exception):
    """A recording that cannot be replayed (a line that is no message, no such image)."""


def replay(lines: list[str], image: str, cfg: Config) -> dict[str, Any]:
    """``image``'s header (its JSON object) rebuilt from recorded message bodies: every
    TELEMETRY sample, and the image's camera events, in the order recorded. An image whose
    end events or telemetry are missing gets what the live service writes at its deadline."""
    messages = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages.append(decode(line))
        except MessageError as exc:
            raise ReplayError(f"line {n}: {exc}") from None
    if not any(m.image == image for m in messages):
        raise ReplayError(f"no message of image {image} in the recording")
    with tempfile.TemporaryDirectory(prefix="fitsflow-replay-") as tmp:
        return asyncio.run(_replay(messages, image, _scratch(cfg, Path(tmp))))


def _scratch(cfg: Config, tmp: Path) -> Config:
    """``cfg`` with its state and data tree moved under ``tmp``."""
    sections = dict(cfg.sections)
    sections["site"] = dataclasses.replace(cfg.site, state_dir=tmp / "state")
    sections["paths"] = dataclasses.replace(cfg.paths, root=tmp / "data")
    (tmp / "state").mkdir()
    headers = sections["paths"].resolved().headers
    headers.mkdir(parents=True)
    return Config(source=cfg.source, sections=MappingProxyType(sections))


async def _replay(messages: list[Any], image: str, cfg: Config) -> dict[str, Any]:
    bus = MessageBus(cfg.bus, "header-replay", BusStore(Path(cfg.site.state_dir) / "bus.sqlite"),
                     [MemoryBroker().link("memory://replay")])
    daemon = HeaderServiceDaemon(cfg, bus, _Args())
    try:
        for msg in messages:
            if msg.type == "TELEMETRY":
                await daemon.on_telemetry(msg)
            elif msg.image == image:
                await daemon.on_event(msg)
        rec = daemon.store.records.get(image)
        if rec is not None and not rec.written and "START_INTEGRATION" in rec.events:
            await daemon._write(rec)  # the recording ends: what the deadline writes
        header = read_header(cfg.paths.resolved().headers, image)
        if header is None:
            raise ReplayError(f"the recording has no START_INTEGRATION of {image}")
        return dict(json.loads(header.to_json()))
    finally:
        daemon.store.close()
        bus.store.close()


@dataclasses.dataclass
class _Args:
    instance: str = "replay"
