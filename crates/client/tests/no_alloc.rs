//! Reads allocate nothing once a thread has read: counted with an instrumented global
//! allocator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::System;

use failsmall_client::{Config, UnitValue};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Words(Vec<String>);

impl UnitValue for Words {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        Ok(Words(text.split_whitespace().map(str::to_owned).collect()))
    }
}

#[test]
fn reads_do_not_allocate() {
    let config = Config::<Words>::builder("words").build().unwrap();
    config.offer(b"alpha beta gamma").unwrap();
    let mut reader = config.reader();
    // Each read path once first: the first lock-free load on a thread may claim (allocate)
    // that thread's slot in arc-swap's debt list, once per thread; reads after it never do.
    let _ = reader.get().unwrap();
    let _ = config.get().unwrap();
    let _ = config.with(|snapshot| snapshot.value.0.len());
    // The allocator's counts are process-wide: another thread of the test harness may
    // allocate once while this one reads (the main thread's first blocking wait for the test
    // does, when it gets there late on a loaded machine). A read that allocated would do so in
    // every round, so the fewest allocations of three rounds is what the reads cost.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let region = Region::new(GLOBAL);
        let mut total = 0usize;
        for _ in 0..10_000 {
            total += reader.get().unwrap().value.0.len();
            total += config.get().unwrap().value.0.len();
            total += config.with(|snapshot| snapshot.value.0.len()).unwrap();
        }
        let stats = region.change();
        assert_eq!(total, 90_000);
        rounds.push(stats);
    }
    let fewest = rounds
        .iter()
        .min_by_key(|stats| stats.allocations + stats.reallocations)
        .unwrap();
    assert_eq!(fewest.allocations, 0, "{rounds:?}");
    assert_eq!(fewest.reallocations, 0, "{rounds:?}");
}
