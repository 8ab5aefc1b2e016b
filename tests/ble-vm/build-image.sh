#!/bin/sh
# Builds the guest image of the BLE VM test: a Debian bookworm root file system
# with the bookworm-security kernel, BlueZ (bluetoothd, btmgmt, hcitool,
# bluetoothctl), bluez-test-tools (btvirt) and D-Bus, plus the guest's PID 1
# (/sbin/bt-init), which mounts the 9p share, runs /share/guest-test.sh and
# powers off.
#
# Output: $BLE_VM_CACHE/image-<hash>/{vmlinuz,initrd.img,rootfs.img}, where
# <hash> is the hash of this script: an image built by the same script is
# reused (about 3 minutes saved), and older images are removed.
#
# Host: Debian bookworm, root, with qemu-system-x86, debootstrap and e2fsprogs
# (run.sh installs them). Mirrors are those of the host's apt configuration.
#
# Usage: build-image.sh            (prints the image directory on the last line)
# Env:   BLE_VM_CACHE  cache directory (default: <workspace>/target/ble-vm)
#        BLE_VM_MIRROR, BLE_VM_SECURITY_MIRROR  override the Debian mirrors
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
WS=$(cd "$HERE/../.." && pwd)
CACHE=${BLE_VM_CACHE:-$WS/target/ble-vm}
HASH=$(sha256sum "$HERE/build-image.sh" | cut -c1-16)
IMG=$CACHE/image-$HASH

if [ -f "$IMG/complete" ]; then
    echo "build-image: cached image $IMG"
    echo "$IMG"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "build-image: building the image needs root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap mkfs.ext4 chroot; do
    command -v $tool >/dev/null 2>&1 || { echo "build-image: $tool is missing" >&2; exit 1; }
done

# The host's Debian mirrors (deb822 sources first, then the one-line format).
mirror_for() { # $1: suite pattern
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && awk -v pat="$1" '
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i ~ pat) { print u; exit } }
            /^$/ { u = "" }' "$f"
    done | head -1
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v pat="$1" '$3 ~ pat { print $2; exit }'
}
M=${BLE_VM_MIRROR:-$(mirror_for '^bookworm$' | head -1)}
SEC=${BLE_VM_SECURITY_MIRROR:-$(mirror_for '^bookworm-security$' | head -1)}
if [ -z "$M" ] || [ -z "$SEC" ]; then
    echo "build-image: cannot read the bookworm and bookworm-security mirrors from the apt sources;" >&2
    echo "set BLE_VM_MIRROR and BLE_VM_SECURITY_MIRROR" >&2
    exit 1
fi

mkdir -p "$CACHE"
B=$CACHE/build-$HASH
R=$B/rootfs
cleanup() {
    umount "$R/proc" "$R/sys" 2>/dev/null || true
    rm -rf "$B"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cleanup
mkdir -p "$B"

echo "build-image: debootstrap bookworm from $M (security: $SEC)"
debootstrap --variant=minbase \
    --include=linux-image-amd64,initramfs-tools,bluez,bluez-test-tools,dbus,kmod,iproute2,procps \
    bookworm "$R" "$M"

# Kernel from bookworm-security: bookworm's 6.1.176 stalls LE SEQPACKET reads
# that block in the kernel; the security updates' kernel does not.
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$M" "$M" "$SEC" > "$R/etc/apt/sources.list"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
chroot "$R" apt-get -q update
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get -q -y dist-upgrade
KVER=$(ls -v "$R/lib/modules" | tail -1)
for k in $(ls "$R/lib/modules"); do
    [ "$k" = "$KVER" ] || chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get -q -y purge "linux-image-$k"
done
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/*
# Driver trees a virtio guest never needs (keeps net/bluetooth, net/sched,
# fs/9p, virtio, ext4).
for d in drivers/gpu drivers/net/wireless drivers/net/ethernet drivers/media drivers/infiniband sound \
         drivers/staging drivers/scsi drivers/usb/gadget drivers/iio drivers/isdn drivers/mtd; do
    rm -rf "$R/lib/modules/$KVER/kernel/$d"
done
chroot "$R" depmod -a "$KVER"
chroot "$R" mkinitramfs -o "/boot/initrd.img-$KVER" "$KVER"
umount "$R/proc" "$R/sys"

# PID 1 of the guest: mount the 9p share, run /share/guest-test.sh (output to
# /share/guest.log, exit code to /share/guest.rc), power off. Everything else
# lives in guest-test.sh, so changing the test does not rebuild the image.
cat > "$R/sbin/bt-init" <<'EOF'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
hostname btguest; ip link set lo up
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /share && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share
echo "bt-init: up at $(cut -d' ' -f1 /proc/uptime)s uptime"
if [ -x /share/guest-test.sh ]; then
    /share/guest-test.sh > /share/guest.log 2>&1
    echo $? > /share/guest.rc
    echo "bt-init: guest-test.sh exit $(cat /share/guest.rc)"
else
    echo "bt-init: no /share/guest-test.sh"
fi
echo "bt-init: done at $(cut -d' ' -f1 /proc/uptime)s uptime"
sync; umount /share 2>/dev/null; echo o > /proc/sysrq-trigger; sleep 10
EOF
chmod 755 "$R/sbin/bt-init"

cp "$R/boot/vmlinuz-$KVER" "$B/vmlinuz"
cp "$R/boot/initrd.img-$KVER" "$B/initrd.img"
mkfs.ext4 -q -F -L btroot -d "$R" "$B/rootfs.img" 1G
rm -rf "$R"
echo "$KVER" > "$B/kernel-version"
touch "$B/complete"

# Publish: older images go, this one takes its place.
for old in "$CACHE"/image-*; do
    [ -d "$old" ] && [ "$old" != "$IMG" ] && rm -rf "$old"
done
rm -rf "$IMG"
mv "$B" "$IMG"
trap - EXIT INT TERM
echo "build-image: built kernel $KVER:"
ls -ls "$IMG"
echo "$IMG"
