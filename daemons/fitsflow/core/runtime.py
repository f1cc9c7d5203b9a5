"""The daemon runtime every fitsflow daemon runs in.

``run_daemon(name, factory)`` does, in order: parse ``--config`` / ``--instance`` /
``--log-level``; load and validate the configuration (exit 78 = EX_CONFIG on any problem, so
systemd's ``RestartPreventExitStatus=78`` stops a restart loop); set up logging (journal
fields under systemd, stderr otherwise); build the daemon with its bus; start the bus and
the daemon's roles; send ``READY=1``; then, from the event loop itself, send ``WATCHDOG=1``
and a one-line ``STATUS=`` — a hung loop stops the pings and systemd kills and restarts it.

SIGTERM and SIGINT only set an event; shutdown runs in the loop: ``STOPPING=1``, roles
stopped in reverse order (in-flight work finished or left unacked for redelivery), bus
stopped (outbox kept on disk). A role task that dies ends the daemon with exit 70 so
systemd restarts it, rather than leaving a daemon that looks alive and does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Coroutine, Protocol

from systemd import daemon as sd_daemon

from fitsflow import __version__
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config, load_config
from fitsflow.core.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, ConfigError, FitsflowError
from fitsflow.core.logs import setup_logging
from fitsflow.core import messages, metrics
from fitsflow.core.aio import wait_for
from fitsflow.core.faults import FaultEpisodes
from fitsflow.core.states import State
from fitsflow.core.tasks import TaskSupervisor, watch_thread

_log = logging.getLogger(__name__)

#: How long start-up waits for a first broker before declaring READY anyway: a daemon
#: without a broker still works through its outbox, and says so in STATUS=.
BROKER_WAIT_S = 15.0
#: STATUS= and state-message period when systemd asks for no watchdog.
STATUS_PERIOD_S = 5.0
#: How long a stopping daemon waits for the broker to take its OFF state.
STOP_ANNOUNCE_S = 1.0

#: The instance of a daemon started without --instance: a site-wide singleton (controller,
#: header service, OODS...). Its identity — durable subscriptions, outbox, state under
#: site.state_dir — must not depend on the node it runs on, so that Pacemaker can move it and
#: the successor carries on from the same state (a host name here lost every message published
#: while the singleton was moving: found by the HA lab).
DEFAULT_INSTANCE = "main"
#: Unreadable state records reported one ALERT each at start; more are counted in one.
MAX_STATE_ALERTS = 10


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a role's background task and wait until it has really ended."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Role(Protocol):
    """One job inside a daemon (a receiver, a scanner, a cleaner...): same lifecycle for all."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Daemon:
    """Base of every daemon: owns the bus, its roles and their background tasks.

    Subclasses subscribe in ``__init__``, append roles to ``self.roles``, start tasks with
    :meth:`spawn` and describe themselves in :meth:`status`.
    """

    #: Short daemon name (``receiver``, ``forwarder``...); also the logging identifier.
    name = "daemon"

    def __init__(self, cfg: Config, bus: MessageBus, instance: str = "") -> None:
        self.cfg = cfg
        self.bus = bus
        self.instance = instance or DEFAULT_INSTANCE
        #: this machine's name, as its messages state it (a file's writer, a state's host)
        self.host = socket.gethostname()
        self._stages: dict[str, Any] = {}
        self.roles: list[Role] = []
        self.state: State = State.INIT
        #: The state the daemon is asked to be in (docs/states.md): ON while it runs, OFF once stopping.
        self.target: State = State.ON
        #: Every background task of the daemon and of its roles (roles get ``self.spawn``).
        self.tasks = TaskSupervisor(self.ident)
        #: Faults of the machine this daemon is waiting out (core.faults): ALARM while any is open.
        self.faults = FaultEpisodes(self.ident, self._fault_news, self.spawn)

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.instance}"

    def spawn(self, coro: Coroutine[None, None, None], name: str, *, forever: bool = False) -> asyncio.Task[None]:
        """Run a background task, supervised: if it dies with an exception (or, ``forever``,
        returns at all) the daemon stops with exit 70 and systemd restarts it."""
        return self.tasks.spawn(coro, name, forever=forever)

    @property
    def failed(self) -> BaseException | None:
        """Why the daemon must stop: a task of its own, of a role or of its bus died."""
        return self.tasks.failed or self.bus.tasks.failed

    async def start(self) -> None:
        for role in self.roles:
            await role.start()
        self.state = State.ON
        await self.report_unreadable_state()

    def unreadable_state(self) -> list[str]:
        """State this daemon could not read at start and set aside (core.poison); subclasses
        return their stores' lists."""
        return []

    async def report_unreadable_state(self) -> None:
        """One ALERT per record set aside at start (the first few, then a count): a person
        decides what to do with them; the daemon works on meanwhile."""
        problems = self.unreadable_state()
        for problem in problems[:MAX_STATE_ALERTS]:
            await self.bus.send(messages.make("ALERT", severity="error", source=self.ident, message=problem,
                                              sender=self.ident))
        if len(problems) > MAX_STATE_ALERTS:
            await self.bus.send(messages.make(
                "ALERT", severity="error", source=self.ident, sender=self.ident,
                message=f"{len(problems) - MAX_STATE_ALERTS} more unreadable state records set aside (see the log)"))

    async def stop(self) -> None:
        for role in reversed(self.roles):
            try:
                await role.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                _log.exception("%s: stopping %r failed", self.ident, role)
        await self.tasks.close()
        self.state = State.OFF

    def status(self) -> str:
        """One line for systemd's STATUS= (and ``systemctl status``)."""
        return self.bus.describe()

    def counters(self) -> dict[str, tuple[float, str]]:
        """The daemon's own work counters for Prometheus (core.metrics): name → (value, help)."""
        return {}

    def collectors(self) -> list[Any]:
        """Extra Prometheus collectors of this daemon (core.metrics)."""
        return []

    def stage_histograms(self) -> list[Any]:
        """The stage histograms made so far (read at each scrape: a stage appears once used)."""
        return list(self._stages.values())

    def stage(self, name: str, text: str) -> Any:
        """The histogram of one of this daemon's stages (core.metrics.stage_histogram), labelled
        with this instance: ``with self.stage("write", "...").time(): ...``."""
        if name not in self._stages:
            self._stages[name] = metrics.stage_histogram(self.name, name, text)
        return self._stages[name].labels(self.ident)

    def metrics_endpoint(self) -> tuple[str, int] | None:
        """(address, port) of this daemon's /metrics, or None (``[metrics] ports``)."""
        port = self.cfg.metrics.port_of(self.name, self.instance)
        return (self.cfg.metrics.address, port) if port else None

    async def publish_state(self) -> None:
        """Announce this instance's state (DAEMON_STATE) for the recorder and ``fitsflow status``."""
        await self.bus.send(messages.make("DAEMON_STATE", daemon=self.ident, host=self.host,
                                          state=self.effective_state(), target=self.target,
                                          status=self.status_line(),
                                          sender=self.ident))

    def watch_bus_faults(self) -> None:
        """Handlers meeting a fault of the machine open (and their next success closes) one of
        this daemon's fault episodes."""
        self.bus.on_fault = self.faults.report
        self.bus.on_fault_cleared = self.faults.clear

    def effective_state(self) -> State:
        """The state to show: ALARM while a fault of the machine is open, else ``state``."""
        return State.ALARM if self.faults.active and self.state == State.ON else self.state

    def status_line(self) -> str:
        """STATUS= and DAEMON_STATE's status: open fault episodes first, then :meth:`status`."""
        faults = self.faults.describe()
        return f"{faults}; {self.status()}" if faults else self.status()

    async def _fault_news(self, condition: str, detail: str, started: bool) -> None:
        """One ALERT (and, when it starts, one panic) per fault episode; the state at once."""
        text = f"{self.ident}: {condition}: {detail}"
        try:
            await self.bus.send(messages.make("ALERT", severity="error" if started else "info", source=self.ident,
                                              message=text, sender=self.ident))
            if started:
                await self.raise_panic(f"{text} — the work waits and completes by itself once this is fixed")
            await self.publish_state()
        except Exception:  # noqa: BLE001 - telling people must not take the daemon down
            _log.exception("%s: cannot report %s", self.ident, condition)

    async def wait_failure(self) -> None:
        """Return once a task of the daemon, of one of its roles or of its bus has died."""
        waits = [asyncio.create_task(self.tasks.wait_failure()), asyncio.create_task(self.bus.tasks.wait_failure())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def raise_panic(self, problem: str) -> None:
        """A serious error: the on-call shifter is mailed (through this daemon's bus, so it
        waits in the outbox when no broker is reachable). Never raises."""
        try:
            from fitsflow.core.panic import build_panic

            await self.bus.send(build_panic(problem, program=f"fitsflow-{self.name}"))
        except Exception:  # noqa: BLE001 - the panic path must not take the daemon down
            _log.exception("%s: cannot raise a panic for: %s", self.ident, problem)

    async def panic_on_dead_letter(self, destination: str, reason: str, msg: messages.Message | None) -> None:
        what = f"{msg.type} {msg.id}" + (f" (image {msg.image})" if msg.image else "") if msg else "a message"
        await self.raise_panic(f"{self.ident}: {what} dead-lettered to {destination}: {reason[:1000]}")

    async def panic_on_refused(self, destination: str, what: str, reason: str) -> None:
        problem = f"{self.ident}: the broker refuses {what} {destination}: {reason[:1000]}"
        if what == "login":
            # This bus cannot reach the broker with its identity: go the host's way
            # (other brokers, host outbox, journal at CRIT).
            from fitsflow.core.panic import build_panic, deliver

            await asyncio.to_thread(deliver, build_panic(problem, program=f"fitsflow-{self.name}"), self.cfg)
        else:
            await self.raise_panic(problem + " (messages are kept in the bus store's refused table)"
                                   if what == "send" else problem)

    async def forward_host_panics(self) -> None:
        """Panics that programs on this host could not send wait in the host's panic outbox;
        move them into this daemon's bus (which delivers or keeps them durably)."""
        from fitsflow.core.bus.store import BusStore
        from fitsflow.core.panic import panic_outbox

        path = panic_outbox(self.cfg)
        if not path.exists() or not self.bus.connected_brokers:
            return
        store = await asyncio.to_thread(BusStore, path)
        try:
            for entry in store.outbox_head(100):
                await self.bus.send_raw(entry.destination, entry.body, entry.headers)
                store.outbox_remove(entry.seq)
        finally:
            store.close()


def log_task_stacks() -> None:
    """``kill -USR1 PID``: log where every asyncio task of the daemon is waiting (for a
    daemon that looks stuck; the watchdog only says *that* it is)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=out)
        task.print_stack(limit=8, file=out)
    _log.warning("asyncio tasks:\n%s", out.getvalue())


class Notifier:
    """sd_notify(3) through python-systemd: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 to the
    service manager (a no-op outside a Type=notify unit, where NOTIFY_SOCKET is unset)."""

    def notify(self, state: str) -> bool:
        try:
            return bool(sd_daemon.notify(state))
        except OSError as exc:  # the manager's socket gone (it is stopping us): not fatal
            _log.debug("sd_notify failed: %s", exc)
            return False


DaemonFactory = Callable[[Config, MessageBus, argparse.Namespace], Daemon]


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"fitsflow-{name}", description=description.replace("``", ""))
    parser.add_argument("--config", help="configuration file (default: $FITSFLOW_CONFIG or "
                                         "/etc/fitsflow/fitsflow.toml)")
    parser.add_argument("--instance", default="", help="instance name (template units pass %%i); "
                                                       "'auto': this host's short name; default "
                                                       f"'{DEFAULT_INSTANCE}' (a site-wide singleton)")
    parser.add_argument("--log-level", default=os.environ.get("FITSFLOW_LOG_LEVEL", "INFO").upper(), type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                        help="least severe messages logged (default: $FITSFLOW_LOG_LEVEL or INFO)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def run_daemon(name: str, factory: DaemonFactory, argv: list[str] | None = None, *,
               description: str = "", parser: argparse.ArgumentParser | None = None) -> int:
    """Entry point of a daemon's console script; returns the process exit code."""
    parser = parser or build_parser(name, description)
    args = parser.parse_args(argv)
    if args.instance == "auto":  # a Pacemaker clone runs the same unit name on every node
        args.instance = socket.gethostname().split(".")[0]
    try:
        cfg = load_config(args.config, role=name)
    except ConfigError as exc:
        print(f"fitsflow-{name}: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(name, args.log_level)
    try:
        return asyncio.run(_main(name, cfg, args, factory))
    except ConfigError as exc:  # a daemon's own checks, done while building it
        _log.critical("configuration error: %s", exc)
        return EX_CONFIG


async def _main(name: str, cfg: Config, args: argparse.Namespace, factory: DaemonFactory) -> int:
    notifier = Notifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_task_stacks)

    instance = args.instance or DEFAULT_INSTANCE
    bus = MessageBus.from_config(cfg, f"{name}-{instance}")
    daemon = factory(cfg, bus, args)
    if bus.on_dead_letter is None:  # a daemon may have its own (the panic mailer does)
        bus.on_dead_letter = daemon.panic_on_dead_letter
    bus.on_refused = bus.on_refused or daemon.panic_on_refused
    daemon.watch_bus_faults()
    endpoint = daemon.metrics_endpoint()
    if endpoint is not None:
        try:
            thread = metrics.serve(daemon, *endpoint)
            daemon.spawn(watch_thread(thread, "metrics endpoint"), "metrics endpoint", forever=True)
        except OSError as exc:  # the port taken, the address not ours: the operator's to fix
            raise ConfigError(str(cfg.source), "metrics.ports",
                              f"cannot serve metrics on {endpoint[0]}:{endpoint[1]}: {exc}") from None
    notifier.notify(f"STATUS=starting {daemon.ident}, connecting to {len(cfg.bus.brokers)} broker(s)")
    await bus.start(consume=False)  # handlers run once the daemon has started (and recovered)
    if not await _wait_broker(bus, stop, notifier):
        _log.warning("%s: no broker after %.0f s; starting anyway, messages go to the outbox",
                     daemon.ident, BROKER_WAIT_S)
    if stop.is_set():
        await bus.stop()
        return EX_OK
    try:
        await daemon.start()
    except FitsflowError as exc:  # e.g. a port in use: say what, no traceback; systemd retries
        _log.critical("%s cannot start: %s", daemon.ident, exc)
        notifier.notify(f"STATUS=cannot start: {exc}")
        await daemon.stop()
        await bus.stop()
        return EX_SOFTWARE
    bus.start_consuming()
    notifier.notify(f"READY=1\nSTATUS={daemon.status_line()}")
    _log.info("%s %s ready", daemon.ident, __version__)
    await _announce(daemon)

    watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    period = watchdog_usec / 2e6 if watchdog_usec else STATUS_PERIOD_S
    next_state = time.monotonic() + STATUS_PERIOD_S
    failure = asyncio.create_task(daemon.wait_failure())
    stopping = asyncio.create_task(stop.wait())
    periodic: asyncio.Task[None] | None = None
    while not stop.is_set() and daemon.failed is None:
        # FIRST_COMPLETED: the default (ALL_COMPLETED) made SIGTERM wait for the next status tick.
        await asyncio.wait({failure, stopping}, timeout=min(period, STATUS_PERIOD_S),
                           return_when=asyncio.FIRST_COMPLETED)
        # Sent from the loop on purpose: if the loop hangs, the pings stop and systemd acts.
        notifier.notify(f"WATCHDOG=1\nSTATUS={daemon.status_line()}")
        if time.monotonic() >= next_state and (periodic is None or periodic.done()):
            next_state = time.monotonic() + STATUS_PERIOD_S
            # In the background: a broker slow to answer must not hold this loop (SIGTERM).
            periodic = asyncio.create_task(_periodic(daemon))
    failure.cancel()
    stopping.cancel()
    if periodic is not None:
        await cancel_and_wait(periodic)

    daemon.target = State.OFF
    notifier.notify("STOPPING=1\nSTATUS=stopping")
    _log.info("%s stopping", daemon.ident)
    code = EX_SOFTWARE if daemon.failed is not None else EX_OK
    if daemon.failed is not None:
        daemon.state = State.FAULT
    else:
        daemon.state = State.OFF
    try:
        # Informative only, and a broker cut off by a partition would hold the stop for the
        # receipt timeout: Pacemaker stops a minority's resources one after the other.
        await wait_for(_announce(daemon), STOP_ANNOUNCE_S)
    except TimeoutError:
        _log.warning("%s: no broker receipt for its OFF state within %.0f s; stopping anyway",
                     daemon.ident, STOP_ANNOUNCE_S)
    await daemon.stop()
    await bus.stop()
    return code


async def _wait_broker(bus: MessageBus, stop: asyncio.Event, notifier: Notifier) -> bool:
    deadline = time.monotonic() + BROKER_WAIT_S
    while time.monotonic() < deadline and not stop.is_set():
        if await bus.wait_connected(timeout=1.0):
            return True
        notifier.notify(f"EXTEND_TIMEOUT_USEC=3000000\nSTATUS=waiting for a broker ({bus.describe()})")
    return False


async def _periodic(daemon: Daemon) -> None:
    """Every status period: the state for the recorder, and panics left by other programs."""
    await _announce(daemon)
    try:
        await daemon.forward_host_panics()
    except Exception:  # noqa: BLE001 - informative path; never fatal
        _log.exception("cannot forward the host's panic outbox")


async def _announce(daemon: Daemon) -> None:
    try:
        await daemon.publish_state()
    except Exception:  # noqa: BLE001 - state messages are informative; never fatal
        _log.exception("%s: cannot publish its state", daemon.ident)
