//! Tail latency of `Reader::get()` alone and while a writer keeps swapping in 10 MiB versions,
//! side by side in one run. Single reads are too short to time one by one, so each sample is
//! a batch of reads, and percentiles are over batches (per read).
//!
//! `cargo bench -p failsmall-client --bench get_tail`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use failsmall_client::{Config, UnitValue};

struct Blob(Vec<u8>);

impl UnitValue for Blob {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Ok(Blob(bytes.to_vec()))
    }
}

const READS_PER_SAMPLE: usize = 64;
/// Least samples per run; a run also goes on until `enough()` (bounded by `SAMPLES_MAX`).
const SAMPLES: usize = 1_000_000;
const SAMPLES_MAX: usize = 40_000_000;

/// Nanoseconds per read: (p50, p99, p99.9), and the samples taken.
fn sample(config: &Config<Blob>, enough: impl Fn() -> bool) -> (f64, f64, f64, usize) {
    let mut reader = config.reader();
    let mut per_read_ns = Vec::with_capacity(SAMPLES);
    while per_read_ns.len() < SAMPLES_MAX && (per_read_ns.len() < SAMPLES || !enough()) {
        let started = Instant::now();
        for _ in 0..READS_PER_SAMPLE {
            black_box(reader.get().unwrap().value.0.len());
        }
        per_read_ns.push(started.elapsed().as_nanos() as f64 / READS_PER_SAMPLE as f64);
    }
    per_read_ns.sort_by(f64::total_cmp);
    let at = |q: f64| per_read_ns[((per_read_ns.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), at(0.999), per_read_ns.len())
}

/// Swaps wanted during the measurement under load.
const SWAPS: u64 = 50;

fn main() {
    let config = Arc::new(Config::<Blob>::builder("bench").build().unwrap());
    config.offer(b"first").unwrap();
    let idle = sample(&config, || true);

    let running = Arc::new(AtomicBool::new(true));
    let swaps = Arc::new(AtomicU64::new(0));
    let writer = {
        let (config, running, swaps) = (
            Arc::clone(&config),
            Arc::clone(&running),
            Arc::clone(&swaps),
        );
        std::thread::spawn(move || {
            let mut big = vec![0u8; 10 * 1024 * 1024];
            let mut round = 0u8;
            while running.load(Ordering::Relaxed) {
                round = round.wrapping_add(1);
                big[0] = round;
                if config.offer(&big).is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let swapping = sample(&config, || swaps.load(Ordering::Relaxed) >= SWAPS);
    running.store(false, Ordering::Relaxed);
    writer.join().unwrap();

    println!(
        "Reader::get(), ns per read; samples of {READS_PER_SAMPLE} reads: {} idle, {} swapping",
        idle.3, swapping.3
    );
    println!("{:<32} {:>8} {:>8} {:>8}", "", "p50", "p99", "p99.9");
    println!(
        "{:<32} {:>8.2} {:>8.2} {:>8.2}",
        "idle", idle.0, idle.1, idle.2
    );
    println!(
        "{:<32} {:>8.2} {:>8.2} {:>8.2}",
        format!("during {} 10 MiB swaps", swaps.load(Ordering::Relaxed)),
        swapping.0,
        swapping.1,
        swapping.2
    );
    println!(
        "{:<32} {:>8.2} {:>8.2} {:>8.2}",
        "ratio",
        swapping.0 / idle.0,
        swapping.1 / idle.1,
        swapping.2 / idle.2
    );
}
