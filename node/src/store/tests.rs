//! Tests of the store against real SQLite files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A unique temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "atmosphere-store-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn db(&self) -> PathBuf {
        self.0.join("node.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mesh(id: &str, joined_at: i64) -> MeshRecord {
    MeshRecord {
        id: id.to_owned(),
        name: format!("mesh {id}"),
        founder_key: vec![1, 2, 3, 4],
        nonce: vec![9; 16],
        is_founder: joined_at % 2 == 0,
        certificate: vec![0xa1, 0x01, 0x02],
        joined_at,
    }
}

fn invite(mesh_id: &str, seed: u8, uses_left: u32, expires_at: i64) -> InviteRecord {
    InviteRecord {
        secret_hash: [seed; 32],
        mesh_id: mesh_id.to_owned(),
        uses_left,
        expires_at,
        created_at: 100 + i64::from(seed),
        permissions: vec![seed, 0xff],
    }
}

fn open(dir: &TempDir) -> Store {
    Store::open(&dir.db()).unwrap()
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
    assert_send::<StoreError>();
}

#[test]
fn fresh_file_store_is_configured() {
    let dir = TempDir::new("config");
    let store = open(&dir);
    assert!(dir.db().is_file());
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 3);
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let fk: i64 = store
        .conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let timeout: i64 = store
        .conn
        .pragma_query_value(None, "busy_timeout", |r| r.get(0))
        .unwrap();
    assert_eq!(timeout, 5000);
}

#[test]
fn open_creates_parent_directories() {
    let dir = TempDir::new("parents");
    let path = dir.path().join("a").join("b").join("node.db");
    let store = Store::open(&path).unwrap();
    store.set_setting("name", "n").unwrap();
    assert!(path.is_file());
}

#[test]
fn open_in_memory_works() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.load_identity().unwrap(), None);
    store.save_identity(b"key").unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(b"key".to_vec()));
}

#[test]
fn identity_round_trip_and_replace() {
    let dir = TempDir::new("identity");
    let store = open(&dir);
    assert_eq!(store.load_identity().unwrap(), None);
    store.save_identity(&[8, 1, 18, 64, 0, 255]).unwrap();
    assert_eq!(
        store.load_identity().unwrap(),
        Some(vec![8, 1, 18, 64, 0, 255])
    );
    store.save_identity(&[7; 68]).unwrap();
    assert_eq!(store.load_identity().unwrap(), Some(vec![7; 68]));
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM identity", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn settings_round_trip_and_replace() {
    let dir = TempDir::new("settings");
    let store = open(&dir);
    assert_eq!(store.get_setting("node_name").unwrap(), None);
    store.set_setting("node_name", "kitchen").unwrap();
    store.set_setting("other", "x").unwrap();
    assert_eq!(
        store.get_setting("node_name").unwrap().as_deref(),
        Some("kitchen")
    );
    store.set_setting("node_name", "hall").unwrap();
    assert_eq!(
        store.get_setting("node_name").unwrap().as_deref(),
        Some("hall")
    );
    assert_eq!(store.get_setting("other").unwrap().as_deref(), Some("x"));
}

#[test]
fn mesh_round_trip_ordering_and_replace() {
    let dir = TempDir::new("mesh");
    let store = open(&dir);
    assert_eq!(store.mesh("m1").unwrap(), None);
    assert!(store.meshes().unwrap().is_empty());

    let b = mesh("b", 10);
    let a = mesh("a", 10);
    let c = mesh("c", 5);
    store.save_mesh(&b).unwrap();
    store.save_mesh(&a).unwrap();
    store.save_mesh(&c).unwrap();
    assert_eq!(store.mesh("a").unwrap(), Some(a.clone()));
    assert_eq!(store.mesh("c").unwrap(), Some(c.clone()));
    // joined_at first, then id.
    assert_eq!(
        store.meshes().unwrap(),
        vec![c.clone(), a.clone(), b.clone()]
    );

    // Replacing keeps the mesh's members and invites (no REPLACE cascade).
    store.save_member("a", "peer1", b"cert", 1).unwrap();
    store.create_invite(&invite("a", 1, 3, 1_000)).unwrap();
    let a2 = MeshRecord {
        name: "renamed".to_owned(),
        is_founder: !a.is_founder,
        certificate: vec![5; 40],
        ..a.clone()
    };
    store.save_mesh(&a2).unwrap();
    assert_eq!(store.mesh("a").unwrap(), Some(a2));
    assert_eq!(store.meshes().unwrap().len(), 3);
    assert_eq!(store.members("a").unwrap().len(), 1);
    assert_eq!(store.invites("a").unwrap().len(), 1);
}

