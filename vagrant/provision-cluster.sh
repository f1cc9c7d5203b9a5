#!/bin/bash
# Once, on the last node: form the cluster and apply fitsflow's Pacemaker configuration with
# fencing required; then wait until every resource runs. Root, in the VM.
set -euo pipefail
SECRETS=/srv/fitsflow-build/secrets
names=""; hosts=()
for pair in $NODES; do
    names="$names ${pair%%=*}"
    hosts+=("${pair%%=*}" "addr=${pair#*=}")
done
names=${names# }
# pcs host auth: pcsd's cluster-wide commands for operators (pcs cluster stop --all, ...).
for attempt in $(seq 120); do
    pcs host auth "${hosts[@]}" -u hacluster -p "$(cat "$SECRETS/hacluster.password")" && break
    [ "$attempt" -lt 120 ] || { echo "provision-cluster: pcsd of $names not all answering" >&2; exit 1; }
    sleep 15
done
echo "waiting for $names online with quorum..."
for attempt in $(seq 180); do
    out=$(crm_mon -1 2>/dev/null || true)
    grep -q "Online: \[ $names \]" <<< "$out" && grep -q "partition with quorum" <<< "$out" && break
    [ "$attempt" -lt 180 ] || { echo "provision-cluster: the nodes did not form a cluster:" >&2; echo "$out" >&2; exit 1; }
    sleep 5
done

map=""
for n in $names; do map="$map;$n:$PREFIX$n"; done
install -d /etc/fitsflow
cat > /etc/fitsflow/cluster.conf <<CONF
# The Vagrant cluster (vagrant/provision-cluster.sh); see pacemaker/fitsflow-cluster.conf.
NODES="$names"
VIP_NIC="eth1"
VIP_CIDR="24"
BROKER_VIP="$BROKER_VIP"
BROKER_FS_DEVICE="nas:/srv/activemq"
BROKER_FS_DIRECTORY="/var/lib/activemq-fitsflow"
BROKER_FS_TYPE="nfs"
BROKER_AGENT="systemd:activemq-fitsflow"
DATA_FS_DEVICE="nas:/srv/fitsflow"
DATA_FS_DIRECTORY="/var/lib/fitsflow"
DATA_FS_TYPE="nfs"
CONTROLLER_VIP="$CONTROLLER_VIP"
RECEIVERS="r1 $(echo "$names" | cut -d' ' -f1) $(echo "$names" | cut -d' ' -f2) $R1_VIP"
FENCING="required"
STONITH_DEVICES="fence-vms fence_virsh ip=$MGMT_HOST username=root identity_file=/etc/fitsflow/fence_key ssh=1 pcmk_host_map=${map#;}"
CONF
if ! pcs resource config archive-controller >/dev/null 2>&1; then
    # One push: fitsflow-cib works on a copy of the CIB (-f), the emulation timeouts below go
    # into the same copy, and the cluster sees it all at once. (Pushed in two steps, the
    # resources started at once with the normal 20-60 s timeouts under emulation, failed, and
    # got a node fenced before the second push came.)
    cib=$(mktemp --suffix=.xml)
    pcs cluster cib "$cib"
    fitsflow-cib --config /etc/fitsflow/cluster.conf -f "$cib"
    if [ "$TCG" = 1 ]; then
        # Emulated CPUs run everything ~10x slower, and four VMs share the host's cores: Python
        # and Java start in minutes, a resource agent's monitor takes tens of seconds when a
        # neighbour boots. fitsflow-cib's timeouts (60 s starts, 20-30 s monitors) would have
        # Pacemaker recover resources that were only slow; these are for emulation only.
        for r in broker-vip controller-vip recv-r1-vip; do
            pcs -f "$cib" resource update "$r" op monitor interval=30s timeout=120s op start timeout=120s \
                op stop timeout=120s
        done
        for r in broker-fs data-fs; do
            pcs -f "$cib" resource update "$r" op monitor interval=60s timeout=120s op start timeout=300s \
                op stop timeout=300s
        done
        for r in activemq archive-controller oods archive-ingest header-service panic-mailer recorder forwarder receiver-r1; do
            pcs -f "$cib" resource update "$r" op monitor interval=30s timeout=120s op start timeout=600s op stop timeout=300s
        done
        pcs -f "$cib" stonith update fence-vms pcmk_reboot_timeout=300s pcmk_monitor_timeout=120s \
            op monitor interval=300s timeout=120s op start timeout=120s
    fi
    pcs cluster cib-push "$cib" --config
    rm -f "$cib"
fi

echo "waiting for every resource to start..."
for _ in $(seq 360); do
    status=$(crm_mon -1 -r 2>/dev/null || true)
    if ! grep -qE "Stopped|Starting|FAILED|Failed" <<< "$status" && grep -q "Started" <<< "$status"; then
        break
    fi
    sleep 5
done
pcs status --full | sed -n '1,80p'
pcs stonith config
if grep -qE "Stopped|FAILED" <<< "$(crm_mon -1 -r)"; then
    echo "provision-cluster: not every resource started (above)" >&2
    exit 1
fi
