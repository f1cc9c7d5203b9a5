#!/bin/bash
# Every cluster node: fitsflow installed as docs/install.md says for this OS, its configuration
# for this cluster, the broker instance (shipped configuration, this cluster's certificate and
# passwords), the fence key, and pcsd ready for provision-cluster.sh. Root, in the VM.
set -euo pipefail
SECRETS=/srv/fitsflow-build/secrets
SRC=/usr/local/src/fitsflow
. /etc/os-release

for pair in nas=$NAS $NODES "broker.fitsflow.test=$BROKER_VIP"; do
    name=${pair%%=*} addr=${pair#*=}
    sed -i "/[[:space:]]$name\$/d" /etc/hosts
    echo "$addr $name" >> /etc/hosts
done
# Vagrant's hostname line would make corosync and pcs see this node at 127.0.1.1.
sed -i "/^127\.0\.1\.1[[:space:]]/d" /etc/hosts
# NFS with sec=sys: the data tree's owner has one uid everywhere (sysusers.d keeps a user that exists).
getent group fitsflow >/dev/null || groupadd -r -g "$FITSFLOW_UID" fitsflow
getent passwd fitsflow >/dev/null || useradd -r -u "$FITSFLOW_UID" -g fitsflow -d /var/lib/fitsflow -s /usr/sbin/nologin fitsflow

if [ "$ID" = debian ]; then
    "$SRC/vagrant/install-fitsflow-debian.sh" /srv/fitsflow-build/wheels "$SRC" postgresql
    BROKER_HOME=/usr/share/activemq
    BROKER_CONF=/etc/activemq/instances-available/fitsflow
    rm -rf "$BROKER_CONF"; cp -r /usr/local/share/fitsflow/activemq "$BROKER_CONF"
else  # EL: the RPMs (make rpm deps-rpm on a build host; copied into .build/rpm) and Apache's ActiveMQ
    dnf install -y -q epel-release
    dnf config-manager --set-enabled highavailability crb
    dnf install -y -q pacemaker corosync pcs resource-agents fence-agents-virsh nfs-utils java-17-openjdk-headless createrepo_c
    createrepo_c -q /srv/fitsflow-build/rpm
    printf '[fitsflow-local]\nname=fitsflow\nbaseurl=file:///srv/fitsflow-build/rpm\ngpgcheck=0\n' > /etc/yum.repos.d/fitsflow-local.repo
    dnf install -y -q python3-fitsflow fitsflow-receiver fitsflow-header-service fitsflow-forwarder \
        fitsflow-archive-controller fitsflow-oods fitsflow-archive-ingest fitsflow-panic-mailer fitsflow-recorder \
        fitsflow-pacemaker python3-psycopg3
    BROKER_HOME=/opt/activemq
    [ -d "$BROKER_HOME" ] || { echo "EL: unpack Apache ActiveMQ 5.17+ in $BROKER_HOME first" >&2; exit 1; }
    id activemq >/dev/null 2>&1 || useradd -r -d "$BROKER_HOME" -s /sbin/nologin activemq
    BROKER_CONF=$BROKER_HOME/conf/fitsflow
    rm -rf "$BROKER_CONF"; cp -r /usr/share/fitsflow/activemq "$BROKER_CONF"
fi

# -- fitsflow's configuration: one file for every daemon of the host -------------------
install -d -m 755 /etc/fitsflow /etc/fitsflow/credentials
install -m 644 "$SECRETS/ca.pem" /etc/fitsflow/ca.pem
while IFS='=' read -r ident password; do
    f=/etc/fitsflow/credentials/$ident.toml
    printf 'username = "%s"\npassword = "%s"\n' "$ident" "$password" > "$f"
    chown fitsflow:fitsflow "$f"; chmod 600 "$f"
done < "$SECRETS/users.properties"
first_node=${NODES%%=*}
cat > /etc/fitsflow/fitsflow.toml <<TOML
# The Vagrant cluster's configuration (vagrant/provision-node.sh), the same on every node.
[site]
instrument = "VAGRANTCAM"
state_dir = "/var/lib/fitsflow/state"
database_url = "postgresql+psycopg://fitsflow:$(cat "$SECRETS/database.password")@nas/fitsflow"

[bus]
brokers = ["stomp+ssl://broker.fitsflow.test:61612"]
credentials_file = "/etc/fitsflow/credentials/{role}.toml"
tls_ca_file = "/etc/fitsflow/ca.pem"
heartbeat_ms = 4000
receipt_timeout_s = 10.0
reconnect_max_s = 2.0

[paths]
root = "/var/lib/fitsflow/data"

[receiver]
streams = ["$R1_VIP:7148"]
image_timeout_s = 10.0
socket_buffer_bytes = 8388608
max_heap_bytes = 1048576
expected_sensors = ["R22_S00", "R22_S01", "R22_S10", "R22_S11"]

[forwarder]
heartbeat_s = 2.0
join_timeout_s = 60.0

[archive_controller]
liveness_timeout_s = 15.0
# A readout missed in a failover is asked again after 15 s; a partial one waits 30 s for it
# (the grace must be the longer: fitsflow refuses the configuration otherwise).
catchup_after_s = 15.0
partial_grace_s = 30.0

[panic_mailer]
smtp_host = "$MGMT_HOST"
smtp_port = 8025
starttls = false
sender = "fitsflow@vagrant.test"
recipients = ["oncall@vagrant.test"]
TOML
chown root:fitsflow /etc/fitsflow/fitsflow.toml; chmod 640 /etc/fitsflow/fitsflow.toml   # the database password

# -- the broker instance: shipped configuration, this cluster's stores and passwords ----
store_pw=$(cat "$SECRETS/store.password")
openssl pkcs12 -export -in "$SECRETS/broker.pem" -inkey "$SECRETS/broker.key" -name broker \
    -passout "pass:$store_pw" -out "$BROKER_CONF/broker.p12"
rm -f "$BROKER_CONF/trust.p12"
keytool -importcert -noprompt -alias ca -file "$SECRETS/ca.pem" -storetype PKCS12 \
    -keystore "$BROKER_CONF/trust.p12" -storepass "$store_pw" >/dev/null
cp "$SECRETS/users.properties" "$BROKER_CONF/users.properties"
sed -i -e "s|^ssl.keyStore=.*|ssl.keyStore=$BROKER_CONF/broker.p12|" \
       -e "s|^ssl.trustStore=.*|ssl.trustStore=$BROKER_CONF/trust.p12|" \
       -e "s|^ssl.keyStorePassword=.*|ssl.keyStorePassword=$store_pw|" \
       -e "s|^ssl.trustStorePassword=.*|ssl.trustStorePassword=$store_pw|" \
       -e "s|^store.limit=.*|store.limit=2 gb|" -e "s|^temp.limit=.*|temp.limit=1 gb|" "$BROKER_CONF/broker.properties"
chown -R root:activemq "$BROKER_CONF"; chmod 640 "$BROKER_CONF"/*
# The instance as a unit Pacemaker runs (systemd:activemq-fitsflow), on the store that
# Pacemaker mounts at /var/lib/activemq-fitsflow on the broker's node only.
install -d -o activemq -g activemq /var/lib/activemq-fitsflow
JAVA_OPENS="--add-reads=java.xml=java.logging --add-opens java.base/java.security=ALL-UNNAMED --add-opens java.base/java.net=ALL-UNNAMED --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED --add-opens java.naming/javax.naming.spi=ALL-UNNAMED --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED --add-opens java.base/java.util.concurrent=ALL-UNNAMED --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED"
cat > /etc/systemd/system/activemq-fitsflow.service <<UNIT
[Unit]
Description=ActiveMQ, fitsflow's instance ($BROKER_CONF)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=activemq
Group=activemq
WorkingDirectory=/var/lib/activemq-fitsflow
ExecStart=/usr/bin/java -Xms64M -Xmx384M $JAVA_OPENS -Dactivemq.classpath=$BROKER_CONF -Dactivemq.home=$BROKER_HOME -Dactivemq.base=/var/lib/activemq-fitsflow -Dactivemq.conf=$BROKER_CONF -Dactivemq.data=/var/lib/activemq-fitsflow -Djava.security.auth.login.config=$BROKER_CONF/login.config -jar $BROKER_HOME/bin/activemq.jar start xbean:file:$BROKER_CONF/activemq.xml
# ActiveMQ exits 143 on SIGTERM after a clean shutdown.
SuccessExitStatus=143
TimeoutStopSec=30
UNIT
systemctl daemon-reload

# Under emulation a daemon takes minutes to import its libraries and say READY=1: the units'
# start timeout follows Pacemaker's (provision-cluster.sh), or systemd would give up first.
# pcsd (Ruby and Python) too: it took over 90 s, systemd's default, on a VM of a busy host.
if [ "$TCG" = 1 ]; then
    for unit in fitsflow- pcsd pcsd-ruby; do
        install -d "/etc/systemd/system/$unit.service.d"
        printf '[Service]\nTimeoutStartSec=600\n' > "/etc/systemd/system/$unit.service.d/90-emulated-cpu.conf"
    done
    systemctl daemon-reload
fi

# -- fencing: fence_virsh logs in to the VM host with this key -------------------------
install -d -m 700 /root/.ssh
install -m 600 "$SECRETS/fence_key" /etc/fitsflow/fence_key
ssh-keyscan -T 10 "$MGMT_HOST" 2>/dev/null > /root/.ssh/known_hosts.fitsflow
sort -u /root/.ssh/known_hosts.fitsflow /root/.ssh/known_hosts 2>/dev/null > /root/.ssh/known_hosts.new || true
mv /root/.ssh/known_hosts.new /root/.ssh/known_hosts; rm -f /root/.ssh/known_hosts.fitsflow
fence_virsh --ip "$MGMT_HOST" --username root --identity-file /etc/fitsflow/fence_key --ssh \
    --plug "$PREFIX$(hostname -s)" --action status

# -- the cluster stack ------------------------------------------------------------------
# corosync.conf as `pcs cluster setup` writes it, made here rather than through pcsd: under
# emulation pcsd's remote calls (a "cluster destroy" on every node first) outlast pcs's
# 60 s request timeout. Every node writes the same file and starts; they form the cluster
# as they come up (quorum with two of the three).
# Corosync's token: 1 s (pcs's default) declares a node dead after ~1.6 s of silence. Under
# software emulation (TCG) a VM stalls for seconds when the host is busy, and a stall longer
# than the token gets a healthy node fenced; 10 s does not, at the price of a slower failover.
if [ "$TCG" = 1 ]; then TOKEN=10000; else TOKEN=3000; fi
{
    printf 'totem {\n    version: 2\n    cluster_name: fitsflow\n    transport: knet\n    token: %s\n' "$TOKEN"
    printf '    crypto_cipher: aes256\n    crypto_hash: sha256\n}\n\nnodelist {\n'
    id=0
    for pair in $NODES; do
        id=$((id + 1))
        printf '    node {\n        ring0_addr: %s\n        name: %s\n        nodeid: %s\n    }\n' "${pair#*=}" "${pair%%=*}" "$id"
    done
    printf '}\n\nquorum {\n    provider: corosync_votequorum\n}\n\n'
    printf 'logging {\n    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n    to_syslog: yes\n    timestamp: on\n}\n'
} > /etc/corosync/corosync.conf
install -m 400 "$SECRETS/corosync.authkey" /etc/corosync/authkey
echo "hacluster:$(cat "$SECRETS/hacluster.password")" | chpasswd
systemctl enable --now pcsd
systemctl enable corosync pacemaker
systemctl start corosync pacemaker
echo "$(hostname -s): in the cluster (corosync token ${TOKEN} ms)"