#[test]
fn members_round_trip_upsert_and_peer_ids() {
    let dir = TempDir::new("members");
    let store = open(&dir);
    store.save_mesh(&mesh("m1", 1)).unwrap();
    store.save_mesh(&mesh("m2", 2)).unwrap();
    store.save_member("m1", "peerB", b"certB", 10).unwrap();
    store.save_member("m1", "peerA", b"certA", 11).unwrap();
    store.save_member("m2", "peerA", b"certA2", 12).unwrap();
    store.save_member("m2", "peerC", b"certC", 13).unwrap();

    assert_eq!(
        store.members("m1").unwrap(),
        vec![
            MemberRecord {
                mesh_id: "m1".into(),
                peer_id: "peerA".into(),
                certificate: b"certA".to_vec(),
                updated_at: 11,
            },
            MemberRecord {
                mesh_id: "m1".into(),
                peer_id: "peerB".into(),
                certificate: b"certB".to_vec(),
                updated_at: 10,
            },
        ]
    );

    // Upsert replaces the certificate and time.
    store.save_member("m1", "peerB", b"newcert", 20).unwrap();
    let members = store.members("m1").unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[1].certificate, b"newcert".to_vec());
    assert_eq!(members[1].updated_at, 20);

    assert_eq!(
        store.member_peer_ids().unwrap(),
        vec!["peerA".to_owned(), "peerB".to_owned(), "peerC".to_owned()]
    );
    assert!(store.members("nope").unwrap().is_empty());
}

#[test]
fn member_of_unknown_mesh_is_rejected() {
    let store = Store::open_in_memory().unwrap();
    let err = store.save_member("ghost", "peer", b"c", 1).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
    assert!(store.member_peer_ids().unwrap().is_empty());
    let err = store.create_invite(&invite("ghost", 1, 1, 10)).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
}

#[test]
fn delete_mesh_cascades_members_and_invites() {
    let dir = TempDir::new("delete");
    let store = open(&dir);
    store.save_mesh(&mesh("m1", 1)).unwrap();
    store.save_mesh(&mesh("m2", 2)).unwrap();
    store.save_member("m1", "p1", b"c", 1).unwrap();
    store.save_member("m1", "p2", b"c", 1).unwrap();
    store.save_member("m2", "p2", b"c", 1).unwrap();
    store.create_invite(&invite("m1", 1, 1, 100)).unwrap();
    store.create_invite(&invite("m2", 2, 1, 100)).unwrap();

    assert!(store.delete_mesh("m1").unwrap());
    assert_eq!(store.mesh("m1").unwrap(), None);
    assert!(store.members("m1").unwrap().is_empty());
    assert!(store.invites("m1").unwrap().is_empty());
    assert_eq!(store.member_peer_ids().unwrap(), vec!["p2".to_owned()]);
    // The other mesh is untouched.
    assert_eq!(store.members("m2").unwrap().len(), 1);
    assert_eq!(store.invites("m2").unwrap().len(), 1);
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);

    assert!(!store.delete_mesh("m1").unwrap());
    assert!(!store.delete_mesh("never").unwrap());
}

#[test]
fn foreign_key_cascade_alone_removes_children() {
    let store = Store::open_in_memory().unwrap();
    store.save_mesh(&mesh("m1", 1)).unwrap();
    store.save_member("m1", "p1", b"c", 1).unwrap();
    store.create_invite(&invite("m1", 1, 1, 100)).unwrap();
    store
        .conn
        .execute("DELETE FROM meshes WHERE id = 'm1'", [])
        .unwrap();
    assert!(store.members("m1").unwrap().is_empty());
    assert!(store.invites("m1").unwrap().is_empty());
}

