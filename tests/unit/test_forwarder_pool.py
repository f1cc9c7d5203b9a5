"""The controller's forwarder pool declares itself empty (ALARM and a panic for the shifter)
only when the listening controller has found no live forwarder for a further liveness
timeout: after a broker hang, forwarders can reconnect seconds after the controller."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from fitsflow.archive_controller import pool as pool_module
from fitsflow.archive_controller.config import ArchiveControllerConfig
from fitsflow.archive_controller.pool import POOL_FAULT, ForwarderPool
from fitsflow.core.faults import FaultEpisodes
from fitsflow.core.messages import make


@dataclass
class _BusCfg:
    reconnect_max_s: float = 1.0


@dataclass
class _Bus:
    """What the pool reads of the bus: whether it listens, and since when."""
    listening: bool = True
    last_connected_at: float | None = None
    cfg: _BusCfg = field(default_factory=_BusCfg)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_empty_pool_is_declared_only_after_a_further_liveness_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(pool_module.time, "monotonic", clock)
    told: list[tuple[str, bool]] = []

    async def notify(condition: str, detail: str, started: bool) -> None:
        told.append((condition, started))
    faults = FaultEpisodes("controller", notify, lambda coro, name, **k: coro.close())  # type: ignore[arg-type,return-value]
    bus = _Bus(last_connected_at=clock.now)
    pool = ForwarderPool(ArchiveControllerConfig(liveness_timeout_s=5.0), bus, faults)  # type: ignore[arg-type]

    async def beat(name: str) -> None:
        await pool.on_heartbeat(make("FORWARDER_HEARTBEAT", forwarder=name, load=0, capacity=2, sender=name))

    def after(seconds: float) -> None:
        clock.now += seconds

    after(3.0)
    pool.empty_for("IMG_1")  # listening for 3 s only: hear everyone first
    assert POOL_FAULT not in faults.active
    after(4.0)  # listening for 7 s (> 5 + 1), nobody heard: the hold starts
    pool.empty_for("IMG_1")
    after(4.9)
    pool.empty_for("IMG_1")
    assert POOL_FAULT not in faults.active
    asyncio.run(beat("f1"))  # a forwarder late from the broker's hang: no alarm, the hold ends
    assert pool.check() == ["f1"]
    after(5.1)  # f1 silent again for the liveness timeout
    pool.empty_for("IMG_2")
    after(4.9)
    pool.empty_for("IMG_2")
    assert POOL_FAULT not in faults.active, "the hold started again from f1's silence"
    after(0.2)
    pool.empty_for("IMG_2")
    assert POOL_FAULT in faults.active and "IMG_2" in faults.active[POOL_FAULT].detail
    assert "10 s" in faults.active[POOL_FAULT].detail
    asyncio.run(beat("f2"))
    assert pool.check() == ["f2"] and POOL_FAULT not in faults.active


def test_a_controller_not_listening_never_declares_the_pool_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(pool_module.time, "monotonic", clock)
    faults = FaultEpisodes("controller", _no_news, lambda coro, name, **k: coro.close())  # type: ignore[arg-type,return-value]
    bus = _Bus(listening=False, last_connected_at=clock.now)
    pool = ForwarderPool(ArchiveControllerConfig(liveness_timeout_s=5.0), bus, faults)  # type: ignore[arg-type]
    for _ in range(10):
        clock.now += 5.0
        pool.empty_for("IMG_1")
    assert POOL_FAULT not in faults.active


async def _no_news(*_a: Any) -> None:
    return None
