"""``fitsflow-archive-ingest``: ingest staged files into the long-term archive."""

import sys

from fitsflow.archive_ingest.daemon import ArchiveIngestDaemon
from fitsflow.core.runtime import run_daemon


def main() -> int:
    return run_daemon("archive-ingest", ArchiveIngestDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
