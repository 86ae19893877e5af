//! Sampling for the simulated fleet: request counts and errors drawn from the seeded RNG, and
//! the latency histogram of a node's requests.

use failsmall_core::health::LatencyHistogram;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Three latency buckets and the share of requests in the first two (the rest go to the third).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LatencyShape {
    buckets: [usize; 3],
}

impl LatencyShape {
    pub(super) fn around(median_ms: f64) -> Self {
        let median_ms = median_ms.max(0.1);
        Self {
            buckets: [
                LatencyHistogram::bucket_of(median_ms * 0.8),
                LatencyHistogram::bucket_of(median_ms * 1.5),
                LatencyHistogram::bucket_of(median_ms * 2.5),
            ],
        }
    }

    /// 50% / 45% / 5% of `requests` (at 0.8, 1.5 and 2.5 times the median).
    pub(super) fn fill(&self, histogram: &mut LatencyHistogram, requests: u64) {
        histogram.counts = [0; failsmall_core::health::LATENCY_BUCKETS];
        let first = requests / 2;
        let second = requests * 45 / 100;
        let third = requests - first - second;
        for (bucket, count) in self.buckets.iter().zip([first, second, third]) {
            if let Some(slot) = histogram.counts.get_mut(*bucket) {
                *slot += count;
            }
        }
    }
}

/// A Poisson draw with mean `lambda` (inversion below 30, a normal approximation above),
/// capped at `cap`.
pub(super) fn poisson_capped(rng: &mut ChaCha8Rng, lambda: f64, cap: u64) -> u64 {
    if lambda <= 0.0 || cap == 0 {
        return 0;
    }
    let draw = if lambda < 30.0 {
        let u: f64 = rng.random();
        let mut k = 0u64;
        let mut p = (-lambda).exp();
        let mut cumulative = p;
        // Bounded: the tail beyond 200 draws is below 1e-60 for lambda < 30.
        while u > cumulative && k < 200 {
            k += 1;
            p *= lambda / k as f64;
            cumulative += p;
        }
        k
    } else {
        let z: f64 = rng.sample(StandardNormal);
        round_count(lambda + lambda.sqrt() * z)
    };
    draw.min(cap)
}

/// A Poisson draw with mean `lambda` whose `exp(-lambda)` is known, capped at `cap`.
pub(super) fn poisson_known(
    rng: &mut ChaCha8Rng,
    lambda: f64,
    exp_neg_lambda: f64,
    cap: u64,
) -> u64 {
    if lambda >= 30.0 {
        return poisson_capped(rng, lambda, cap);
    }
    let u: f64 = rng.random();
    let mut k = 0u64;
    let mut p = exp_neg_lambda;
    let mut cumulative = p;
    while u > cumulative && k < 200 {
        k += 1;
        p *= lambda / k as f64;
        cumulative += p;
    }
    k.min(cap)
}

/// Rounds a non-negative float to the nearest whole number (negative gives 0).
pub(super) fn round_count(value: f64) -> u64 {
    (value + 0.5).max(0.0) as u64
}

/// A binomial draw (Poisson or normal approximation), at most `trials`.
pub(super) fn binomial_approx(rng: &mut ChaCha8Rng, trials: u64, probability: f64) -> u64 {
    if probability <= 0.0 || trials == 0 {
        return 0;
    }
    if probability >= 1.0 {
        return trials;
    }
    let mean = trials as f64 * probability;
    if mean < 30.0 && probability < 0.1 {
        return poisson_capped(rng, mean, trials);
    }
    let z: f64 = rng.sample(StandardNormal);
    let sd = (mean * (1.0 - probability)).sqrt();
    round_count(mean + sd * z).min(trials)
}
