"""Configuration validation: every bad input stops with one message naming file and key."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from fitsflow.cli import main as cli_main
from fitsflow.core.config import _Checker, load_config, mask_url, parse_broker_url, read_credentials
from fitsflow.core.errors import EX_CONFIG, ConfigError
from fitsflow.testing.config import make_site

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    return make_site(tmp_path, ["stomp://127.0.0.1:61613"])


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in config"
    path.write_text(text.replace(old, new))


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return info.value


def test_valid_file_loads_typed_values(cfg_file: Path) -> None:
    cfg = load_config(cfg_file)
    assert cfg.site.instrument == "TESTCAM"
    assert cfg.bus.brokers == ("stomp://127.0.0.1:61613",)
    assert cfg.bus.heartbeat_ms == 2000
    assert cfg.paths.resolved().incoming == cfg.paths.root / "handoff/incoming"
    with pytest.raises(AttributeError):
        cfg.bus.max_attempts = 3  # type: ignore[misc]  # frozen


def test_unknown_key(cfg_file: Path) -> None:
    rewrite(cfg_file, "[bus]\n", "[bus]\nheartbeats_ms = 5\n")
    err = error_of(cfg_file)
    assert err.key == "bus.heartbeats_ms" and "unknown key" in err.problem


def test_unknown_section(cfg_file: Path) -> None:
    cfg_file.write_text(cfg_file.read_text() + "\n[recievr]\nports = [1]\n")
    err = error_of(cfg_file)
    assert err.key == "recievr" and "unknown section" in err.problem


@pytest.mark.parametrize("old,new,key,words", [
    ("heartbeat_ms = 2000", 'heartbeat_ms = "2000"', "bus.heartbeat_ms", "integer"),
    ("heartbeat_ms = 2000", "heartbeat_ms = 2.5", "bus.heartbeat_ms", "integer"),
    ("heartbeat_ms = 2000", "heartbeat_ms = true", "bus.heartbeat_ms", "integer"),
    ("retry_delay_s = 0.05", 'retry_delay_s = "fast"', "bus.retry_delay_s", "number"),
    ('brokers = ["stomp://127.0.0.1:61613"]', 'brokers = "stomp://127.0.0.1:61613"', "bus.brokers", "list"),
    ('instrument = "TESTCAM"', "instrument = 3", "site.instrument", "string"),
    ("heartbeat_ms = 2000", "heartbeat_ms = 0", "bus.heartbeat_ms", "> 0"),
    ('instrument = "TESTCAM"', 'instrument = "../x"', "site.instrument", "does not match"),
])
def test_wrong_types_and_values(cfg_file: Path, old: str, new: str, key: str, words: str) -> None:
    rewrite(cfg_file, old, new)
    err = error_of(cfg_file)
    assert err.key == key, err
    assert words in err.problem, err


def test_bad_broker_url(cfg_file: Path) -> None:
    rewrite(cfg_file, '"stomp://127.0.0.1:61613"', '"http://127.0.0.1:61613"')
    assert error_of(cfg_file).key == "bus.brokers"


def test_plaintext_only_to_a_loopback_broker(cfg_file: Path) -> None:
    rewrite(cfg_file, '"stomp://127.0.0.1:61613"', '"stomp://broker.example.org:61613"')
    err = error_of(cfg_file)
    assert err.key == "bus.brokers" and "stomp+ssl" in err.problem
    rewrite(cfg_file, "[bus]\n", "[bus]\nallow_plaintext = true\n")
    load_config(cfg_file)
    rewrite(cfg_file, '"stomp://broker.example.org:61613"', '"stomp+ssl://broker.example.org:61612"')
    assert load_config(cfg_file).bus.brokers == ("stomp+ssl://broker.example.org:61612",)


@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o640, False), (0o644, False), (0o606, False)])
def test_secret_files_must_be_private(cfg_file: Path, tmp_path: Path, mode: int, ok: bool) -> None:
    secret = tmp_path / "creds.toml"
    secret.write_text('username = "u"\npassword = "p"\n')
    secret.chmod(mode)
    rewrite(cfg_file, "[bus]\n", f'[bus]\ncredentials_file = "{secret}"\n')
    if ok:
        assert load_config(cfg_file).bus.credentials_file == secret
    else:
        err = error_of(cfg_file)
        assert err.key == "bus.credentials_file" and f"chmod 600 {secret}" in err.problem


def test_one_file_gives_each_role_its_own_credentials(cfg_file: Path, tmp_path: Path) -> None:
    """``{role}`` in credentials_file: each program reads its own identity's file; a role
    whose file is missing or readable by others is refused, naming the resolved file."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    for role in ("receiver", "operator"):
        (creds / f"{role}.toml").write_text(f'username = "{role}"\npassword = "pw-{role}"\n')
        (creds / f"{role}.toml").chmod(0o600)
    rewrite(cfg_file, "[bus]\n", f'[bus]\ncredentials_file = "{creds}/{{role}}.toml"\n')
    assert load_config(cfg_file, role="receiver").bus.credentials_file == creds / "receiver.toml"
    assert read_credentials(load_config(cfg_file, role="operator").bus.credentials_file) == ("operator", "pw-operator")
    # a tool that reads the file for no role (config show) keeps the pattern
    assert str(load_config(cfg_file).bus.credentials_file).endswith("{role}.toml")
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, role="recorder")
    assert err.value.key == "bus.credentials_file" and str(creds / "recorder.toml") in err.value.problem
    (creds / "receiver.toml").chmod(0o640)
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, role="receiver")
    assert f"chmod 600 {creds / 'receiver.toml'}" in err.value.problem


