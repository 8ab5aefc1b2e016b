#!/bin/sh
# Runs inside the BLE VM guest (run.sh copies it to the share; the guest's
# PID 1 runs it as /share/guest-test.sh, output to /share/guest.log, exit code
# to /share/guest.rc).
#
# 1. bring_up_bluetooth: D-Bus, two virtual LE controllers linked to each other
#    (btvirt: hci0 and hci1), bluetoothd. The controllers stay powered off:
#    the payload powers on the adapters it uses (BluezLink::new does).
# 2. payload: the test proper, with the binaries run.sh put in /share/bin.
#    To test another program (e.g. `mesh-node --ble hci0`), replace payload()
#    and have run.sh copy its binaries (BLE_VM_BINARIES).
#
# Exit code: the payload's (2 if the Bluetooth bring-up failed).
set -u
SHARE=/share
BIN=$SHARE/bin
[ -f "$SHARE/guest.env" ] && . "$SHARE/guest.env"   # RUST_LOG etc. from run.sh
T0=$(cut -d' ' -f1 /proc/uptime)
log() { echo "guest [$(awk -v t0="$T0" '{ printf "%6.1f", $1 - t0 }' /proc/uptime) s]: $*"; }

# Waits up to $1 tenths of a second for the command $2... to succeed.
wait_for() {
    n=$1; shift
    while [ "$n" -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}

# Whether process $1 has exited (a child not yet waited for is a zombie).
exited() { ! kill -0 "$1" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

two_controllers() { [ "$(timeout 2 bluetoothctl list | grep -c Controller)" = 2 ]; }

# Quirk of the emulated controllers (btvirt): a controller reports an
# advertiser to a scanner only at the moment scanning or advertising is
# switched on, not once per advertising interval like a real radio, and the
# kernel drops a report that arrives before its discovery has fully started
# (the emulator's report is instant, so under load it nearly always does). A
# scanner would then never see an advertiser that was already advertising.
#
# reannounce_scans hciN...: every second, for each given adapter that
# bluetoothd reports as discovering, sends the controller "LE Set Scan
# Enable" again. A scanning emulated controller refuses it (Command
# Disallowed: nothing changes, in it or in the kernel) but still reports
# every advertiser again, like a real radio would within an advertising
# interval. Should the controller not be scanning after all (a transient
# pause), the command switches scanning on, and it is switched off again at
# once. Switching the advertiser's advertising off and on instead was tried:
# it breaks connections being set up.
discovering() {
    dbus-send --system --print-reply --dest=org.bluez "/org/bluez/$1" \
        org.freedesktop.DBus.Properties.Get string:org.bluez.Adapter1 string:Discovering \
        2>/dev/null | grep -q 'boolean true'
}
reannounce_scans() {
    while :; do
        sleep 1
        for hci in "$@"; do
            discovering "$hci" || continue
            # The last line holds the Command Complete: ncmd, opcode (2), status.
            status=$(hcitool -i "$hci" cmd 0x08 0x000c 01 00 2>/dev/null | tail -n 1 | awk '{ print $4 }')
            [ "$status" = 00 ] && hcitool -i "$hci" cmd 0x08 0x000c 00 00 >/dev/null 2>&1
        done
    done
}

bring_up_bluetooth() {
    modprobe bluetooth && modprobe hci_vhci || { log "FAIL: bluetooth modules"; return 1; }
    [ -s /etc/machine-id ] || dbus-uuidgen > /etc/machine-id
    mkdir -p /run/dbus && dbus-daemon --system --fork || { log "FAIL: dbus-daemon"; return 1; }
    # HCI traffic of every controller, decoded, for debugging (BLE_VM_BTMON=1).
    if [ "${BLE_VM_BTMON:-0}" = 1 ]; then btmon -w /tmp/btmon.snoop > /dev/null 2>&1 & BTMON=$!; fi
    btvirt -L -l2 > /tmp/btvirt.log 2>&1 &             # hci0 + hci1, LE only, linked
    wait_for 100 test -e /sys/class/bluetooth/hci1 || { log "FAIL: btvirt made no hci1"; return 1; }
    # bluetoothd only once both controllers exist, or it may miss one.
    /usr/libexec/bluetooth/bluetoothd -n ${BLUETOOTHD_ARGS:-} > /tmp/bluetoothd.log 2>&1 &
    wait_for 300 two_controllers || { log "FAIL: bluetoothd does not list 2 controllers"; return 1; }
    log "bluetooth up: kernel $(uname -r), $(bluetoothd --version 2>/dev/null || echo '?') bluetoothd," \
        "hci0=$(hciconfig hci0 | awk '/BD Address/{print $3}') hci1=$(hciconfig hci1 | awk '/BD Address/{print $3}')"
}

# The payload: ble_vm_check, node B (listen) on hci1, node A (dial) on hci0.
payload() {
    check=$BIN/ble_vm_check
    [ -x "$check" ] || { log "FAIL: $check is missing"; return 1; }
    "$check" listen --adapter hci1 --connections 2 --timeout-secs 420 > /tmp/node-b.log 2>&1 &
    b=$!
    b_ready() { grep -q READY /tmp/node-b.log || exited "$b"; }
    wait_for 1200 b_ready
    if ! grep -q READY /tmp/node-b.log; then
        log "FAIL: node B not ready (exited, or not within 120 s)"
        kill "$b" 2>/dev/null; wait "$b"
        sed 's/^/  B| /' /tmp/node-b.log
        return 1
    fi
    log "node B ready: $(grep READY /tmp/node-b.log)"
    reannounce_scans hci0 &
    reannounce=$!
    log "node A starts"
    timeout 480 "$check" dial --adapter hci0 --rounds 2 --timeout-secs 120 > /tmp/node-a.log 2>&1
    a_rc=$?
    log "node A exited $a_rc"
    kill "$reannounce"
    # Node B exits by itself once A's connections are closed.
    wait_for 600 exited "$b" || { log "node B still running after 60 s, stopping it"; kill "$b"; }
    wait "$b"; b_rc=$?
    log "node B exited $b_rc"
    echo "---- node A (dial, hci0)"; cat /tmp/node-a.log
    echo "---- node B (listen, hci1)"; cat /tmp/node-b.log
    echo "----"
    if [ "$a_rc" = 0 ] && [ "$b_rc" = 0 ]; then
        log "PASS ble_vm_check (node A exit 0, node B exit 0)"
        return 0
    fi
    log "FAIL ble_vm_check (node A exit $a_rc, node B exit $b_rc)"
    return 1
}

# Stage 2: two mesh-node daemons, A on hci0 and B on hci1, with no IP
# listener and no mDNS: Bluetooth is the only way between them. A founds a
# mesh and accepts pairing; B finds A by its advertisement (`nearby`), pairs
# (both sides confirm with --yes), then pub/sub and RPC run over BLE; the LE
# link is dropped with `hcitool ledc` and both come back over BLE.
mesh_nodes() {
    mn=$BIN/mesh-node
    [ -x "$mn" ] || { log "FAIL: $mn is missing"; return 1; }
    for n in a b; do
        mkdir -p /tmp/mn-$n
        printf 'listen = []\nmdns = false\n' > /tmp/mn-$n/atmosphere.toml
    done
    A="$mn --data-dir /tmp/mn-a --api 127.0.0.1:7101"
    B="$mn --data-dir /tmp/mn-b --api 127.0.0.1:7102"
    $A run --ble hci0 > /tmp/mn-a.log 2>&1 &
    pa=$!
    $B run --ble hci1 > /tmp/mn-b.log 2>&1 &
    pb=$!
    fail() {
        log "FAIL mesh-node: $*"
        for f in mn-a mn-b accept pair sub; do
            [ -f /tmp/$f.log ] && { echo "---- $f"; tail -n 40 /tmp/$f.log; }
        done
        kill "$pa" "$pb" 2>/dev/null
        return 1
    }
    wait_for 600 $A status || { fail "daemon A did not start"; return 1; }
    wait_for 600 $B status || { fail "daemon B did not start"; return 1; }
    a_id=$($A status --json | sed -n 's/.*"peer_id": *"\([^"]*\)".*/\1/p' | head -n 1)
    log "daemons up (A $a_id)"
    $A mesh create home > /dev/null || { fail "mesh create"; return 1; }
    reannounce_scans hci0 hci1 &
    reannounce=$!
    timeout 300 $A pair --accept --once --yes > /tmp/accept.log 2>&1 &
    acc=$!
    # (`--json` is pretty-printed: one object per line first.)
    nearby_id() { $B nearby --json 2>/dev/null | tr -d ' \n' | tr '{' '\n' | grep '"via":"ble"' \
        | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p' | head -n 1; }
    id=""
    n=0
    while [ -z "$id" ] && [ $n -lt 600 ]; do id=$(nearby_id); [ -n "$id" ] || sleep 0.2; n=$((n + 1)); done
    [ -n "$id" ] || { kill "$reannounce"; fail "B never saw A advertising"; return 1; }
    log "PASS B sees A nearby over BLE: $id"
    timeout 300 $B pair "$id" --yes > /tmp/pair.log 2>&1 || { kill "$reannounce"; fail "pairing (B)"; return 1; }
    wait "$acc" || { kill "$reannounce"; fail "pairing (A)"; return 1; }
    $B mesh list | grep -q home || { kill "$reannounce"; fail "B has no mesh after pairing"; return 1; }
    log "PASS paired over BLE: $(grep -i code /tmp/pair.log | head -n 1)"
    $A sub 'home.**' > /tmp/sub.log 2>&1 &
    sp=$!
    round() {
        n=0
        while [ $n -lt 120 ]; do
            $B pub home.hello "$1" > /dev/null 2>&1
            grep -q "$1" /tmp/sub.log && break
            sleep 1; n=$((n + 1))
        done
        grep -q "$1" /tmp/sub.log || return 1
        log "PASS pub/sub over BLE: A received $1"
        out=$($B call node.echo "\"$1\"" --peer "$a_id" --timeout 20s) || return 1
        echo "$out" | grep -q "$1" || return 1
        log "PASS RPC over BLE: node.echo on A answered $out"
        via=$($B mesh list | grep home)
        log "B's mesh: $via"
    }
    round before-drop || { kill "$reannounce" "$sp"; fail "pub/sub or RPC before the link drop"; return 1; }
    handle=$(hcitool -i hci1 con | awk '/handle/ { for (i = 1; i < NF; i++) if ($i == "handle") print $(i + 1) }' | head -n 1)
    [ -n "$handle" ] || { kill "$reannounce" "$sp"; fail "no LE connection on hci1"; return 1; }
    hcitool -i hci1 ledc "$handle" || { kill "$reannounce" "$sp"; fail "ledc"; return 1; }
    log "LE link $handle dropped (hcitool -i hci1 ledc)"
    round after-drop || { kill "$reannounce" "$sp"; fail "pub/sub or RPC after the link drop"; return 1; }
    log "PASS the nodes came back over BLE after the link drop"
    kill "$reannounce" "$sp" "$pa" "$pb" 2>/dev/null
    wait "$pa" "$pb" 2>/dev/null
    return 0
}

log "start"
if ! bring_up_bluetooth; then
    sed 's/^/  bluetoothd| /' /tmp/bluetoothd.log 2>/dev/null
    exit 2
fi
payload
rc=$?
log "payload exit $rc"
if [ "$rc" = 0 ]; then
    mesh_nodes
    rc=$?
    log "mesh-node stage exit $rc"
fi
cp /tmp/bluetoothd.log "$SHARE/bluetoothd.log" 2>/dev/null   # kept for inspection
if [ -n "${BTMON:-}" ]; then
    kill "$BTMON"; wait "$BTMON" 2>/dev/null
    btmon -T -r /tmp/btmon.snoop > "$SHARE/btmon.txt" 2>&1
fi
if [ "$rc" != 0 ]; then
    log "bluetoothd log (last 40 lines):"
    tail -n 40 /tmp/bluetoothd.log | sed 's/^/  bluetoothd| /'
fi
exit "$rc"
