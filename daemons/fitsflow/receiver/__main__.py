"""``fitsflow-receiver``: receive SPEAD streams into the raw buffer store."""

import argparse
import sys

from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.receiver.daemon import ReceiverDaemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("receiver", __doc__ or "")


def main() -> int:
    return run_daemon("receiver", ReceiverDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
