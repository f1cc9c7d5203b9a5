"""A forwarder's assignments on disk (site.state_dir/forwarder-<id>/): what it was asked to
write and what it has delivered, so a restart finishes the work and a repeated assignment
is recognised."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fitsflow.core.handoff import atomic_write_bytes
from fitsflow.core.layout import check_name


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


class AssignmentBook:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.items: dict[str, Assignment] = {}
        for path in self.dir.glob("*.json"):
            a = Assignment(**json.loads(path.read_text()))
            self.items[a.assignment] = a

    def snapshot(self, a: Assignment) -> tuple[Path, bytes]:
        """Record ``a`` and return its file and content, to write with ``atomic_write_bytes``.
        Take it where ``a`` changes (the event loop): serialising it in a writer thread while
        another sensor of the assignment was recorded killed a forwarder ("dictionary changed
        size during iteration", chaos test)."""
        self.items[a.assignment] = a
        return self.dir / f"{check_name(a.assignment)}.json", json.dumps(asdict(a)).encode()

    def save(self, a: Assignment) -> None:
        atomic_write_bytes(*self.snapshot(a))

    def open_items(self) -> list[Assignment]:
        # list() first: save() runs in worker threads and may add an item meanwhile
        # ("dictionary changed size during iteration" killed the forwarder in the chaos test).
        return [a for a in list(self.items.values()) if not a.complete]

    def prune(self, older_than_s: float) -> None:
        cutoff = time.time() - older_than_s
        for a in list(self.items.values()):
            if a.complete and a.received_at < cutoff:
                (self.dir / f"{a.assignment}.json").unlink(missing_ok=True)
                self.items.pop(a.assignment, None)
