"""``fitsflow dlq`` against a real broker and a real archive controller: a delivery that
failed until an operator fixed its cause is found, replayed (despite the consumer having
seen its id) and handed off; the replay is recorded; purge empties the queue."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fitsflow.archive_controller.daemon import ArchiveControllerDaemon
from fitsflow.core.config import Config, load_config
from fitsflow.core.messages import destination_of, make
from fitsflow.testing.broker import PrivateBroker
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener, running
from fitsflow.testing.files import make_sensor_file
from fitsflow.testing.wait import async_wait_for

pytestmark = pytest.mark.broker


def dlq(cfg: Config, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "fitsflow.cli", "dlq", *args], capture_output=True, text=True,
                          env=dict(os.environ, FITSFLOW_CONFIG=str(cfg.source)), timeout=120)


def test_replay_after_the_cause_is_fixed_then_purge(tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    cfg = load_config(make_site(tmp_path, [fresh_broker.url], extra={"bus": {"max_attempts": 2}}))
    paths = cfg.paths.resolved()
    image = "TESTCAM_O_20261121_000501"
    good, data_id = make_sensor_file(paths.incoming, image)
    content = good.path.read_bytes()
    good.path.write_bytes(content[:-2880])  # cut short: the delivery cannot be verified

    async def main() -> None:
        async with running(ArchiveControllerDaemon, cfg) as ctl, \
                Listener(cfg, f"dlq-{os.getpid()}", [destination_of("ALERT")]) as listen:
            msg = make("FILE_DELIVERED", image, path=str(good.path), size=good.size, checksum=good.checksum,
                       data_id=data_id, assignment="dlq1")
            await listen.bus.send(msg)
            await async_wait_for(lambda: ctl.bus.stats.dead_lettered == 1, 60, what="the delivery dead-lettered")

            ls = await asyncio.to_thread(dlq, cfg, "ls", "--json")
            assert ls.returncode == 0, ls.stderr
            letters = [json.loads(line) for line in ls.stdout.splitlines()]
            assert [(d["id"], d["type"], d["image"]) for d in letters] == [(msg.id, "FILE_DELIVERED", image)]
            assert "has " in letters[0]["reason"] and letters[0]["origin"] == destination_of("FILE_DELIVERED")

            refused = await asyncio.to_thread(dlq, cfg, "replay")  # neither IDs nor --all: nothing happens
            assert refused.returncode == 2 and "--all" in refused.stderr

            good.path.write_bytes(content)  # the operator fixes the cause
            replayed = await asyncio.to_thread(dlq, cfg, "replay", msg.id)
            assert replayed.returncode == 0 and "1 dead letter(s) replayed" in replayed.stdout, replayed.stderr
            key = f"{image}/R22_S00"
            await async_wait_for(lambda: ctl.book.handoff(key) is not None and ctl.book.handoff(key).state ==
                                 "requested", 60, what="the replayed delivery handed off")
            await async_wait_for(lambda: any("replayed 1" in m.data["message"] for m in listen.of("ALERT")), 30,
                                 what="the replay recorded as an ALERT")

            again = await asyncio.to_thread(dlq, cfg, "ls", "--json")
            assert again.stdout.strip() == "", again.stdout

            # Purge: a second, hopeless delivery.
            other = make("FILE_DELIVERED", image, path=str(paths.incoming / "nothing.fits"), size=1,
                         checksum="crc32:00000000", data_id=data_id, assignment="dlq2")
            await listen.bus.send(other)
            await async_wait_for(lambda: ctl.bus.stats.dead_lettered == 2, 60)
            no = await asyncio.to_thread(dlq, cfg, "purge", "--all", "--queue", "fitsflow.archive.delivered")
            assert no.returncode == 2 and "--yes" in no.stderr
            yes = await asyncio.to_thread(dlq, cfg, "purge", "--all", "--yes", "--queue", "fitsflow.archive.delivered")
            assert yes.returncode == 0 and "1 dead letter(s) purged" in yes.stdout, yes.stderr
            final = await asyncio.to_thread(dlq, cfg, "ls")
            assert final.stdout.strip() == "" and "# 0 dead letter(s)" in final.stderr
    asyncio.run(asyncio.wait_for(main(), 300))
