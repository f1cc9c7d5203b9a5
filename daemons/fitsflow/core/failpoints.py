"""Failpoints: named places where a test can make a daemon die as from ``kill -9``.

``FITSFLOW_FAILPOINT=handoff.linked`` makes :func:`failpoint` ("handoff.linked") end the
process at once with ``os._exit(137)`` — no cleanup, no flush, no ack — exactly what a
power cut or the OOM killer does at that point. Unset (always, in production), a failpoint
is one dictionary lookup.
"""

from __future__ import annotations

import os
import sys

ENV = "FITSFLOW_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        sys.stderr.write(f"fitsflow: failpoint {name} reached: exiting as killed\n")
        sys.stderr.flush()
        os._exit(137)
