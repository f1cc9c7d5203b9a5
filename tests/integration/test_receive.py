"""The receive path over real UDP on loopback and a real broker: bit-exact round trip, late
start, packet loss, fuzzing, timeouts, restart mid-sensor, loss alerts."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import itertools
import os
import random
import socket
import struct
import threading
import uuid
from pathlib import Path
from typing import Awaitable

import numpy as np
import pytest
import spead2
import spead2.send

from fitsflow.camera_sim.pixels import sensor_pixels
from fitsflow.camera_sim.sender import ReadoutInfo, SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config, load_config
from fitsflow.core.messages import Message, make
from fitsflow.core import rawstore
from fitsflow.core.rawstore import read_meta, read_pixels
from fitsflow.core.states import State
from fitsflow.core.spead_format import HEAP_ADDRESS_BITS, ITEMS, encode_name
from fitsflow.receiver.daemon import ReceiverDaemon
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.udp import LossyRelay, free_udp_port
from fitsflow.testing.wait import async_wait_for

pytestmark = pytest.mark.broker
SENSORS = ["R22_S00", "R22_S01", "R22_S02", "R22_S10"]


class Harness:
    """An in-process receiver daemon plus a listening bus and a camera simulator."""

    def __init__(self, cfg: Config, port: int, tmp: Path) -> None:
        self.cfg = cfg
        self.port = port
        self.tmp = tmp
        self.readouts: list[Message] = []
        self.alerts: list[Message] = []
        self.stats: list[Message] = []
        self.receiver: ReceiverDaemon | None = None
        self._rbus: MessageBus | None = None
        self.instance = f"t{uuid.uuid4().hex[:8]}"
        self.listener: MessageBus | None = None

    async def start_listener(self) -> None:
        self.listener = MessageBus.from_config(self.cfg, f"listener-{self.instance}")

        async def on(msg: Message) -> None:
            {"READOUT_COMPLETE": self.readouts, "ALERT": self.alerts, "RECEIVER_STATS": self.stats}[msg.type].append(msg)
        for dest in ("/topic/fitsflow.readout", "/topic/fitsflow.alerts", "/topic/fitsflow.stats"):
            self.listener.subscribe(dest, on)
        await self.listener.start()
        assert await self.listener.wait_connected(10)

    async def start_receiver(self, instance: str | None = None) -> ReceiverDaemon:
        """Start the receiver; by default as this harness's own instance (its client-id and
        durable subscriptions are then this test's alone)."""
        instance = instance or self.instance
        self._rbus = MessageBus.from_config(self.cfg, f"receiver-{instance}")
        self.receiver = ReceiverDaemon(self.cfg, self._rbus, argparse.Namespace(instance=instance))
        await self._rbus.start()
        assert await self._rbus.wait_connected(10)
        await self.receiver.start()
        return self.receiver

    async def stop_receiver(self) -> None:
        assert self.receiver is not None and self._rbus is not None
        receiver, self.receiver = self.receiver, None
        try:
            await receiver.stop()
        finally:
            await self._rbus.stop()

    def simulator(self, sender: SpeadSender, **settings: object) -> CameraSimulator:
        values: dict[str, object] = {"instrument": "TESTCAM", "sensors": list(SENSORS), "rows": 200, "cols": 300,
                                     "stripe_rows": 64, **settings}
        s = SimSettings(**values)  # type: ignore[arg-type]
        return CameraSimulator(s, self.listener, sender, ImageStore(self.tmp / "store", 50))

    def readout(self, image: str) -> Message | None:
        return next((m for m in reversed(self.readouts) if m.image == image), None)

    @property
    def raw_root(self) -> Path:
        return self.cfg.paths.resolved().raw_buffer

    def assert_bit_exact(self, image: str, seq: int, sensors: list[str], seed: int = 1,
                         skip_rows: dict[str, list[list[int]]] | None = None) -> None:
        for index, name in enumerate(SENSORS):
            if name not in sensors:
                continue
            raft, sensor = name.split("_")
            meta = read_meta(self.raw_root, image, raft, sensor)
            assert meta is not None, f"{image} {name} not stored"
            got = np.array(read_pixels(self.raw_root, meta))
            want = sensor_pixels(seed, seq, index, meta.rows, meta.cols)
            for start, end in (skip_rows or {}).get(name, []):
                assert not got[start:end].any(), f"{name}: missing rows {start}-{end} are not zeros"
                want[start:end] = 0
            assert np.array_equal(got, want), f"{image} {name} differs from the seeded pixels"

    async def close(self) -> None:
        """Stop what runs; safe to call again (tests close, and the runner closes after a failure)."""
        try:
            if self.receiver is not None:
                await self.stop_receiver()
        finally:
            if self.listener is not None:
                listener, self.listener = self.listener, None
                await listener.stop()


class HarnessFactory:
    """Makes harnesses and closes every one it made, also when the test failed half-way:
    a receiver left connected would hold its client-id and UDP port."""

    def __init__(self, tmp_path: Path, broker: PrivateBroker) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.made: list[Harness] = []

    async def __call__(self, **receiver: object) -> Harness:
        port = free_udp_port()
        # image_timeout_s: long, so that a loaded machine never cuts an image short; the tests
        # that need the deadline to pass set their own
        settings = {"streams": [f"127.0.0.1:{port}"], "image_timeout_s": 20.0, "socket_buffer_bytes": 4 << 20,
                    "stats_interval_s": 0.5, "max_heap_bytes": 1 << 20}
        settings.update(receiver)
        cfg = load_config(make_site(self.tmp_path, [self.broker.url], extra={"receiver": settings}))
        h = Harness(cfg, port, self.tmp_path)
        self.made.append(h)
        await h.start_listener()
        return h

    def run(self, coro: Awaitable[None], timeout: float = 120) -> None:
        """Run a test's coroutine, then close its harnesses in the same event loop."""
        async def guarded() -> None:
            try:
                await asyncio.wait_for(coro, timeout)
            finally:
                for h in self.made:
                    await h.close()
        asyncio.run(guarded())


@pytest.fixture
def broker(fresh_broker: PrivateBroker) -> PrivateBroker:
    """A broker of each test's own: the receiver's durable subscriptions (START_INTEGRATION,
    IMAGE_IN_ARCHIVE) would otherwise keep one test's camera events for the next test."""
    return fresh_broker


@pytest.fixture
def harness_factory(tmp_path: Path, broker: PrivateBroker) -> HarnessFactory:
    return HarnessFactory(tmp_path, broker)


@pytest.mark.parametrize("direct_io", [True, False])
def test_bit_exact_round_trip(harness_factory: HarnessFactory, monkeypatch: pytest.MonkeyPatch,
                              direct_io: bool) -> None:
    """Bit-exact over real UDP, with the stripes' whole blocks written with O_DIRECT (the
    default, where the raw buffer's filesystem takes it) and through the page cache."""
    direct_writes: list[int] = []
    real = rawstore._pwrite_all

    def counting(fd: int, data: memoryview, offset: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes.append(len(data))
        real(fd, data, offset)

    monkeypatch.setattr(rawstore, "_pwrite_all", counting)

    async def main() -> None:
        h = await harness_factory(direct_io=direct_io)
        await h.start_receiver()
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=200e6) as sender:
            sim = h.simulator(sender)
            recipes = [await sim.take_image() for _ in range(2)]
        for r in recipes:
            await async_wait_for(lambda: h.readout(r.image), 30, what=f"READOUT_COMPLETE of {r.image}")
            done = h.readout(r.image)
            assert done.data == {"present": SENSORS, "missing": [], "partial": [], "timed_out": False}
            h.assert_bit_exact(r.image, r.image_seq, SENSORS)
        assert recipes[0].rows % 64 != 0  # the short last stripe was exercised
        if direct_io and rawstore.direct_io_supported(h.raw_root):
            assert direct_writes, "no stripe was written with O_DIRECT"
        elif not direct_io:
            assert not direct_writes
        c = h.receiver.streams[0].counters
        assert c.heaps_incomplete == 0 and c.heaps_bad == 0 and c.bytes_lost == 0
        # A RECEIVER_STATS sent after the last heap (an earlier one may arrive late on a loaded machine).
        await async_wait_for(lambda: h.stats and h.stats[-1].data["streams"][0]["heaps_complete"] >= 2 * 4 * 4, 30,
                             what="RECEIVER_STATS counting every heap")
        await h.close()
    harness_factory.run(main())


def test_every_configured_writer_writes_at_once(harness_factory: HarnessFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``receiver.writers`` stripes are written at the same time, however many that is: the
    stripes have threads of their own (asyncio's shared pool stops at 32 threads, 6 on two
    cores, and then the configured writers would wait for a thread while the ring fills). The
    first 40 stripes meet at a barrier inside the write; fewer threads than 40 break it."""
    writers = 40
    gate = threading.Barrier(writers, timeout=60)
    entered = itertools.count()
    real = rawstore.SensorWriter.write_stripe

    def gated(self: rawstore.SensorWriter, index: int, row_start: int, pixels: np.ndarray) -> bool:
        if next(entered) < writers:
            gate.wait()
        return real(self, index, row_start, pixels)

    monkeypatch.setattr(rawstore.SensorWriter, "write_stripe", gated)

    async def main() -> None:
        h = await harness_factory(writers=writers)
        await h.start_receiver()
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=200e6) as sender:
            recipe = await h.simulator(sender, stripe_rows=4).take_image()  # 50 stripes per sensor
        await async_wait_for(lambda: h.readout(recipe.image), 90, what=f"READOUT_COMPLETE of {recipe.image}")
        assert not gate.broken, "fewer stripes than receiver.writers were written at once"
        assert h.readout(recipe.image).data["missing"] == [] and h.readout(recipe.image).data["partial"] == []
        h.assert_bit_exact(recipe.image, recipe.image_seq, SENSORS)
        await h.close()
    harness_factory.run(main())


def test_receiver_started_late_decodes(harness_factory: HarnessFactory) -> None:
    """Descriptors travel in every heap: a receiver that missed the stream's start decodes at once."""
    async def main() -> None:
        h = await harness_factory()
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=200e6) as sender:
            sim = h.simulator(sender)
            unseen = await sim.take_image()  # nobody listening: lost, as for a dead receiver
            await h.start_receiver()
            seen = await sim.take_image()
        await async_wait_for(lambda: h.readout(seen.image), 30)
        assert h.readout(seen.image).data["missing"] == []
        h.assert_bit_exact(seen.image, seen.image_seq, SENSORS)
        assert h.readout(unseen.image) is None
        await h.close()
    harness_factory.run(main())


