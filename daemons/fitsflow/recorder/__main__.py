"""``fitsflow-recorder``: record every fitsflow message and serve the status page."""

import argparse
import sys

from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.recorder.daemon import RecorderDaemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("recorder", __doc__ or "")


def main() -> int:
    return run_daemon("recorder", RecorderDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
