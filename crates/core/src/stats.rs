//! The always-valid sequential test behind `significant(...)` and relative gates.
//!
//! A gate is evaluated again and again on cumulative counts (every report, every tick); a test
//! that is only valid at one fixed sample size would fail a healthy version by chance once it
//! is looked at often enough. [`excess_rate_test`] is a mixture sequential probability ratio
//! test (mSPRT) in the form of an e-value: a nonnegative supermartingale under the null
//! hypothesis, so by Ville's inequality the chance that it *ever* reaches `1 / alpha` is at most
//! `alpha`, however often and whenever it is checked.
//!
//! # The test
//! Two groups, A (the canary) and B (the baseline), each with events (errors, or slow
//! requests) out of trials (requests): `e_a / n_a` and `e_b / n_b`. The null hypothesis is
//! `p_a <= K * p_b` (`K = 1` for `significant`, `K` from `error_rate > K * baseline.error_rate`).
//!
//! The test conditions on the events. When requests of both groups arrive interleaved in a
//! steady proportion, each event is, independently of the others, an event of A with
//! probability `pi = K' n_a / (K' n_a + n_b)` where `K' = p_a / p_b`; under the null's boundary
//! (`K' = K`) that is `pi0 = K n_a / (K n_a + n_b)`, whose odds are `K n_a / n_b`. The nuisance
//! (the baseline's own error rate) drops out: a fleet-wide change of the error rate moves both
//! groups alike and is no evidence. The alternative "A is `m` times worse than the null allows"
//! multiplies the odds by `m`: `pi_m / (1 - pi_m) = m * K n_a / n_b`. Its likelihood ratio over
//! the events so far is
//!
//! ```text
//! L_m = (pi_m / pi0)^e_a * ((1 - pi_m) / (1 - pi0))^e_b
//!     = exp(e_a * theta + (e_a + e_b) * (ln(1 + odds0) - ln(1 + e^theta * odds0))),  theta = ln m
//! ```
//!
//! and the e-value is its mixture over `theta > 0` with a half-normal mixing distribution of
//! scale [`MIXTURE_TAU`] (mixing variance `tau^2` on the log scale), discretised on
//! [`MIXTURE_POINTS`] points of `(0, MIXTURE_LOG_FACTOR_MAX]` whose weights sum to 1:
//! `E = sum_j w_j L_{m_j}`. A discrete mixture is itself a mixture, so the discretisation costs
//! a little power and nothing of the bound.
//!
//! # Why the bound holds
//! For every `m > 1`, `L_m` is a nonnegative martingale with mean 1 over the sequence of events
//! when `pi = pi0`, and a supermartingale when `pi < pi0` (each event multiplies it by a factor
//! whose mean, `pi * pi_m / pi0 + (1 - pi) * (1 - pi_m) / (1 - pi0)`, is increasing in `pi` and
//! 1 at `pi0`). A weighted average of such supermartingales is one too, and Ville's inequality
//! gives `P(sup_t E_t >= 1 / alpha) <= alpha` under any `p_a <= K * p_b`. Between events `E`
//! does not change, so checking it after every report (or not) changes nothing.
//!
//! Assumptions, and what they cost: the proportion of A's requests is read from the cumulative
//! counts when the test is evaluated, which is exact when the proportion is steady within a
//! stage and otherwise an approximation; errors are independent given the rates. The Monte
//! Carlo tests in `crates/core/tests/stats_*.rs` measure the false-positive rate under a
//! drifting proportion and a frozen baseline too. A normal-approximation mSPRT on the
//! difference of proportions was not used: with rare errors (0.1%) and a few hundred canary
//! requests its plug-in variance makes 3 or 4 canary errors look like a 5-sigma event, and its
//! false-positive rate is far above alpha.
//!
//! # Latency
//! [`latency_tail`] turns two latency histograms into the same test: a request is "slow" when it
//! lies above the largest bucket bound that leaves at least `1 - q` of the pooled (canary +
//! baseline) requests above it (for `p99_latency`, at least 1% are slow: the bound at or below
//! the pooled p99); the test asks whether the canary's share of slow requests is higher than
//! the baseline's (`K = 1`): a canary whose p99 is above the baseline's has more than 1% of its
//! requests above the baseline's p99. With the same distribution on both
//! sides the canary and baseline requests are exchangeable given the pooled histogram, so the
//! threshold being read from the pooled data does not favour either side.

