#!/bin/bash
# Build the Debian 12 box of the Vagrant cluster locally, offline but for the Debian mirror:
# no box download. The HA stack, ActiveMQ and the NFS client are baked in, so that provisioning
# under software emulation (TCG) does not spend minutes in apt.
#
#   vagrant/build-box.sh [OUTPUT.box]        (root; ~2 min; default vagrant/.build/fitsflow-debian12.box)
#
# The box: Debian 12 minbase with linux-image-cloud-amd64, systemd-networkd (DHCP on eth0),
# openssh-server, a `vagrant` user with Vagrant's public insecure key and NOPASSWD sudo,
# an empty machine-id and no SSH host keys (each clone gets its own at first boot), extlinux
# on an MBR disk, a serial console on ttyS0.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/.build/fitsflow-debian12.box}
MIRROR=${MIRROR:-http://deb.debian.org}
SIZE_G=${SIZE_G:-8}
B=$(mktemp -d "${TMPDIR:-/var/tmp}/fitsflow-box.XXXXXX")
ROOT=$B/root
RAW=$B/disk.raw
PUBKEY=$(ls -d /usr/share/rubygems-integration/all/gems/vagrant-2.*/keys/vagrant.pub 2>/dev/null | head -1)
[ -s "$PUBKEY" ] || PUBKEY=$(gem contents vagrant 2>/dev/null | grep 'keys/vagrant.pub$' | head -1)
[ -s "${PUBKEY:-}" ] || { echo "build-box: Vagrant's keys/vagrant.pub not found (install vagrant)" >&2; exit 1; }
LOOP=
cleanup() {
    set +e
    mountpoint -q "$ROOT" && umount -R "$ROOT"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$B"
}
trap cleanup EXIT

PKGS=(systemd systemd-sysv systemd-resolved udev dbus kmod linux-image-cloud-amd64 initramfs-tools
      openssh-server sudo iproute2 iputils-ping netbase ca-certificates procps less rsync gnupg
      python3 python3-venv nfs-common nfs-kernel-server postgresql xfsprogs
      pacemaker pacemaker-cli-utils corosync pcs resource-agents fence-agents activemq default-jre-headless)
mkdir -p "$ROOT" "$(dirname "$OUT")"
truncate -s "${SIZE_G}G" "$RAW"
echo 'start=2048, type=83, bootable' | sfdisk -q "$RAW"
LOOP=$(losetup -f --show -o $((2048 * 512)) "$RAW")
mkfs.ext4 -q -F -L root -O ^64bit,^metadata_csum "$LOOP"   # extlinux 6.04 wants neither
UUID=$(blkid -s UUID -o value "$LOOP")
mount "$LOOP" "$ROOT"
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${PKGS[*]}")" \
    --customize-hook="$HERE/box-customize.sh \"\$1\" $UUID $PUBKEY" \
    bookworm "$ROOT" "deb $MIRROR/debian bookworm main" "deb $MIRROR/debian bookworm-updates main" \
    "deb $MIRROR/debian-security bookworm-security main"
extlinux --install "$ROOT/boot/extlinux" >/dev/null
umount "$ROOT"
zerofree "$LOOP"            # freed blocks (deleted .debs) compress away
losetup -d "$LOOP"; LOOP=
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
qemu-img convert -c -f raw -O qcow2 "$RAW" "$B/box.img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$SIZE_G" > "$B/metadata.json"
printf 'Vagrant.configure("2") do |c|\n  c.vm.provider(:libvirt) { |l| l.disk_bus = "virtio" }\nend\n' > "$B/Vagrantfile"
tar -C "$B" -cf "$OUT.tmp" metadata.json Vagrantfile box.img
mv "$OUT.tmp" "$OUT"
echo "build-box: $OUT ($(du -h "$OUT" | cut -f1))"
