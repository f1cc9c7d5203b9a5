"""The bus's ack/retry/dead-letter/outbox/failover logic over the in-memory broker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from fitsflow.core.bus import MessageBus
from fitsflow.core.bus.memory_link import MemoryBroker, MemoryLink
from fitsflow.core.bus.store import BusStore
from fitsflow.core.config import BusConfig
from fitsflow.core.errors import Reject, Requeue
from fitsflow.core.messages import Message, make
from fitsflow.testing.wait import async_wait_for

CFG = BusConfig(brokers=("stomp://a:1",), retry_delay_s=0.01, max_attempts=3, receipt_timeout_s=1.0,
                reconnect_max_s=0.05)


def alert(i: int = 0) -> Message:
    return make("ALERT", severity="info", source="test", message=f"m{i}")


def new_bus(tmp_path: Path, brokers: list[MemoryBroker], name: str = "t") -> MessageBus:
    return MessageBus(CFG, name, BusStore(tmp_path / f"{name}.sqlite"), [b.link(f"memory://{i}") for i, b in
                                                                        enumerate(brokers)])


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 30))


def test_handled_once_and_acked(tmp_path: Path) -> None:
    broker = MemoryBroker()
    got: list[Message] = []

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])

        async def handler(msg: Message) -> None:
            got.append(msg)
        bus.subscribe("/queue/q", handler)
        await bus.start()
        await bus.wait_connected(5)
        msg = alert()
        await bus.send(msg, "/queue/q")
        await bus.send(msg, "/queue/q")  # the same message id twice (a lost receipt, a resend)
        await async_wait_for(lambda: bus.stats.handled + bus.stats.duplicates == 2)
        await bus.stop()
        assert [m.id for m in got] == [msg.id]
        assert bus.stats.duplicates == 1
    run(main)
    assert broker.messages("/queue/q") == []


def test_failure_retried_then_succeeds(tmp_path: Path) -> None:
    broker = MemoryBroker()
    calls = []

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])

        async def flaky(msg: Message) -> None:
            calls.append(msg.id)
            if len(calls) < 2:
                raise OSError("transient")
        bus.subscribe("/queue/q", flaky)
        await bus.start()
        await bus.wait_connected(5)
        await bus.send(alert(), "/queue/q")
        await async_wait_for(lambda: bus.stats.handled == 1)
        assert bus.stats.failures == 1 and bus.stats.dead_lettered == 0
        await bus.stop()
    run(main)
    assert len(calls) == 2


def test_poison_message_dead_lettered_with_reason(tmp_path: Path) -> None:
    broker = MemoryBroker()
    hooked = []

    async def main() -> None:
        async def hook(dest: str, reason: str, msg: Message | None) -> None:
            hooked.append((dest, reason))
        bus = MessageBus(CFG, "t", BusStore(tmp_path / "t.sqlite"), [broker.link()], on_dead_letter=hook)

        async def broken(msg: Message) -> None:
            raise KeyError("no such sensor")
        bus.subscribe("/queue/fitsflow.q", broken)
        await bus.start()
        await bus.wait_connected(5)
        await bus.send(alert(), "/queue/fitsflow.q")
        await bus.send(alert(1), "/queue/fitsflow.q")
        await async_wait_for(lambda: bus.stats.dead_lettered == 2)
        assert bus.stats.failures == 2 * CFG.max_attempts
        await bus.stop()
    run(main)
    dead = broker.messages("/queue/DLQ.fitsflow.q")
    assert len(dead) == 2
    h = dead[0].headers
    assert h["DLQAttempts"] == "3" and "KeyError" in h["DLQReason"] and h["DLQOrigin"] == "/queue/fitsflow.q"
    assert json.loads(dead[0].body)["data"]["message"] == "m0"
    assert broker.messages("/queue/fitsflow.q") == []
    assert hooked[0][0] == "/queue/DLQ.fitsflow.q"


def test_reject_and_malformed_go_straight_to_dlq(tmp_path: Path) -> None:
    broker = MemoryBroker()
    calls = []

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])

        async def rejecting(msg: Message) -> None:
            calls.append(msg)
            raise Reject("image name leaves the data tree")
        bus.subscribe("/queue/q", rejecting)
        await bus.start()
        await bus.wait_connected(5)
        await bus.send(alert(), "/queue/q")
        await bus.send_raw("/queue/q", "{not json", {"persistent": "true"})
        await async_wait_for(lambda: bus.stats.dead_lettered == 2)
        await bus.stop()
    run(main)
    reasons = sorted(f.headers["DLQReason"] for f in broker.messages("/queue/DLQ.q"))
    assert reasons[0].startswith("malformed message: body is not JSON")
    assert reasons[1] == "rejected by handler: image name leaves the data tree"
    assert len(calls) == 1


def test_requeue_does_not_count(tmp_path: Path) -> None:
    broker = MemoryBroker()
    calls = []

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])

        async def waiting(msg: Message) -> None:
            calls.append(1)
            if len(calls) < 6:  # more than max_attempts: requeues are not failures
                raise Requeue("header not there yet", delay=0.01)
        bus.subscribe("/queue/q", waiting)
        await bus.start()
        await bus.wait_connected(5)
        await bus.send(alert(), "/queue/q")
        await async_wait_for(lambda: bus.stats.handled == 1)
        assert bus.stats.dead_lettered == 0 and bus.stats.requeued == 5
        await bus.stop()
    run(main)


def test_a_wait_that_cannot_end_gives_up_into_the_dlq(tmp_path: Path) -> None:
    broker = MemoryBroker()

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])

        async def never(msg: Message) -> None:
            raise Requeue("the file is neither staged nor registered", delay=0.01, give_up_after_s=0.2)
        bus.subscribe("/queue/q", never)
        await bus.start()
        await bus.wait_connected(5)
        await bus.send(alert(), "/queue/q")
        await async_wait_for(lambda: bus.stats.dead_lettered == 1, 10)
        assert bus.stats.requeued > 1 and bus.stats.handled == 0
        dead = broker.messages("/queue/DLQ.q")
        assert "still not possible after" in dead[0].headers["DLQReason"] and "neither staged" in \
            dead[0].headers["DLQReason"]
        await bus.stop()
    run(main)


def test_a_consumer_survives_a_failure_of_the_bus_itself(tmp_path: Path) -> None:
    """Not the handler: the bus's own books (here its store) fail once; the message is kept
    and handled on the next try, and the consumer goes on."""
    broker = MemoryBroker()
    got: list[str] = []

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])

        async def handler(msg: Message) -> None:
            got.append(msg.id)
        bus.subscribe("/queue/q", handler)
        real = bus.store.is_processed
        failures = [OSError(28, "No space left on device")]

        def flaky(*args: object) -> bool:
            if failures:
                raise failures.pop()
            return real(*args)  # type: ignore[arg-type]
        bus.store.is_processed = flaky  # type: ignore[method-assign]
        await bus.start()
        await bus.wait_connected(5)
        first, second = alert(1), alert(2)
        await bus.send(first, "/queue/q")
        await bus.send(second, "/queue/q")
        await async_wait_for(lambda: len(got) == 2, 10)
        assert set(got) == {first.id, second.id} and bus.tasks.failed is None
        await bus.stop()
    run(main)


def test_a_message_is_on_disk_before_it_is_on_the_wire(tmp_path: Path) -> None:
    """Write-ahead: while a send awaits its receipt, the message is already in the outbox
    file (a power cut then loses nothing: the next start sends it); it leaves after."""
    import concurrent.futures

    broker = MemoryBroker()

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])
        await bus.start()
        await bus.wait_connected(5)
        link = bus.links[0]
        real_send = link.send
        held: list[concurrent.futures.Future[None]] = []

        def slow_send(*args: object, **kwargs: object) -> concurrent.futures.Future[None]:
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            held.append(fut)
            return fut
        link.send = slow_send  # type: ignore[method-assign]
        sending = asyncio.create_task(bus.send(alert(7), "/queue/q"))
        await async_wait_for(lambda: held, 5)
        crashed_view = BusStore(tmp_path / "t.sqlite")  # what a restart after a power cut would find
        assert [json.loads(e.body)["data"]["message"] for e in crashed_view.outbox_head()] == ["m7"]
        crashed_view.close()
        held[0].set_result(None)  # the receipt
        await sending
        link.send = real_send  # type: ignore[method-assign]
        assert bus.store.outbox_size() == 0 and bus.outbox_size == 0
        await bus.stop()
    run(main)


def test_a_full_state_disk_sends_without_the_outbox_and_says_so(tmp_path: Path) -> None:
    import sqlite3

    broker = MemoryBroker()
    faults: list[str] = []
    cleared: list[str] = []

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])
        bus.on_fault = lambda condition, detail: faults.append(f"{condition}: {detail}")
        bus.on_fault_cleared = cleared.append
        await bus.start()
        await bus.wait_connected(5)
        real_put = bus.store.outbox_put

        def full(*args: object) -> int:
            raise sqlite3.OperationalError("database or disk is full")
        bus.store.outbox_put = full  # type: ignore[method-assign]
        await bus.send(alert(1), "/queue/q")  # still delivered, straight to the broker
        assert [json.loads(f.body)["data"]["message"] for f in broker.messages("/queue/q")] == ["m1"]
        assert faults and "bus store" in faults[0] and "disk is full" in faults[0]
        bus.store.outbox_put = real_put  # type: ignore[method-assign]
        await bus.send(alert(2), "/queue/q")
        assert cleared == ["bus store"]
        await bus.stop()
    run(main)


def test_outbox_keeps_order_while_broker_down(tmp_path: Path) -> None:
    broker = MemoryBroker()
    broker.up = False

    async def main() -> None:
        bus = new_bus(tmp_path, [broker])
        await bus.start()
        for i in range(20):
            await bus.send(alert(i), "/queue/q")
        assert bus.outbox_size == 20 and broker.messages("/queue/q") == []
        broker.up = True
        await async_wait_for(lambda: bus.outbox_size == 0, what="outbox flushed")
        await bus.stop()
    run(main)
    assert [json.loads(f.body)["data"]["message"] for f in broker.messages("/queue/q")] == [f"m{i}" for i in range(20)]


def test_outbox_survives_a_restart(tmp_path: Path) -> None:
    broker = MemoryBroker()
    broker.up = False

    async def first() -> None:
        bus = new_bus(tmp_path, [broker])
        await bus.start()
        await bus.send(alert(7), "/queue/q")
        await bus.stop()

    async def second() -> None:
        bus = new_bus(tmp_path, [broker])
        assert bus.outbox_size == 1
        await bus.start()
        await async_wait_for(lambda: bus.outbox_size == 0)
        await bus.stop()
    run(first)
    broker.up = True
    run(second)
    assert len(broker.messages("/queue/q")) == 1


def test_failover_and_consumers_on_all_brokers(tmp_path: Path) -> None:
    a, b = MemoryBroker(), MemoryBroker()
    got: list[str] = []

    async def main() -> None:
        producer = new_bus(tmp_path, [a, b], "producer")
        consumer = new_bus(tmp_path, [a, b], "consumer")

        async def handler(msg: Message) -> None:
            got.append(msg.data["message"])
        consumer.subscribe("/queue/q", handler)
        await consumer.start()
        await producer.start()
        await async_wait_for(lambda: len(consumer.connected_brokers) == 2 and len(producer.connected_brokers) == 2)
        await producer.send(alert(0), "/queue/q")  # goes to a, the first
        a.crash()
        await async_wait_for(lambda: producer.connected_brokers == ["memory://1"])
        await producer.send(alert(1), "/queue/q")  # fails over to b
        await async_wait_for(lambda: len(got) == 2)
        a.up = True
        await async_wait_for(lambda: len(consumer.connected_brokers) == 2, what="consumer back on a")
        await producer.stop()
        await consumer.stop()
    run(main)
    assert sorted(got) == ["m0", "m1"]


def test_durable_subscription_keeps_messages_while_away(tmp_path: Path) -> None:
    broker = MemoryBroker()
    got: list[str] = []

    async def handler(msg: Message) -> None:
        got.append(msg.data["message"])

    async def main() -> None:
        sender = new_bus(tmp_path, [broker], "sender")
        await sender.start()
        await sender.wait_connected(5)
        rec = new_bus(tmp_path, [broker], "recorder")
        rec.subscribe("/topic/t", handler, durable=True, name="rec")
        await rec.start()
        await rec.wait_connected(5)
        await sender.send(alert(0), "/topic/t")
        await async_wait_for(lambda: got == ["m0"])
        await rec.stop()
        await sender.send(alert(1), "/topic/t")
        rec2 = new_bus(tmp_path, [broker], "recorder")
        rec2.subscribe("/topic/t", handler, durable=True, name="rec")
        await rec2.start()
        await async_wait_for(lambda: got == ["m0", "m1"])
        await rec2.stop()
        await sender.stop()
    run(main)


def test_durable_needs_a_topic(tmp_path: Path) -> None:
    bus = new_bus(tmp_path, [MemoryBroker()])
    with pytest.raises(ValueError):
        bus.subscribe("/queue/q", lambda m: asyncio.sleep(0), durable=True)


def test_listening_only_once_subscriptions_are_confirmed(tmp_path: Path) -> None:
    """A connection that is up but still subscribing hears nothing: ``listening`` waits for the
    broker's confirmation of every subscription (the controller judges forwarder liveness on
    it; judging while subscribing declared a live pool empty after a broker hang)."""
    broker = MemoryBroker()
    release = threading.Event()

    class SlowSubscribe(MemoryLink):
        def subscribe(self, sub):  # type: ignore[no-untyped-def]
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()

            def later() -> None:
                release.wait(10)
                inner = MemoryLink.subscribe(self, sub)
                fut.set_result(inner.result()) if inner.exception() is None else fut.set_exception(inner.exception())
            threading.Thread(target=later, daemon=True).start()
            return fut

    async def main() -> None:
        bus = MessageBus(CFG, "t", BusStore(tmp_path / "t.sqlite"), [SlowSubscribe("memory://0", broker)])

        async def handler(msg: Message) -> None:
            pass
        bus.subscribe("/queue/q", handler)
        await bus.start()
        await async_wait_for(lambda: bus.connected_brokers != [], 5, what="the connection")
        assert not bus.listening and bus.last_connected_at is None
        release.set()
        await async_wait_for(lambda: bus.listening, 5, what="the subscriptions confirmed")
        assert bus.last_connected_at is not None
        broker.crash()
        await async_wait_for(lambda: not bus.listening, 5, what="the connection lost")
        await bus.stop()
    run(main)


def test_an_outbox_shared_with_another_writer_is_still_sent(tmp_path: Path) -> None:
    """Two instances of one daemon on the same state (a split brain on shared storage): one
    flushes rows the other wrote, and its count of the outbox falls below the rows there. A
    message it keeps in the outbox later must still go out (it stayed there for ever)."""
    broker = MemoryBroker()
    broker.crash()

    async def main() -> None:
        path = tmp_path / "shared.bus.sqlite"
        a = MessageBus(CFG, "a", BusStore(path), [broker.link("memory://a")])
        b = MessageBus(CFG, "b", BusStore(path), [broker.link("memory://b")])
        await a.start()
        await b.start()
        for i in range(3):
            await a.send(alert(i), "/queue/q")  # no broker: kept in the shared outbox
        await a.stop()
        await b.send(alert(3), "/queue/q")
        broker.up = True
        await async_wait_for(lambda: len(broker.messages("/queue/q")) == 4, 10, what="b flushed every row")
        broker.crash()
        broker.up = True  # a blip: b's next message waits behind an 'older' one it believes in
        await async_wait_for(lambda: b.connected_brokers != [], 10, what="b reconnected")
        await b.send(alert(4), "/queue/q")
        await async_wait_for(lambda: len(broker.messages("/queue/q")) == 5, 10, what="the later message sent")
        await b.stop()
        assert BusStore(path).outbox_size() == 0
    run(main)
