"""The ``fitsflow`` command: operators' and admins' entry point.

    fitsflow --version
    fitsflow config check [--config FILE] [--json] [--no-dirs]
"""

from __future__ import annotations

import argparse
import json
import sys

from fitsflow import __version__
from fitsflow.core.config import load_config
from fitsflow.core.errors import EX_CONFIG, EX_OK, ConfigError


def _config_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, check_dirs=not args.no_dirs)
    except ConfigError as exc:
        print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    described = cfg.describe()
    if args.json:
        json.dump(described, sys.stdout, indent=2)
        print()
    else:
        print(f"# {described.pop('source')}: valid")
        for section, values in described.items():
            print(f"\n[{section}]")
            for key, value in values.items():
                print(f"# {key} is not set" if value is None else f"{key} = {json.dumps(value)}")
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitsflow", description="fitsflow: observatory data backbone")
    parser.add_argument("--version", action="version", version=f"fitsflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate the configuration and print it resolved (secrets masked)")
    check.add_argument("--config", help="file to check (default: $FITSFLOW_CONFIG or /etc/fitsflow/fitsflow.toml)")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    check.add_argument("--no-dirs", action="store_true", help="skip the checks of the data directories")
    check.set_defaults(func=_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EX_OK
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
