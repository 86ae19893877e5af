//! Statistical tests behind gates.
//!
//! `significant(error_rate > baseline.error_rate)` is a one-sided two-proportion z-test with
//! pooled variance: [`two_proportion_z`] computes the statistic and [`normal_sf`] its p-value.

/// The result of a one-sided two-proportion z-test: is proportion A higher than proportion B?
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// `(p_a - p_b) / se`, with the standard error from the pooled proportion.
    pub z: f64,
    /// One-sided p-value: the chance of a `z` at least this large if A and B share one
    /// proportion.
    pub p_value: f64,
}

/// One-sided two-proportion z-test with pooled variance: does group A (`successes_a` out of
/// `trials_a`) have a higher proportion than group B?
///
/// Returns `None` when either group has no trials. When both groups have a pooled proportion
/// of exactly 0 or 1 there is no variance and no evidence: `z = 0`, `p_value = 0.5`.
/// Successes above trials are clamped to trials.
pub fn two_proportion_z(
    successes_a: u64,
    trials_a: u64,
    successes_b: u64,
    trials_b: u64,
) -> Option<ZTest> {
    if trials_a == 0 || trials_b == 0 {
        return None;
    }
    let (x_a, n_a) = (successes_a.min(trials_a) as f64, trials_a as f64);
    let (x_b, n_b) = (successes_b.min(trials_b) as f64, trials_b as f64);
    let p_a = x_a / n_a;
    let p_b = x_b / n_b;
    let pooled = (x_a + x_b) / (n_a + n_b);
    let variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b);
    if variance <= 0.0 || !variance.is_finite() {
        return Some(ZTest {
            z: 0.0,
            p_value: 0.5,
        });
    }
    let z = (p_a - p_b) / variance.sqrt();
    Some(ZTest {
        z,
        p_value: normal_sf(z),
    })
}

/// The standard normal survival function `P(Z > z)`, with a relative error below about
/// 1.2e-7 over the whole range (so p-values near 1e-6 and far smaller are accurate).
pub fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Chebyshev fit, Numerical Recipes `erfcc`), fractional
/// error below 1.2e-7 everywhere.
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let tail = t * (-x * x + poly).exp();
    if x >= 0.0 { tail } else { 2.0 - tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        ((actual - expected) / expected).abs() <= relative
    }

    #[test]
    fn normal_tail_matches_tables() {
        assert!(close(normal_sf(0.0), 0.5, 1e-7));
        assert!(
            close(normal_sf(1.96), 0.024_997_895, 1e-6),
            "{}",
            normal_sf(1.96)
        );
        assert!(close(normal_sf(1.0), 0.158_655_254, 1e-6));
        assert!(close(normal_sf(3.0), 1.349_898_03e-3, 1e-6));
        assert!(
            close(normal_sf(4.753_424), 1e-6, 1e-4),
            "{}",
            normal_sf(4.753_424)
        );
        assert!(close(normal_sf(6.0), 9.865_876_45e-10, 1e-5));
        assert!(close(normal_sf(-1.96), 0.975_002_105, 1e-6));
        assert_eq!(normal_sf(f64::INFINITY), 0.0);
        assert_eq!(normal_sf(f64::NEG_INFINITY), 1.0);
        assert!(normal_sf(f64::NAN).is_nan());
    }

    #[test]
    fn z_test_matches_a_hand_computation() {
        // Canary 21/5000 = 0.42%, baseline 10/10000 = 0.10%; pooled 31/15000.
        let test = two_proportion_z(21, 5000, 10, 10_000).unwrap();
        let pooled: f64 = 31.0 / 15_000.0;
        let se = (pooled * (1.0 - pooled) * (1.0 / 5000.0 + 1.0 / 10_000.0)).sqrt();
        let z = (0.0042 - 0.001) / se;
        assert!(close(test.z, z, 1e-12), "{} vs {z}", test.z);
        assert!((4.0..4.1).contains(&test.z), "{}", test.z);
        assert!(
            test.p_value < 1e-4 && test.p_value > 1e-5,
            "{}",
            test.p_value
        );
    }

    #[test]
    fn z_test_is_one_sided() {
        let lower = two_proportion_z(10, 10_000, 21, 5000).unwrap();
        assert!(lower.z < 0.0);
        assert!(lower.p_value > 0.99);
        let same = two_proportion_z(10, 1000, 100, 10_000).unwrap();
        assert!(same.z.abs() < 1e-12);
        assert!(close(same.p_value, 0.5, 1e-7));
    }

    #[test]
    fn z_test_handles_degenerate_groups() {
        assert_eq!(two_proportion_z(0, 0, 1, 10), None);
        assert_eq!(two_proportion_z(1, 10, 1, 0), None);
        assert_eq!(
            two_proportion_z(0, 10, 0, 10),
            Some(ZTest {
                z: 0.0,
                p_value: 0.5
            })
        );
        assert_eq!(
            two_proportion_z(10, 10, 10, 10),
            Some(ZTest {
                z: 0.0,
                p_value: 0.5
            })
        );
        // Errors above requests are clamped.
        let clamped = two_proportion_z(50, 10, 0, 10).unwrap();
        assert!(clamped.z > 0.0 && clamped.p_value.is_finite());
    }
}
