#!/usr/bin/env bash
# The test command of the README: every test of the workspace.
#
# Run as root (CI, a throw-away VM), it first installs with apt what the
# network-lab tests use (`ip` from iproute2, `nft` from nftables). Run as
# another user, it says what is missing; the lab tests then skip themselves.
# The BLE VM test (tests/ble-vm/run.sh) installs its own packages as root.
#
# Exits non-zero if anything fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Plain output, including the test harness's summary lines.
unset CARGO_TERM_COLOR

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

# Commands the network-lab tests need, and the Debian packages providing them.
missing_cmds=()
missing_pkgs=()
command -v ip >/dev/null 2>&1 || { missing_cmds+=(ip); missing_pkgs+=(iproute2); }
command -v nft >/dev/null 2>&1 || { missing_cmds+=(nft); missing_pkgs+=(nftables); }

if ((${#missing_pkgs[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${missing_pkgs[*]} for the network-lab tests"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "${missing_pkgs[@]}"
    else
        echo "test.sh: missing commands: ${missing_cmds[*]} (Debian/Ubuntu packages: ${missing_pkgs[*]})" >&2
        echo "test.sh: the network-lab tests will skip; as root: apt-get install -y --no-install-recommends ${missing_pkgs[*]}" >&2
    fi
fi

echo "test.sh: cargo test --workspace --all-targets"
cargo test --workspace --all-targets

echo "test.sh: cargo test --workspace --doc"
cargo test --workspace --doc

# The BlueZ backend on the real Linux Bluetooth stack, in a QEMU guest
# (docs/ble.md). As root it installs qemu-system-x86, debootstrap and the
# bluez build dependencies and builds the guest image once (cached under
# target/ble-vm); otherwise it says what is missing and skips, except in CI
# (CI=true), where it fails.
echo "test.sh: tests/ble-vm/run.sh"
tests/ble-vm/run.sh

echo "test.sh: all tests passed"
