"""``fitsflow-receiver``: receive SPEAD streams into the raw buffer store."""

import sys

from fitsflow.core.runtime import run_daemon
from fitsflow.receiver.daemon import ReceiverDaemon


def main() -> int:
    return run_daemon("receiver", ReceiverDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