use crate::health::{LATENCY_BUCKET_BOUNDS_MS, LatencyHistogram};

/// Scale `tau` of the half-normal mixing distribution over `theta = ln m` (the factor by which
/// the canary's events are more likely than the null allows). With `tau = 1.5` the mixture
/// puts most of its weight on `m` between 1.2 and 20, where regressions worth a rollback lie;
/// detection of 0.1% -> 0.5% varies by less than 10% for `tau` between 1 and 3.
pub const MIXTURE_TAU: f64 = 1.5;
/// Largest `theta = ln m` in the mixture (`m` about 400).
pub const MIXTURE_LOG_FACTOR_MAX: f64 = 6.0;
/// Points of the discretised mixing distribution.
pub const MIXTURE_POINTS: usize = 32;

/// The evidence of an [`excess_rate_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialTest {
    /// Natural logarithm of the e-value (the mixture likelihood ratio against the null);
    /// `<= 0` when A has no events.
    pub log_e_value: f64,
    /// `pi0`: the share of all events that A would have at the null's boundary.
    pub null_share: f64,
}

impl SequentialTest {
    /// The e-value itself (may be `inf` when `log_e_value` is above about 709).
    pub fn e_value(&self) -> f64 {
        self.log_e_value.exp()
    }

    /// Whether the evidence rejects the null at level `alpha` (`e_value >= 1 / alpha`).
    /// `alpha` outside `(0, 1]` rejects nothing.
    pub fn rejects(&self, alpha: f64) -> bool {
        alpha > 0.0 && alpha <= 1.0 && self.log_e_value >= -alpha.ln()
    }
}

/// Always-valid one-sided test of "A's rate is more than `factor` times B's": A had `events_a`
/// events out of `trials_a` trials, B `events_b` out of `trials_b`, counted from the start of
/// the window (cumulative). See the module documentation.
///
/// Returns `None` when a group has no trials or `factor` is not a positive finite number.
/// Events above trials are clamped to trials. Any `u64` counts are fine: the computation is in
/// logarithms and never overflows.
pub fn excess_rate_test(
    events_a: u64,
    trials_a: u64,
    events_b: u64,
    trials_b: u64,
    factor: f64,
) -> Option<SequentialTest> {
    if trials_a == 0 || trials_b == 0 || !(factor > 0.0 && factor.is_finite()) {
        return None;
    }
    let events_a = events_a.min(trials_a) as f64;
    let events_b = events_b.min(trials_b) as f64;
    let null_odds = factor * trials_a as f64 / trials_b as f64;
    if !(null_odds > 0.0 && null_odds.is_finite()) {
        return None;
    }
    let log_e_value = mixture_log_e_value(events_a, events_b, null_odds);
    if log_e_value.is_nan() {
        return None;
    }
    Some(SequentialTest {
        log_e_value,
        null_share: null_odds / (1.0 + null_odds),
    })
}

/// `ln E` for `events_a` and `events_b` events (fractional counts allowed) and the null's odds
/// `K n_a / n_b`.
fn mixture_log_e_value(events_a: f64, events_b: f64, null_odds: f64) -> f64 {
    let events = events_a + events_b;
    let ln_1p_null = null_odds.ln_1p();
    let mut terms = [0.0f64; MIXTURE_POINTS];
    for (term, point) in terms.iter_mut().zip(mixture().iter()) {
        // odds0 <= 1e15 * u64::MAX and e^theta <= e^6: the product stays finite.
        let ln_1p_alternative = (point.factor * null_odds).ln_1p();
        *term =
            point.log_weight + events_a * point.theta + events * (ln_1p_null - ln_1p_alternative);
    }
    log_sum_exp(&terms)
}

/// Most canary requests [`canary_requests_to_detect`] looks at.
pub const DETECTION_REQUESTS_MAX: f64 = 1e12;