#[test]
fn invites_round_trip_and_ordering() {
    let dir = TempDir::new("invites");
    let store = open(&dir);
    store.save_mesh(&mesh("m1", 1)).unwrap();
    let i2 = invite("m1", 2, 5, 1_000);
    let i1 = invite("m1", 1, 0, 2_000);
    store.create_invite(&i2).unwrap();
    store.create_invite(&i1).unwrap();
    assert_eq!(store.invites("m1").unwrap(), vec![i1.clone(), i2.clone()]);
    // The same secret twice for one mesh is refused.
    assert!(matches!(
        store.create_invite(&i1),
        Err(StoreError::Sqlite(_))
    ));
    assert!(store.invites("other").unwrap().is_empty());
}

#[test]
fn redeem_unknown_expired_exhausted_and_ok() {
    let dir = TempDir::new("redeem");
    let store = open(&dir);
    store.save_mesh(&mesh("m1", 1)).unwrap();
    store.save_mesh(&mesh("m2", 2)).unwrap();
    let live = invite("m1", 1, 2, 1_000);
    store.create_invite(&live).unwrap();
    store.create_invite(&invite("m1", 2, 5, 500)).unwrap();
    store.create_invite(&invite("m1", 3, 0, 1_000)).unwrap();
    // Expired and exhausted: expiry is checked first.
    store.create_invite(&invite("m1", 4, 0, 500)).unwrap();

    // Unknown hash, and a known hash for the wrong mesh.
    assert_eq!(
        store.redeem_invite("m1", &[9; 32], 600).unwrap(),
        Err(RedeemRefusal::Unknown)
    );
    assert_eq!(
        store.redeem_invite("m2", &[1; 32], 600).unwrap(),
        Err(RedeemRefusal::Unknown)
    );
    assert_eq!(
        store.redeem_invite("m1", &[2; 32], 500).unwrap(),
        Err(RedeemRefusal::Expired)
    );
    assert_eq!(
        store.redeem_invite("m1", &[2; 32], 501).unwrap(),
        Err(RedeemRefusal::Expired)
    );
    assert_eq!(
        store.redeem_invite("m1", &[4; 32], 600).unwrap(),
        Err(RedeemRefusal::Expired)
    );
    assert_eq!(
        store.redeem_invite("m1", &[3; 32], 600).unwrap(),
        Err(RedeemRefusal::Exhausted)
    );
    // Refusals change nothing.
    assert_eq!(store.invites("m1").unwrap()[1].uses_left, 5);

    // Two uses, then exhausted.
    let first = store.redeem_invite("m1", &[1; 32], 999).unwrap().unwrap();
    assert_eq!(
        first,
        InviteRecord {
            uses_left: 1,
            ..live.clone()
        }
    );
    let second = store.redeem_invite("m1", &[1; 32], 999).unwrap().unwrap();
    assert_eq!(second.uses_left, 0);
    assert_eq!(
        store.redeem_invite("m1", &[1; 32], 999).unwrap(),
        Err(RedeemRefusal::Exhausted)
    );
    let stored = store
        .invites("m1")
        .unwrap()
        .into_iter()
        .find(|i| i.secret_hash == [1; 32])
        .unwrap();
    assert_eq!(stored.uses_left, 0);
}

#[test]
fn redeem_is_atomic_across_connections() {
    let dir = TempDir::new("redeem-race");
    let store = open(&dir);
    store.save_mesh(&mesh("m1", 1)).unwrap();
    store.create_invite(&invite("m1", 7, 10, 1_000)).unwrap();
    let path = dir.db();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                (0..10)
                    .filter(|_| store.redeem_invite("m1", &[7; 32], 1).unwrap().is_ok())
                    .count()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 10);
    assert_eq!(store.invites("m1").unwrap()[0].uses_left, 0);
}

#[test]
fn prune_invites_removes_expired_and_exhausted() {
    let store = Store::open_in_memory().unwrap();
    store.save_mesh(&mesh("m1", 1)).unwrap();
    store.create_invite(&invite("m1", 1, 3, 100)).unwrap(); // expires at now
    store.create_invite(&invite("m1", 2, 3, 50)).unwrap(); // expired
    store.create_invite(&invite("m1", 3, 0, 1_000)).unwrap(); // exhausted
    store.create_invite(&invite("m1", 4, 1, 1_000)).unwrap(); // live
    assert_eq!(store.prune_invites(100).unwrap(), 3);
    let left = store.invites("m1").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].secret_hash, [4; 32]);
    assert_eq!(store.prune_invites(100).unwrap(), 0);
}

