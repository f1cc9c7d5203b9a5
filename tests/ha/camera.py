"""The camera of the HA lab: the simulator on an event loop thread of its own, sending to the
receiver's virtual IP, serving the catch-up's re-sends, and watching DAEMON_STATE to time
when a moved daemon is back."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, ImageRecipe, SimSettings
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.messages import Message, destination_of


@dataclass(frozen=True)
class StateSeen:
    at: float  # time.monotonic() on arrival
    daemon: str
    host: str
    state: str


class Camera:
    """Shoots images while :attr:`shooting` is set; re-sends on request all the time."""

    def __init__(self, cfg: Config, store: Path, stream: tuple[str, int], sensors: list[str],
                 instrument: str, interval: float = 0.5) -> None:
        self.cfg = cfg
        self.settings = SimSettings(instrument=instrument, sensors=sensors, rows=64, cols=64, stripe_rows=16,
                                    interval=interval)
        self.store = ImageStore(store, 10_000)
        self.stream = stream
        self.recipes: list[ImageRecipe] = []
        self._busy = False  # the loop is taking an image (or about to look whether to)
        self.states: list[StateSeen] = []
        self.shooting = threading.Event()
        self._closing = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the camera did not reach the broker in {timeout} s: {self.error}")

    def close(self) -> None:
        self._closing.set()
        self._thread.join(60)

    def shoot(self, seconds: float) -> None:
        self.shooting.set()
        time.sleep(seconds)

    def stop_shooting(self) -> None:
        """Stop after the image in progress (which is then complete and in :attr:`recipes`).
        Waiting for the count to stay still was not enough: an image whose bus sends waited
        for a loaded broker was appended after the test had read the list."""
        self.shooting.clear()
        while self._busy:
            time.sleep(0.1)

    def back_on(self, daemon: str, since: float, host: str | None = None, not_host: str | None = None) -> float | None:
        """Seconds from ``since`` to the first DAEMON_STATE ON of ``daemon`` (ident prefix,
        e.g. ``archive-controller@``) from ``host`` / not from ``not_host``; None: not yet."""
        for s in list(self.states):
            if (s.at >= since and s.daemon.startswith(daemon) and s.state == "ON"
                    and (host is None or s.host == host) and (not_host is None or s.host != not_host)):
                return s.at - since
        return None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self._ready.set()

    async def _on_state(self, msg: Message) -> None:
        self.states.append(StateSeen(time.monotonic(), str(msg.data.get("daemon")), str(msg.data.get("host")),
                                     str(msg.data.get("state"))))

    async def _main(self) -> None:
        bus = MessageBus.from_config(self.cfg, "camera")
        bus.subscribe(destination_of("DAEMON_STATE"), self._on_state, name="lab-states")
        with SpeadSender([self.stream], rate_bytes_s=20e6) as sender:
            sim = CameraSimulator(self.settings, bus, sender, self.store)
            await bus.start()
            if not await bus.wait_connected(60):
                raise TimeoutError("no broker")
            self._ready.set()
            while not self._closing.is_set():
                self._busy = True  # before looking at shooting: stop_shooting then sees it
                if self.shooting.is_set():
                    self.recipes.append(await sim.take_image())
                    self._busy = False
                else:
                    self._busy = False
                    await asyncio.sleep(0.1)
            await bus.stop()
