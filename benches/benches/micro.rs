//! Criterion micro-benchmarks of hot paths: subscription pattern matching and
//! CBOR encoding/decoding of app-channel frames.
//!
//! Run: `cargo bench -p atmosphere-benches --bench micro`.

use std::hint::black_box;

use atmosphere::wire::{self, Frame};
use atmosphere_behaviours::pattern::Pattern;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// `n` distinct patterns in the shapes apps use: exact, `*` and `**`.
fn patterns(n: usize) -> Vec<Pattern> {
    (0..n)
        .map(|i| {
            let text = match i % 3 {
                0 => format!("home.room{i}.temp"),
                1 => format!("home.*.sensor{i}"),
                _ => format!("site{i}.**"),
            };
            Pattern::parse(&text).expect("valid pattern")
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("pattern-match");
    for n in [1usize, 100, 10_000] {
        let table = patterns(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("topic-vs-table", n), &table, |b, table| {
            b.iter(|| {
                table
                    .iter()
                    .filter(|p| p.matches(black_box("home.kitchen.sensor7")))
                    .count()
            })
        });
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame-cbor");
    for size in [64usize, 1024, 64 * 1024] {
        let frame = Frame::Publish {
            seq: 1,
            topic: "home.kitchen.temp".into(),
            payload: Bytes::from(vec![7u8; size]),
            ts: 1_732_190_000_000,
        };
        let mut encoded = Vec::new();
        wire::encode(&frame, &mut encoded);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("encode-publish", size),
            &frame,
            |b, frame| {
                let mut buf = Vec::with_capacity(size + 64);
                b.iter(|| {
                    buf.clear();
                    wire::encode_frame(black_box(frame), &mut buf);
                    buf.len()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("decode-publish", size),
            &encoded,
            |b, bytes| b.iter(|| wire::decode_frame(black_box(bytes)).map(|_| ())),
        );
        // The generic serde path, for comparison with the direct codec above.
        group.bench_with_input(
            BenchmarkId::new("decode-publish-ciborium", size),
            &encoded,
            |b, bytes| b.iter(|| wire::decode::<Frame>(black_box(bytes)).map(|_| ())),
        );
    }
    group.finish();
}

criterion_group!(benches, matching, frames);
criterion_main!(benches);
