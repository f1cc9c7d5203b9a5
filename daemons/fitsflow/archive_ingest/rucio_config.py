"""``[rucio]``: registration of archived files in a Rucio data lake (the archive ingest)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: Fields a name template may use; the values come from the file's data ID, except
#: ``block``: the image's block of ``dataset_images`` within its night (0000, 0001, ...).
TEMPLATE_FIELDS = ("instrument", "instrument_lower", "obs_day", "block")


@dataclass(frozen=True)
class RucioRule:
    """A replication rule the site declares for every dataset (``[[rucio.rules]]``)."""

    #: how many copies, on RSEs matching the expression (e.g. 2 on "BASE|USDF")
    copies: int = 1
    rse_expression: str = ""
    #: days the rule holds; 0: for ever
    lifetime_days: float = 0.0


@dataclass(frozen=True)
class RucioConfig:
    enabled: bool = False
    #: the Rucio server (rucio_host) and its authentication server (auth_host; empty: the same)
    url: str = ""
    auth_url: str = ""
    account: str = ""
    #: userpass: username/password from credentials_file (TOML, mode 0600, as the broker's)
    auth_type: str = "userpass"
    credentials_file: Path | None = None
    #: CA bundle for an https server; empty: the system's
    ca_cert: str = ""
    #: the site's RSE: its file protocol's prefix is paths.archive_repo, so a replica's path
    #: is the archive's own file (nothing copied); non-deterministic (the path is given)
    rse: str = ""
    #: templates over the data ID: {instrument}, {instrument_lower}, {obs_day}, and {block}
    scope: str = "{instrument_lower}"
    container: str = "{instrument}"
    dataset: str = "{instrument}_{obs_day}"
    #: a dataset per N images rather than per night: with dataset = "..._{block}", the
    #: night's images in the order they were archived, N per block; 0: no blocks
    dataset_images: int = 0
    rules: tuple[RucioRule, ...] = field(default_factory=tuple)
    #: files per registration call; a Rucio outage is retried with back-off up to retry_max_s
    batch: int = 100
    retry_max_s: float = 60.0
    #: seconds per Rucio request before it counts as an outage
    timeout_s: float = 30.0
    #: Also register each file's md5. The adler32 is summed as the file is written and
    #: carried, so registering reads nothing; md5 cannot be (the headers, written last, come
    #: first in the file, and md5 only runs forwards): true costs one read per file.
    md5: bool = False

    def validate(self, check) -> None:  # type: ignore[no-untyped-def]
        check.positive("rucio.batch", self.batch)
        check.positive("rucio.retry_max_s", self.retry_max_s)
        check.positive("rucio.timeout_s", self.timeout_s)
        for key in ("scope", "container", "dataset"):
            for name in re.findall(r"{(\w*)}", getattr(self, key)):
                if name not in TEMPLATE_FIELDS:
                    check.fail(f"rucio.{key}", f"unknown field {{{name}}}; known: {', '.join(TEMPLATE_FIELDS)}")
        if self.dataset_images < 0:
            check.fail("rucio.dataset_images", "must be >= 0")
        if ("{block}" in self.dataset) != (self.dataset_images > 0):
            check.fail("rucio.dataset", "{block} in the dataset name and dataset_images > 0 go together "
                                        f"(dataset {self.dataset!r}, dataset_images {self.dataset_images})")
        for key in ("scope", "container"):
            if "{block}" in getattr(self, key):
                check.fail(f"rucio.{key}", "{block} is for dataset names only")
        for i, rule in enumerate(self.rules):
            check.positive(f"rucio.rules[{i}].copies", rule.copies)
            if not rule.rse_expression:
                check.fail(f"rucio.rules[{i}].rse_expression", "must name the RSEs (an RSE expression)")
        if not self.enabled:
            return
        for key in ("url", "account", "rse"):
            if not getattr(self, key):
                check.fail(f"rucio.{key}", "must be set when rucio.enabled = true")
        if self.auth_type != "userpass":
            check.fail("rucio.auth_type", f"{self.auth_type!r} is not supported (userpass)")
        if self.credentials_file is None:
            check.fail("rucio.credentials_file", "must be set for userpass")
        if check.check_dirs:
            check.secret_file("rucio.credentials_file", self.credentials_file)

    def names(self, data_id: dict[str, str], rank: int = 0) -> tuple[str, str, str]:
        """(scope, container, dataset) of a file; ``rank``: its image's place among the night's
        images in archive order (for {block})."""
        values = {"instrument": data_id["instrument"], "instrument_lower": data_id["instrument"].lower(),
                  "obs_day": data_id["obs_day"],
                  "block": f"{rank // self.dataset_images:04d}" if self.dataset_images else ""}
        return self.scope.format(**values), self.container.format(**values), self.dataset.format(**values)
