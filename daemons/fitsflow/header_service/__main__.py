"""``fitsflow-header-service``: one header per image from camera events and telemetry.

    fitsflow-header-service [--config FILE] [--instance NAME]
    fitsflow-header-service --replay MESSAGES.jsonl --image IMAGE [--output FILE]

Replay rebuilds an image's header offline from recorded messages (one JSON message body per
line, as the recorder stores them), by the live service's own handlers (header_service/replay.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fitsflow.core.config import load_config
from fitsflow.core.errors import EX_CONFIG, EX_DATAERR, EX_OK, ConfigError
from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.header_service.daemon import HeaderServiceDaemon
from fitsflow.header_service.replay import ReplayError, replay


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
    try:
        header = replay(Path(args.replay).read_text().splitlines(), args.image, cfg)
    except (OSError, ReplayError) as exc:
        print(f"fitsflow-header-service: cannot replay {args.replay}: {exc}", file=sys.stderr)
        return EX_DATAERR
    text = json.dumps(header, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
