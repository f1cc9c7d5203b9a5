"""A minimal daemon on fitsflow's runtime, for testing the runtime itself."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from fitsflow.core.bus import MessageBus
from fitsflow.core.config import Config
from fitsflow.core.messages import Message, make
from fitsflow.core import runtime
from fitsflow.core.runtime import Daemon, run_daemon


class ToyDaemon(Daemon):
    name = "toy"

    def __init__(self, cfg: Config, bus: MessageBus, args: argparse.Namespace) -> None:
        super().__init__(cfg, bus, args.instance)
        self.handled = 0
        bus.subscribe(f"/queue/toy.{self.instance}", self.on_message)

    async def on_message(self, msg: Message) -> None:
        command = msg.data["message"]
        if command == "die":
            self.spawn(self._die(), "dying-role")
        elif command == "hang":
            time.sleep(3600)  # blocks the event loop: only the watchdog can notice
        else:
            self.handled += 1
            await self.bus.send(make("ALERT", severity="info", source=self.ident, message=f"echo {command}"),
                                f"/queue/toy.echo.{self.instance}")

    async def _die(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("role failed on purpose")

    def status(self) -> str:
        return f"handled {self.handled}; {self.bus.describe()}"


if __name__ == "__main__":
    if "TOY_STATUS_PERIOD_S" in os.environ:  # the runtime's periodic wake-up, for the stop test
        runtime.STATUS_PERIOD_S = float(os.environ["TOY_STATUS_PERIOD_S"])
    sys.exit(run_daemon("toy", ToyDaemon, description="test daemon"))