def test_packet_loss_gives_partial_sensors_with_exact_missing_rows(
        harness_factory: HarnessFactory) -> None:
    async def main() -> None:
        h = await harness_factory(loss_alert_fraction=0.001, image_timeout_s=5.0)
        await h.start_receiver()
        # 200 rows in 4 stripes: 50 rows each. Heap counters run 1, 2, ... in send order:
        # heap 3 = sensor 0 stripe 2 (rows 100-150); heap 10 = sensor 2 stripe 1 (rows 50-100).
        relay = LossyRelay(h.port, {3, 10})
        try:
            with SpeadSender([("127.0.0.1", relay.listen_port)], rate_bytes_s=100e6) as sender:
                sim = h.simulator(sender, stripe_rows=50)
                r = await sim.take_image()
            await async_wait_for(lambda: h.readout(r.image), 30)
        finally:
            relay.close()
        assert sorted(relay.dropped) == [3, 10]
        done = h.readout(r.image)
        assert done.data["partial"] == ["R22_S00", "R22_S02"] and done.data["missing"] == []
        assert done.data["timed_out"] is True  # incomplete sensors wait for their deadline
        m0 = read_meta(h.raw_root, r.image, "R22", "S00")
        m2 = read_meta(h.raw_root, r.image, "R22", "S02")
        assert m0.missing_rows == [[100, 150]] and m0.partial and m0.stripes_received == [0, 1, 3]
        assert m2.missing_rows == [[50, 100]]
        h.assert_bit_exact(r.image, r.image_seq, SENSORS,
                           skip_rows={"R22_S00": [[100, 150]], "R22_S02": [[50, 100]]})
        c = h.receiver.streams[0].counters
        assert c.heaps_incomplete == 2 and c.bytes_lost > 0
        await async_wait_for(lambda: h.alerts, 10, what="a loss ALERT")
        assert "lost" in h.alerts[0].data["message"] and h.alerts[0].data["severity"] == "error"
        # The relay dropped them, before the receiver's socket: the alert says so.
        assert "lost before it" in h.alerts[0].data["message"], h.alerts[0].data["message"]
        # The camera re-sends the image (catch-up): the stripes the partial sensors lack fill
        # them in place; the others are duplicates. A new READOUT_COMPLETE says it is whole.
        announced = len(h.readouts)
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=100e6) as sender:
            sim.sender = sender  # the camera sends directly now: no loss
            assert await sim.resend(r.image)
        await async_wait_for(lambda: len(h.readouts) > announced and h.readout(r.image).data["partial"] == [], 30,
                             what="the refilled image announced whole")
        assert not read_meta(h.raw_root, r.image, "R22", "S00").partial
        h.assert_bit_exact(r.image, r.image_seq, SENSORS)
        leftovers = [p.name for p in h.raw_root.joinpath(r.image).glob(".*") if p.suffix in (".assembling", ".stripes", ".meta")]
        assert leftovers == [], "the refill left temporary files"
        await h.close()
    harness_factory.run(main())


def test_timeout_lists_the_missing_sensor(harness_factory: HarnessFactory) -> None:
    async def main() -> None:
        h = await harness_factory(image_timeout_s=1.0)
        await h.start_receiver()
        image = "TESTCAM_O_20261121_000099"
        await h.listener.send(make("START_INTEGRATION", image, group="g", snap=0, exptime=0.0, sensors=SENSORS,
                                   timestamp="2026-11-21T00:00:00Z"))
        await async_wait_for(lambda: image in h.receiver.assembler.images, 10, what="START_INTEGRATION received")
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=100e6) as sender:
            info = ReadoutInfo(image, 99, "g", 0, 1.0, 2.0)
            for index, name in enumerate(SENSORS[:3]):  # the fourth never comes
                raft, sensor = name.split("_")
                await asyncio.to_thread(sender.send_sensor, info, index, raft, sensor,
                                        sensor_pixels(1, 99, index, 200, 300), 4)
        await async_wait_for(lambda: h.readout(image), 30)
        assert h.readout(image).data == {"present": SENSORS[:3], "missing": ["R22_S10"], "partial": [],
                                         "timed_out": True}
        await h.close()
    harness_factory.run(main())


def test_restart_mid_sensor_resumes_from_disk(harness_factory: HarnessFactory) -> None:
    async def main() -> None:
        h = await harness_factory(image_timeout_s=30.0, expected_sensors=SENSORS[:1])
        await h.start_receiver()
        image, seq = "TESTCAM_O_20261121_000077", 77
        pixels = sensor_pixels(1, seq, 0, 200, 300)
        info = ReadoutInfo(image, seq, "g", 0, 1.0, 2.0)
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=100e6) as sender:
            await asyncio.to_thread(sender.send_sensor, info, 0, "R22", "S00", pixels, 4, {0, 1})
            await async_wait_for(lambda: h.receiver.streams[0].counters.stripes_stored == 2, 10)
            await h.stop_receiver()  # mid-sensor: 2 of 4 stripes on disk
            assert read_meta(h.raw_root, image, "R22", "S00") is None
            await h.start_receiver()
            await asyncio.to_thread(sender.send_sensor, info, 0, "R22", "S00", pixels, 4, {1, 2, 3})
        await async_wait_for(lambda: h.readout(image), 30)
        assert h.readout(image).data["present"] == ["R22_S00"] and h.readout(image).data["partial"] == []
        assert h.receiver.streams[0].counters.heaps_duplicate == 1  # stripe 1 came twice
        h.assert_bit_exact(image, seq, ["R22_S00"])
        await h.close()
    harness_factory.run(main())


