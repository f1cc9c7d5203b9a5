"""``fitsflow status``: daemons (up/late/down, host, state) and the last images with their
stage and latencies, from the recorder's tables; ``--json`` for scripts (the same document
as the status page's ``/api/status``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fitsflow.core.config import load_config
from fitsflow.core.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, ConfigError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="daemons and recent images, as the recorder sees them")
    p.add_argument("--config", help="configuration file (default: $FITSFLOW_CONFIG or /etc/fitsflow/fitsflow.toml)")
    p.add_argument("-n", "--images", type=int, default=10, help="how many recent images (default 10)")
    p.add_argument("--json", action="store_true", help="the whole status document as JSON")
    p.set_defaults(func=run)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s"


def render(s: dict[str, Any]) -> str:
    """The terminal view of a status document."""
    out = []
    last = s.get("last_recorded")
    age = f"{time.time() - last:.0f} s ago" if last else "never"
    out.append(f"fitsflow status at {s['time']} — {s['recorded']} messages recorded, last {age}")
    out.append("")
    out.append(_table([[d["daemon"], d["host"], d["availability"], d["state"], d["target"], f"{d['last_seen_s']:.0f} s",
                        d["status"][:70]] for d in s["daemons"]],
                      ["DAEMON", "HOST", "AVAIL", "STATE", "TARGET", "HEARD", "STATUS"]) if s["daemons"]
               else "no daemon has reported yet (is fitsflow-recorder running?)")
    out.append("")
    if s["images"]:
        out.append(_table([[i["image"], i["stage"], f"{i['n_delivered']}/{i['sensors'] or '?'}",
                            f"{i['n_in_OODS']}/{i['sensors'] or '?'}", f"{i['n_in_archive']}/{i['sensors'] or '?'}",
                            f"{i['n_in_Rucio']}/{i['sensors'] or '?'}",
                            _seconds(i["readout_to_oods_s"]), _seconds(i["readout_to_archive_s"]),
                            ", ".join(x for x in [f"{i['missing']} missing" if i["missing"] else "",
                                                  "partial header" if i["header_partial"] else "",
                                                  f"{i['failed']} failed" if i["failed"] else ""] if x)]
                           for i in s["images"]],
                          ["IMAGE", "STAGE", "FILES", "OODS", "ARCHIVE", "RUCIO", "→OODS", "→ARCHIVE", "NOTES"]))
    else:
        out.append("no image recorded yet")
    if s["events"]:
        out.append("")
        out.extend(f"{e['time'][:19]} {e['type']:<5} {e['sender']}: {e['message'][:100]}" for e in s["events"][:5])
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from fitsflow.recorder.store import RecorderStore  # SQLAlchemy only when needed

    try:
        cfg = load_config(args.config, check_dirs=False)
        rcfg = cfg.section("recorder")
    except (ConfigError, KeyError) as exc:
        print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        store = RecorderStore(rcfg.database_url or cfg.site.database_url, create=False)
        snapshot = store.snapshot(time.time(), images=args.images, late_after_s=rcfg.late_after_s,
                                  down_after_s=rcfg.down_after_s)
        store.close()
    except Exception as exc:  # noqa: BLE001 - say what is wrong with the database, no traceback
        print(f"fitsflow status: cannot read the recorder's database: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    if args.json:
        json.dump(snapshot, sys.stdout, indent=2)
        print()
    else:
        print(render(snapshot))
    return EX_OK