#[test]
fn peers_round_trip_and_name_kept() {
    let dir = TempDir::new("peers");
    let store = open(&dir);
    assert_eq!(store.peer("p1").unwrap(), None);
    store.upsert_peer("p1", None, 10).unwrap();
    assert_eq!(
        store.peer("p1").unwrap(),
        Some(PeerRecord {
            peer_id: "p1".into(),
            name: None,
            last_seen: 10
        })
    );
    store.upsert_peer("p1", Some("laptop"), 20).unwrap();
    store.upsert_peer("p1", None, 30).unwrap();
    assert_eq!(
        store.peer("p1").unwrap(),
        Some(PeerRecord {
            peer_id: "p1".into(),
            name: Some("laptop".into()),
            last_seen: 30
        })
    );
    store.upsert_peer("p2", Some("phone"), 40).unwrap();
    store.upsert_peer("p0", None, 30).unwrap();
    let ids: Vec<_> = store
        .peers()
        .unwrap()
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    assert_eq!(ids, vec!["p2", "p0", "p1"]);
}

#[test]
fn endpoints_round_trip_ordering_and_latency() {
    let dir = TempDir::new("endpoints");
    let store = open(&dir);
    assert!(store.endpoints("p1").unwrap().is_empty());
    store.add_endpoint("p1", "/ip4/10.0.0.1/tcp/1").unwrap();
    store
        .record_endpoint_success("p1", "/ip4/10.0.0.2/tcp/1", 100, Some(12))
        .unwrap();
    store
        .record_endpoint_success("p1", "/ip4/10.0.0.3/udp/1/quic-v1", 200, None)
        .unwrap();
    store.add_endpoint("p1", "/ip4/10.0.0.4/tcp/1").unwrap();
    // Adding an existing endpoint changes nothing.
    store.add_endpoint("p1", "/ip4/10.0.0.2/tcp/1").unwrap();
    store.add_endpoint("p2", "/ip4/10.0.0.9/tcp/1").unwrap();

    let eps = store.endpoints("p1").unwrap();
    assert_eq!(
        eps,
        vec![
            EndpointRecord {
                peer_id: "p1".into(),
                addr: "/ip4/10.0.0.3/udp/1/quic-v1".into(),
                last_success: Some(200),
                latency_ms: None,
            },
            EndpointRecord {
                peer_id: "p1".into(),
                addr: "/ip4/10.0.0.2/tcp/1".into(),
                last_success: Some(100),
                latency_ms: Some(12),
            },
            EndpointRecord {
                peer_id: "p1".into(),
                addr: "/ip4/10.0.0.4/tcp/1".into(),
                last_success: None,
                latency_ms: None,
            },
            EndpointRecord {
                peer_id: "p1".into(),
                addr: "/ip4/10.0.0.1/tcp/1".into(),
                last_success: None,
                latency_ms: None,
            },
        ]
    );

    // A new success without latency keeps the old latency; with one, replaces it.
    store
        .record_endpoint_success("p1", "/ip4/10.0.0.2/tcp/1", 300, None)
        .unwrap();
    let first = &store.endpoints("p1").unwrap()[0];
    assert_eq!(first.addr, "/ip4/10.0.0.2/tcp/1");
    assert_eq!(first.last_success, Some(300));
    assert_eq!(first.latency_ms, Some(12));
    store
        .record_endpoint_success("p1", "/ip4/10.0.0.2/tcp/1", 301, Some(7))
        .unwrap();
    assert_eq!(store.endpoints("p1").unwrap()[0].latency_ms, Some(7));

    // A learned endpoint that succeeds moves up.
    store
        .record_endpoint_success("p1", "/ip4/10.0.0.1/tcp/1", 400, Some(1))
        .unwrap();
    let eps = store.endpoints("p1").unwrap();
    assert_eq!(eps[0].addr, "/ip4/10.0.0.1/tcp/1");
    assert_eq!(eps.len(), 4);
    assert_eq!(store.endpoints("p2").unwrap().len(), 1);
}

