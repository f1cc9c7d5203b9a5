#!/bin/bash
# Once, on the last node: form the cluster and apply fitsflow's Pacemaker configuration.
set -euxo pipefail
pcs host auth $NODES -u hacluster -p fitsflow-lab
pcs cluster setup fitsflow $NODES totem token=1000 --force
pcs cluster start --all --wait=120
set -- $NODES
cat > /etc/fitsflow/cluster.conf <<CONF
NODES="$NODES"
VIP_NIC="eth1"
VIP_CIDR="24"
BROKER_VIP="$BROKER_VIP"
BROKER_AGENT="systemd:activemq"
CONTROLLER_VIP="$CONTROLLER_VIP"
RECEIVERS="r1 $1 $2 $R1_VIP
r2 $2 $3 $R2_VIP"
# A lab without a fence device. Production: configure stonith and set FENCING=required.
FENCING="none"
CONF
fitsflow-cib --config /etc/fitsflow/cluster.conf
pcs status
