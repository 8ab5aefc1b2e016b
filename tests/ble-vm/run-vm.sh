#!/bin/sh
# Boots the BLE VM guest once. The guest's PID 1 mounts SHARE_DIR (9p) as
# /share, runs /share/guest-test.sh, writes /share/guest.log and
# /share/guest.rc, and powers off. The serial console goes to stdout.
#
# Usage: run-vm.sh IMAGE_DIR SHARE_DIR
# Exit:  the guest test's exit code; 1 if the guest did not finish.
# Env:   VM_TIMEOUT seconds before qemu is killed (default 900)
#        VM_ACCEL   qemu accelerator options (default "-accel tcg,thread=multi":
#                   this host's /dev/kvm is paravirtualised and cannot boot a
#                   stock kernel)
#        VM_CPU, VM_SMP (default 2), VM_MEM (MiB, default 1024)
set -u
[ $# = 2 ] || { echo "usage: run-vm.sh IMAGE_DIR SHARE_DIR" >&2; exit 2; }
IMG=$1
SHARE=$2
for f in vmlinuz initrd.img rootfs.img; do
    [ -f "$IMG/$f" ] || { echo "run-vm: $IMG/$f is missing (run build-image.sh)" >&2; exit 1; }
done
[ -x "$SHARE/guest-test.sh" ] || { echo "run-vm: $SHARE/guest-test.sh is missing" >&2; exit 1; }
rm -f "$SHARE/guest.log" "$SHARE/guest.rc"

# snapshot=on: the guest's writes go to a temporary overlay; the image stays
# pristine and can be shared by concurrent runs.
timeout "${VM_TIMEOUT:-900}" qemu-system-x86_64 ${VM_ACCEL:--accel tcg,thread=multi} \
    ${VM_CPU:+-cpu $VM_CPU} -smp "${VM_SMP:-2}" -m "${VM_MEM:-1024}" \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
    -append 'console=ttyS0 root=/dev/vda rw init=/sbin/bt-init panic=-1 quiet loglevel=4' \
    -drive "file=$IMG/rootfs.img,format=raw,if=virtio,snapshot=on" \
    -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share" \
    -nographic -no-reboot -nic none </dev/null
rc=$?
if [ ! -f "$SHARE/guest.rc" ]; then
    echo "run-vm: the guest did not finish (qemu exit $rc; 124 = VM_TIMEOUT)"
    exit 1
fi
exit "$(cat "$SHARE/guest.rc")"
