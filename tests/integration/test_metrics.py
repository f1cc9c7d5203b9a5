"""Every daemon of the pipeline serves Prometheus metrics when given a port: scraped over HTTP
from the real processes, its state, bus and work counters move as images flow."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fitsflow.testing.broker import PrivateBroker, free_ports
from fitsflow.testing.flow import Flow, run_flow
from fitsflow.testing.pipeline import DAEMONS, daemon_name
from fitsflow.testing.wait import async_wait_for

IMAGES = 3


ETC = Path(__file__).resolve().parents[2] / "etc"
RULES, DASHBOARD = ETC / "prometheus" / "fitsflow-alerts.yml", ETC / "grafana" / "fitsflow-dashboard.json"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one /metrics page; a family without samples
    (no fault open) appears as (its name, ()) → 0."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault((family.name, ()), 0.0)
        out.update({(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples})
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_every_daemon_serves_its_metrics(tmp_path: Path, fresh_broker: PrivateBroker) -> None:
    ports = dict(zip((daemon_name(m, i).replace("_", "-") for m, i in DAEMONS), free_ports(len(DAEMONS))))
    # The receiver, header service... by name; the two forwarders by name@instance.
    by_key = {(k if k.startswith("forwarder") else k.split("@")[0]): p for k, p in ports.items()}

    async def scenario(f: Flow) -> None:
        before = {name: await asyncio.to_thread(scrape, port) for name, port in ports.items()}
        for _ in range(IMAGES):
            await f.take_image()
        await f.wait_all_archived(timeout=120)

        async def counted() -> dict | None:
            # A daemon counts a file once its step is done, which may be a moment after the
            # next daemon's effect is visible (the controller counts a hand-off after its
            # INGEST_REQUESTs are sent and booked; the registries may have the rows before).
            now = {name: await asyncio.to_thread(scrape, port) for name, port in ports.items()}
            lagging = [value(now["archive-controller@c1"], "fitsflow_archive_controller_handoffs_total"),
                       value(now["archive-controller@c1"], "fitsflow_archive_controller_handoff_seconds_count"),
                       value(now["oods@o1"], "fitsflow_oods_ingested_total"),
                       value(now["archive-ingest@a1"], "fitsflow_archive_ingest_ingested_total"),
                       sum(value(now[f"forwarder@{i}"], "fitsflow_forwarder_files_written_total") for i in ("f1", "f2"))]
            return now if min(lagging) >= 2 * IMAGES else None

        after = await async_wait_for(counted, timeout=60, interval=0.2, what="every file counted")
        for name, samples in after.items():
            assert value(samples, "fitsflow_daemon_state", state="ON") == 1.0, (name, samples)
            assert value(samples, "fitsflow_daemon_state") == 1.0, name  # one state at a time
            assert value(samples, "fitsflow_bus_brokers_connected") == 1.0, name
            moved = [value(samples, "fitsflow_bus_messages_total", outcome=o) -
                     value(before[name], "fitsflow_bus_messages_total", outcome=o) for o in ("sent", "handled")]
            assert sum(moved) > 0, (name, moved)
        assert value(after["receiver@r1"], "fitsflow_receiver_images_announced_total") >= IMAGES
        assert value(after["receiver@r1"], "fitsflow_receiver_heaps_total", outcome="complete") > 0
        assert any(n == "fitsflow_receiver_socket_drops_total" for n, _ in after["receiver@r1"])  # from the kernel
        assert value(after["archive-controller@c1"], "fitsflow_archive_controller_handoffs_total") == 2 * IMAGES
        assert value(after["oods@o1"], "fitsflow_oods_ingested_total") == 2 * IMAGES
        assert value(after["archive-ingest@a1"], "fitsflow_archive_ingest_ingested_total") == 2 * IMAGES
        assert value(after["header-service@h1"], "fitsflow_header_service_headers_written_total") >= IMAGES
        written = sum(value(after[f"forwarder@{i}"], "fitsflow_forwarder_files_written_total") for i in ("f1", "f2"))
        assert written == 2 * IMAGES
        assert value(after["recorder@r1"], "fitsflow_recorder_messages_recorded_total") > 0
        # Stage durations: one observation per file written, handed off, ingested; per header.
        writes = sum(value(after[f"forwarder@{i}"], "fitsflow_forwarder_write_seconds_count") for i in ("f1", "f2"))
        assert writes == 2 * IMAGES
        assert value(after["archive-controller@c1"], "fitsflow_archive_controller_handoff_seconds_count") == 2 * IMAGES
        assert value(after["oods@o1"], "fitsflow_oods_ingest_seconds_count") >= 2 * IMAGES
        assert value(after["header-service@h1"], "fitsflow_header_service_header_seconds_count") >= IMAGES
        assert value(after["archive-controller@c1"], "fitsflow_archive_controller_handoff_seconds_bucket",
                     le="+Inf") == 2 * IMAGES
        # Every fitsflow metric the shipped alert rules and dashboard use is one the daemons export.
        exported = {n for samples in after.values() for n, _labels in samples}
        used = set(re.findall(r"\bfitsflow_[a-z_]+", RULES.read_text() + DASHBOARD.read_text()))
        assert used and used <= exported, sorted(used - exported)

    run_flow(tmp_path, fresh_broker, scenario, extra={"metrics": {"ports": by_key}})
