#!/usr/bin/env bash
# The BLE VM test, end to end: a real Linux Bluetooth stack (kernel L2CAP,
# bluetoothd) in a QEMU guest with two virtual LE controllers, running the
# BlueZ backend (transports/examples/ble_vm_check.rs: two libp2p nodes that
# discover each other by advertisement, connect, ping, echo 64 KiB, survive
# an HCI-level link drop and reconnect) and two `mesh-node --ble` daemons
# (find each other with `nearby`, pair, pub/sub and RPC over BLE, survive a
# link drop).
#
# Steps: host packages -> cargo build (host and guest are both bookworm, so
# host binaries run in the guest) -> guest image (cached) -> boot -> guest
# log -> exit with the guest test's code.
#
# Outside CI, a missing prerequisite that cannot be fixed here (not root)
# prints what is missing and "skipped: <reason>", and exits 0. In CI
# (CI=true) nothing is skipped: the same situations fail.
#
# Env: BLE_VM_CACHE     cache and run directory (default <workspace>/target/ble-vm)
#      BLE_VM_PROFILE   cargo profile of the guest binaries (default dev)
#      BLE_VM_RUST_LOG  RUST_LOG inside the guest (default: warnings)
#      BLE_VM_BLUETOOTHD_ARGS  extra bluetoothd options in the guest (e.g. -d)
#      BLE_VM_BTMON=1   record the guest's HCI traffic (btmon) in the run directory
#      VM_TIMEOUT, VM_ACCEL, VM_SMP, VM_MEM: see run-vm.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WS=$(cd "$HERE/../.." && pwd)
export BLE_VM_CACHE=${BLE_VM_CACHE:-$WS/target/ble-vm}
PROFILE=${BLE_VM_PROFILE:-dev}
T0=$SECONDS

say() { printf 'ble-vm: %s\n' "$*"; }
in_ci() { [ "${CI:-}" = true ]; }
# A prerequisite is missing and cannot be had: skip, except in CI.
cannot() {
    if in_ci; then
        say "FAIL: $1 (CI=true: the BLE VM test must run)" >&2
        exit 1
    fi
    echo "skipped: $1"
    exit 0
}

# --- host prerequisites ------------------------------------------------------
[ "$(uname -s)" = Linux ] || cannot "the BLE VM test needs a Linux host"
command -v dpkg-query >/dev/null 2>&1 || cannot "the BLE VM test needs a Debian host (dpkg, apt)"
# package: what it provides here
declare -A PROVIDES=(
    [qemu-system-x86]="qemu-system-x86_64 (runs the guest)"
    [debootstrap]="debootstrap (builds the guest image)"
    [e2fsprogs]="mkfs.ext4 (builds the guest image)"
    [libdbus-1-dev]="libdbus-1 headers (builds the bluez feature)"
    [pkg-config]="pkg-config (builds the bluez feature)"
)
missing=()
for package in qemu-system-x86 debootstrap e2fsprogs libdbus-1-dev pkg-config; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if ((${#missing[@]} > 0)); then
    if [ "$(id -u)" = 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "ble-vm: missing host packages:"
        for package in "${missing[@]}"; do echo "  $package: ${PROVIDES[$package]}"; done
        echo "ble-vm: as root: apt-get install -y --no-install-recommends ${missing[*]}"
        cannot "missing host packages (${missing[*]}) and not root to install them"
    fi
fi
command -v cargo >/dev/null 2>&1 || cannot "cargo is not installed"
IMAGE_HASH=$(sha256sum "$HERE/build-image.sh" | cut -c1-16)
if [ ! -f "$BLE_VM_CACHE/image-$IMAGE_HASH/complete" ] && [ "$(id -u)" != 0 ]; then
    echo "ble-vm: no guest image in $BLE_VM_CACHE/image-$IMAGE_HASH, and building one needs root (debootstrap, chroot)"
    cannot "no cached guest image and not root to build it"
fi

# --- guest binaries ----------------------------------------------------------
say "building the guest binaries (cargo, profile $PROFILE)"
(cd "$WS" && cargo build -p atmosphere-transports --features bluez --example ble_vm_check --profile "$PROFILE")
(cd "$WS" && cargo build -p atmosphere-examples --features bluez --bin mesh-node --profile "$PROFILE")
TARGET_DIR=${CARGO_TARGET_DIR:-$WS/target}
[ "$PROFILE" = dev ] && PROFILE_DIR=debug || PROFILE_DIR=$PROFILE
# Binaries copied into the guest's share: name=path.
BLE_VM_BINARIES=(
    "ble_vm_check=$TARGET_DIR/$PROFILE_DIR/examples/ble_vm_check"
    "mesh-node=$TARGET_DIR/$PROFILE_DIR/mesh-node"
)

# --- guest image -------------------------------------------------------------
T_IMAGE=$SECONDS
# (Not `tee /dev/stderr`: reopening stderr truncates a log file it points to.)
mkdir -p "$BLE_VM_CACHE"
IMAGE_LOG=$BLE_VM_CACHE/build-image.log
"$HERE/build-image.sh" | tee "$IMAGE_LOG" >&2
IMG=$(tail -n 1 "$IMAGE_LOG")
say "guest image ready in $((SECONDS - T_IMAGE)) s: $IMG"

# --- run ---------------------------------------------------------------------
RUN=$BLE_VM_CACHE/run
SHARE=$RUN/share
rm -rf "$RUN"
mkdir -p "$SHARE/bin"
cp "$HERE/guest-test.sh" "$SHARE/guest-test.sh"
chmod 755 "$SHARE/guest-test.sh"
for entry in "${BLE_VM_BINARIES[@]}"; do
    name=${entry%%=*}
    path=${entry#*=}
    [ -x "$path" ] || { say "FAIL: $path was not built" >&2; exit 1; }
    # Without debug info: much less to read over 9p.
    objcopy --strip-debug "$path" "$SHARE/bin/$name" 2>/dev/null || cp "$path" "$SHARE/bin/$name"
done
{
    printf 'export RUST_LOG=%q\n' "${BLE_VM_RUST_LOG:-warn}"
    printf 'BLUETOOTHD_ARGS=%q\n' "${BLE_VM_BLUETOOTHD_ARGS:-}"
    printf 'BLE_VM_BTMON=%q\n' "${BLE_VM_BTMON:-0}"
} > "$SHARE/guest.env"

say "booting the guest (TCG, typically 30-90 s); console: $RUN/console.log"
T_VM=$SECONDS
set +e
"$HERE/run-vm.sh" "$IMG" "$SHARE" > "$RUN/console.log" 2>&1
rc=$?
set -e
say "VM ran $((SECONDS - T_VM)) s"
if [ -f "$SHARE/guest.log" ]; then
    echo "===== guest log ====="
    cat "$SHARE/guest.log"
    echo "===== end of guest log ====="
else
    say "no guest log; console:"
    cat "$RUN/console.log"
fi
if [ "$rc" = 0 ]; then
    say "PASS (exit 0) in $((SECONDS - T0)) s"
else
    [ -f "$SHARE/guest.log" ] && { say "console (last 30 lines):"; tail -n 30 "$RUN/console.log"; }
    say "FAIL (exit $rc) in $((SECONDS - T0)) s"
fi
exit "$rc"