def _heap_without_descriptors(port: int) -> None:
    pool = spead2.ThreadPool()
    stream = spead2.send.UdpStream(pool, [("127.0.0.1", port)], spead2.send.StreamConfig(rate=10e6))
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, HEAP_ADDRESS_BITS, 0))
    for spec in ITEMS:
        shape = (100,) if spec.name == "pixels" else spec.shape
        ig.add_item(spec.id, spec.name, spec.description, shape, dtype=np.dtype(spec.dtype))
        ig[spec.name].value = np.zeros(shape, dtype=spec.dtype)
    stream.send_heap(ig.get_heap(descriptors="none", data="all"))
    del stream
    pool.stop()


def _heap_with_wrong_shape(port: int) -> None:
    pool = spead2.ThreadPool()
    stream = spead2.send.UdpStream(pool, [("127.0.0.1", port)], spead2.send.StreamConfig(rate=10e6))
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, HEAP_ADDRESS_BITS, 0))
    for spec in ITEMS:
        shape = (123,) if spec.name == "pixels" else spec.shape
        ig.add_item(spec.id, spec.name, spec.description, shape, dtype=np.dtype(spec.dtype))
        ig[spec.name].value = np.ones(shape, dtype=spec.dtype)
    for name in ("image_name", "group_id", "raft", "sensor"):
        ig[name].value = encode_name("X1", name)
    ig["sensor_rows"].value, ig["sensor_cols"].value = np.uint32(10), np.uint32(10)
    ig["stripe_count"].value, ig["stripe_index"].value, ig["row_start"].value = np.uint32(1), np.uint32(0), np.uint32(0)
    stream.send_heap(ig.get_heap(descriptors="all", data="all"))  # 123 pixels for a 10x10 sensor
    del stream
    pool.stop()


def test_fuzzed_and_malformed_input_is_counted_and_harmless(
        harness_factory: HarnessFactory) -> None:
    async def main() -> None:
        h = await harness_factory()
        await h.start_receiver()
        rng = random.Random(1234)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A sender that never sends descriptors, to a fresh stream: decodes nothing.
        _heap_without_descriptors(h.port)
        await async_wait_for(lambda: h.receiver.streams[0].counters.heaps_bad >= 1, 10)
        assert h.receiver.streams[0].counters.bad_reasons == {"no descriptors": 1}
        for i in range(3000):
            kind = i % 3
            if kind == 0:  # random bytes
                packet = rng.randbytes(rng.randint(1, 1500))
            elif kind == 1:  # a SPEAD header, then garbage
                packet = bytes([0x53, 4, 2, 6, 0, 0]) + struct.pack(">H", rng.randint(0, 40)) + rng.randbytes(
                    rng.randint(0, 400))
            else:  # plausible item pointers with random values
                n = rng.randint(1, 8)
                words = [(rng.choice([0x8001, 0x8002, 0x8003, 0x8004, 0x1000, 0x1010, 0x0005]) << 48)
                         | rng.getrandbits(48) for _ in range(n)]
                packet = bytes([0x53, 4, 2, 6, 0, 0]) + struct.pack(">H", n) + b"".join(
                    struct.pack(">Q", w) for w in words) + rng.randbytes(rng.randint(0, 200))
            sock.sendto(packet, ("127.0.0.1", h.port))
            if i % 200 == 0:
                await asyncio.sleep(0.01)
        sock.close()
        _heap_with_wrong_shape(h.port)
        await async_wait_for(lambda: h.receiver.streams[0].counters.bad_reasons.get("wrong shape"), 10)
        # After all that, a real image still arrives whole and exact.
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=100e6) as sender:
            sim = h.simulator(sender, first_seq=500)
            r = await sim.take_image()
        await async_wait_for(lambda: h.readout(r.image), 30)
        assert h.readout(r.image).data["present"] == SENSORS
        h.assert_bit_exact(r.image, r.image_seq, SENSORS)
        assert h.receiver.rejected.total > 0, "spead2's rejections were not counted"
        assert h.receiver.failed is None
        await h.close()
    harness_factory.run(main())