#[test]
fn endpoints_are_bounded_keeping_the_newest() {
    let dir = TempDir::new("bound");
    let store = open(&dir);
    // Insert out of time order so the bound cannot rely on insertion order.
    for i in (1..=10).chain(11..=20).rev() {
        store
            .record_endpoint_success("p1", &format!("/ip4/10.0.0.{i}/tcp/1"), i, None)
            .unwrap();
    }
    store
        .record_endpoint_success("p2", "/ip4/10.9.9.9/tcp/1", 1, None)
        .unwrap();
    let eps = store.endpoints("p1").unwrap();
    assert_eq!(eps.len(), MAX_ENDPOINTS_PER_PEER);
    let times: Vec<_> = eps.iter().map(|e| e.last_success.unwrap()).collect();
    assert_eq!(times, (5..=20).rev().collect::<Vec<i64>>());
    assert_eq!(eps[0].addr, "/ip4/10.0.0.20/tcp/1");
    // Other peers are not affected by p1's bound.
    assert_eq!(store.endpoints("p2").unwrap().len(), 1);

    // With 16 proven endpoints, a learned one is dropped at once...
    store.add_endpoint("p1", "/ip4/192.0.2.1/tcp/1").unwrap();
    let eps = store.endpoints("p1").unwrap();
    assert_eq!(eps.len(), MAX_ENDPOINTS_PER_PEER);
    assert!(eps.iter().all(|e| e.last_success.is_some()));
    // ...but a new success evicts the oldest success.
    store
        .record_endpoint_success("p1", "/ip4/192.0.2.1/tcp/1", 21, None)
        .unwrap();
    let eps = store.endpoints("p1").unwrap();
    assert_eq!(eps.len(), MAX_ENDPOINTS_PER_PEER);
    assert_eq!(eps[0].addr, "/ip4/192.0.2.1/tcp/1");
    assert!(eps.iter().all(|e| e.last_success != Some(5)));
}

#[test]
fn learned_endpoints_are_bounded_keeping_the_latest_added() {
    let store = Store::open_in_memory().unwrap();
    for i in 0..20 {
        store
            .add_endpoint("p1", &format!("/ip4/10.0.1.{i}/tcp/1"))
            .unwrap();
    }
    let eps = store.endpoints("p1").unwrap();
    assert_eq!(eps.len(), MAX_ENDPOINTS_PER_PEER);
    let expected: Vec<String> = (4..20)
        .rev()
        .map(|i| format!("/ip4/10.0.1.{i}/tcp/1"))
        .collect();
    let got: Vec<String> = eps.into_iter().map(|e| e.addr).collect();
    assert_eq!(got, expected);
    // A success evicts a never-succeeded endpoint, not itself.
    store
        .record_endpoint_success("p1", "/ip4/10.0.2.1/tcp/1", 5, None)
        .unwrap();
    let eps = store.endpoints("p1").unwrap();
    assert_eq!(eps.len(), MAX_ENDPOINTS_PER_PEER);
    assert_eq!(eps[0].addr, "/ip4/10.0.2.1/tcp/1");
    assert!(!eps.iter().any(|e| e.addr == "/ip4/10.0.1.4/tcp/1"));
}

