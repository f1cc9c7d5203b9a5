"""fitsflow's own exceptions. This module imports nothing from fitsflow."""

from __future__ import annotations

# Exit codes are a contract with systemd (see units/): a configuration error must not be
# restarted in a loop, so units carry RestartPreventExitStatus=78.
EX_OK = 0
EX_DATAERR = 65  # sysexits.h EX_DATAERR: the input data (a file given on the command line) is unusable
EX_SOFTWARE = 70  # an internal error: restart may help
EX_CONFIG = 78  # sysexits.h EX_CONFIG: the configuration is wrong, restarting will not help


class FitsflowError(Exception):
    """Base class of every fitsflow error."""


class ConfigError(FitsflowError):
    """The configuration file is missing, unreadable or invalid.

    The message always names the file and, where there is one, the offending key.
    """

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class Disconnected(FitsflowError):
    """No broker could take the operation (the transport library's errors end up here)."""


class Refused(Disconnected):
    """The broker answered with an ERROR: it refuses this login, destination or frame
    (e.g. the identity may not write there). Sending again will not help until someone
    changes the broker's configuration."""


class MessageError(FitsflowError):
    """A message body or its headers do not follow the message catalogue."""


class UnsafePath(FitsflowError):
    """A name or path from outside (a message, a header) would leave the data tree."""


# --- Ack decisions. A handler returns normally to have its message acked; it raises one of
# these to say otherwise. They are mapped to broker operations in one place (bus.consumer).


class Requeue(FitsflowError):
    """The message cannot be handled yet (a precondition is missing); try again later.

    Does not count towards the dead-letter limit. ``give_up_after_s``: a precondition that
    may never come (a file nobody staged) dead-letters the message once it has been waiting
    that long; None (a fault of the machine that will pass) waits as long as it takes.
    """

    def __init__(self, reason: str, delay: float = 1.0, give_up_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay
        self.give_up_after_s = give_up_after_s


class Retry(FitsflowError):
    """Not handled now, for a reason that may pass by itself (e.g. another delivery of the same
    file is on its way): retried with back-off and counted like a failure — dead-lettered at
    ``max_attempts`` — but logged as a warning, without a traceback."""


class Reject(FitsflowError):
    """The message can never be handled: dead-letter it now, with this reason."""
