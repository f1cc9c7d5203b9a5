#!/bin/bash
# Install fitsflow on Debian 12 the way the RPMs install it on EL, from wheels and a source
# tree (docs/install.md, "From a source checkout"):
#
#   install-fitsflow-debian.sh WHEEL_DIR SOURCE_TREE [EXTRA...]     (root; EXTRA e.g. postgresql)
#
# /opt/fitsflow            a virtualenv with fitsflow and its dependencies (pip --no-index)
# /usr/local/bin           the programs (symlinks into the virtualenv)
# /usr/local/lib/systemd/system   the units and their drop-ins, ExecStart= on /usr/local/bin
# /usr/lib/{sysusers,tmpfiles,sysctl}.d   the service user, the data tree, UDP buffers
# /etc/fitsflow/fitsflow.toml     the default configuration, if there is none yet
# /usr/local/sbin/fitsflow-cib, /usr/local/share/fitsflow/{activemq,pacemaker}
set -euo pipefail
WHEELS=$1 SRC=$2; shift 2
extras=$(IFS=,; echo "$*")
python3 -m venv /opt/fitsflow
/opt/fitsflow/bin/pip -q install --no-index --find-links "$WHEELS" "fitsflow${extras:+[$extras]}"
for prog in /opt/fitsflow/bin/fitsflow*; do ln -sf "$prog" "/usr/local/bin/$(basename "$prog")"; done
units=/usr/local/lib/systemd/system
mkdir -p "$units"
for unit in "$SRC"/units/fitsflow-*.service; do
    sed 's|ExecStart=/usr/bin/|ExecStart=/usr/local/bin/|' "$unit" > "$units/$(basename "$unit")"
done
for dropins in "$SRC"/units/*.service.d; do
    rm -rf "${units:?}/$(basename "$dropins")"; cp -r "$dropins" "$units/"
done
for d in sysusers.d tmpfiles.d; do install -D -m 644 "$SRC/etc/$d/fitsflow.conf" "/usr/lib/$d/fitsflow.conf"; done
install -D -m 644 -t /usr/lib/sysctl.d "$SRC"/etc/sysctl.d/*.conf
systemd-sysusers fitsflow.conf
systemd-tmpfiles --create fitsflow.conf
/lib/systemd/systemd-sysctl   # (procps' sysctl is not in the box)
install -d -m 755 /etc/fitsflow
[ -e /etc/fitsflow/fitsflow.toml ] || install -m 644 "$SRC/etc/fitsflow/fitsflow.toml" /etc/fitsflow/fitsflow.toml
install -D -m 755 "$SRC/pacemaker/fitsflow-cib" /usr/local/sbin/fitsflow-cib
install -D -m 644 "$SRC/pacemaker/fitsflow-cluster.conf" /usr/local/share/fitsflow/pacemaker/cluster.conf.example
rm -rf /usr/local/share/fitsflow/activemq && cp -r "$SRC/etc/activemq/fitsflow" /usr/local/share/fitsflow/activemq
systemctl daemon-reload
echo "fitsflow $(/opt/fitsflow/bin/python -c 'import importlib.metadata as m; print(m.version("fitsflow"))') installed in /opt/fitsflow"
