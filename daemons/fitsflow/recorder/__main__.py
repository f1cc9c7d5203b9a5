"""``fitsflow-recorder``: record every fitsflow message and serve the status page."""

import sys

from fitsflow.core.runtime import run_daemon
from fitsflow.recorder.daemon import RecorderDaemon


def main() -> int:
    return run_daemon("recorder", RecorderDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
