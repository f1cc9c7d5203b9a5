"""The failover figures of tests/ha: collected by the scenarios, printed at the end of the run
(conftest.py) and written to $FITSFLOW_ARTIFACTS/ha-failover.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS: list[dict[str, Any]] = []


def artifacts() -> Path:
    return Path(os.environ.get("FITSFLOW_ARTIFACTS", "/tmp/fitsflow-artifacts"))


def record(scenario: str, failed: str, moved_to: list[str], restored_s: float, lost: int, duplicated: int,
           images: int, **extra: Any) -> None:
    """One scenario's outcome: ``restored_s`` from the failure to the service back."""
    RESULTS.append({"scenario": scenario, "failed_node": failed, "moved_to": ",".join(moved_to),
                    "restored_s": round(restored_s, 2), "lost": lost, "duplicated": duplicated,
                    "images_so_far": images, **extra})
    out = artifacts()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ha-failover.json").write_text(json.dumps(RESULTS, indent=1) + "\n")


def lines() -> list[str]:
    out = [f"{'scenario':28} {'failed':6} {'moved to':8} {'restored':>9} {'lost':>4} {'dup':>4}  other"]
    for r in RESULTS:
        other = ", ".join(f"{k}={v}" for k, v in r.items() if k not in (
            "scenario", "failed_node", "moved_to", "restored_s", "lost", "duplicated"))
        out.append(f"{r['scenario']:28} {r['failed_node']:6} {r['moved_to']:8} {r['restored_s']:>8.2f}s "
                   f"{r['lost']:>4} {r['duplicated']:>4}  {other}")
    return out
