"""The camera simulator: for each image, the camera events and telemetry on the bus and the
sensor readouts over SPEAD, the way a camera and its DAQ do it.

Per image: START_INTEGRATION → telemetry samples → (exposure) → readout over UDP →
END_READOUT → END_OF_IMAGE_TELEMETRY. RESEND_IMAGE messages make it send a stored image again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.camera_sim.sender import ReadoutInfo, SpeadSender
from fitsflow.camera_sim.store import ImageRecipe, ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.errors import Reject
from fitsflow.core.layout import obs_day
from fitsflow.core.messages import Message, make

_log = logging.getLogger(__name__)


def default_sensors(rafts: int = 1) -> list[str]:
    """``R22_S00`` … ``R22_S22`` for one raft (ComCam-like); more rafts take R21, R23, ..."""
    names = ["R22", "R21", "R23", "R12", "R32", "R11", "R13", "R31", "R33"]
    return [f"{r}_S{x}{y}" for r in names[:rafts] for x in range(3) for y in range(3)]


@dataclass
class SimSettings:
    instrument: str = "TESTCAM"
    sensors: list[str] = field(default_factory=default_sensors)
    rows: int = 4096
    cols: int = 4096
    dtype: str = "<i4"
    stripe_rows: int = 256
    exptime: float = 0.0
    seed: int = 1
    first_seq: int = 1
    #: Extra sleep between images (s).
    interval: float = 0.0


class CameraSimulator:
    """Library use: ``async with``-free — create, ``await start()``, ``await take_image()``..."""

    def __init__(self, settings: SimSettings, bus: MessageBus, sender: SpeadSender, store: ImageStore) -> None:
        self.settings = settings
        self.bus = bus
        self.sender = sender
        self.store = store
        self.seq = settings.first_seq
        self.sent: list[ImageRecipe] = []
        bus.subscribe("/queue/fitsflow.camera.resend", self._on_resend, name="camera-resend")

    def next_image_name(self, when: dt.datetime) -> str:
        return f"{self.settings.instrument}_O_{obs_day(when)}_{self.seq:06d}"

    async def take_image(self, group: str | None = None, snap: int = 0) -> ImageRecipe:
        """Expose and read out one image: events, telemetry, pixels. Returns its recipe."""
        s = self.settings
        now = dt.datetime.now(dt.timezone.utc)
        image = self.next_image_name(now)
        group = group or f"{image}_G"
        rows_per_stripe = max(1, min(s.stripe_rows, s.rows))
        stripe_count = -(-s.rows // rows_per_stripe)
        await self.bus.send(make("START_INTEGRATION", image, group=group, snap=snap, exptime=s.exptime,
                                 sensors=list(s.sensors), timestamp=now.isoformat()))
        await self._telemetry(image)
        if s.exptime:
            await asyncio.sleep(s.exptime)
        t_start = time.time()
        recipe = ImageRecipe(image=image, image_seq=self.seq, group=group, snap=snap, seed=s.seed, rows=s.rows,
                             cols=s.cols, dtype=s.dtype, stripe_count=stripe_count, sensors=list(s.sensors),
                             exptime=s.exptime, t_start=t_start, t_end=0.0)
        self.seq += 1
        await asyncio.to_thread(self._send_pixels, recipe)
        recipe = ImageRecipe(**{**recipe.__dict__, "t_end": time.time()})
        self.store.put(recipe)
        end = dt.datetime.now(dt.timezone.utc).isoformat()
        await self.bus.send(make("END_READOUT", image, timestamp=end, sensors=list(s.sensors)))
        await self._telemetry(image, after=True)  # telemetry keeps flowing: the end-of-image samples
        await self.bus.send(make("END_OF_IMAGE_TELEMETRY", image,
                                 timestamp=dt.datetime.now(dt.timezone.utc).isoformat()))
        self.sent.append(recipe)
        if s.interval:
            await asyncio.sleep(s.interval)
        return recipe

    def _send_pixels(self, recipe: ImageRecipe, only_sensors: set[str] | None = None) -> None:
        info = ReadoutInfo(recipe.image, recipe.image_seq, recipe.group, recipe.snap, recipe.t_start,
                           recipe.t_end or time.time())
        for index, name in enumerate(recipe.sensors):
            if only_sensors is not None and name not in only_sensors:
                continue
            raft, sensor = name.split("_", 1)
            pixels = sensor_pixels(recipe.seed, recipe.image_seq, index, recipe.rows, recipe.cols, recipe.dtype)
            self.sender.send_sensor(info, index, raft, sensor, pixels, recipe.stripe_count)

    async def resend(self, image: str, sensors: set[str] | None = None) -> bool:
        """Send a stored image again (all sensors, or some). False if it is not in the store."""
        recipe = self.store.get(image)
        if recipe is None:
            return False
        await asyncio.to_thread(self._send_pixels, recipe, sensors)
        end = dt.datetime.now(dt.timezone.utc).isoformat()
        await self.bus.send(make("END_READOUT", image, timestamp=end, sensors=list(recipe.sensors)))
        return True

    async def _on_resend(self, msg: Message) -> None:
        if not await self.resend(msg.image or ""):
            raise Reject(f"image {msg.image} is not in the camera store {self.store.directory}")
        _log.info("re-sent %s (%s)", msg.image, msg.data.get("reason", ""))

    async def _telemetry(self, image: str, after: bool = False) -> None:
        """A plausible set of telemetry samples (the header service samples them)."""
        ts = dt.datetime.now(dt.timezone.utc).isoformat()
        for topic, values in telemetry_samples(random.Random(f"{self.settings.seed}-{image}-{after}")).items():
            await self.bus.send(make("TELEMETRY", topic=topic, timestamp=ts, values=values))


def telemetry_samples(rng: random.Random) -> dict[str, dict[str, object]]:
    """One plausible value set per telemetry topic the default header keywords sample."""
    return {
        "mount.pointing": {"ra": rng.uniform(0, 360), "dec": rng.uniform(-90, 30),
                           "alt": rng.uniform(30, 90), "az": rng.uniform(0, 360), "rotpa": rng.uniform(-90, 90)},
        "camera.filter": {"name": rng.choice(["u", "g", "r", "i", "z", "y"])},
        "dome.status": {"azimuth": rng.uniform(0, 360), "shutter": "open"},
        "camera.temperatures": {"ccd": rng.uniform(-101, -99), "cryostat": rng.uniform(-130, -128)},
        "site.weather": {"temperature": rng.uniform(5, 15), "humidity": rng.uniform(10, 40),
                         "pressure": rng.uniform(740, 750)},
    }
