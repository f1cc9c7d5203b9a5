"""Dead-letter queues for operators: ``fitsflow dlq ls|show|replay|purge``.

Every consumer dead-letters to ``/queue/DLQ.<destination>`` with ``DLQReason``, ``DLQOrigin``,
``DLQSubscriber`` and ``DLQAttempts`` headers (docs/messages.md). These tools browse them on
every configured broker without taking anything (ActiveMQ queue browsing: ``browser: true``),
and take exactly the chosen messages (a ``JMSMessageID`` selector) to replay or purge them.

A replay sends the message back to where it was consumed from, as a *new* message: the
consumers remember the ids they have handled or dead-lettered (so a redelivery is not
handled twice), and would drop the old id. The new copy carries ``ReplayOf`` (the old id),
``ReplayedBy`` and ``ReplayedAt``; the replay is sent first (with a receipt) and the dead
letter taken after, so a crash in between duplicates, never loses; and each run is
announced as an ALERT, so the recorder keeps who replayed what.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import queue
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from fitsflow.core.errors import Disconnected, MessageError

if TYPE_CHECKING:  # the bus, stomp.py and msgspec only when a command runs (`fitsflow --version` needs none)
    from fitsflow.core.bus.link import Frame
    from fitsflow.core.bus.stomp_link import StompLink
    from fitsflow.core.config import Config

#: Headers the broker sets on delivery and the bus adds on dead-lettering: not copied to a replay.
_NOT_REPLAYED = {"message-id", "destination", "subscription", "ack", "redelivered", "expires", "priority",
                 "timestamp", "content-length", "DLQReason", "DLQOrigin", "DLQSubscriber", "DLQAttempts",
                 "originalExpiration", "originalDestination", "dlqDeliveryFailureCause"}
WAIT_S = 10.0


@dataclass(frozen=True)
class DeadLetter:
    """One message in a dead-letter queue."""

    broker: str
    queue: str
    broker_id: str  # the broker's message-id (selects exactly this message)
    headers: Mapping[str, str] = field(repr=False)
    body: str = field(repr=False)

    @property
    def msg_id(self) -> str:
        return self.headers.get("MsgId", "")

    @property
    def reason(self) -> str:
        return self.headers.get("DLQReason", "")

    @property
    def origin(self) -> str:
        return self.headers.get("DLQOrigin", "")

    @property
    def age_s(self) -> float:
        try:
            return time.time() - int(self.headers.get("timestamp", "0")) / 1000
        except ValueError:
            return 0.0

    def summary(self) -> dict[str, object]:
        return {"broker": self.broker, "queue": self.queue, "id": self.msg_id or self.broker_id,
                "type": self.headers.get("MsgType", "?"), "image": self.headers.get("Image", ""),
                "origin": self.origin, "attempts": self.headers.get("DLQAttempts", ""),
                "subscriber": self.headers.get("DLQSubscriber", ""), "age_s": round(self.age_s),
                "reason": self.reason}


@dataclass(frozen=True)
class Filter:
    """Which dead letters an operation applies to (all given conditions must hold)."""

    queue: str | None = None      # destination name, with or without the DLQ. prefix
    reason: str | None = None     # a piece of DLQReason
    image: str | None = None
    ids: tuple[str, ...] = ()     # MsgId or broker message-id
    older_than_s: float | None = None

    def pattern(self) -> str:
        if not self.queue:
            return "/queue/DLQ.>"
        name = self.queue.split("/", 2)[-1] if self.queue.startswith("/") else self.queue
        return f"/queue/{name if name.startswith('DLQ.') else 'DLQ.' + name}"

    def matches(self, d: DeadLetter) -> bool:
        return ((not self.reason or self.reason.lower() in d.reason.lower())
                and (not self.image or d.headers.get("Image") == self.image)
                and (not self.ids or d.msg_id in self.ids or d.broker_id in self.ids)
                and (self.older_than_s is None or d.age_s >= self.older_than_s))


def _links(cfg: Config) -> Iterator[StompLink]:
    from fitsflow.core.bus.stomp_link import StompLink

    yield from StompLink.for_brokers(cfg.bus, heartbeat_ms=0)


def browse(cfg: Config, flt: Filter) -> list[DeadLetter]:
    """Every dead letter matching ``flt`` on every configured broker; nothing is taken.
    A broker that cannot be reached raises Disconnected (a partial list would mislead)."""
    from fitsflow.core.bus.link import LinkCallbacks, Subscription

    found: list[DeadLetter] = []
    for link in _links(cfg):
        frames: queue.Queue[Frame] = queue.Queue()
        link.callbacks = LinkCallbacks(lambda _l, _g, f: frames.put(f), lambda _l, _g: None)
        link.connect(f"dlq-browse-{uuid.uuid4().hex[:8]}")
        try:
            link.subscribe(Subscription(id="browse", destination=flt.pattern(), prefetch=1000,
                                        extra_headers={"browser": "true"})).result(WAIT_S)
            while True:
                try:
                    frame = frames.get(timeout=WAIT_S)
                except queue.Empty:
                    raise Disconnected(f"{link.url}: browsing {flt.pattern()} did not finish") from None
                if frame.headers.get("browser") == "end":
                    break
                d = DeadLetter(link.url, frame.destination, frame.headers.get("message-id", ""), dict(frame.headers),
                               frame.body)
                if flt.matches(d):
                    found.append(d)
        finally:
            link.close()
    return found


def _take(cfg: Config, letters: Iterable[DeadLetter], act: Callable[[StompLink, Frame], None]) -> int:
    """Receive exactly these dead letters (by broker message-id) and ``act`` on each before
    it is acked; returns how many were taken."""
    from fitsflow.core.bus.link import LinkCallbacks, Subscription

    by_broker: dict[str, list[DeadLetter]] = {}
    for d in letters:
        by_broker.setdefault(d.broker, []).append(d)
    taken = 0
    for link in _links(cfg):
        todo = by_broker.get(link.url, [])
        if not todo:
            continue
        frames: queue.Queue[Frame] = queue.Queue()
        link.callbacks = LinkCallbacks(lambda _l, _g, f: frames.put(f), lambda _l, _g: None)
        link.connect(f"dlq-take-{uuid.uuid4().hex[:8]}")
        try:
            for n, d in enumerate(todo):
                sub = Subscription(id=f"take{n}", destination=d.queue, prefetch=1,
                                   selector=f"JMSMessageID = '{d.broker_id}'")
                link.subscribe(sub).result(WAIT_S)
                try:
                    frame = frames.get(timeout=WAIT_S)
                except queue.Empty:
                    continue  # taken meanwhile by someone else
                act(link, frame)
                link.ack(frame, sub.id)
                taken += 1
        finally:
            link.close()
    return taken


def replay(cfg: Config, letters: list[DeadLetter], *, force: bool = False) -> int:
    """Send each dead letter back to its origin as a new message (see the module
    docstring). Without ``force``, a body that would be refused again (it does not decode)
    is left where it is."""
    from fitsflow.core.messages import decode

    who = f"{getpass.getuser()}@{socket.gethostname()}"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not force:
        for d in letters:
            try:
                decode(d.body)
            except MessageError as exc:
                raise MessageError(f"{d.msg_id or d.broker_id} in {d.queue} would be refused again ({exc}); "
                                   "fix the cause, or replay with --force") from None

    def send_back(link: StompLink, frame: Frame) -> None:
        headers = {k: v for k, v in frame.headers.items() if k not in _NOT_REPLAYED}
        body = frame.body
        old = headers.get("MsgId", frame.headers.get("message-id", ""))
        try:
            envelope = json.loads(body)
            envelope["id"] = uuid.uuid4().hex  # consumers drop an id they have seen
            body = json.dumps(envelope, separators=(",", ":"))
            headers["MsgId"] = envelope["id"]
        except (ValueError, TypeError):
            pass  # --force on a body that is not JSON: as it was
        headers.update({"persistent": "true", "ReplayOf": old, "ReplayedBy": who, "ReplayedAt": when})
        origin = frame.headers.get("DLQOrigin") or frame.destination.replace("/queue/DLQ.", "/queue/", 1)
        link.send(origin, body, headers).result(WAIT_S)  # the copy is safe before the letter is taken

    n = _take(cfg, letters, send_back)
    _record(cfg, f"{who} replayed {n} dead-lettered message(s): "
                 + ", ".join(sorted({f'{d.origin or d.queue}' for d in letters}))[:1500])
    return n


def purge(cfg: Config, letters: list[DeadLetter]) -> int:
    """Remove these dead letters for good."""
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    n = _take(cfg, letters, lambda link, frame: None)
    _record(cfg, f"{who} purged {n} dead-lettered message(s) from "
                 + ", ".join(sorted({d.queue for d in letters}))[:1500])
    return n


def _record(cfg: Config, text: str) -> None:
    """Tell the recorder (and anyone watching alerts) what an operator did."""
    from fitsflow.core.messages import destination_of, make

    msg = make("ALERT", severity="info", source="fitsflow dlq", message=text)
    for link in _links(cfg):
        try:
            link.connect(f"dlq-record-{uuid.uuid4().hex[:8]}")
            link.send(destination_of("ALERT"), msg.encode(), msg.headers()).result(WAIT_S)
            return
        except (Disconnected, TimeoutError):
            continue
        finally:
            link.close()


# -- the command line (fitsflow dlq ...) ----------------------------------------------------

def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = sub.add_parser("dlq", help="inspect, replay or purge dead-lettered messages")
    actions = top.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    helps = {"ls": "list dead letters (nothing is taken)", "show": "print dead letters in full",
             "replay": "send dead letters back to where they came from, as new messages",
             "purge": "remove dead letters for good"}
    for action, text in helps.items():
        p = actions.add_parser(action, help=text)
        p.add_argument("ids", nargs="*", metavar="ID", help="message ids (MsgId or the broker's message-id)")
        p.add_argument("--config", help="configuration file (default: $FITSFLOW_CONFIG or /etc/fitsflow/fitsflow.toml)")
        p.add_argument("--queue", help="one destination, e.g. fitsflow.panic (default: every DLQ)")
        p.add_argument("--reason", help="only those whose DLQReason contains this text")
        p.add_argument("--image", help="only those about this image")
        p.add_argument("--older-than", type=float, metavar="SECONDS", help="only those dead-lettered this long ago")
        if action == "ls":
            p.add_argument("--json", action="store_true", help="one JSON object per dead letter")
        if action in ("replay", "purge"):
            p.add_argument("--all", action="store_true", help="act on every match even without IDs")
        if action == "replay":
            p.add_argument("--force", action="store_true", help="replay bodies that would be refused again")
        if action == "purge":
            p.add_argument("--yes", action="store_true", help="really remove them")
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from fitsflow.core.config import load_config
    from fitsflow.core.errors import EX_CONFIG, ConfigError

    try:
        cfg = load_config(args.config, check_dirs=False, role="operator")
    except ConfigError as exc:
        print(f"fitsflow: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    flt = Filter(queue=args.queue, reason=args.reason, image=args.image, ids=tuple(args.ids),
                 older_than_s=args.older_than)
    try:
        letters = browse(cfg, flt)
        if args.dlq_command == "ls":
            for d in letters:
                s = d.summary()
                print(json.dumps(s) if args.json else
                      f"{s['id']}  {s['type']:<20} {s['image'] or '-':<28} {s['origin']:<40} {s['age_s']:>7} s  "
                      f"{str(s['reason'])[:100]}")
            print(f"# {len(letters)} dead letter(s)", file=sys.stderr)
            return 0
        if args.dlq_command == "show":
            for d in letters:
                print(json.dumps({**d.summary(), "headers": dict(d.headers), "body": d.body}, indent=1))
            return 0 if letters else 1
        if not (args.ids or args.all):
            print(f"fitsflow dlq {args.dlq_command}: name the message IDs, or give --all to act on all "
                  f"{len(letters)} match(es)", file=sys.stderr)
            return 2
        if args.dlq_command == "purge" and not args.yes:
            print(f"fitsflow dlq purge: {len(letters)} dead letter(s) would be removed for good; add --yes",
                  file=sys.stderr)
            return 2
        n = replay(cfg, letters, force=args.force) if args.dlq_command == "replay" else purge(cfg, letters)
        print(f"{n} dead letter(s) {'replayed' if args.dlq_command == 'replay' else 'purged'}")
        return 0
    except (Disconnected, TimeoutError) as exc:
        print(f"fitsflow dlq: broker unreachable: {exc}", file=sys.stderr)
        return 1
    except MessageError as exc:
        print(f"fitsflow dlq: {exc}", file=sys.stderr)
        return 1