/// About how many canary requests `significant(error_rate > baseline.error_rate)` at level
/// `alpha` needs to fail a canary whose error rate is `canary_rate` against a baseline at
/// `baseline_rate`, when the canary has `canary_share` (0..1) of the two groups' requests: the
/// first count at which the e-value of the *expected* counts reaches `1 / alpha`. Monte Carlo
/// puts the median detection within 15% of it (`crates/core/tests/stats_sequential.rs`); half
/// of the runs need more. For a power estimate, e.g. in `plan check`: divide by the canary's
/// request rate for the time a stage needs. `None` when the canary is not worse, an argument
/// is out of range, or it would take more than [`DETECTION_REQUESTS_MAX`].
pub fn canary_requests_to_detect(
    baseline_rate: f64,
    canary_rate: f64,
    canary_share: f64,
    alpha: f64,
) -> Option<f64> {
    let valid = |x: f64| x.is_finite() && x > 0.0 && x < 1.0;
    let worse = canary_rate > baseline_rate && canary_rate <= 1.0;
    if !(worse && valid(baseline_rate) && valid(canary_share) && valid(alpha)) {
        return None;
    }
    let baseline_per_canary = (1.0 - canary_share) / canary_share;
    let null_odds = 1.0 / baseline_per_canary;
    let target = -alpha.ln();
    let reaches = |canary_requests: f64| {
        mixture_log_e_value(
            canary_rate * canary_requests,
            baseline_rate * canary_requests * baseline_per_canary,
            null_odds,
        ) >= target
    };
    // Doubling, then bisection: at most about 40 + 40 evaluations.
    let mut high = 1.0;
    while !reaches(high) {
        high *= 2.0;
        if high > DETECTION_REQUESTS_MAX {
            return None;
        }
    }
    let mut low = high / 2.0;
    while high - low > 1.0 && high / low > 1.001 {
        let middle = (low + high) / 2.0;
        if reaches(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    Some(high.ceil())
}

/// One point of the discretised mixing distribution.
#[derive(Debug, Clone, Copy, Default)]
struct MixturePoint {
    /// `theta = ln m`.
    theta: f64,
    /// `m = e^theta`.
    factor: f64,
    /// Logarithm of the point's weight; the weights sum to 1.
    log_weight: f64,
}

/// The mixing distribution, computed once.
fn mixture() -> &'static [MixturePoint; MIXTURE_POINTS] {
    static MIXTURE: std::sync::OnceLock<[MixturePoint; MIXTURE_POINTS]> =
        std::sync::OnceLock::new();
    MIXTURE.get_or_init(|| {
        let step = MIXTURE_LOG_FACTOR_MAX / MIXTURE_POINTS as f64;
        let mut points = [MixturePoint::default(); MIXTURE_POINTS];
        for (index, point) in points.iter_mut().enumerate() {
            let theta = (index as f64 + 0.5) * step;
            *point = MixturePoint {
                theta,
                factor: theta.exp(),
                log_weight: -theta * theta / (2.0 * MIXTURE_TAU * MIXTURE_TAU),
            };
        }
        let log_total = log_sum_exp(&points.map(|point| point.log_weight));
        for point in &mut points {
            point.log_weight -= log_total;
        }
        points
    })
}

fn log_sum_exp(terms: &[f64]) -> f64 {
    let largest = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !largest.is_finite() {
        return largest;
    }
    largest + terms.iter().map(|t| (t - largest).exp()).sum::<f64>().ln()
}

/// Slow requests of two latency histograms at a quantile: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyTail {
    /// Requests above this many milliseconds (a bucket bound) are slow; 0 when every request
    /// is.
    pub threshold_ms: f64,
    pub slow_a: u64,
    pub total_a: u64,
    pub slow_b: u64,
    pub total_b: u64,
}

impl LatencyTail {
    /// The sequential test of "A has a larger share of slow requests than B".
    pub fn test(&self) -> Option<SequentialTest> {
        excess_rate_test(self.slow_a, self.total_a, self.slow_b, self.total_b, 1.0)
    }
}

