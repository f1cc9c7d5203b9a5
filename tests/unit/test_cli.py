"""What an operator sees when a command is given something wrong: one line naming it and an
exit code, never a traceback; a dangerous verb with nothing selected does nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fitsflow.cli import main
from fitsflow.core.config import load_config
from fitsflow.core.errors import EX_CONFIG
from fitsflow.core.ingest.registry import Registry
from fitsflow.core.runtime import build_parser
from fitsflow.testing.config import make_site


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_a_missing_configuration_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["oods", "tag", "--config", "/nonexistent", "--image", "X"]) == EX_CONFIG
    assert "/nonexistent" in one_line(capsys.readouterr().err)


def test_an_unreachable_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path, ["stomp://127.0.0.1:1"], extra={"site": {
        "database_url": f"sqlite:///{tmp_path}/no/such/dir/fitsflow.db"}})
    assert main(["oods", "ls", "--config", str(site)]) != 0
    assert "database" in one_line(capsys.readouterr().err)


def test_tag_refuses_an_empty_selection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path, ["stomp://127.0.0.1:1"])
    cfg = load_config(site, check_dirs=False)
    reg = Registry(cfg.site.database_url, "oods_files")
    data_id = {"instrument": "TESTCAM", "image": "TESTCAM_O_20261121_000001", "group": "G", "snap": 0,
               "raft": "R22", "sensor": "S00", "obs_day": "20261121"}
    reg.add(data_id, "a.fits", 2880, "crc32:00000000")
    for verb in ("tag", "untag"):
        assert main(["oods", verb, "--config", str(site)]) == 2
        assert "--all" in one_line(capsys.readouterr().err)
    assert not reg.find(data_id).protected
    assert main(["oods", "tag", "--config", str(site), "--all"]) == 0
    assert "1 file(s) protected" in capsys.readouterr().out
    assert reg.find(data_id).protected
    reg.close()


def test_daemon_options_are_checked_and_described(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser("receiver", "``fitsflow-receiver``: receive SPEAD streams.")
    assert parser.parse_args(["--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--log-level", "bogus"])
    assert exited.value.code == 2 and "invalid choice: 'BOGUS'" in capsys.readouterr().err
    text = parser.format_help()
    assert "``" not in text and "least severe messages logged" in text


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _undocumented(sub, f"{path} {name}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_option_of_every_command_has_help() -> None:
    from fitsflow.camera_sim.__main__ import build_parser as camera_parser
    from fitsflow.cli import build_parser as cli_parser
    parsers = {"fitsflow": cli_parser(), "fitsflow-<daemon>": build_parser("receiver", "x"),
               "fitsflow-camera-sim": camera_parser()}
    assert [u for name, p in parsers.items() for u in _undocumented(p, name)] == []