#[test]
fn data_survives_close_and_reopen() {
    let dir = TempDir::new("reopen");
    let m = mesh("m1", 42);
    let inv = invite("m1", 3, 4, 9_999);
    {
        let store = open(&dir);
        store.save_identity(b"identity-bytes").unwrap();
        store.set_setting("node_name", "den").unwrap();
        store.save_mesh(&m).unwrap();
        store.save_member("m1", "p1", b"cert", 7).unwrap();
        store.create_invite(&inv).unwrap();
        store.upsert_peer("p1", Some("tv"), 8).unwrap();
        store
            .record_endpoint_success("p1", "/ip4/1.2.3.4/tcp/5", 9, Some(3))
            .unwrap();
        store.add_endpoint("p1", "/ip6/::1/tcp/5").unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.load_identity().unwrap(),
        Some(b"identity-bytes".to_vec())
    );
    assert_eq!(
        store.get_setting("node_name").unwrap().as_deref(),
        Some("den")
    );
    assert_eq!(store.meshes().unwrap(), vec![m]);
    assert_eq!(
        store.members("m1").unwrap(),
        vec![MemberRecord {
            mesh_id: "m1".into(),
            peer_id: "p1".into(),
            certificate: b"cert".to_vec(),
            updated_at: 7,
        }]
    );
    assert_eq!(store.invites("m1").unwrap(), vec![inv]);
    assert_eq!(
        store.peers().unwrap(),
        vec![PeerRecord {
            peer_id: "p1".into(),
            name: Some("tv".into()),
            last_seen: 8
        }]
    );
    assert_eq!(
        store.endpoints("p1").unwrap(),
        vec![
            EndpointRecord {
                peer_id: "p1".into(),
                addr: "/ip4/1.2.3.4/tcp/5".into(),
                last_success: Some(9),
                latency_ms: Some(3),
            },
            EndpointRecord {
                peer_id: "p1".into(),
                addr: "/ip6/::1/tcp/5".into(),
                last_success: None,
                latency_ms: None,
            },
        ]
    );
}

#[test]
fn migrations_are_idempotent() {
    let dir = TempDir::new("migrate");
    {
        let store = open(&dir);
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store.set_setting("k", "v").unwrap();
    }
    {
        let store = open(&dir);
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.get_setting("k").unwrap().as_deref(), Some("v"));
    }
    let store = open(&dir);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let tables: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 7);
}