/// Splits both histograms at the largest bucket bound that leaves at least `1 - q` of the pooled
/// requests above it (`q` in 0..=1): requests above it are slow. `None` when a histogram is
/// empty.
pub fn latency_tail(a: &LatencyHistogram, b: &LatencyHistogram, q: f64) -> Option<LatencyTail> {
    let (total_a, total_b) = (a.total(), b.total());
    if total_a == 0 || total_b == 0 {
        return None;
    }
    let mut pooled = *a;
    pooled.merge(b);
    let total = pooled.total();
    let at_most_fast = q.clamp(0.0, 1.0) * total as f64;
    // The last bucket whose cumulative pooled count leaves at least `1 - q` above it.
    let mut seen = 0u64;
    let mut fast_buckets = 0usize;
    for (index, count) in pooled
        .counts
        .iter()
        .enumerate()
        .take(LATENCY_BUCKET_BOUNDS_MS.len())
    {
        seen = seen.saturating_add(*count);
        if seen as f64 <= at_most_fast {
            fast_buckets = index + 1;
        } else {
            break;
        }
    }
    let slow = |histogram: &LatencyHistogram| {
        histogram
            .counts
            .iter()
            .skip(fast_buckets)
            .fold(0u64, |sum, c| sum.saturating_add(*c))
    };
    let threshold_ms = fast_buckets
        .checked_sub(1)
        .and_then(|last_fast| LATENCY_BUCKET_BOUNDS_MS.get(last_fast))
        .copied()
        .unwrap_or(0.0);
    Some(LatencyTail {
        threshold_ms,
        slow_a: slow(a),
        total_a,
        slow_b: slow(b),
        total_b,
    })
}

// ----- binomial bounds (silence, judged like for like) ---------------------------------------

/// `ln P(X <= k)` for `X ~ Binomial(n, p)`, summed in logarithms (exact for any `n`: no term
/// underflows to a zero that matters).
fn binomial_log_cdf(k: u64, n: u64, p: f64) -> f64 {
    if k >= n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return f64::NEG_INFINITY;
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let mut log_pmf = n as f64 * ln_q;
    let mut log_cdf = log_pmf;
    for i in 0..k {
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + ln_p - ln_q;
        log_cdf = log_add_exp(log_cdf, log_pmf);
    }
    log_cdf.min(0.0)
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let (high, low) = if a >= b { (a, b) } else { (b, a) };
    if low == f64::NEG_INFINITY {
        return high;
    }
    high + (low - high).exp().ln_1p()
}

