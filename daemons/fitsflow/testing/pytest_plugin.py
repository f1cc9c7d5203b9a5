"""pytest fixtures for fitsflow and projects built on it.

Enable with ``pytest_plugins = ["fitsflow.testing.pytest_plugin"]`` in a conftest.

- ``broker``: one private ActiveMQ for the whole session, for tests whose destinations,
  client-ids and subscription names are their own (``unique``);
- ``fresh_broker``: a private ActiveMQ for one test, for tests that run daemons (their
  destinations and durable subscriptions are the production ones, so a broker shared with
  another test would hand one test's leftovers to the next);
- ``broker_factory``: brokers of a test's own, which it may kill -9 and restart;
- ``site``: a complete configuration file and data tree in ``tmp_path`` using ``broker``.

A missing ActiveMQ is an error, never a skip: a broker test that silently skips never runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path_factory.mktemp("activemq"), name="session")
    b.start()
    yield b
    _say_if_died(b)
    b.stop()


@pytest.fixture(autouse=True)
def _session_broker_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session broker serves many tests: if it dies under one, that test's report says so
    with the broker's log, and it is started again on its store: one death fails one test."""
    yield
    b = getattr(request.node, "funcargs", {}).get("broker")
    if isinstance(b, PrivateBroker) and b.name == "session" and (why := b.died()) is not None:
        print(f"\n*** the session broker died: {why}\n*** restarting it on its store")
        b.start()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker of this test's own, killed at the end whatever the outcome: nothing a test
    leaves on it (durable subscriptions, queued messages, a connection a failed test never
    closed that still holds its client-id) can reach another test. Use it by overriding
    ``broker`` in a module: ``@pytest.fixture def broker(fresh_broker): return fresh_broker``."""
    b = PrivateBroker(tmp_path / "activemq", name="fresh")
    b.start()
    yield b
    _say_if_died(b)
    b.kill()  # its store is thrown away with tmp_path: no need for a clean shutdown


def _say_if_died(b: PrivateBroker) -> None:
    """A broker that died under a test is why its daemons saw "no broker": say so, with the
    broker's log, in the test's report (a test that stopped it on purpose has restarted it)."""
    if (why := b.died()) is not None:
        print(f"\n*** the test's broker died during the test: {why}")


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., PrivateBroker]]:
    made: list[PrivateBroker] = []

    def make(**kwargs: object) -> PrivateBroker:
        b = PrivateBroker(tmp_path / f"amq{len(made)}", name=f"b{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def unique() -> str:
    """A short unique token for destination and subscription names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def site(tmp_path: Path, broker: PrivateBroker) -> Path:
    """A valid fitsflow.toml (returned) with its data tree, pointing at the session broker."""
    return make_site(tmp_path, [broker.url])
