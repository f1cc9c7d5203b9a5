"""The archive controller keeps its book, its catch-up state and its view of the archive
registry through one database engine (one pool of connections), not one per part."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import sqlalchemy

from fitsflow.archive_controller.daemon import ArchiveControllerDaemon
from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.memory_link import MemoryBroker
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import load_config
from fitsflow.testing.config import make_site


def test_one_engine_for_the_whole_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = sqlalchemy.create_engine

    def counting(*args: object, **kwargs: object) -> object:
        engine = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(engine)
        return engine
    monkeypatch.setattr("fitsflow.core.db.create_engine", counting)
    cfg = load_config(make_site(tmp_path, ["stomp://127.0.0.1:61613"]))
    bus = MessageBus(cfg.bus, "controller-test", BusStore(tmp_path / "bus.sqlite"), [MemoryBroker().link("memory://0")])
    daemon = ArchiveControllerDaemon(cfg, bus, argparse.Namespace(instance="main"))
    try:
        assert len(made) == 1
        assert daemon.book.engine is daemon.catchup.engine is daemon.catchup.archive.engine is made[0]
    finally:
        daemon.book.close()
        daemon.catchup.archive.close()
        daemon.engine.dispose()
        bus.store.close()
