#!/bin/bash
# The VM host's side of the Vagrant cluster, once per host (root): QEMU/libvirt, Vagrant with
# its libvirt provider, the box builder's tools, and libvirtd running.
#
#   vagrant/host-setup.sh
#
# On a host without systemd as PID 1 (a container, some CI runners) libvirtd and virtlogd are
# started by hand. Nothing here is specific to fitsflow but the iptables guard below.
set -euo pipefail
if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends qemu-system-x86 qemu-utils seabios vagrant vagrant-libvirt \
        libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base iptables mmdebstrap \
        extlinux syslinux-common fdisk e2fsprogs zerofree openssh-client rsync >/dev/null
else
    echo "host-setup: install qemu-kvm, libvirt, vagrant and vagrant-libvirt with your package manager" >&2
fi
# /dev/kvm may be unusable (a host that is itself a VM): QEMU then emulates (TCG) as root.
grep -q '^user = "root"' /etc/libvirt/qemu.conf || printf '\nuser = "root"\ngroup = "root"\n' >> /etc/libvirt/qemu.conf
# The nspawn HA lab (tests/ha) must stay isolated once libvirt turns ip_forward on.
for dir in -i -o; do
    iptables -C FORWARD "$dir" halab+ -j DROP 2>/dev/null || iptables -I FORWARD 1 "$dir" halab+ -j DROP
done
if [ "$(cat /proc/1/comm)" = systemd ]; then
    systemctl start libvirtd virtlogd
else
    pgrep -x virtlogd >/dev/null || /usr/sbin/virtlogd -d
    if ! pgrep -x libvirtd >/dev/null; then
        /usr/sbin/libvirtd -d
        for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
    fi
fi
virsh -q net-info default >/dev/null 2>&1 || virsh -q net-define /usr/share/libvirt/networks/default.xml
# libvirtd may start the network itself meanwhile ("already active"): active is what counts.
# (Output read whole: grep -q would end the pipe early, and pipefail would count virsh's SIGPIPE.)
active() { local info; info=$(virsh "$1-info" default 2>/dev/null) && grep -qE "$2" <<< "$info"; }
active net 'Active:.*yes' || virsh -q net-start default 2>/dev/null || active net 'Active:.*yes' ||
    { echo "host-setup: cannot start libvirt's default network" >&2; exit 1; }
POOL=${VAGRANT_POOL:-/var/lib/libvirt/images}
mkdir -p "$POOL"
virsh -q pool-info default >/dev/null 2>&1 || virsh -q pool-define-as default dir --target "$POOL"
active pool 'State:.*running' || virsh -q pool-start default 2>/dev/null || active pool 'State:.*running' ||
    { echo "host-setup: cannot start libvirt's default storage pool" >&2; exit 1; }
echo "host-setup: libvirt is up ($(virsh -c qemu:///system version | grep -i 'running hypervisor'))"