def test_secret_file_of_another_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown and switch users")
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)  # the other user must be able to stat the key
        key = Path(d) / "client.key"
        key.write_text("key")
        key.chmod(0o600)
        os.chown(key, 65534, 65534)
        _Checker("f.toml", check_dirs=False).secret_file("bus.tls_key_file", key)  # root may check anyone's
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.setgid(65533)
                os.setuid(65533)
                _Checker("f.toml", check_dirs=False).secret_file("bus.tls_key_file", key)
                code = 1
            except ConfigError as exc:
                code = 0 if "owned by uid 65534, not by uid 65533" in exc.problem else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_missing_directory(cfg_file: Path) -> None:
    cfg = load_config(cfg_file)
    os.rmdir(cfg.paths.resolved().quarantine)
    err = error_of(cfg_file)
    assert err.key == "paths.quarantine" and "does not exist" in err.problem


def test_directories_on_different_filesystems(cfg_file: Path) -> None:
    shm = Path("/dev/shm")
    cfg = load_config(cfg_file)
    if not shm.is_dir() or shm.stat().st_dev == cfg.paths.root.stat().st_dev:
        pytest.fail("this test needs /dev/shm on a filesystem other than the temp dir")
    other = shm / f"fitsflow-test-{os.getpid()}"
    other.mkdir(exist_ok=True)
    try:
        rewrite(cfg_file, f'root = "{cfg.paths.root}"', f'root = "{cfg.paths.root}"\nquarantine = "{other}"')
        err = error_of(cfg_file)
        assert err.key == "paths.quarantine" and "different filesystem" in err.problem
    finally:
        other.rmdir()


