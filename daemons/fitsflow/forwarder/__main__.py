"""``fitsflow-forwarder``: write assigned sensors as FITS files into the hand-off directory."""

import sys

from fitsflow.core.runtime import run_daemon
from fitsflow.forwarder.daemon import ForwarderDaemon


def main() -> int:
    return run_daemon("forwarder", ForwarderDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
