"""The configurations the Vagrant cluster's provisioning writes are valid for fitsflow: a
refused one is found here, not after half an hour of `vagrant up` (a daemon exits 78 and
Pacemaker gives up on it: seen when partial_grace_s had to exceed catchup_after_s)."""

from __future__ import annotations

import re
from pathlib import Path

from fitsflow.core.config import load_config

REPO = Path(__file__).resolve().parents[2]


def provisioned_config(tmp_path: Path) -> Path:
    """vagrant/provision-node.sh's fitsflow.toml, with its shell expansions filled in."""
    script = (REPO / "vagrant" / "provision-node.sh").read_text()
    body = re.search(r"cat > /etc/fitsflow/fitsflow\.toml <<TOML\n(.*?)\nTOML\n", script, re.S)
    assert body, "provision-node.sh no longer writes /etc/fitsflow/fitsflow.toml from a heredoc"
    text = body.group(1).replace('$(cat "$SECRETS/database.password")', "pw")
    text = re.sub(r"\$\{?(R\d+_VIP)\}?", "192.0.2.10", text)
    text = re.sub(r"\$\{?MGMT_HOST\}?", "192.0.2.1", text)
    assert "$" not in text, f"an expansion this test does not know: {text[text.index('$'):][:40]}"
    # The files the provisioning puts beside it (the test CA).
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = text.replace("/etc/fitsflow/ca.pem", str(tmp_path / "ca.pem"))
    path = tmp_path / "fitsflow.toml"
    path.write_text(text)
    return path


def test_the_vagrant_clusters_configuration_is_accepted(tmp_path: Path) -> None:
    cfg = load_config(provisioned_config(tmp_path), check_dirs=False)
    assert cfg.site.instrument == "VAGRANTCAM"
