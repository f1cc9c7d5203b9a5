"""``fitsflow-panic-mailer``: e-mail panics to the on-call list."""

import sys

from fitsflow.core.runtime import run_daemon
from fitsflow.panic_mailer.daemon import PanicMailerDaemon


def main() -> int:
    return run_daemon("panic-mailer", PanicMailerDaemon, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
