"""``fitsflow-archive-controller``: assign work to forwarders and hand finished files to the
OODS and the archive."""

import argparse
import sys

from fitsflow.archive_controller.daemon import ArchiveControllerDaemon
from fitsflow.core.runtime import build_parser, run_daemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("archive-controller", __doc__ or "")


def main() -> int:
    return run_daemon("archive-controller", ArchiveControllerDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
