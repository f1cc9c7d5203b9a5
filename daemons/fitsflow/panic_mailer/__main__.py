"""``fitsflow-panic-mailer``: e-mail panics to the on-call list."""

import argparse
import sys

from fitsflow.core.runtime import build_parser, run_daemon
from fitsflow.panic_mailer.daemon import PanicMailerDaemon


def parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    return build_parser("panic-mailer", __doc__ or "")


def main() -> int:
    return run_daemon("panic-mailer", PanicMailerDaemon, parser=parser())


if __name__ == "__main__":
    sys.exit(main())