def test_archived_images_leave_the_raw_buffer(harness_factory: HarnessFactory) -> None:
    """IMAGE_IN_ARCHIVE for every sensor, over the broker, then the grace period: the image's
    raw readouts go; an image with a sensor not archived (or archived with an error) stays.
    The receiver is away while the archive announces the first image: the durable
    subscription still delivers it."""
    async def main() -> None:
        h = await harness_factory(raw_keep_s=1.0, raw_clean_interval_s=0.2)
        await h.start_receiver()
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=200e6) as sender:
            sim = h.simulator(sender)
            whole, kept = [await sim.take_image() for _ in range(2)]
        for r in (whole, kept):
            await async_wait_for(lambda: h.readout(r.image), 30, what=f"READOUT_COMPLETE of {r.image}")
        await h.stop_receiver()

        async def announce(image: str, sensor: str, status: int) -> None:
            raft, name = sensor.split("_")
            await h.listener.send(make("IMAGE_IN_ARCHIVE", image, status=status, description="test",
                                       path=f"/archive/{image}_{sensor}.fits",
                                       data_id={"image": image, "raft": raft, "sensor": name}))
        for s in SENSORS:
            await announce(whole.image, s, 0)
        for s in SENSORS[:-1]:
            await announce(kept.image, s, 0)
        await announce(kept.image, SENSORS[-1], 1)  # the archive failed to ingest it
        receiver = await h.start_receiver()
        await async_wait_for(lambda: not (h.raw_root / whole.image).exists(), 30,
                             what=f"{whole.image} removed from the raw buffer")
        await asyncio.sleep(1.5)  # more than the grace period: the other one must still be there
        assert (h.raw_root / kept.image).is_dir()
        h.assert_bit_exact(kept.image, kept.image_seq, SENSORS)
        assert receiver.raw_removed == 1 and receiver.raw_waiting == 1
        assert not list(h.raw_root.glob(".trash-*"))
        await h.close()
    harness_factory.run(main())


def test_a_port_that_cannot_be_opened_is_an_alarm_then_received_once_free(harness_factory: HarnessFactory) -> None:
    """Another process holds the receiver's UDP port (as a stale instance or a VIP not yet on
    this node would make it fail): the receiver does not exit into a restart loop; it stays
    up in ALARM naming the port and the system's reason, and receives as soon as the port
    is free, without a restart."""
    async def main() -> None:
        h = await harness_factory(reopen_max_s=0.5)
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", h.port))
        try:
            receiver = await h.start_receiver()
            assert receiver.failed is None
            await async_wait_for(lambda: any(f"127.0.0.1:{h.port}" in a.data["message"] and "in use" in
                                             a.data["message"] for a in h.alerts), 30, what="ALERT naming the port")
            assert receiver.effective_state() == State.ALARM
            [episode] = receiver.faults.active.values()
            assert "Address already in use" in episode.detail
        finally:
            holder.close()
        await async_wait_for(lambda: not receiver.faults.active, 30, what="the port opened and the ALARM cleared")
        assert receiver.effective_state() == State.ON and receiver.failed is None
        with SpeadSender([("127.0.0.1", h.port)], rate_bytes_s=200e6) as sender:
            image = await h.simulator(sender).take_image()
        await async_wait_for(lambda: h.readout(image.image), 30, what=f"READOUT_COMPLETE of {image.image}")
        assert h.readout(image.image).data["missing"] == []
        h.assert_bit_exact(image.image, image.image_seq, SENSORS)
        await h.close()
    harness_factory.run(main())