def test_missing_file_is_an_error_not_defaults(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.toml")
    assert "no such file" in err.problem


def test_invalid_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[bus\nbrokers = 1")
    assert "not valid TOML" in error_of(p).problem


def test_env_var_selects_file(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITSFLOW_CONFIG", str(cfg_file))
    assert load_config().source == cfg_file


def test_secrets_masked(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rewrite(cfg_file, 'database_url = "', 'database_url = "postgresql://ff:s3cr3t@db/ff"\n#')
    rewrite(cfg_file, '"stomp://127.0.0.1:61613"', '"stomp://amq:hunter2@127.0.0.1:61613"')
    assert cli_main(["config", "check", "--config", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "hunter2" not in out
    assert "postgresql://ff:****@db/ff" in out
    assert mask_url("stomp://u:p@h:1") == "stomp://u:****@h:1"


def test_config_check_exit_code_on_error(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rewrite(cfg_file, "[bus]\n", "[bus]\nbogus = 1\n")
    assert cli_main(["config", "check", "--config", str(cfg_file)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "bus.bogus" in err and str(cfg_file) in err


def test_shipped_default_is_valid_toml_with_known_keys() -> None:
    cfg = load_config(REPO / "etc/fitsflow/fitsflow.toml", check_dirs=False)
    assert cfg.bus.brokers == ("stomp://127.0.0.1:61613",)


def test_parse_broker_url() -> None:
    a = parse_broker_url("stomp://[::1]:61613")
    assert (a.host, a.port, a.tls) == ("::1", 61613, False)
    with pytest.raises(ValueError):
        parse_broker_url("stomp://host:99999")


def test_staging_dir_mode_with_setgid_is_refused(cfg_file: Path) -> None:
    """The units have RestrictSUIDSGID=yes: a mode with setgid would make every hand-off fail
    with EPERM under systemd (found by the HA lab); say so at start-up instead."""
    cfg_file.write_text(cfg_file.read_text() + "\n[archive_controller]\nstaging_dir_mode = 1533\n")
    err = error_of(cfg_file)
    assert err.key == "archive_controller.staging_dir_mode" and "RestrictSUIDSGID" in err.problem


@pytest.mark.parametrize("ports, words", [
    ('{"forwarder@f2" = 9103, oods = 9104}', None),
    ('{forwarder = 9103, oods = 9103}', "two daemons on one port"),
    ('{fowarder = 9103}', "unknown daemon"),
    ('{oods = 70000}', "out of range"),
])
def test_metrics_ports(cfg_file: Path, ports: str, words: str | None) -> None:
    cfg_file.write_text(cfg_file.read_text() + f"\n[metrics]\nports = {ports}\n")
    if words is None:
        metrics = load_config(cfg_file).metrics
        assert metrics.port_of("forwarder", "f2") == 9103 and metrics.port_of("forwarder", "f1") == 0
        assert metrics.port_of("oods", "o1") == 9104
    else:
        assert words in str(error_of(cfg_file))


def test_partial_sensors_wait_longer_than_the_catch_up_or_not_at_all(cfg_file: Path) -> None:
    """A grace shorter than catch-up's first re-send would archive partial files that the
    re-send could have completed (seen in the full-disk fault test)."""
    text = cfg_file.read_text()
    cfg_file.write_text(text + "\n[archive_controller]\ncatchup_after_s = 120.0\npartial_grace_s = 60.0\n")
    err = error_of(cfg_file)
    assert err.key == "archive_controller.partial_grace_s" and "catchup_after_s" in err.problem
    for grace in ("0.0", "180.0"):
        cfg_file.write_text(text + f"\n[archive_controller]\ncatchup_after_s = 120.0\npartial_grace_s = {grace}\n")
        assert load_config(cfg_file).section("archive_controller").partial_grace_s == float(grace)


def test_header_keyword_when_and_max_age(cfg_file: Path) -> None:
    """A keyword's ``when`` is "after" or "at"; ``max_age_s`` is positive; both read back."""
    text = cfg_file.read_text()
    keyword = '\n[header_service.keywords.SEEING]\ntopic = "site.seeing"\nfield = "fwhm"\nevent = "END_READOUT"\n'
    cfg_file.write_text(text + keyword + 'when = "at"\nmax_age_s = 60.0\n')
    spec = load_config(cfg_file).section("header_service").keywords["SEEING"]
    assert (spec.when, spec.max_age_s) == ("at", 60.0)
    for extra, key in (('when = "later"\n', "header_service.keywords.SEEING.when"),
                       ('when = "at"\nmax_age_s = 0.0\n', "header_service.keywords.SEEING.max_age_s")):
        cfg_file.write_text(text + keyword + extra)
        assert error_of(cfg_file).key == key


def test_extra_hand_off_targets(cfg_file: Path) -> None:
    """paths.extra_staging: each target is a directory on the data filesystem, resolved
    against root, after the OODS and the archive; its name becomes a queue name."""
    cfg = load_config(cfg_file)
    root = cfg.paths.root
    (root / "prompt" / "staging").mkdir(parents=True)
    rewrite(cfg_file, f'root = "{root}"', f'root = "{root}"\nextra_staging = {{ prompt = "prompt/staging" }}')
    targets = load_config(cfg_file).paths.handoff_targets()
    assert list(targets) == ["oods", "archive", "prompt"]
    assert targets["prompt"] == root / "prompt" / "staging"
    assert load_config(cfg_file).paths.data_dirs()["extra_staging.prompt"] == root / "prompt" / "staging"
    (root / "prompt" / "staging").rmdir()
    err = error_of(cfg_file)
    assert err.key == "paths.extra_staging.prompt" and "does not exist" in err.problem


@pytest.mark.parametrize("name,words", [("forwarder", "reserved"), ("oods", "reserved"), ("Prompt", "does not match"),
                                        ("a.b", "does not match"), ("x>", "does not match")])
def test_extra_target_names_that_would_be_fitsflow_destinations_are_refused(cfg_file: Path, name: str,
                                                                             words: str) -> None:
    root = load_config(cfg_file).paths.root
    rewrite(cfg_file, f'root = "{root}"', f'root = "{root}"\nextra_staging = {{ "{name}" = "quarantine" }}')
    err = error_of(cfg_file)
    assert err.key == f"paths.extra_staging.{name}" and words in err.problem


def test_every_destination_of_fitsflow_is_a_reserved_target_name() -> None:
    """A new message destination must not be a name a site may already use for a target."""
    from fitsflow.core.config import RESERVED_TARGET_NAMES
    from fitsflow.core.messages import CATALOGUE
    words = {t.destination.split("/")[2].split(".")[1] for t in CATALOGUE.values()
             if t.destination.split("/")[2].startswith("fitsflow.")}
    words.discard("{target}")
    assert words <= RESERVED_TARGET_NAMES


@pytest.mark.parametrize("rucio,words", [
    ('dataset = "{instrument}_{obs_day}_{block}"', "go together"),
    ("dataset_images = 100", "go together"),
    ('scope = "{block}"', "dataset names only"),
    ('dataset = "{instrument}_{obs_day}_{block}"\ndataset_images = 100', None),
])
def test_rucio_datasets_per_n_images(cfg_file: Path, rucio: str, words: str | None) -> None:
    """A dataset per N images: {block} in the dataset name and dataset_images > 0 together."""
    cfg_file.write_text(cfg_file.read_text() + f"\n[rucio]\n{rucio}\n")
    if words is None:
        from fitsflow.archive_ingest.rucio_config import RucioConfig
        rcfg: RucioConfig = load_config(cfg_file).section("rucio")
        data_id = {"instrument": "LATISS", "obs_day": "20261121"}
        assert rcfg.names(data_id, rank=0)[2] == "LATISS_20261121_0000"
        assert [rcfg.names(data_id, rank=r)[2][-4:] for r in (99, 100, 250)] == ["0000", "0001", "0002"]
        return
    err = error_of(cfg_file)
    assert err.key.startswith("rucio.") and words in err.problem


def test_config_check_prints_toml_that_reads_back(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The resolved configuration an operator is shown is TOML (tables, arrays of tables and
    all), the same values the file gives."""
    import tomllib
    root = load_config(cfg_file).paths.root
    (root / "prompt" / "staging").mkdir(parents=True)
    rewrite(cfg_file, f'root = "{root}"', f'root = "{root}"\nextra_staging = {{ prompt = "prompt/staging" }}')
    cfg_file.write_text(cfg_file.read_text() + '\n[metrics]\nports = { "receiver@r1" = 9101 }\n'
                        '\n[rucio]\nrules = [{copies = 2, rse_expression = "A|B"}]\n')
    assert cli_main(["config", "check", "--config", str(cfg_file)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["paths"]["extra_staging"] == {"prompt": str(root / "prompt" / "staging")}
    assert shown["metrics"]["ports"] == {"receiver@r1": 9101}
    assert shown["rucio"]["rules"] == [{"copies": 2, "rse_expression": "A|B", "lifetime_days": 0.0}]
