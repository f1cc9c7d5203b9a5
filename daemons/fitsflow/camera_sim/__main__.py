"""``fitsflow-camera-sim``: send simulated images (SPEAD over UDP + camera events and telemetry).

    fitsflow-camera-sim --config FILE --images 20 --dest 127.0.0.1:7148
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from fitsflow.camera_sim.sender import SpeadSender
from fitsflow.camera_sim.simulator import CameraSimulator, SimSettings, default_sensors
from fitsflow.camera_sim.store import ImageStore
from fitsflow.core.bus import MessageBus
from fitsflow.core.config import load_config
from fitsflow.core.errors import EX_CONFIG, ConfigError
from fitsflow.core.logs import setup_logging
from fitsflow.core.config import parse_host_port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fitsflow-camera-sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="fitsflow configuration (for the broker and the instrument name)")
    p.add_argument("--images", type=int, default=1, help="images to take (default 1)")
    p.add_argument("--dest", action="append", default=[], metavar="HOST:PORT",
                   help="UDP destination; repeat for several streams (default 127.0.0.1:7148)")
    p.add_argument("--rafts", type=int, default=1, help="rafts of 9 sensors (default 1)")
    p.add_argument("--rows", type=int, default=4096, help="rows of each sensor (default 4096)")
    p.add_argument("--cols", type=int, default=4096, help="columns of each sensor (default 4096)")
    p.add_argument("--stripe-rows", type=int, default=256, help="rows per heap")
    p.add_argument("--rate", type=float, default=0.0, help="bytes/s over all streams (0 = unlimited)")
    p.add_argument("--exptime", type=float, default=0.0, help="exposure time to wait per image (s)")
    p.add_argument("--interval", type=float, default=0.0, help="extra pause between images (s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the pixel pattern (default 1)")
    p.add_argument("--first-seq", type=int, default=1, help="sequence number of the first image (default 1)")
    p.add_argument("--store", default="camera-store", help="directory of the image store")
    p.add_argument("--keep", type=int, default=1000, help="images kept in the store")
    p.add_argument("--serve", action="store_true", help="after the images, stay up to answer RESEND_IMAGE")
    return p


async def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, role="camera")
    settings = SimSettings(instrument=cfg.site.instrument, sensors=default_sensors(args.rafts), rows=args.rows,
                           cols=args.cols, stripe_rows=args.stripe_rows, exptime=args.exptime, seed=args.seed,
                           first_seq=args.first_seq, interval=args.interval)
    destinations = [parse_host_port(d) for d in (args.dest or ["127.0.0.1:7148"])]
    bus = MessageBus.from_config(cfg, "camera-sim")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with SpeadSender(destinations, rate_bytes_s=args.rate) as sender:
        sim = CameraSimulator(settings, bus, sender, ImageStore(Path(args.store), args.keep))
        await bus.start()
        await bus.wait_connected(15)
        for _ in range(args.images):
            if stop.is_set():
                break
            recipe = await sim.take_image()
            logging.info("sent %s (%d sensors, %d MiB)", recipe.image, len(recipe.sensors),
                         len(recipe.sensors) * recipe.rows * recipe.cols * 4 >> 20)
        if args.serve:
            await stop.wait()
        await bus.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("camera-sim")
    logging.getLogger("spead2").setLevel(logging.WARNING)  # it logs every per-stripe descriptor
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:
        print(f"fitsflow-camera-sim: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG


if __name__ == "__main__":
    sys.exit(main())
