"""Replay runs the live header service's handlers on a scratch copy: a recording without
telemetry gives the partial header the deadline would write, and nothing of the site's
state, data tree or broker is touched."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fitsflow.core.config import load_config
from fitsflow.core.messages import make
from fitsflow.header_service.replay import ReplayError, replay
from fitsflow.testing.config import make_site

IMAGE = "TESTCAM_O_20261128_000007"


def recording() -> list[str]:
    t = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.timezone.utc)
    return [make("START_INTEGRATION", IMAGE, group=f"{IMAGE}_G", snap=0, exptime=15.0, sensors=["R22_S00"],
                 timestamp=t.isoformat()).encode(),
            make("END_READOUT", IMAGE, timestamp=(t + dt.timedelta(seconds=17)).isoformat(),
                 sensors=["R22_S00"]).encode()]


def test_a_recording_without_telemetry_gives_the_deadline_header(tmp_path: Path) -> None:
    site = make_site(tmp_path, ["stomp://127.0.0.1:61613"])
    cfg = load_config(site)
    header = replay(recording(), IMAGE, cfg)
    cards = {k: v for k, v, _ in header["cards"]}
    assert header["image"] == IMAGE and header["partial"] is True and header["missing_keywords"]
    assert cards["IMGNAME"] == IMAGE and cards["HDRMISS"]
    assert not list(cfg.paths.resolved().headers.rglob("*")), "replay wrote into the site's tree"
    assert not list(Path(cfg.site.state_dir).glob("header-service-*")), "replay wrote the site's state"


def test_unusable_recordings_are_refused_with_the_reason(tmp_path: Path) -> None:
    cfg = load_config(make_site(tmp_path, ["stomp://127.0.0.1:61613"]))
    with pytest.raises(ReplayError, match="line 2"):
        replay([recording()[0], "not a message"], IMAGE, cfg)
    with pytest.raises(ReplayError, match="no message of image"):
        replay(recording(), "TESTCAM_O_20261128_000099", cfg)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    done = subprocess.run([sys.executable, "-m", "fitsflow.header_service", "--config", str(tmp_path / "fitsflow.toml"),
                           "--replay", str(bad), "--image", IMAGE], capture_output=True, text=True)
    assert done.returncode == 65 and "cannot replay" in done.stderr and "Traceback" not in done.stderr, done.stderr
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(recording()) + "\n")
    done = subprocess.run([sys.executable, "-m", "fitsflow.header_service", "--config", str(tmp_path / "fitsflow.toml"),
                           "--replay", str(good), "--image", IMAGE], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["image"] == IMAGE, done.stderr
