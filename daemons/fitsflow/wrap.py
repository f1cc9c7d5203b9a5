"""``fitsflow-wrap [--config FILE] -- CMD ARGS...``: run a command; if it fails (non-zero exit
or killed by a signal), raise a panic with its exit status and the tail of its output. Output
passes through unchanged; the exit code is the command's (128 + signal number when killed)."""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import threading
from typing import IO

from fitsflow.core.config import load_config
from fitsflow.core.errors import ConfigError
from fitsflow.core.panic import build_panic, deliver

TAIL_LINES = 40


def _tee(src: IO[bytes], dst: IO[bytes], tail: collections.deque[str], lock: threading.Lock) -> None:
    for line in iter(src.readline, b""):
        dst.write(line)
        dst.flush()
        with lock:
            tail.append(line.decode("utf-8", "replace").rstrip("\n"))


def build_parser() -> argparse.ArgumentParser:
    """The command line (also the source of the man page, rpm/build-manpages)."""
    parser = argparse.ArgumentParser(prog="fitsflow-wrap", description=__doc__)
    parser.add_argument("--config", help="configuration file (default: $FITSFLOW_CONFIG or "
                                         "/etc/fitsflow/fitsflow.toml), for the panic")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("give a command after --")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lock = threading.Lock()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        code, what = 127, f"{cmd[0]}: cannot start: {exc.strerror}"
    else:
        threads = [threading.Thread(target=_tee, args=(proc.stdout, sys.stdout.buffer, tail, lock)),
                   threading.Thread(target=_tee, args=(proc.stderr, sys.stderr.buffer, tail, lock))]
        for t in threads:
            t.start()
        rc = proc.wait()
        for t in threads:
            t.join()
        if rc == 0:
            return 0
        if rc < 0:
            code, what = 128 - rc, f"killed by {signal.Signals(-rc).name}"
        else:
            code, what = rc, f"exit status {rc}"
    message = f"command failed ({what}): {' '.join(cmd)}"
    try:
        cfg = load_config(args.config, check_dirs=False, role="panic")
    except ConfigError as exc:
        print(f"fitsflow-wrap: no usable configuration ({exc})", file=sys.stderr)
        cfg = None
    with lock:
        output = "\n".join(tail)
    deliver(build_panic(message, program="fitsflow-wrap", argv=cmd,
                        traceback_text=f"last {len(tail)} lines of output:\n{output}"), cfg)
    return code


if __name__ == "__main__":
    sys.exit(main())
