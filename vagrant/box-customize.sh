#!/bin/bash
# build-box.sh's mmdebstrap customize hook: box-customize.sh ROOT ROOT_UUID VAGRANT_PUBKEY
set -euo pipefail
R=$1 UUID=$2 PUBKEY=$3
echo "UUID=$UUID / ext4 errors=remount-ro 0 1" > "$R/etc/fstab"
echo debian12 > "$R/etc/hostname"
printf '127.0.0.1 localhost\n' > "$R/etc/hosts"
chroot "$R" useradd -m -s /bin/bash -G sudo vagrant
install -d -m 700 -o 1000 -g 1000 "$R/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$PUBKEY" "$R/home/vagrant/.ssh/authorized_keys"
printf 'vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n' > "$R/etc/sudoers.d/vagrant"
chmod 440 "$R/etc/sudoers.d/vagrant"
echo "UseDNS no" > "$R/etc/ssh/sshd_config.d/vagrant.conf"
mkdir -p "$R/etc/systemd/network" "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$R/etc/systemd/network/99-eth0-dhcp.network"
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n' \
    > "$R/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
chroot "$R" systemctl enable systemd-networkd systemd-resolved ssh serial-getty@ttyS0.service
ln -sf /run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
# The cluster stack and the broker start only once provisioning configured them.
chroot "$R" systemctl disable corosync pacemaker pcsd activemq postgresql nfs-server 2>/dev/null || true
# pcs would take Debian's example corosync.conf (node "node1") for this host's cluster.
rm -f "$R/etc/corosync/corosync.conf"
# Each clone: its own machine-id (DHCP identity) and SSH host keys, made at first boot.
rm -f "$R"/etc/ssh/ssh_host_*
cat > "$R/etc/systemd/system/ssh-hostkeys.service" <<UNIT
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
chroot "$R" systemctl enable ssh-hostkeys.service
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
K=$(cd "$R/boot" && ls vmlinuz-* | sort -V | tail -1)
mkdir -p "$R/boot/extlinux"
cat > "$R/boot/extlinux/extlinux.conf" <<CONF
DEFAULT debian
TIMEOUT 1
PROMPT 0
SERIAL 0 115200
LABEL debian
  LINUX /boot/$K
  INITRD /boot/initrd.img-${K#vmlinuz-}
  APPEND root=UUID=$UUID ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0 quiet
CONF
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin
