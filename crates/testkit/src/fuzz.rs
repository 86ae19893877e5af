//! The seed plumbing of failsmall's generated tests.
//!
//! Seeds are fixed by default, so CI checks the same cases every run;
//! `FAILSMALL_FUZZ_SEED=N` replays or explores a run, `FAILSMALL_FUZZ_SEED=clock` picks a new
//! one, and `FAILSMALL_FUZZ_CASES=N` changes the number of cases.

use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// The seed of a run unless [`SEED_VAR`] names another.
pub const DEFAULT_SEED: u64 = 20_261_124;

/// The environment variable that sets the seed: a number, or `clock` for a new one.
pub const SEED_VAR: &str = "FAILSMALL_FUZZ_SEED";

/// The environment variable that sets the number of cases.
pub const CASES_VAR: &str = "FAILSMALL_FUZZ_CASES";

/// The seed of this run: [`DEFAULT_SEED`], or the number in [`SEED_VAR`] (a value that is not
/// a number keeps the default), or the current Unix time in seconds when it is `clock`.
#[must_use]
pub fn seed() -> u64 {
    match std::env::var(SEED_VAR).ok().as_deref() {
        Some("clock") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        Some(text) => text.parse().unwrap_or(DEFAULT_SEED),
        None => DEFAULT_SEED,
    }
}

/// The number of cases of this run: the number in [`CASES_VAR`], else `default`.
#[must_use]
pub fn cases(default: u32) -> u32 {
    std::env::var(CASES_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A proptest runner whose random generator is ChaCha seeded from `seed` (its little-endian
/// bytes, then zeros), so the same seed generates the same cases; it runs `cases` cases,
/// persists no failures, and shrinks a failure for at most `max_shrink_iters` steps and
/// `max_shrink_time_ms` milliseconds.
#[must_use]
pub fn runner(cases: u32, seed: u64, max_shrink_iters: u32, max_shrink_time_ms: u32) -> TestRunner {
    let mut seed_bytes = [0u8; 32];
    for (slot, byte) in seed_bytes.iter_mut().zip(seed.to_le_bytes()) {
        *slot = byte;
    }
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters,
        max_shrink_time: max_shrink_time_ms,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::runner;
    use proptest::strategy::{Strategy as _, ValueTree as _};

    fn draws(seed: u64) -> Vec<u64> {
        let mut runner = runner(10, seed, 0, 1000);
        (0..8)
            .map(|_| {
                proptest::num::u64::ANY
                    .new_tree(&mut runner)
                    .unwrap()
                    .current()
            })
            .collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_values() {
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn the_runner_keeps_its_settings() {
        let runner = runner(12, 1, 34, 5678);
        let config = runner.config();
        assert_eq!(config.cases, 12);
        assert_eq!(config.max_shrink_iters, 34);
        assert_eq!(config.max_shrink_time, 5678);
        assert!(config.failure_persistence.is_none());
    }
}
