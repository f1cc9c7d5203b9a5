"""``fitsflow-archive-controller``: assign work to forwarders and hand finished files to the
OODS and the archive."""

import sys

from fitsflow.archive_controller.daemon import ArchiveControllerDaemon
from fitsflow.core.runtime import run_daemon


def main() -> int:
    return run_daemon("archive-controller", ArchiveControllerDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
