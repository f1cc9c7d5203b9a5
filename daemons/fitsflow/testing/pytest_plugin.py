"""pytest fixtures for fitsflow and projects built on it.

Enable with ``pytest_plugins = ["fitsflow.testing.pytest_plugin"]`` in a conftest.

- ``broker``: one private ActiveMQ for the whole session (tests use unique destinations);
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
    b.stop()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A broker for one test module: queues are persistent, so a module whose tests consume
    shared queues (FILE_DELIVERED, PANIC...) should not see another module's leftovers.
    Use it by overriding ``broker`` in the module: ``broker = module_broker_fixture``."""
    b = PrivateBroker(tmp_path_factory.mktemp("activemq-module"), name="module")
    b.start()
    yield b
    b.stop()


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
