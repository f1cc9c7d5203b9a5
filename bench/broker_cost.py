"""Broker CPU per message, by how the message is consumed: what each subscription costs ActiveMQ.

    ./dev.sh bench broker_cost [--messages N]

A private ActiveMQ with fitsflow's test configuration (KahaDB, journal synced, mirrored
queues). Raw stomp.py sends N persistent messages (no receipts, so that the producer is not
the limit) and a consumer acks each one, client-individual; the broker's own CPU seconds
(/proc) are divided by N. Four cases, each as fitsflow uses them:

- a queue (FILE_DELIVERED, INGEST_REQUEST...) with its consumer; the broker copies it to
  ``/topic/mirror.<queue>`` (mirrored queues), which nobody reads here;
- the same with a durable subscriber on the mirror (what the recorder does for every queue);
- a topic (READOUT_COMPLETE, IMAGE_IN_OODS...) with one plain subscriber;
- the same topic with a durable subscriber as well (the recorder on every topic).

A first round warms the broker's JIT and is not printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import stomp

from fitsflow.testing.broker import PrivateBroker


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Acker(stomp.ConnectionListener):
    def __init__(self, conn: stomp.Connection, dest: str, n: int, done: threading.Event) -> None:
        self.conn, self.dest, self.n, self.done, self.count = conn, dest, n, done, 0

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.conn.ack(frame.headers["message-id"], frame.headers["subscription"])
        self.count += 1
        if self.count >= self.n:
            self.done.set()


def _consumer(port: int, dest: str, n: int, durable: bool) -> tuple[stomp.Connection, threading.Event]:
    conn = stomp.Connection([("127.0.0.1", port)])
    done = threading.Event()
    conn.set_listener("", _Acker(conn, dest, n, done))
    conn.connect(wait=True, headers={"client-id": f"bench-{time.monotonic_ns()}"})
    headers = {"activemq.subscriptionName": "bench-durable"} if durable else {}
    conn.subscribe(dest, id="1", ack="client-individual", headers=headers)
    return conn, done


def cost(broker: PrivateBroker, n: int, dest: str, durable_on: str | None) -> float:
    """Broker CPU ms per message sent to ``dest`` (and read also durably on ``durable_on``)."""
    consumers = [_consumer(broker.stomp_port, dest, n, False)]
    if durable_on:
        consumers.append(_consumer(broker.stomp_port, durable_on, n, True))
    producer = stomp.Connection([("127.0.0.1", broker.stomp_port)])
    producer.connect(wait=True)
    time.sleep(1.0)  # subscriptions registered
    assert broker.proc is not None
    c0 = cpu_s(broker.proc.pid)
    for i in range(n):
        producer.send(dest, '{"n": %d}' % i, headers={"persistent": "true"})
    for _, done in consumers:
        done.wait(300)
    used = cpu_s(broker.proc.pid) - c0
    for conn, _ in consumers:
        conn.disconnect()
    producer.disconnect()
    return used / n * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000)
    args = ap.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="fitsflow-bench-broker-") as tmp:
        broker = PrivateBroker(Path(tmp) / "amq", heap_mb=512).start()
        try:
            rows = []
            for rnd in range(2):
                q, t = f"bench.q{rnd}", f"bench.t{rnd}"
                rows = [("persistent queue, its consumer (mirror unread)", cost(broker, n, f"/queue/{q}", None)),
                        ("  + a durable subscriber on its mirror", cost(broker, n, f"/queue/{q}x", f"/topic/mirror.{q}x")),
                        ("persistent topic, one subscriber", cost(broker, n, f"/topic/{t}", None)),
                        ("  + a durable subscriber", cost(broker, n, f"/topic/{t}x", f"/topic/{t}x"))]
            print(f"broker CPU per message ({n} persistent messages per case, after a warm-up round):")
            base = {0: rows[0][1], 1: rows[0][1], 2: rows[2][1], 3: rows[2][1]}
            for i, (label, ms) in enumerate(rows):
                print(f"  {label:50s} {ms:6.3f} ms  ({ms / base[i]:.1f} x)")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
