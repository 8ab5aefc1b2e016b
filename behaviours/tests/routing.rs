//! Pub/sub routing: which subscribers a topic goes to, given their patterns,
//! and the same decision carried out over channel streams between swarms.

use std::{collections::BTreeSet, time::Duration};

use atmosphere_behaviours::{
    channel::{
        self,
        protocol::{encode_frame, read_frame},
        Event,
    },
    pattern::{validate_topic, Pattern},
};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{swarm::SwarmEvent, PeerId, Stream, Swarm};
use libp2p_swarm_test::SwarmExt;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);
const MAX: usize = 64 * 1024;

/// Subscribers (by name) and their patterns, as a publisher would know them.
struct Table {
    subs: Vec<(&'static str, Vec<Pattern>)>,
}

impl Table {
    fn new(entries: &[(&'static str, &[&str])]) -> Self {
        Self {
            subs: entries
                .iter()
                .map(|(name, patterns)| {
                    (
                        *name,
                        patterns
                            .iter()
                            .map(|p| Pattern::parse(p).unwrap())
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// The subscribers a publish on `topic` goes to.
    fn route(&self, topic: &str) -> BTreeSet<&'static str> {
        validate_topic(topic).unwrap();
        self.subs
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| p.matches(topic)))
            .map(|(name, _)| *name)
            .collect()
    }
}

fn set(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

#[test]
fn topics_route_to_the_peers_whose_patterns_match() {
    let table = Table::new(&[
        ("display", &["home.kitchen.temp"]),
        ("thermostat", &["home.*.temp"]),
        ("archiver", &["home.**"]),
        ("logger", &["**"]),
        ("alarms", &["**.alarm", "office.door"]),
        ("gardener", &["garden.**.water"]),
    ]);
    let cases: &[(&str, &[&'static str])] = &[
        // exact, `*` and `**` together
        (
            "home.kitchen.temp",
            &["display", "thermostat", "archiver", "logger"],
        ),
        // `*` is exactly one segment
        ("home.bedroom.temp", &["thermostat", "archiver", "logger"]),
        ("home.temp", &["archiver", "logger"]),
        ("home.bedroom.window.temp", &["archiver", "logger"]),
        // `home.**` matches `home` itself
        ("home", &["archiver", "logger"]),
        // `**` before a literal, several patterns of one peer
        ("home.kitchen.alarm", &["archiver", "logger", "alarms"]),
        ("alarm", &["logger", "alarms"]),
        ("office.door", &["logger", "alarms"]),
        ("office.door.alarm", &["logger", "alarms"]),
        // `**` in the middle matches zero or more segments
        ("garden.water", &["logger", "gardener"]),
        ("garden.bed-1.roses.water", &["logger", "gardener"]),
        ("garden.water.level", &["logger"]),
        // literals are whole segments, case-sensitive
        ("homes.kitchen.temp", &["logger"]),
        ("Home.kitchen.temp", &["logger"]),
        ("office.doors", &["logger"]),
    ];
    for (topic, expected) in cases {
        assert_eq!(table.route(topic), set(expected), "topic {topic}");
    }

    let without_catch_all =
        Table::new(&[("thermostat", &["home.*.temp"]), ("archiver", &["home.**"])]);
    assert!(without_catch_all.route("office.kitchen.temp").is_empty());
    assert_eq!(
        without_catch_all.route("home.a.temp"),
        set(&["thermostat", "archiver"])
    );
}

#[test]
fn equivalent_patterns_route_alike() {
    // Repeated `**` fold into one; `**.x` and `**.**.x` select the same topics.
    let a = Pattern::parse("a.**.**.z").unwrap();
    let b = Pattern::parse("a.**.z").unwrap();
    for topic in ["a.z", "a.b.z", "a.b.c.z", "a.b", "z", "a.z.z"] {
        assert_eq!(a.matches(topic), b.matches(topic), "topic {topic}");
    }
    assert!(Pattern::parse("a.b").unwrap().is_exact());
    assert!(!b.is_exact());
}

fn encode_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(1 + topic.len() + payload.len());
    msg.push(u8::try_from(topic.len()).unwrap());
    msg.extend_from_slice(topic.as_bytes());
    msg.extend_from_slice(payload);
    msg
}

fn decode_publish(msg: &[u8]) -> (String, Vec<u8>) {
    let len = msg[0] as usize;
    (
        String::from_utf8(msg[1..1 + len].to_vec()).unwrap(),
        msg[1 + len..].to_vec(),
    )
}

/// Runs a subscriber swarm in the background. On the publisher's channel
/// stream it first announces `pattern` (one frame), then collects every
/// publish frame until the stream ends; the collected messages come back on
/// the returned receiver.
fn spawn_subscriber(
    mut swarm: Swarm<channel::Behaviour>,
    pattern: &'static str,
) -> oneshot::Receiver<Vec<(String, Vec<u8>)>> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            if let SwarmEvent::Behaviour(Event::Inbound { mut stream, .. }) =
                swarm.select_next_some().await
            {
                let Some(tx) = tx.take() else { continue };
                tokio::spawn(async move {
                    let mut announce = Vec::new();
                    encode_frame(&mut announce, pattern.as_bytes(), MAX).unwrap();
                    stream.write_all(&announce).await.unwrap();
                    stream.flush().await.unwrap();
                    let mut got = Vec::new();
                    let mut buf = Vec::new();
                    while read_frame(&mut stream, &mut buf, MAX).await.unwrap() {
                        got.push(decode_publish(&buf));
                    }
                    let _ = tx.send(got);
                });
            }
        }
    });
    rx
}

#[tokio::test]
async fn publish_frames_reach_only_matching_subscribers() {
    let mut publisher = Swarm::new_ephemeral_tokio(|_| channel::Behaviour::default());
    let mut kitchen = Swarm::new_ephemeral_tokio(|_| channel::Behaviour::default());
    let mut office = Swarm::new_ephemeral_tokio(|_| channel::Behaviour::default());
    kitchen.listen().with_memory_addr_external().await;
    office.listen().with_memory_addr_external().await;
    publisher.connect(&mut kitchen).await;
    publisher.connect(&mut office).await;
    let kitchen_id = *kitchen.local_peer_id();
    let office_id = *office.local_peer_id();
    let kitchen_rx = spawn_subscriber(kitchen, "home.*.temp");
    let office_rx = spawn_subscriber(office, "office.**");

    // One channel stream to each subscriber.
    publisher
        .behaviour_mut()
        .open_stream(kitchen_id, None)
        .unwrap();
    publisher
        .behaviour_mut()
        .open_stream(office_id, None)
        .unwrap();
    let mut streams: Vec<(PeerId, Stream)> = Vec::new();
    tokio::time::timeout(WAIT, async {
        while streams.len() < 2 {
            match publisher.select_next_some().await {
                SwarmEvent::Behaviour(Event::Opened { peer, stream, .. }) => {
                    streams.push((peer, stream))
                }
                SwarmEvent::Behaviour(other) => panic!("unexpected {other:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("streams opened");
    tokio::spawn(publisher.loop_on_next());

    // The publisher learns each subscriber's pattern from its announcement.
    let mut routes: Vec<(PeerId, Pattern, Stream)> = Vec::new();
    for (peer, mut stream) in streams {
        let mut buf = Vec::new();
        let announced = tokio::time::timeout(WAIT, read_frame(&mut stream, &mut buf, MAX))
            .await
            .expect("announcement in time")
            .unwrap();
        assert!(announced);
        let pattern = Pattern::parse(std::str::from_utf8(&buf).unwrap()).unwrap();
        routes.push((peer, pattern, stream));
    }

    let messages: &[(&str, &[u8])] = &[
        ("home.kitchen.temp", b"21.5"),
        ("office.door", b"open"),
        ("home.kitchen.humidity.level", b"40"),
        ("garden.water", b"dry"),
        ("home.bedroom.temp", b"19.0"),
        ("office.floor-2.printer.toner", b"low"),
        ("home.temp", b"no single segment"),
    ];
    let mut sent_to: Vec<(PeerId, usize)> = Vec::new();
    for (topic, payload) in messages {
        for (peer, pattern, stream) in routes.iter_mut() {
            if pattern.matches(topic) {
                let mut frame = Vec::new();
                encode_frame(&mut frame, &encode_publish(topic, payload), MAX).unwrap();
                stream.write_all(&frame).await.unwrap();
                sent_to.push((*peer, frame.len()));
            }
        }
    }
    for (_, _, stream) in routes.iter_mut() {
        stream.flush().await.unwrap();
        stream.close().await.unwrap();
    }

    let kitchen_got = tokio::time::timeout(WAIT, kitchen_rx)
        .await
        .expect("kitchen done")
        .unwrap();
    let office_got = tokio::time::timeout(WAIT, office_rx)
        .await
        .expect("office done")
        .unwrap();
    let owned = |list: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(t, p)| (t.to_string(), p.to_vec()))
            .collect()
    };
    assert_eq!(
        kitchen_got,
        owned(&[
            ("home.kitchen.temp", b"21.5"),
            ("home.bedroom.temp", b"19.0")
        ])
    );
    assert_eq!(
        office_got,
        owned(&[
            ("office.door", b"open"),
            ("office.floor-2.printer.toner", b"low")
        ])
    );
    // Nothing was sent for topics nobody subscribed to.
    assert_eq!(sent_to.len(), 4);
    assert_eq!(sent_to.iter().filter(|(p, _)| *p == kitchen_id).count(), 2);
}
