"""Build a complete, valid fitsflow configuration under a temporary directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fitsflow.core.config import PathsConfig, toml_value


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """Serialise ``{section: {key: value}}`` (values: scalars, lists, inline tables)."""
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


def make_data_tree(root: Path, extra_staging: dict[str, str] | None = None) -> None:
    """Create the default data directories under ``root`` (and the extra staging ones)."""
    for f in dataclasses.fields(PathsConfig):
        if isinstance(f.default, Path) and f.name != "root":
            (root / f.default).mkdir(parents=True, exist_ok=True)
    for staging in (extra_staging or {}).values():
        (root / staging).mkdir(parents=True, exist_ok=True)


def make_site(base: Path, brokers: list[str], *, instrument: str = "TESTCAM",
              extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """Create the data tree and state dir under ``base`` and write ``base/fitsflow.toml``.

    ``extra`` adds or overrides sections (e.g. ``{"bus": {"max_attempts": 2}}``).
    Returns the configuration file's path.
    """
    base = Path(base)
    root = base / "data"
    make_data_tree(root, (extra or {}).get("paths", {}).get("extra_staging", {}))
    state = base / "state"
    state.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {
        "site": {"instrument": instrument, "state_dir": str(state),
                 "database_url": f"sqlite:///{state}/fitsflow.db"},
        "bus": {"brokers": brokers, "heartbeat_ms": 2000, "retry_delay_s": 0.05, "receipt_timeout_s": 3.0,
                "reconnect_max_s": 1.0},
        "paths": {"root": str(root)},
    }
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    path = base / "fitsflow.toml"
    path.write_text(to_toml(sections))
    return path
