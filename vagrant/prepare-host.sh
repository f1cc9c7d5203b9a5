#!/bin/bash
# What `vagrant up` needs from the host, made once into vagrant/.build/ (the Vagrantfile runs
# this before up/provision; safe to run again, it only makes what is missing):
#
#   $BOX_FILE               the Debian 12 box (build-box.sh), unless FITSFLOW_VAGRANT_OS=rocky9;
#                           named after its recipe by the Vagrantfile (older ones are removed)
#   wheels/                 fitsflow and its dependencies as wheels: the nodes install offline
#   secrets/                the cluster's CA and broker certificate (for the broker VIP), one
#                           random password per broker identity, the database's and the
#                           hacluster user's passwords, and the fence key
#   the fence key's access  root@host over SSH from the VMs' management network only, for
#                           fence_virsh (the nodes' fence agent powers VMs off through libvirt)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
B=$HERE/.build
BROKER_VIP=${BROKER_VIP:?}
MGMT_NET=${MGMT_NET:-192.168.121.0/24}
mkdir -p "$B"

BOX_FILE=${BOX_FILE:-fitsflow-debian12.box}
# (BOX_ADDED=1: Vagrant already holds the box of this recipe; its file is not needed.)
if [ "${FITSFLOW_VAGRANT_OS:-debian12}" = debian12 ] && [ "${BOX_ADDED:-0}" != 1 ] && [ ! -s "$B/$BOX_FILE" ]; then
    find "$B" -maxdepth 1 -name 'fitsflow-debian12*.box' -delete   # an older recipe's (472 MB each)
    "$HERE/build-box.sh" "$B/$BOX_FILE"
fi

# Wheels of this checkout and everything it needs (pip's own index configuration applies).
stamp=$(cd "$REPO" && git rev-parse HEAD 2>/dev/null || date +%s)
if [ "$(cat "$B/wheels/.source" 2>/dev/null)" != "$stamp" ] || [ -n "$(cd "$REPO" && git status --porcelain -- daemons setup.py 2>/dev/null)" ]; then
    rm -rf "$B/wheels" "$B/pip"
    python3 -m venv "$B/pip"
    "$B/pip/bin/pip" -q install --upgrade pip wheel 2> >(grep -v 'is ignored: it is neither' >&2)
    # (pip's notes about index locations that do not exist on this host are not news)
    "$B/pip/bin/pip" -q wheel --wheel-dir "$B/wheels" "$REPO[postgresql]" 2> >(grep -v 'is ignored: it is neither' >&2)
    echo "$stamp" > "$B/wheels/.source"
    rm -rf "$B/pip"
fi

S=$B/secrets
if [ ! -s "$S/done" ]; then
    rm -rf "$S"; mkdir -m 700 -p "$S"; umask 077
    pw() { openssl rand -base64 18 | tr '+/' '-_'; }
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fitsflow-vagrant-ca" \
        -keyout "$S/ca.key" -out "$S/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=broker.fitsflow.test" -keyout "$S/broker.key" \
        -out "$S/broker.csr" 2>/dev/null
    printf 'subjectAltName=DNS:broker.fitsflow.test,IP:%s\nextendedKeyUsage=serverAuth\n' "$BROKER_VIP" > "$S/broker.ext"
    openssl x509 -req -in "$S/broker.csr" -CA "$S/ca.pem" -CAkey "$S/ca.key" -CAcreateserial -days 3650 \
        -extfile "$S/broker.ext" -out "$S/broker.pem" 2>/dev/null
    rm -f "$S/broker.csr" "$S/broker.ext" "$S/ca.srl" "$S/ca.key"   # nothing else is signed here
    # identity=password for every identity of the shipped groups.properties
    grep -v '^#' "$REPO/etc/activemq/fitsflow/groups.properties" | cut -d= -f2 | tr ',' '\n' | sed '/^$/d' \
        | sort -u | while read -r ident; do echo "$ident=$(pw)"; done > "$S/users.properties"
    echo "$(pw)" > "$S/store.password"
    echo "$(pw)" > "$S/database.password"
    echo "$(pw)" > "$S/hacluster.password"
    ssh-keygen -q -t ed25519 -N '' -C fitsflow-vagrant-fence -f "$S/fence_key"
    date -u +%FT%TZ > "$S/done"
fi
[ -s "$S/corosync.authkey" ] || (umask 077; head -c 256 /dev/urandom > "$S/corosync.authkey")  # as corosync-keygen

# fence_virsh logs in to the VM host as root and runs virsh: allow this key from the VMs'
# management network only. An SSH server must run on the host.
mkdir -p -m 700 /root/.ssh
KEY=$(cut -d' ' -f1,2 "$S/fence_key.pub")
grep -qF "$KEY" /root/.ssh/authorized_keys 2>/dev/null \
    || echo "from=\"$MGMT_NET\",no-port-forwarding,no-X11-forwarding,no-agent-forwarding $KEY fitsflow-vagrant-fence" \
        >> /root/.ssh/authorized_keys
if ! pgrep -x sshd >/dev/null; then
    if [ "$(cat /proc/1/comm)" = systemd ]; then systemctl start ssh || systemctl start sshd; else
        mkdir -p /run/sshd; ssh-keygen -A >/dev/null; /usr/sbin/sshd; fi
fi
echo "prepare-host: $B ready"
