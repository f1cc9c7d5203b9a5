"""``fitsflow-demo``: the whole pipeline on one machine.

A private ActiveMQ, every daemon as its own process (with the configuration file a site
would use), the camera simulator sending N images; live progress, then a report: counts at
every stage, latency from the last packet of an image to its last sensor in the OODS,
throughput, losses, and where everything is. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings, default_sensors
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.config import load_config
from fitsflow.core.messages import Message
from fitsflow.core.sockbuf import RaisedCaps, kernel_cap
from fitsflow.testing.broker import BrokerUnavailable, PrivateBroker, free_port
from fitsflow.testing.config import make_site
from fitsflow.testing.daemons import Listener
from fitsflow.testing.stomp_tools import drain
from fitsflow.testing.udp import free_udp_port

SOCKET_BUFFER = 64 * 1024 * 1024
#: (module, instance) of every daemon the demo runs
DAEMONS = [("receiver", "r1"), ("header_service", "h1"), ("archive_controller", "c1"), ("forwarder", "f1"),
           ("forwarder", "f2"), ("oods", "o1"), ("archive_ingest", "a1"), ("recorder", "r1")]


@dataclass
class Progress:
    sensors: int
    sent: dict[str, float] = field(default_factory=dict)        # image → time its last packet left
    readout: dict[str, Message] = field(default_factory=dict)
    header: set[str] = field(default_factory=set)
    oods: dict[str, dict[str, float]] = field(default_factory=dict)     # image → sensor → time
    archive: dict[str, set[str]] = field(default_factory=dict)
    failures: list[Message] = field(default_factory=list)
    alerts: list[Message] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)

    async def on(self, msg: Message) -> None:
        now = time.time()
        if msg.type == "READOUT_COMPLETE" and msg.image:
            self.readout[msg.image] = msg
        elif msg.type == "HEADER_READY" and msg.image:
            self.header.add(msg.image)
        elif msg.type in ("IMAGE_IN_OODS", "IMAGE_IN_ARCHIVE") and msg.image:
            if msg.data["status"] != 0:
                self.failures.append(msg)
                return
            sensor = f"{msg.data['data_id']['raft']}_{msg.data['data_id']['sensor']}"
            if msg.type == "IMAGE_IN_OODS":
                self.oods.setdefault(msg.image, {}).setdefault(sensor, now)
            else:
                self.archive.setdefault(msg.image, set()).add(sensor)
        elif msg.type == "ALERT":
            self.alerts.append(msg)
        elif msg.type == "DAEMON_STATE" and msg.data["state"] == "ON":
            self.ready.add(str(msg.data["daemon"]))

    def whole(self, table: dict) -> list[str]:  # type: ignore[type-arg]
        return [i for i, s in table.items() if len(s) >= self.sensors]


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).absolute()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.page_port = 0
        self.broker: PrivateBroker | None = None
        self.caps = RaisedCaps(SOCKET_BUFFER)

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- set-up and tear-down ----------------------------------------------------------

    def prepare(self) -> Path:
        if self.work.exists():  # a second run starts clean
            shutil.rmtree(self.work)
        (self.work / "logs").mkdir(parents=True)
        self.say(f"fitsflow-demo in {self.work}")
        self.broker = PrivateBroker(self.work / "activemq", name="fitsflow-demo")
        t0 = time.monotonic()
        self.broker.start()
        self.say(f"  ActiveMQ up on {self.broker.url} in {time.monotonic() - t0:.1f} s")
        self.port = free_udp_port()
        # The receiver's and the camera simulator's UDP buffers (their processes inherit nothing:
        # the kernel's caps are global).
        self.caps.__enter__()
        for note in self.caps.notes:
            self.say(f"  {note}")
        buffer = min(SOCKET_BUFFER, kernel_cap("rmem") or SOCKET_BUFFER)
        sensors = default_sensors(1)
        self.page_port = free_port()
        return make_site(self.work, [self.broker.url], instrument="DEMOCAM", extra={
            "receiver": {"streams": [f"127.0.0.1:{self.port}"], "socket_buffer_bytes": buffer,
                         "max_heap_bytes": 16 << 20, "image_timeout_s": 30.0, "expected_sensors": sensors},
            "forwarder": {"heartbeat_s": 1.0, "join_timeout_s": 60.0},
            "oods": {"rescan_s": 10.0}, "archive_ingest": {"rescan_s": 10.0},
            "recorder": {"http_port": self.page_port},
            "bus": {"heartbeat_ms": 10000}})

    def start_daemons(self, site: Path) -> None:
        env = dict(os.environ, FITSFLOW_CONFIG=str(site))
        for module, instance in DAEMONS:
            name = f"{module.replace('_', '-')}@{instance}"
            log = open(self.work / "logs" / f"{module}-{instance}.log", "wb")
            self.procs[name] = subprocess.Popen([sys.executable, "-m", f"fitsflow.{module}", "--instance", instance],
                                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()

    def stop(self) -> None:
        # The recorder last, so that it records the others' final OFF state.
        last = {n: p for n, p in self.procs.items() if n.startswith("recorder@")}
        self._stop_all({n: p for n, p in self.procs.items() if n not in last})
        if last:
            time.sleep(1.0)  # their OFF messages reach the recorder
            self._stop_all(last)

    def _stop_all(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"  {name} did not stop in time: killed")
                proc.kill()
                proc.wait()
        if self.broker is not None:
            self.broker.stop()
        self.caps.__exit__()

    # -- the run -----------------------------------------------------------------------

    async def run(self, site: Path) -> int:
        a = self.args
        cfg = load_config(site)
        progress = Progress(sensors=9)
        listen = Listener(cfg, "demo", ["/topic/fitsflow.readout", "/topic/fitsflow.header", "/topic/fitsflow.oods",
                                        "/topic/fitsflow.archive", "/topic/fitsflow.alerts", "/topic/fitsflow.state"],
                          handler=progress.on)
        async with listen:
            self.start_daemons(site)
            wanted = {f"{m.replace('_', '-')}@{i}" for m, i in DAEMONS}
            deadline = time.monotonic() + 60
            while not wanted <= progress.ready:
                dead = [n for n, p in self.procs.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    self.say(f"  daemons not ready: {sorted(wanted - progress.ready)}; dead: {dead}; "
                             f"see {self.work / 'logs'}")
                    return 1
                await asyncio.sleep(0.2)
            self.say(f"  {len(wanted)} daemons up: {', '.join(sorted(wanted))}")
            self.say(f"  status page (while the demo runs): http://127.0.0.1:{self.page_port}/")
            settings = SimSettings(instrument="DEMOCAM", sensors=default_sensors(1), rows=a.rows, cols=a.cols,
                                   stripe_rows=max(1, (4 << 20) // (a.cols * 4)))
            mib = 9 * a.rows * a.cols * 4 / 2**20
            self.say(f"  sending {a.images} images of 9 sensors x {a.rows}x{a.cols} int32 ({mib:.0f} MiB each) "
                     f"at {a.rate / 1e6:.0f} MB/s\n")
            t_first = time.time()
            with SpeadSender([("127.0.0.1", self.port)], rate_bytes_s=a.rate) as sender:
                sim = CameraSimulator(settings, listen.bus, sender, ImageStore(self.work / "camera-store", 100))
                show = asyncio.create_task(self._show(progress, a.images))
                for _ in range(a.images):
                    recipe = await sim.take_image()
                    progress.sent[recipe.image] = recipe.t_end
                deadline = time.monotonic() + a.timeout
                while time.monotonic() < deadline:
                    if len(progress.whole(progress.oods)) >= a.images and len(progress.whole(progress.archive)) >= a.images:
                        break
                    await asyncio.sleep(0.2)
                show.cancel()
                await asyncio.gather(show, return_exceptions=True)
            self._line(progress, a.images, final=True)
            return self.report(progress, cfg, t_first, mib)

    def _line(self, p: Progress, n: int, final: bool = False) -> None:
        line = (f"  sent {len(p.sent):>3}/{n}   received {len(p.readout):>3}   headers {len(p.header):>3}   "
                f"in OODS {len(p.whole(p.oods)):>3}   in archive {len(p.whole(p.archive)):>3}   "
                f"alerts {len(p.alerts)}")
        print(("\r" if sys.stdout.isatty() else "") + line, end="\n" if final or not sys.stdout.isatty() else "",
              flush=True)

    async def _show(self, p: Progress, n: int) -> None:
        period = 0.5 if sys.stdout.isatty() else 5.0
        while True:
            self._line(p, n)
            await asyncio.sleep(period)

    def report(self, p: Progress, cfg, t_first: float, mib: float) -> int:  # type: ignore[no-untyped-def]
        images = list(p.sent)
        in_oods = [i for i in images if len(p.oods.get(i, {})) >= 9]
        latencies = sorted(max(p.oods[i].values()) - p.sent[i] for i in in_oods)
        t_end = max((max(p.oods[i].values()) for i in in_oods), default=time.time())
        partial = sum(len(m.data["partial"]) for m in p.readout.values())
        missing = sum(len(m.data["missing"]) for m in p.readout.values())
        paths = cfg.paths.resolved()
        self.say("\nfitsflow-demo report")
        self.say(f"  images sent {len(images)}; readouts complete {len(p.readout)} ({missing} sensors missing, "
                 f"{partial} partial); headers {len(p.header)}; whole in OODS {len(in_oods)}; whole in archive "
                 f"{len(p.whole(p.archive))}; ingest failures {len(p.failures)}")
        if latencies:
            def pct(q: float) -> float:
                return latencies[min(len(latencies) - 1, int(q * len(latencies)))]
            self.say(f"  latency, last packet of an image -> its last sensor in the OODS: p50 {pct(0.5):.2f} s, "
                     f"p95 {pct(0.95):.2f} s, max {latencies[-1]:.2f} s")
            elapsed = t_end - t_first
            self.say(f"  throughput: {len(in_oods) * mib * 1.048576 / elapsed:.0f} MB/s, "
                     f"{len(in_oods) / elapsed:.2f} images/s over {elapsed:.1f} s")
        lost = len(images) - len(in_oods)
        self.say(f"  images lost: {lost}" + ("" if lost == 0 else "  <-- see the daemons' logs"))
        # What a clean run leaves nowhere: dead letters, files stranded between daemons.
        dead = drain(self.broker.url, "/queue/DLQ.>", timeout=2.0) if self.broker else []
        orphans = [p for p in paths.incoming.iterdir() if p.is_file()]
        orphans += [p for d in (paths.oods_staging, paths.archive_staging) for p in d.rglob("*") if p.is_file()]
        self.say(f"  dead-lettered messages: {len(dead)}; files left between daemons: {len(orphans)}")
        for frame in dead[:5]:
            self.say(f"    DLQ {frame.headers.get('DLQOrigin')}: {frame.headers.get('DLQReason', '')[:200]}")
        for path in orphans[:5]:
            self.say(f"    stranded: {path}")
        self.say(f"  files: OODS {paths.oods_repo}, archive {paths.archive_repo}")
        self.say(f"  registry: {cfg.site.database_url}  (fitsflow oods ls --config {cfg.source})")
        self.say(f"  logs: {self.work / 'logs'}")
        self.say(f"  status (recorder's view, also after the demo): fitsflow status --config {cfg.source}")
        for m in p.alerts[:5]:
            self.say(f"  alert from {m.data['source']}: {m.data['message'][:200]}")
        return 0 if lost == 0 and not p.failures and not dead and not orphans else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fitsflow-demo", description="Run the whole pipeline on this machine and "
                                "report (a private ActiveMQ, every daemon, the camera simulator).")
    p.add_argument("--images", type=int, default=20, help="images to take (default 20)")
    p.add_argument("--rows", type=int, default=4096, help="rows of each sensor (default 4096)")
    p.add_argument("--cols", type=int, default=4096, help="columns of each sensor (default 4096)")
    p.add_argument("--rate", type=float, default=400e6, help="UDP send rate, bytes/s (default 400 MB/s)")
    p.add_argument("--workdir", default=os.environ.get("FITSFLOW_DEMO_DIR", "/var/tmp/fitsflow-demo"),
                   help="everything goes here; emptied at the start of each run")
    p.add_argument("--timeout", type=float, default=300.0, help="how long to wait for the last image (s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console script ``fitsflow-demo``."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    demo = Demo(args)
    try:
        site = demo.prepare()
        return asyncio.run(demo.run(site))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", flush=True)
        return 130
    except BrokerUnavailable as exc:
        print(f"fitsflow-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