#[test]
fn migrations_upgrade_an_empty_version_zero_file() {
    let dir = TempDir::new("v0");
    {
        let raw = rusqlite::Connection::open(dir.db()).unwrap();
        raw.execute_batch("CREATE TABLE unrelated (x INTEGER);")
            .unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    store.set_setting("a", "b").unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new("toonew");
    drop(open(&dir));
    {
        let raw = rusqlite::Connection::open(dir.db()).unwrap();
        raw.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
            .unwrap();
    }
    match Store::open(&dir.db()) {
        Err(StoreError::TooNew { found, supported }) => {
            assert_eq!(found, SCHEMA_VERSION + 5);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    // The file was not modified.
    let raw = rusqlite::Connection::open(dir.db()).unwrap();
    let v: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, i64::from(SCHEMA_VERSION + 5));
}

#[test]
fn negative_schema_version_is_corrupt() {
    let dir = TempDir::new("negative");
    {
        let raw = rusqlite::Connection::open(dir.db()).unwrap();
        raw.pragma_update(None, "user_version", -3).unwrap();
    }
    let err = Store::open(&dir.db()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn garbage_file_is_corrupt() {
    let dir = TempDir::new("garbage");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(dir.db(), &garbage).unwrap();
    match Store::open(&dir.db()) {
        Err(StoreError::Corrupt { path, reason }) => {
            assert_eq!(path, dir.db().display().to_string());
            assert!(!reason.is_empty());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Opening must not have overwritten the user's file.
    assert_eq!(std::fs::read(dir.db()).unwrap(), garbage);
}

#[test]
fn unopenable_path_is_io_error() {
    let dir = TempDir::new("io");
    // A regular file where a parent directory should be.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let err = Store::open(&blocker.join("sub").join("node.db")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    // A directory where the database file should be.
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot open the store at "));
}

#[test]
fn full_database_is_disk_full() {
    let dir = TempDir::new("full");
    let store = open(&dir);
    let pages: i64 = store
        .conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    store
        .conn
        .pragma_update(None, "max_page_count", pages + 2)
        .unwrap();
    let err = store.save_identity(&vec![0xab; 1 << 20]).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
    assert!(err.to_string().starts_with("the store's disk is full"));
    // Nothing was written.
    assert_eq!(store.load_identity().unwrap(), None);
}

#[test]
fn error_mapping_and_messages() {
    let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None);
    assert!(matches!(
        StoreError::from_sqlite("p", full),
        StoreError::DiskFull(_)
    ));
    let notadb = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(26), None);
    match StoreError::from_sqlite("/x/y.db", notadb) {
        e @ StoreError::Corrupt { .. } => assert!(e
            .to_string()
            .starts_with("the store at /x/y.db is corrupt or not an Atmosphere database: ")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let corrupt = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(11), None);
    assert!(matches!(
        StoreError::from(corrupt),
        StoreError::Corrupt { .. }
    ));
    let other = rusqlite::Error::QueryReturnedNoRows;
    let err = StoreError::from(other);
    assert!(matches!(err, StoreError::Sqlite(_)));
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        StoreError::TooNew {
            found: 3,
            supported: 1
        }
        .to_string(),
        "the store has schema version 3, newer than this build supports (1)"
    );
}

#[test]
fn redeem_refusal_display() {
    assert_eq!(RedeemRefusal::Unknown.to_string(), "unknown invite");
    assert_eq!(RedeemRefusal::Expired.to_string(), "invite expired");
    assert_eq!(
        RedeemRefusal::Exhausted.to_string(),
        "invite has no uses left"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(RedeemRefusal::Expired);
    assert_eq!(boxed.to_string(), "invite expired");
}

#[test]
fn auto_reconnect_defaults_on_and_survives_reopening() {
    let dir = TempDir::new("auto-reconnect");
    {
        let store = open(&dir);
        store.save_mesh(&mesh("m1", 1)).unwrap();
        assert_eq!(store.auto_reconnect("m1").unwrap(), Some(true));
        assert!(store.set_auto_reconnect("m1", false).unwrap());
        assert!(!store.set_auto_reconnect("missing", false).unwrap());
        assert_eq!(store.auto_reconnect("missing").unwrap(), None);
        // Saving the mesh again (a new certificate) keeps the choice.
        store.save_mesh(&mesh("m1", 2)).unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.auto_reconnect("m1").unwrap(), Some(false));
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_meshes() {
    let dir = TempDir::new("v1");
    {
        let raw = rusqlite::Connection::open(dir.db()).unwrap();
        raw.execute_batch(super::migrations::MIGRATIONS[0]).unwrap();
        raw.pragma_update(None, "user_version", 1).unwrap();
        raw.execute(
            "INSERT INTO meshes (id, name, founder_key, nonce, is_founder, certificate, joined_at)
             VALUES ('m1', 'old', x'01', x'02', 0, x'03', 5)",
            [],
        )
        .unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        store.mesh("m1").unwrap().map(|m| m.name),
        Some("old".into())
    );
    assert_eq!(store.auto_reconnect("m1").unwrap(), Some(true));
}

#[test]
fn endpoints_saved_with_the_peer_suffix_are_folded_by_the_v3_migration() {
    let dir = TempDir::new("v3");
    let peer = "12D3KooWGzs4Ywc1A4FbzGGXfYWmdYy1ZQZ3ZS8JSqULEWDJAVLA";
    {
        let raw = rusqlite::Connection::open(dir.db()).unwrap();
        for step in &super::migrations::MIGRATIONS[..2] {
            raw.execute_batch(step).unwrap();
        }
        raw.pragma_update(None, "user_version", 2).unwrap();
        let rows = [
            // Both forms of one address: one row remains.
            (format!("/ip4/10.0.0.1/tcp/1/p2p/{peer}"), Some(5)),
            ("/ip4/10.0.0.1/tcp/1".to_string(), Some(7)),
            // Only the suffixed form: renamed.
            (format!("/ip4/10.0.0.2/tcp/2/p2p/{peer}"), Some(9)),
            // A relayed address keeps the relay's id.
            (
                "/ip4/10.0.0.3/tcp/3/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo/p2p-circuit".to_string(),
                None,
            ),
        ];
        for (addr, success) in rows {
            raw.execute(
                "INSERT INTO endpoints (peer_id, addr, last_success) VALUES (?1, ?2, ?3)",
                rusqlite::params![peer, addr, success],
            )
            .unwrap();
        }
    }
    let store = open(&dir);
    let mut addrs: Vec<String> = store
        .endpoints(peer)
        .unwrap()
        .into_iter()
        .map(|e| e.addr)
        .collect();
    addrs.sort();
    assert_eq!(
        addrs,
        vec![
            "/ip4/10.0.0.1/tcp/1".to_string(),
            "/ip4/10.0.0.2/tcp/2".to_string(),
            "/ip4/10.0.0.3/tcp/3/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo/p2p-circuit".to_string(),
        ]
    );
}
