"""A forwarder's assignments on disk (site.state_dir/forwarder-<id>/): what it was asked to
write and what it has delivered, so a restart finishes the work and a repeated assignment
is recognised."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fitsflow.core.handoff import atomic_write_bytes
from fitsflow.core.layout import check_name
from fitsflow.core.poison import load_file


@dataclass
class Assignment:
    assignment: str
    image: str
    sensors: list[str]
    received_at: float = field(default_factory=time.time)
    #: sensor → {"path", "size", "checksum"} once FILE_DELIVERED was sent
    delivered: dict[str, dict] = field(default_factory=dict)
    #: sensors that cannot be written (never received), with the reason
    failed: dict[str, str] = field(default_factory=dict)
    complete: bool = False

    def pending(self) -> list[str]:
        return [s for s in self.sensors if s not in self.delivered and s not in self.failed]


def _assignment(data: bytes) -> Assignment:
    a = Assignment(**json.loads(data))
    check_name(a.image)
    if not isinstance(a.sensors, list) or not all(isinstance(x, str) for x in a.sensors):
        raise TypeError(f"assignment {a.assignment}: sensors must be a list of names")
    return a


class AssignmentBook:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.items: dict[str, Assignment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: What could not be read at start (set aside; the daemon raises an ALERT for each).
        self.rejected: list[str] = []
        for path in self.dir.glob("*.json"):
            a = load_file(path, _assignment, self.rejected)
            if a is not None:
                self.items[a.assignment] = a

    async def save(self, a: Assignment) -> None:
        """Persist ``a`` (from the event loop). Encoded here, where ``a`` changes: encoding it in
        the writer thread while another sensor of the assignment was recorded killed a
        forwarder ("dictionary changed size during iteration", chaos test). Written in a
        thread, one write per assignment at a time: its sensors finish concurrently, and an
        older state must not land after a newer one."""
        self.items[a.assignment] = a
        async with self._locks.setdefault(a.assignment, asyncio.Lock()):
            data = json.dumps(asdict(a)).encode()
            await asyncio.to_thread(atomic_write_bytes, self.dir / f"{check_name(a.assignment)}.json", data)

    def open_items(self) -> list[Assignment]:
        return [a for a in list(self.items.values()) if not a.complete]

    def prune(self, older_than_s: float) -> None:
        cutoff = time.time() - older_than_s
        for a in list(self.items.values()):
            if a.complete and a.received_at < cutoff:
                (self.dir / f"{a.assignment}.json").unlink(missing_ok=True)
                self.items.pop(a.assignment, None)
                self._locks.pop(a.assignment, None)
