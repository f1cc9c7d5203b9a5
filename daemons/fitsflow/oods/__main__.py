"""``fitsflow-oods``: ingest staged files into the OODS repository and registry."""

import sys

from fitsflow.core.runtime import run_daemon
from fitsflow.oods.daemon import OodsDaemon


def main() -> int:
    return run_daemon("oods", OodsDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
