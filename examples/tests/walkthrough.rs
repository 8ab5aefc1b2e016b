//! The README walk-through with two real daemons on loopback: create a mesh,
//! invite, join, pub/sub, RPC over `reply`, then restart the joiner and check
//! it reconnects without a new invite.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{eventually, Daemon, READY_TIMEOUT};

/// Has `subscriber` run `sub PATTERN --count 1` while `publisher` publishes
/// every 500 ms (subscriptions propagate asynchronously); returns the line printed.
fn deliver_once(
    subscriber: &Daemon,
    publisher: &Daemon,
    pattern: &str,
    topic: &str,
    payload: &str,
) -> String {
    let mut sub = subscriber.spawn(&["sub", pattern, "--count", "1"]);
    sub.wait_stderr("subscribed to");
    let deadline = Instant::now() + READY_TIMEOUT;
    while !sub.exited() {
        assert!(
            Instant::now() < deadline,
            "the subscriber got nothing within {READY_TIMEOUT:?}\npublisher log:\n{}\nsubscriber log:\n{}",
            publisher.log_text(),
            subscriber.log_text()
        );
        publisher.cli(&["pub", topic, payload]).assert_ok("pub");
        thread::sleep(Duration::from_millis(500));
    }
    let (code, stdout) = sub.finish();
    assert_eq!(code, Some(0), "sub exited with {code:?}: {stdout}");
    stdout.lines().next().unwrap_or_default().to_owned()
}

/// Calls `uri` on `caller` until the answer is something other than "no
/// provider" (registrations propagate asynchronously).
fn call_when_provided(caller: &Daemon, args: &[&str]) -> common::Run {
    let mut last = None;
    let answered = eventually(READY_TIMEOUT, || {
        let run = caller.cli(args);
        if run.ok() || !run.stderr.contains("no provider") {
            return Some(run);
        }
        last = Some(run);
        None
    });
    answered.unwrap_or_else(|| panic!("still no provider after {READY_TIMEOUT:?}: {last:?}"))
}

#[test]
fn two_daemons_mesh_pubsub_rpc_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Daemon::start(&dir.path().join("a"));
    let mut b = Daemon::start(&dir.path().join("b"));

    // A founds a mesh and invites B.
    let created = a.cli(&["mesh", "create", "home"]);
    created.assert_ok("mesh create");
    let mesh_id = created.last_line();
    assert_eq!(mesh_id.len(), 32, "mesh id: {mesh_id}");

    let invite = a.cli(&["mesh", "invite"]);
    invite.assert_ok("mesh invite");
    let uri = invite.last_line();
    assert!(uri.starts_with("atmosphere://join?"), "invite URI: {uri}");

    b.cli(&["mesh", "join", &uri]).assert_ok("mesh join");
    let listed = b.cli(&["mesh", "list", "--json"]);
    listed.assert_ok("mesh list");
    assert!(listed.stdout.contains(&mesh_id), "{}", listed.stdout);

    // Pub/sub: B subscribes with a pattern, A publishes.
    let line = deliver_once(&b, &a, "home.*.temp", "home.kitchen.temp", "21.5");
    assert_eq!(line, "home.kitchen.temp 21.5");

    // RPC: B serves math.double with a shell command, A calls it.
    let mut reply = b.spawn(&["reply", "math.double", "--exec", "awk '{ print $1 * 2 }'"]);
    reply.wait_stderr("serving math.double");
    let doubled = call_when_provided(&a, &["call", "math.double", "21"]);
    doubled.assert_ok("call math.double");
    assert_eq!(doubled.stdout.trim(), "42");

    // Built-in echo on a chosen peer.
    let b_peer = b.peer_id();
    let echoed = a.cli(&["call", "node.echo", r#"{"x":1}"#, "--peer", &b_peer]);
    echoed.assert_ok("call node.echo");
    assert_eq!(echoed.stdout.trim(), r#"{"x":1}"#);

    // A failing handler is a remote error with the command's stderr.
    let mut failing = b.spawn(&["reply", "math.fail", "--exec", "echo broken >&2; exit 3"]);
    failing.wait_stderr("serving math.fail");
    let failed = call_when_provided(&a, &["call", "math.fail", "1"]);
    assert_eq!(failed.code, Some(7), "{failed:?}");
    assert!(
        failed.stderr.starts_with("error:") && failed.stderr.contains("broken"),
        "{failed:?}"
    );
    drop(failing);
    drop(reply);

    // Restart B with the same data dir: it reconnects to A by itself.
    b.stop();
    let b = Daemon::start(&b.data_dir.clone());
    assert_eq!(b.peer_id(), b_peer, "identity survives a restart");
    let line = deliver_once(&b, &a, "home.**", "home.kitchen.temp", "22");
    assert_eq!(line, "home.kitchen.temp 22");

    let status = a.cli(&["status"]);
    status.assert_ok("status");
    assert!(status.stdout.contains("home"), "{}", status.stdout);
    let peers = a.cli(&["peers", "--json"]);
    peers.assert_ok("peers");
    assert!(peers.stdout.contains(&b_peer), "{}", peers.stdout);
}
