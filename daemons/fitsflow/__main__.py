"""``python -m fitsflow`` is the ``fitsflow`` command."""
import sys

from fitsflow.cli import main

sys.exit(main())
