"""The recorder's tables on both site databases (SQLite and a private PostgreSQL): what a
message does to the life cycle, repeats, first values kept, batches all-or-nothing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from fitsflow.core.messages import Message, make
from fitsflow.recorder.store import RecorderStore, daemons_t, files_t, images_t
from fitsflow.testing.postgres import PrivatePostgres

IMAGE = "TC_O_20261128_000001"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecorderStore]:
    pg = PrivatePostgres() if request.param == "postgresql" else None
    s = RecorderStore(pg.url if pg else f"sqlite:///{tmp_path}/site.sqlite")
    yield s
    s.close()
    if pg:
        pg.stop()


def _data_id(sensor: str) -> dict[str, object]:
    return {"instrument": "TC", "image": IMAGE, "raft": "R22", "sensor": sensor, "obs_day": "20261128"}


def _delivered(sensor: str) -> Message:
    return make("FILE_DELIVERED", IMAGE, path=f"/in/{sensor}.fits", size=10, checksum="crc32:0000abcd",
                data_id=_data_id(sensor), assignment="a1", sender="forwarder@f1")


def _in_oods(sensor: str, status: int) -> Message:
    return make("IMAGE_IN_OODS", IMAGE, path=f"/oods/{sensor}.fits", status=status, description="x",
                data_id=_data_id(sensor), sender="oods@o1")


def _file(store: RecorderStore, sensor: str) -> dict[str, object]:
    with store.engine.connect() as c:
        return dict(c.execute(select(files_t).where(files_t.c.sensor == f"R22_{sensor}")).mappings().one())


def test_stages_first_value_kept_status_latest_and_repeats_ignored(store: RecorderStore) -> None:
    delivered = _delivered("S00")
    first = store.record(delivered, "/queue/fitsflow.delivered", 100.0)
    assert first.new and first.stage == "delivered"
    assert store.record(delivered, "/queue/fitsflow.delivered", 200.0).new is False  # a redelivery
    store.record(_delivered("S00"), "/queue/fitsflow.delivered", 300.0)  # another delivery: first time kept
    assert _file(store, "S00")["delivered_at"] == 100.0

    store.record(_in_oods("S00", 1), "/topic/fitsflow.oods", 400.0)
    store.record(_in_oods("S00", 0), "/topic/fitsflow.oods", 500.0)
    row = _file(store, "S00")
    assert row["oods_at"] == 400.0 and row["oods_status"] == 0  # the stage's first time, the latest answer

    with store.engine.connect() as c:
        image = c.execute(select(images_t)).mappings().one()
    assert image["image"] == IMAGE and image["updated_at"] == 500.0


def test_a_batch_is_recorded_in_order_and_all_or_nothing(store: RecorderStore) -> None:
    state = [make("DAEMON_STATE", daemon="oods@o1", host="h", state=s, target="ON", status=f"now {s}",
                  sender="oods@o1") for s in ("INIT", "ON")]
    done = store.record_many([(state[0], "/topic/fitsflow.state", 10.0), (state[1], "/topic/fitsflow.state", 11.0),
                              (_delivered("S01"), "/queue/fitsflow.delivered", 12.0)])
    assert [d.new for d in done] == [True, True, True]
    with store.engine.connect() as c:
        daemon = c.execute(select(daemons_t)).mappings().one()
    assert (daemon["state"], daemon["first_seen"], daemon["last_seen"]) == ("ON", 10.0, 11.0)

    # A message the store cannot apply (only a handler bug could make one: the schema
    # requires ``daemon``) fails its batch, and nothing of the batch is kept.
    bad = dataclasses.replace(state[0], data={}, id="f" * 32)
    with pytest.raises(KeyError):
        store.record_many([(_delivered("S03"), "/queue/fitsflow.delivered", time.time()),
                           (bad, "/topic/fitsflow.state", time.time())])
    with store.engine.connect() as c:
        assert c.execute(select(files_t).where(files_t.c.sensor == "R22_S03")).first() is None


def test_registration_in_rucio_is_a_stage_of_the_file(store: RecorderStore) -> None:
    msg = make("IMAGE_IN_RUCIO", IMAGE, status=0, description="registered", path="/archive/x.fits",
               did="tc:x.fits", dataset="tc:TC_20261128", rse="SITE_ARCHIVE", adler32="0000abcd", md5="0" * 32,
               size=10, data_id=_data_id("S04"), sender="archive-ingest@a1")
    assert store.record(msg, "/topic/fitsflow.rucio", 42.0).stage == "in Rucio"
    row = _file(store, "S04")
    assert (row["rucio_at"], row["rucio_status"]) == (42.0, 0)
    image = store.snapshot(50.0)["images"][0]
    assert image["n_in_Rucio"] == 1
