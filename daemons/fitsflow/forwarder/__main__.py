"""``fitsflow-forwarder``: write assigned sensors as FITS files into the hand-off directory."""

import argparse
import sys

from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.forwarder.daemon import ForwarderDaemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("forwarder", __doc__ or "")


def main() -> int:
    return run_daemon("forwarder", ForwarderDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
