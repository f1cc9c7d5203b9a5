"""The states a daemon shows (docs/states.md), one closed set for the runtime, the DAEMON_STATE
schema, the metrics gauge and the recorder."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """A daemon's state. ALARM is never set by hand: it is ON while a fault episode of the
    machine is open (``Daemon.effective_state``), and ON again when the last one clears."""

    INIT = "INIT"        # starting: configuration read, broker not yet answered
    ON = "ON"            # working
    STANDBY = "STANDBY"  # up, not the active instance (reserved for passive instances)
    ALARM = "ALARM"      # working, but waiting out a fault of the machine (full disk, broker gone...)
    FAULT = "FAULT"      # a part of the daemon died: it ends, systemd restarts it
    OFF = "OFF"          # stopped, or stopping
