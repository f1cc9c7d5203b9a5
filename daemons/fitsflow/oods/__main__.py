"""``fitsflow-oods``: ingest staged files into the OODS repository and registry."""

import argparse
import sys

from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.oods.daemon import OodsDaemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("oods", __doc__ or "")


def main() -> int:
    return run_daemon("oods", OodsDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