/// One-sided upper confidence bound on a binomial rate at level `1 - alpha` (Clopper–Pearson):
/// the rate `p` at which `events` or fewer out of `trials` happen with probability `alpha`.
/// The true rate lies above it with probability at most `alpha`. `1.0` when `trials` is 0,
/// `events >= trials`, or `alpha` is outside `(0, 1)`.
pub fn binomial_upper_bound(events: u64, trials: u64, alpha: f64) -> f64 {
    if trials == 0 || events >= trials || !(alpha > 0.0 && alpha < 1.0) {
        return 1.0;
    }
    let target = alpha.ln();
    // P(X <= events) falls as p rises: bisect for the p where it crosses alpha.
    let (mut low, mut high) = (0.0f64, 1.0f64);
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (low + high);
        if binomial_log_cdf(events, trials, mid) > target {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// Halvings of `[0, 1]` in [`binomial_upper_bound`]: 2^-60 is far below any rate that matters.
const BISECTION_STEPS: usize = 60;

/// The smallest `q` with `P(X <= q) >= level` for `X ~ Binomial(trials, p)`: the most events
/// that chance at rate `p` explains, short of a `1 - level` fluke. `0` when `p <= 0`,
/// `trials` when `p >= 1` or `level` is not below 1.
pub fn binomial_quantile(trials: u64, p: f64, level: f64) -> u64 {
    if p <= 0.0 || trials == 0 {
        return 0;
    }
    if p >= 1.0 || level >= 1.0 || level.is_nan() {
        return trials;
    }
    let target = level.max(0.0).ln();
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let mut log_pmf = trials as f64 * ln_q;
    let mut log_cdf = log_pmf;
    let mut q = 0;
    while q < trials && log_cdf < target {
        log_pmf += ((trials - q) as f64).ln() - ((q + 1) as f64).ln() + ln_p - ln_q;
        log_cdf = log_add_exp(log_cdf, log_pmf);
        q += 1;
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_e(e_a: u64, n_a: u64, e_b: u64, n_b: u64, factor: f64) -> f64 {
        excess_rate_test(e_a, n_a, e_b, n_b, factor)
            .unwrap()
            .log_e_value
    }

    #[test]
    fn no_events_is_no_evidence() {
        let test = excess_rate_test(0, 1000, 0, 9000, 1.0).unwrap();
        assert!(test.log_e_value.abs() < 1e-12, "{test:?}");
        assert!((test.null_share - 0.1).abs() < 1e-12);
        assert!(!test.rejects(0.5));
    }

    #[test]
    fn evidence_grows_with_the_canary_share_of_errors() {
        // Canary 10% of requests; errors split as the null expects, then ever more canary-heavy.
        assert!(log_e(10, 1000, 90, 9000, 1.0) < 0.0);
        assert!(log_e(20, 1000, 90, 9000, 1.0) > log_e(10, 1000, 90, 9000, 1.0));
        assert!(log_e(50, 1000, 90, 9000, 1.0) > 20.0);
        // The canary being better is evidence against, never for.
        assert!(log_e(0, 1000, 90, 9000, 1.0) < -2.0);
    }

    #[test]
    fn one_error_against_a_clean_baseline_is_not_enough() {
        // With e_a = 1, e_b = 0 the e-value is at most 1 / pi0.
        let test = excess_rate_test(1, 500, 0, 5000, 1.0).unwrap();
        assert!(test.e_value() <= 1.0 / test.null_share + 1e-9, "{test:?}");
        assert!(!test.rejects(1e-3));
        let relative = excess_rate_test(1, 500, 0, 5000, 2.0).unwrap();
        assert!(!relative.rejects(1e-3));
    }

    #[test]
    fn a_larger_factor_needs_more_evidence() {
        let one = log_e(30, 1000, 30, 9000, 1.0);
        let two = log_e(30, 1000, 30, 9000, 2.0);
        let five = log_e(30, 1000, 30, 9000, 5.0);
        assert!(one > two && two > five, "{one} {two} {five}");
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(excess_rate_test(0, 0, 0, 10, 1.0), None);
        assert_eq!(excess_rate_test(0, 10, 0, 0, 1.0), None);
        assert_eq!(excess_rate_test(1, 10, 1, 10, 0.0), None);
        assert_eq!(excess_rate_test(1, 10, 1, 10, f64::NAN), None);
        assert_eq!(excess_rate_test(1, 10, 1, 10, f64::INFINITY), None);
        // Clamped: 50 errors out of 10 are 10.
        assert_eq!(
            excess_rate_test(50, 10, 0, 10, 1.0),
            excess_rate_test(10, 10, 0, 10, 1.0)
        );
        assert!(
            !SequentialTest {
                log_e_value: 100.0,
                null_share: 0.5
            }
            .rejects(0.0)
        );
    }

    #[test]
    fn detection_estimate() {
        let ten = canary_requests_to_detect(0.001, 0.005, 0.1, 5e-5).unwrap();
        let half = canary_requests_to_detect(0.001, 0.005, 0.5, 5e-5).unwrap();
        assert!((2_500.0..4_500.0).contains(&ten), "{ten}");
        assert!((5_000.0..9_000.0).contains(&half), "{half}");
        assert!(canary_requests_to_detect(0.001, 0.002, 0.1, 5e-5).unwrap() > ten);
        assert_eq!(canary_requests_to_detect(0.001, 0.001, 0.1, 5e-5), None);
        assert_eq!(canary_requests_to_detect(0.0, 0.005, 0.1, 5e-5), None);
        assert_eq!(canary_requests_to_detect(0.001, 0.005, 1.0, 5e-5), None);
        assert_eq!(canary_requests_to_detect(0.001, 0.005, 0.1, f64::NAN), None);
    }

    #[test]
    fn latency_tail_splits_at_the_pooled_quantile_bucket() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(40.0, 980);
        a.record(400.0, 20);
        b.record(40.0, 9950);
        b.record(400.0, 50);
        let tail = latency_tail(&a, &b, 0.99).unwrap();
        // Pooled: 70 of 11000 above 300ms (0.64%), so the p99 is in the 30-50ms bucket.
        assert_eq!(tail.threshold_ms, 30.0);
        assert_eq!((tail.slow_a, tail.slow_b), (1000, 10_000));
        let tail = latency_tail(&a, &b, 0.999).unwrap();
        assert_eq!(tail.threshold_ms, 300.0);
        assert_eq!(
            (tail.slow_a, tail.total_a, tail.slow_b, tail.total_b),
            (20, 1000, 50, 10_000)
        );
        assert!(tail.test().unwrap().log_e_value > 0.0);
        assert_eq!(latency_tail(&LatencyHistogram::default(), &b, 0.99), None);
    }

    #[test]
    fn the_binomial_cdf_matches_its_definition() {
        // Binomial(10, 0.3): P(X <= 2) = 0.3827827864.
        let cdf = binomial_log_cdf(2, 10, 0.3).exp();
        assert!((cdf - 0.382_782_786_4).abs() < 1e-9, "{cdf}");
        assert_eq!(binomial_log_cdf(10, 10, 0.3), 0.0);
        assert_eq!(binomial_log_cdf(0, 10, 1.0), f64::NEG_INFINITY);
        // Far in the tail of a large n, still finite and right: P(X = 0) = 0.5^50000.
        let tail = binomial_log_cdf(0, 50_000, 0.5);
        assert!((tail - 50_000.0 * 0.5f64.ln()).abs() < 1e-6, "{tail}");
    }

    #[test]
    fn the_upper_bound_is_clopper_pearsons() {
        // No event in n trials: the bound is 1 - alpha^(1/n) exactly.
        for (trials, alpha) in [(1_000u64, 0.001), (20, 0.05), (2_000, 0.001)] {
            let bound = binomial_upper_bound(0, trials, alpha);
            let exact = 1.0 - alpha.powf(1.0 / trials as f64);
            assert!((bound - exact).abs() < 1e-9, "{trials}: {bound} vs {exact}");
        }
        // 5 of 100 at 95%: 0.1023 (the one-sided upper Clopper–Pearson bound).
        let bound = binomial_upper_bound(5, 100, 0.05);
        assert!((bound - 0.102_3).abs() < 1e-3, "{bound}");
        assert_eq!(binomial_upper_bound(3, 3, 0.001), 1.0);
        assert_eq!(binomial_upper_bound(0, 0, 0.001), 1.0);
        // More events, a higher bound; more trials at the same rate, a tighter one.
        assert!(binomial_upper_bound(4, 1_000, 0.001) > binomial_upper_bound(2, 1_000, 0.001));
        assert!(binomial_upper_bound(20, 10_000, 0.001) < binomial_upper_bound(2, 1_000, 0.001));
    }

    #[test]
    fn the_quantile_is_the_smallest_count_that_reaches_the_level() {
        for (trials, p, level) in [(5_000u64, 0.003, 0.999), (40, 0.1, 0.999), (1, 0.5, 0.9)] {
            let q = binomial_quantile(trials, p, level);
            assert!(binomial_log_cdf(q, trials, p).exp() >= level);
            if q > 0 {
                assert!(binomial_log_cdf(q - 1, trials, p).exp() < level);
            }
        }
        assert_eq!(binomial_quantile(1, 0.003_45, 0.999), 1);
        assert_eq!(binomial_quantile(1, 0.000_5, 0.999), 0);
        assert_eq!(binomial_quantile(50_000, 0.0, 0.999), 0);
        assert_eq!(binomial_quantile(50_000, 1.0, 0.999), 50_000);
        assert_eq!(binomial_quantile(50_000, 0.5, 1.0), 50_000);
    }
}
