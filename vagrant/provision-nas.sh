#!/bin/bash
# The storage server of the Vagrant cluster: NFS exports of the data tree and of the broker's
# store, and the site's PostgreSQL. Runs as root in the VM (Vagrant's shell provisioner).
set -euo pipefail
SECRETS=/srv/fitsflow-build/secrets
SRC=/usr/local/src/fitsflow
# The nodes' fitsflow user owns the data tree: the same uid here (NFS with sec=sys).
getent group fitsflow >/dev/null || groupadd -r -g "$FITSFLOW_UID" fitsflow
getent passwd fitsflow >/dev/null || useradd -r -u "$FITSFLOW_UID" -g fitsflow -d /var/lib/fitsflow -s /usr/sbin/nologin fitsflow
# The data tree as the nodes' tmpfiles.d makes it, under the export (a node mounts it as
# /var/lib/fitsflow, hiding what its own tmpfiles made at boot).
sed 's|/var/lib/fitsflow|/srv/fitsflow|' "$SRC/etc/tmpfiles.d/fitsflow.conf" > /etc/tmpfiles.d/fitsflow-export.conf
systemd-tmpfiles --create fitsflow-export.conf
# KahaDB: the activemq user of the box (the same uid on every node: one box).
install -d -o activemq -g activemq -m 0750 /srv/activemq
cat > /etc/exports <<EXPORTS
/srv/fitsflow $NET.0/24(rw,sync,no_subtree_check,no_root_squash)
/srv/activemq $NET.0/24(rw,sync,no_subtree_check,no_root_squash)
EXPORTS
systemctl enable --now nfs-server
exportfs -ra

PG=$(ls -d /etc/postgresql/*/main | sort -V | tail -1)
sed -i "s/^#\?listen_addresses.*/listen_addresses = '*'/" "$PG/postgresql.conf"
grep -q "^host fitsflow fitsflow $NET.0/24" "$PG/pg_hba.conf" \
    || echo "host fitsflow fitsflow $NET.0/24 scram-sha-256" >> "$PG/pg_hba.conf"
systemctl enable postgresql
systemctl restart postgresql
runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'fitsflow'" | grep -q 1 \
    || runuser -u postgres -- psql -q -c "CREATE ROLE fitsflow LOGIN"
runuser -u postgres -- psql -q -c "ALTER ROLE fitsflow PASSWORD '$(cat "$SECRETS/database.password")'"
runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname = 'fitsflow'" | grep -q 1 \
    || runuser -u postgres -- createdb -O fitsflow fitsflow
echo "nas: NFS exports $(exportfs | awk '{print $1}' | xargs), PostgreSQL on $NAS:5432"
