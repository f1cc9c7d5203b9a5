"""Bus benchmark: persistent messages/s, one producer → one consumer, through fitsflow's bus
and through raw stomp.py in the same run against the same private ActiveMQ; and the time
from a broker restart to the first delivered message.

    ./dev.sh bench bus [--messages N]

Both sides do the same durable work per message: persistent SEND with a receipt awaited
before the next one, client-individual ACK after handling. fitsflow adds, per message, the
JSON envelope and schema check, the processed-id record (SQLite, synchronous=FULL) and the
hand-off between stomp.py's thread and the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import stomp

from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.stomp_link import StompLink
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import BusConfig
from fitsflow.core.messages import Message, make
from fitsflow.testing.broker import PrivateBroker


def raw_stomp(url_port: int, n: int, body: str) -> float:
    """Raw stomp.py: receipt per send, client-individual ack per message. Returns msg/s."""
    dest = f"/queue/bench.raw.{time.monotonic_ns()}"
    done = threading.Event()
    count = 0
    consumer = stomp.Connection([("127.0.0.1", url_port)])
    producer = stomp.Connection([("127.0.0.1", url_port)])

    class C(stomp.ConnectionListener):
        def on_message(self, frame: stomp.utils.Frame) -> None:
            nonlocal count
            consumer.ack(frame.headers["message-id"], "1")
            count += 1
            if count == n:
                done.set()

    class P(stomp.ConnectionListener):
        def __init__(self) -> None:
            self.receipts: dict[str, threading.Event] = {}

        def on_receipt(self, frame: stomp.utils.Frame) -> None:
            self.receipts[frame.headers["receipt-id"]].set()

    plistener = P()
    consumer.set_listener("c", C())
    producer.set_listener("p", plistener)
    consumer.connect(wait=True)
    producer.connect(wait=True)
    consumer.subscribe(dest, id="1", ack="client-individual", headers={"activemq.prefetchSize": "100"})
    time.sleep(0.2)
    t0 = time.perf_counter()
    for i in range(n):
        rid = f"r{i}"
        ev = plistener.receipts[rid] = threading.Event()
        producer.send(dest, body, headers={"persistent": "true", "MsgType": "ALERT"}, receipt=rid)
        ev.wait(10)
    done.wait(120)
    elapsed = time.perf_counter() - t0
    producer.disconnect()
    consumer.disconnect()
    return n / elapsed


def fitsflow_bus(url: str, n: int, state: Path) -> float:
    """The same through fitsflow's bus. Producer and consumer each run their own event loop
    in their own thread, as two daemons would (raw stomp.py's two connections likewise each
    have their own receiver thread). Returns msg/s."""
    dest = f"/queue/bench.ff.{time.monotonic_ns()}"
    cfg = BusConfig(brokers=(url,))
    subscribed = threading.Event()
    finished = threading.Event()
    stop_consumer = threading.Event()

    async def consume() -> None:
        consumer = MessageBus(cfg, "bench-c", BusStore(state / f"c{time.monotonic_ns()}.sqlite"), [StompLink(url)])
        count = 0

        async def handler(msg: Message) -> None:
            nonlocal count
            count += 1
            if count == n:
                finished.set()
        consumer.subscribe(dest, handler)
        await consumer.start()
        await consumer.wait_connected(10)
        subscribed.set()
        while not stop_consumer.is_set():
            await asyncio.sleep(0.05)
        await consumer.stop()

    consumer_thread = threading.Thread(target=lambda: asyncio.run(consume()))
    consumer_thread.start()
    subscribed.wait(30)

    async def produce() -> float:
        producer = MessageBus(cfg, "bench-p", BusStore(state / f"p{time.monotonic_ns()}.sqlite"), [StompLink(url)])
        await producer.start()
        await producer.wait_connected(10)
        msgs = [make("ALERT", severity="info", source="bench", message=f"message {i:08d}") for i in range(n)]
        t0 = time.perf_counter()
        for msg in msgs:
            await producer.send(msg, dest)
        await asyncio.to_thread(finished.wait, 120)
        elapsed = time.perf_counter() - t0
        assert producer.stats.outboxed == 0, "benchmark invalid: messages went through the outbox"
        await producer.stop()
        return n / elapsed

    try:
        return asyncio.run(produce())
    finally:
        stop_consumer.set()
        consumer_thread.join()


async def restart_to_delivery(broker: PrivateBroker, state: Path) -> tuple[float, float]:
    """Kill -9 the broker, restart it, and time (start → port open) and (port open → first
    message, sent during the outage, delivered to a consumer). Default bus settings."""
    dest = f"/queue/bench.restart.{time.monotonic_ns()}"
    cfg = BusConfig(brokers=(broker.url,))
    producer = MessageBus(cfg, "rs-p", BusStore(state / f"rp{time.monotonic_ns()}.sqlite"), [StompLink(broker.url)])
    consumer = MessageBus(cfg, "rs-c", BusStore(state / f"rc{time.monotonic_ns()}.sqlite"), [StompLink(broker.url)])
    got = asyncio.Event()

    async def handler(msg: Message) -> None:
        got.set()
    consumer.subscribe(dest, handler)
    await consumer.start()
    await producer.start()
    await consumer.wait_connected(10)
    await producer.wait_connected(10)
    await asyncio.to_thread(broker.kill)
    while producer.connected_brokers or consumer.connected_brokers:
        await asyncio.sleep(0.01)
    await producer.send(make("ALERT", severity="info", source="bench", message="after restart"), dest)
    await asyncio.sleep(2.0)  # an outage of some length, as in real life
    t_start = time.perf_counter()
    await asyncio.to_thread(broker.start)
    t_open = time.perf_counter()
    await asyncio.wait_for(got.wait(), 60)
    t_got = time.perf_counter()
    await producer.stop()
    await consumer.stop()
    return t_open - t_start, t_got - t_open


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the bus's reconnect warnings are expected here
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        broker = PrivateBroker(base / "amq", heap_mb=512).start()
        try:
            body = make("ALERT", severity="info", source="bench", message="message 00000000").encode()
            raw_stomp(broker.stomp_port, 500, body)  # warm the broker's JIT
            raws, ffs = [], []
            for r in range(args.rounds):
                raws.append(raw_stomp(broker.stomp_port, args.messages, body))
                ffs.append(fitsflow_bus(broker.url, args.messages, base))
                print(f"round {r + 1}: raw stomp.py {raws[-1]:8.0f} msg/s   fitsflow bus {ffs[-1]:8.0f} msg/s",
                      flush=True)
            raw, ff = statistics.median(raws), statistics.median(ffs)
            print(f"\npersistent messages, 1 producer → 1 consumer, receipt per send, ack per message, "
                  f"{args.messages} per round, median of {args.rounds}:")
            print(f"  raw stomp.py   {raw:8.0f} msg/s")
            print(f"  fitsflow bus   {ff:8.0f} msg/s   ratio {ff / raw:.2f}")
            opens, deliveries = [], []
            for _ in range(3):
                o, d = asyncio.run(restart_to_delivery(broker, base))
                opens.append(o)
                deliveries.append(d)
            print("\nbroker kill -9 → restart (default bus settings, message sent during the outage):")
            print(f"  broker start → STOMP port open:            median {statistics.median(opens):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in opens)})")
            print(f"  port open → first message delivered:       median {statistics.median(deliveries):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in deliveries)})")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
