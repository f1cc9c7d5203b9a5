"""``fitsflow-archive-ingest``: ingest staged files into the long-term archive."""

import argparse
import sys

from fitsflow.archive_ingest.daemon import ArchiveIngestDaemon
from fitsflow.core.runtime import build_parser, run_daemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("archive-ingest", __doc__ or "")


def main() -> int:
    return run_daemon("archive-ingest", ArchiveIngestDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
