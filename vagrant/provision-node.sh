#!/bin/bash
# Every node: EPEL, Pacemaker/corosync/pcs, fitsflow's RPMs from the synced folder, ActiveMQ.
set -euxo pipefail
for pair in $NODES; do
    grep -q " ${pair%%=*}\$" /etc/hosts || echo "${pair#*=} ${pair%%=*}" >> /etc/hosts
done
dnf install -y -q epel-release
dnf config-manager --set-enabled highavailability crb
dnf install -y -q pacemaker corosync pcs resource-agents createrepo_c java-17-openjdk-headless
createrepo_c -q /srv/fitsflow-rpms
cat > /etc/yum.repos.d/fitsflow-local.repo <<REPO
[fitsflow-local]
name=fitsflow (built by make rpm)
baseurl=file:///srv/fitsflow-rpms
gpgcheck=0
REPO
dnf install -y -q python3-fitsflow fitsflow-header-service fitsflow-forwarder fitsflow-archive-controller \
    fitsflow-oods fitsflow-archive-ingest fitsflow-panic-mailer fitsflow-recorder fitsflow-pacemaker
dnf install -y -q fitsflow-receiver || echo "fitsflow-receiver needs python3-spead2: not installed on $(hostname)"
# ActiveMQ is not packaged for EL: Apache's tarball, run as a systemd unit Pacemaker manages.
if [ ! -d /opt/activemq ]; then
    curl -fsSL https://archive.apache.org/dist/activemq/5.17.6/apache-activemq-5.17.6-bin.tar.gz | tar -xz -C /opt
    ln -s /opt/apache-activemq-5.17.6 /opt/activemq
    useradd -r -d /opt/activemq -s /sbin/nologin activemq || true
    cp /usr/share/fitsflow/activemq/* /opt/activemq/conf/
    chown -R activemq: /opt/apache-activemq-5.17.6
    cat > /etc/systemd/system/activemq.service <<UNIT
[Unit]
Description=ActiveMQ (fitsflow instance)
After=network-online.target
[Service]
User=activemq
ExecStart=/opt/activemq/bin/activemq console
Restart=no
[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
fi
echo hacluster:fitsflow-lab | chpasswd
systemctl enable --now pcsd
