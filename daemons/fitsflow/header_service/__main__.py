"""``fitsflow-header-service``: one header per image from camera events and telemetry.

    fitsflow-header-service [--config FILE] [--instance NAME]
    fitsflow-header-service --replay MESSAGES.jsonl --image IMAGE [--output FILE]

Replay rebuilds an image's header offline from recorded messages (one JSON message body per
line, as the recorder stores them), with the same code as the live service.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from fitsflow.core.config import load_config
from fitsflow.core.errors import EX_CONFIG, EX_OK, ConfigError, MessageError
from fitsflow.core.messages import decode
from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.header_service.builder import ImageRecord, Sample, add_sample, build_header, sample_keywords
from fitsflow.header_service.config import HeaderServiceConfig
from fitsflow.header_service.daemon import HeaderServiceDaemon


def replay(lines: list[str], image: str, cfg: HeaderServiceConfig, instrument: str) -> dict:
    """Rebuild ``image``'s header from recorded message bodies."""
    rec = ImageRecord(image=image)
    history: dict[str, list[Sample]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            msg = decode(line)
        except MessageError as exc:
            raise SystemExit(f"line {n}: {exc}") from None
        if msg.type == "TELEMETRY":
            add_sample(history.setdefault(str(msg.data["topic"]), []),
                       Sample(str(msg.data["timestamp"]), dict(msg.data["values"])), len(lines))
        elif msg.image == image:
            rec.events.setdefault(msg.type, str(msg.data["timestamp"]))
            if msg.type == "START_INTEGRATION":
                rec.group, rec.snap = str(msg.data["group"]), int(msg.data["snap"])
                rec.exptime, rec.sensors = float(msg.data["exptime"]), list(msg.data["sensors"])
    sample_keywords(rec, cfg, history)
    header = build_header(rec, cfg, instrument, dt.datetime.now(dt.timezone.utc))
    return json.loads(header.to_json())


def build_header_parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    parser = build_parser("header-service", __doc__ or "")
    parser.add_argument("--replay", metavar="MESSAGES.jsonl", help="rebuild a header from recorded messages")
    parser.add_argument("--image", help="with --replay: the image")
    parser.add_argument("--output", help="with --replay: write the header object here (default: stdout)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_header_parser()
    args, _ = parser.parse_known_args(argv)
    if not args.replay:
        return run_daemon("header-service", HeaderServiceDaemon, argv, parser=parser)
    if not args.image:
        parser.error("--replay needs --image")
    try:
        cfg = load_config(args.config, check_dirs=False, role="header-service")
    except ConfigError as exc:
        print(f"fitsflow-header-service: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    header = replay(Path(args.replay).read_text().splitlines(), args.image, cfg.section("header_service"),
                    cfg.site.instrument)
    text = json.dumps(header, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
