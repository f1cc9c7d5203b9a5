"""The header service's state on disk (under site.state_dir/header-service/): one record per
open image and the recent telemetry history, each written atomically, so a restart in the
middle of an image resumes it with what was already collected."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from fitsflow.core.handoff import atomic_write_bytes
from fitsflow.core.layout import check_name
from fitsflow.header_service.builder import ImageRecord, Sample


class HeaderState:
    def __init__(self, directory: Path, history_per_topic: int) -> None:
        self.dir = Path(directory)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        self.history_per_topic = history_per_topic
        self.records: dict[str, ImageRecord] = {}
        self.history: dict[str, list[Sample]] = {}
        self._load()

    def _load(self) -> None:
        for path in (self.dir / "images").glob("*.json"):
            rec = ImageRecord(**json.loads(path.read_text()))
            self.records[rec.image] = rec
        try:
            raw = json.loads((self.dir / "telemetry.json").read_text())
            self.history = {topic: [Sample(**s) for s in samples] for topic, samples in raw.items()}
        except FileNotFoundError:
            pass

    def record(self, image: str) -> ImageRecord:
        check_name(image)
        return self.records.setdefault(image, ImageRecord(image=image))

    def save(self, rec: ImageRecord) -> None:
        atomic_write_bytes(self.dir / "images" / f"{check_name(rec.image)}.json", json.dumps(asdict(rec)).encode())

    def forget(self, image: str) -> None:
        self.records.pop(image, None)
        (self.dir / "images" / f"{check_name(image)}.json").unlink(missing_ok=True)

    def add_sample(self, topic: str, sample: Sample) -> None:
        samples = self.history.setdefault(topic, [])
        samples.append(sample)
        samples.sort(key=lambda s: s.timestamp)
        del samples[:-self.history_per_topic]
        atomic_write_bytes(self.dir / "telemetry.json", json.dumps(
            {t: [asdict(s) for s in ss] for t, ss in self.history.items()}).encode())
