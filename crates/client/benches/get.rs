//! Read cost of a unit's value: `Reader::get`, `Config::with`, `Config::get`, alone and while
//! a writer keeps swapping in a 10 MiB version.
//!
//! `cargo bench -p failsmall-client --bench get`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use failsmall_client::{Config, UnitValue};

struct Blob(Vec<u8>);

impl UnitValue for Blob {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Ok(Blob(bytes.to_vec()))
    }
}

fn config() -> Arc<Config<Blob>> {
    let config = Arc::new(Config::<Blob>::builder("bench").build().unwrap());
    config.offer(b"first").unwrap();
    config
}

fn reads(c: &mut Criterion) {
    let config = config();
    let mut reader = config.reader();
    c.bench_function("reader_get", |b| {
        b.iter(|| black_box(reader.get().unwrap().value.0.len()))
    });
    c.bench_function("config_with", |b| {
        b.iter(|| black_box(config.with(|snapshot| snapshot.value.0.len()).unwrap()))
    });
    c.bench_function("config_get", |b| {
        b.iter(|| black_box(config.get().unwrap().value.0.len()))
    });
}

fn reads_during_swaps(c: &mut Criterion) {
    let config = config();
    let running = Arc::new(AtomicBool::new(true));
    let writer = {
        let config = Arc::clone(&config);
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let mut big = vec![0u8; 10 * 1024 * 1024];
            let mut round = 0u8;
            while running.load(Ordering::Relaxed) {
                round = round.wrapping_add(1);
                big[0] = round;
                let _ = config.offer(&big);
            }
        })
    };
    let mut reader = config.reader();
    c.bench_function("reader_get_during_10mib_swaps", |b| {
        b.iter(|| black_box(reader.get().unwrap().value.0.len()))
    });
    running.store(false, Ordering::Relaxed);
    writer.join().unwrap();
}

criterion_group!(benches, reads, reads_during_swaps);
criterion_main!(benches);
