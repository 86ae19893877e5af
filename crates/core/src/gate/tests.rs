use super::*;
use crate::health::{HealthSample, LatencyHistogram};
use proptest::prelude::*;

/// A group with `requests` requests, `errors` errors, every request at `latency_ms`.
fn group(requests: u64, errors: u64, latency_ms: f64) -> GroupMetrics {
    let mut latency = LatencyHistogram::default();
    latency.record(latency_ms, requests);
    GroupMetrics {
        nodes: 10,
        sample: HealthSample {
            requests,
            errors,
            latency,
        },
        ..Default::default()
    }
}

/// Parses `source`, evaluates it, and checks the verdict's kind and that its detail
/// contains `detail_part`.
fn check(
    source: &str,
    canary: &GroupMetrics,
    baseline: Option<&GroupMetrics>,
    expected: &str,
    detail_part: &str,
) {
    let gate = Gate::parse(source).unwrap_or_else(|e| panic!("{source}: {e}"));
    let verdict = gate.evaluate(canary, baseline, 500);
    let (kind, detail) = match &verdict {
        Verdict::Pass { detail } => ("pass", detail),
        Verdict::Fail { detail } => ("fail", detail),
        Verdict::Inconclusive { detail } => ("inconclusive", detail),
    };
    assert_eq!(kind, expected, "{source}: {verdict:?}");
    assert!(
        detail.contains(detail_part),
        "{source}: {detail:?} lacks {detail_part:?}"
    );
}

fn parse_error(source: &str) -> GateError {
    match parse_gate_line(source) {
        Ok(line) => panic!("{source} parsed as {line:?}"),
        Err(error) => error,
    }
}

#[test]
fn latency_or_error_rate() {
    let gate = "p99_latency > 200ms OR error_rate > 0.5%";
    check(gate, &group(1000, 1, 100.0), None, "pass", "p99_latency ");
    check(gate, &group(1000, 1, 400.0), None, "fail", "> 200ms");
    check(
        gate,
        &group(1000, 10, 100.0),
        None,
        "fail",
        "error_rate 1% > 0.5%",
    );
    check(
        gate,
        &group(100, 50, 100.0),
        None,
        "inconclusive",
        "fewer than min_requests 500",
    );
    // OR with one failing side fails even when the other is inconclusive.
    check(
        "rejections > 0 OR error_rate > 0.5%",
        &GroupMetrics {
            rejections: 1,
            ..group(10, 0, 1.0)
        },
        None,
        "fail",
        "rejections 1 > 0",
    );
}

#[test]
fn seconds_are_milliseconds() {
    check(
        "p99_latency > 0.2s",
        &group(1000, 0, 400.0),
        None,
        "fail",
        "> 200ms",
    );
    check(
        "p50_latency >= 1s",
        &group(1000, 0, 400.0),
        None,
        "pass",
        "< 1000ms",
    );
}

#[test]
fn relative_to_baseline() {
    let gate = "error_rate > 1.5 * baseline.error_rate";
    let baseline = group(10_000, 10, 50.0);
    check(
        gate,
        &group(1000, 1, 50.0),
        Some(&baseline),
        "pass",
        "error_rate 0.1% (1/1000) vs 1.5 * baseline 0.1% (10/10000): not above, e=",
    );
    // Above 1.5 times the baseline, but 2 errors prove nothing yet: hold.
    check(
        gate,
        &group(1000, 2, 50.0),
        Some(&baseline),
        "inconclusive",
        "(2/1000) vs 1.5 * baseline 0.1% (10/10000): above, not significant yet: e=",
    );
    check(
        gate,
        &group(1000, 30, 50.0),
        Some(&baseline),
        "fail",
        ">= 1/alpha 2e4",
    );
    check(
        gate,
        &group(1000, 2, 50.0),
        None,
        "inconclusive",
        "no baseline",
    );
    check(
        gate,
        &group(1000, 2, 50.0),
        Some(&group(100, 0, 50.0)),
        "inconclusive",
        "baseline has 100 requests",
    );
    // One canary error against a baseline without errors is never a failure, however many
    // requests the baseline has.
    for baseline_requests in [500, 10_000, 1_000_000] {
        check(
            "error_rate > 2 * baseline.error_rate",
            &group(1000, 1, 1.0),
            Some(&group(baseline_requests, 0, 1.0)),
            "inconclusive",
            "above, not significant yet",
        );
    }
    check(
        "error_rate > 2 * baseline.error_rate",
        &group(1000, 0, 1.0),
        Some(&group(10_000, 0, 1.0)),
        "pass",
        "not above",
    );
    // Every spelling of the same relative gate runs the test.
    for spelling in [
        "error_rate > baseline.error_rate * 2",
        "error_rate >= 2 * baseline.error_rate",
        "error_rate > baseline.error_rate / 0.5",
        "error_rate / baseline.error_rate > 2",
        "2 * baseline.error_rate < error_rate",
    ] {
        check(
            spelling,
            &group(1000, 3, 1.0),
            Some(&baseline),
            "inconclusive",
            "vs 2 * baseline 0.1% (10/10000): above, not significant yet",
        );
        check(
            spelling,
            &group(1000, 40, 1.0),
            Some(&baseline),
            "fail",
            ">= 1/alpha",
        );
    }
    check(
        "error_rate > baseline.error_rate",
        &group(1000, 40, 1.0),
        Some(&baseline),
        "fail",
        "error_rate 4% (40/1000) vs baseline 0.1% (10/10000): e=",
    );
    // Additive and latency comparisons stay arithmetic.
    check(
        "error_rate > baseline.error_rate + 0.1%",
        &group(1000, 3, 1.0),
        Some(&baseline),
        "fail",
        "error_rate 0.3% > baseline.error_rate + 0.1% = 0.2%",
    );
    check(
        "p99_latency > baseline.p99_latency + 50ms",
        &group(1000, 0, 400.0),
        Some(&group(1000, 0, 100.0)),
        "fail",
        "baseline.p99_latency + 50ms",
    );
    check(
        "errors > requests * 1%",
        &group(1000, 20, 1.0),
        None,
        "fail",
        "errors 20 > requests * 1% = 10",
    );
    check(
        "errors / requests > 1%",
        &group(1000, 5, 1.0),
        None,
        "pass",
        "= 0.5%",
    );
}

#[test]
fn counts_are_always_conclusive() {
    let canary = GroupMetrics {
        crashes: 2,
        ..GroupMetrics::default()
    };
    check("crashes >= 1", &canary, None, "fail", "crashes 2 >= 1");
    check("crashes > 5", &canary, None, "pass", "crashes 2 <= 5");
    check(
        "silent_nodes > 0 OR health_check_failures > 0",
        &canary,
        None,
        "pass",
        "silent_nodes 0 <= 0",
    );
    check(
        "baseline.crashes > 0",
        &canary,
        None,
        "inconclusive",
        "no baseline",
    );
}

#[test]
fn kleene_logic() {
    let small = group(10, 5, 1.0);
    let crashed = GroupMetrics {
        crashes: 1,
        ..small
    };
    // AND: false side decides; unknown otherwise.
    check(
        "error_rate > 1% AND crashes > 0",
        &small,
        None,
        "pass",
        "crashes 0 <= 0",
    );
    check(
        "error_rate > 1% AND crashes > 0",
        &crashed,
        None,
        "inconclusive",
        "inconclusive",
    );
    // OR: true side decides.
    check(
        "error_rate > 1% OR crashes > 0",
        &crashed,
        None,
        "fail",
        "crashes 1 > 0",
    );
    check(
        "error_rate > 1% OR crashes > 0",
        &small,
        None,
        "inconclusive",
        "inconclusive",
    );
    // NOT swaps pass and fail, keeps inconclusive.
    check(
        "NOT crashes > 0",
        &crashed,
        None,
        "pass",
        "NOT (crashes 1 > 0)",
    );
    check("not (crashes > 0)", &small, None, "fail", "NOT");
    check("NOT error_rate > 1%", &small, None, "inconclusive", "NOT");
    // Precedence: AND binds tighter than OR; parentheses regroup.
    check(
        "crashes > 0 OR crashes > 5 AND requests > 0",
        &crashed,
        None,
        "fail",
        "",
    );
    check(
        "(crashes > 0 OR crashes > 5) AND requests > 100",
        &crashed,
        None,
        "pass",
        "requests 10 <= 100",
    );
}

#[test]
fn keywords_are_case_insensitive() {
    let gate = Gate::parse(
        "crashes > 0 or Not (errors > 1) AND SIGNIFICANT(error_rate > BASELINE.error_rate)",
    )
    .unwrap();
    assert!(matches!(gate.expr, GateExpr::Or(ref parts) if parts.len() == 2));
}

#[test]
fn significance_test() {
    let gate = "significant(error_rate > baseline.error_rate)";
    let baseline = group(10_000, 10, 1.0);
    // 0.42% against 0.1% on 21 errors: suggestive, far from 1/alpha.
    check(
        gate,
        &group(5000, 21, 1.0),
        Some(&baseline),
        "pass",
        "error_rate 0.42% (21/5000) vs baseline 0.1% (10/10000): e=6.63e2 < 1/alpha 2e4",
    );
    check(
        gate,
        &group(5000, 40, 1.0),
        Some(&baseline),
        "fail",
        ">= 1/alpha 2e4",
    );
    check(
        gate,
        &group(5000, 40, 1.0),
        None,
        "inconclusive",
        "no baseline",
    );
    check(
        gate,
        &group(100, 40, 1.0),
        Some(&baseline),
        "inconclusive",
        "canary has 100 requests",
    );
    let lenient = "significant(error_rate > baseline.error_rate, alpha = 0.01)";
    check(
        lenient,
        &group(5000, 21, 1.0),
        Some(&baseline),
        "fail",
        ">= 1/alpha 1e2",
    );
    // A lower canary error rate never fails.
    check(lenient, &group(5000, 0, 1.0), Some(&baseline), "pass", "e=");
    // No errors anywhere, or errors everywhere: no evidence either way.
    check(
        gate,
        &group(5000, 0, 1.0),
        Some(&group(5000, 0, 1.0)),
        "pass",
        "e=1.00e0",
    );
    check(
        gate,
        &group(5000, 5000, 1.0),
        Some(&group(5000, 5000, 1.0)),
        "pass",
        "< 1/alpha",
    );
}

/// A group whose `slow` of `requests` requests took 400ms and the rest 40ms.
fn latency_group(requests: u64, slow: u64) -> GroupMetrics {
    let mut group = group(requests - slow, 0, 40.0);
    group.sample.requests = requests;
    group.sample.latency.record(400.0, slow);
    group
}

#[test]
fn latency_significance_test() {
    let gate = "significant(p99_latency > baseline.p99_latency)";
    let baseline = latency_group(10_000, 100);
    check(
        gate,
        &latency_group(1000, 10),
        Some(&baseline),
        "pass",
        "p99_latency: 1% (10/1000) of canary requests above 300ms vs baseline 1% (100/10000): e=",
    );
    check(
        gate,
        &latency_group(1000, 50),
        Some(&baseline),
        "fail",
        "5% (50/1000) of canary requests above 300ms",
    );
    // Everything in one bucket: every request is "slow", nothing to compare.
    check(
        gate,
        &group(1000, 0, 40.0),
        Some(&group(10_000, 0, 40.0)),
        "pass",
        "above 30ms",
    );
    check(
        gate,
        &group(1000, 0, 400.0),
        Some(&group(10_000, 0, 40.0)),
        "fail",
        "100% (1000/1000) of canary requests above 300ms vs baseline 0% (0/10000)",
    );
    check(
        gate,
        &latency_group(1000, 50),
        Some(&group(100, 0, 40.0)),
        "inconclusive",
        "baseline has 100 requests",
    );
    let mut empty = latency_group(1000, 50);
    empty.sample.latency = LatencyHistogram::default();
    check(
        gate,
        &empty,
        Some(&baseline),
        "inconclusive",
        "no latency observations",
    );
}

#[test]
fn min_requests_line() {
    assert_eq!(
        parse_gate_line("min_requests 1000"),
        Ok(GateLine::MinRequests(1000))
    );
    assert_eq!(
        parse_gate_line("MIN_REQUESTS 0"),
        Ok(GateLine::MinRequests(0))
    );
    assert!(
        parse_error("min_requests 1.5")
            .message
            .contains("whole number")
    );
    assert!(
        parse_error("min_requests 100 requests")
            .message
            .contains("end of the gate")
    );
    assert!(Gate::parse("min_requests 10").is_err());
}

#[test]
fn dimension_errors_name_both_sides() {
    let error = parse_error("p99_latency > 0.5%");
    assert!(
        error.message.contains("latency in ms") && error.message.contains("ratio in %"),
        "{error}"
    );
    assert_eq!(error.column, 13);
    let error = parse_error("error_rate > 0.005");
    assert!(error.message.contains("0.5%"), "{error}");
    let error = parse_error("p99_latency > 200");
    assert!(error.message.contains("200ms"), "{error}");
    let error = parse_error("requests > 5ms");
    assert!(
        error.message.contains("(count)") && error.message.contains("(latency in ms)"),
        "{error}"
    );
    let error = parse_error("p99_latency + 1% > 200ms");
    assert!(error.message.contains("cannot compute"), "{error}");
    let error = parse_error("error_rate * error_rate > 1%");
    assert!(error.message.contains("cannot compute"), "{error}");
    let error = parse_error("2 / error_rate > 1");
    assert!(error.message.contains("cannot compute"), "{error}");
    // Scalars and counts mix; ratio / ratio is a scalar.
    assert!(Gate::parse("rejections + 1 > 2").is_ok());
    assert!(Gate::parse("error_rate / baseline.error_rate > 1.5").is_ok());
    assert!(Gate::parse("p99_latency / baseline.p99_latency > 2").is_ok());
}

#[test]
fn syntax_errors_point_at_the_problem() {
    let error = parse_error("error_rat > 1%");
    assert_eq!(error.column, 1);
    assert!(
        error.message.contains("unknown metric `error_rat`"),
        "{error}"
    );
    let error = parse_error("error_rate > 1% OR");
    assert_eq!(error.column, 19);
    assert!(error.message.contains("end of the gate"), "{error}");
    assert!(parse_error("error_rate").message.contains("value alone"));
    assert!(
        parse_error("p99_latency > 200m")
            .message
            .contains("unknown unit `m`")
    );
    assert!(parse_error("1 > 2").message.contains("reads no metric"));
    assert!(parse_error("1 < errors < 5").message.contains("chained"));
    assert!(parse_error("errors == 1").message.contains("=="));
    assert!(
        parse_error("errors > 1 $")
            .message
            .contains("unexpected character")
    );
    assert!(parse_error("(errors > 1").message.contains("`)`"));
    assert!(
        parse_error("baseline.nope > 1")
            .message
            .contains("unknown metric `nope`")
    );
    assert!(parse_error("errors > 1e99").message.contains("limit"));
    assert!(parse_error("").message.contains("found the end"));
    assert!(parse_error(&"(".repeat(40)).message.contains("deeper"));
    assert!(
        parse_error(&"errors>1 OR ".repeat(70))
            .message
            .contains("tokens")
    );
    assert!(parse_error(&"x".repeat(2000)).message.contains("bytes"));
    assert!(
        parse_error("errors > 1 AND 1")
            .message
            .contains("value alone")
    );
    assert!(
        parse_error("(errors > 1) + 1 > 2")
            .message
            .contains("found a condition")
    );
}

#[test]
fn significant_errors() {
    assert!(
        parse_error("significant(requests > baseline.requests)")
            .message
            .contains("error_rate and the latency quantiles")
    );
    assert!(Gate::parse("significant(p999_latency > baseline.p999_latency, alpha = 1e-3)").is_ok());
    assert!(
        parse_error("significant(error_rate > baseline.errors)")
            .message
            .contains("with itself")
    );
    assert!(
        parse_error("significant(error_rate > 1%)")
            .message
            .contains("baseline.error_rate")
    );
    assert!(
        parse_error("significant(error_rate > baseline.error_rate, alpha = 0)")
            .message
            .contains("0 < alpha")
    );
    assert!(
        parse_error("significant(error_rate > baseline.error_rate, alpha = 1%)")
            .message
            .contains("bare number")
    );
    assert!(
        parse_error("significant(error_rate < baseline.error_rate)")
            .message
            .contains("`>`")
    );
}

#[test]
fn display_is_canonical_and_reparses() {
    for source in [
        "p99_latency > 200ms OR error_rate > 0.5%",
        "error_rate > 1.5 * baseline.error_rate",
        "NOT (crashes > 0 AND (errors + 1) * 2 > 10)",
        "significant(error_rate > baseline.error_rate, alpha = 0.001)",
        "significant(p99_latency > baseline.p99_latency)",
        "p99_latency > 0.25s",
    ] {
        let gate = Gate::parse(source).unwrap();
        let text = gate.expr.to_string();
        let again = Gate::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(again.expr, gate.expr, "{source} -> {text}");
    }
}

proptest! {
    #[test]
    fn parser_never_panics(source in "\\PC{0,120}") {
        let _ = parse_gate_line(&source);
    }

    #[test]
    fn parser_never_panics_on_gate_like_text(
        words in proptest::collection::vec(
            prop_oneof![
                Just("error_rate"), Just("baseline"), Just("."), Just("p99_latency"),
                Just("requests"), Just("crashes"), Just(">"), Just(">="), Just("<"),
                Just("+"), Just("*"), Just("/"), Just("-"), Just("("), Just(")"),
                Just("OR"), Just("AND"), Just("NOT"), Just("significant"), Just(","),
                Just("alpha"), Just("="), Just("0.5%"), Just("200ms"), Just("1.5"),
                Just("0"), Just("1e-6"), Just("min_requests"), Just("2s"),
            ],
            0..24,
        )
    ) {
        let source = words.join(" ");
        if let Ok(GateLine::Gate(gate)) = parse_gate_line(&source) {
            let _ = gate.evaluate(&group(1000, 3, 120.0), Some(&group(0, 0, 1.0)), 500);
            let _ = gate.evaluate(&GroupMetrics::default(), None, 0);
        }
    }
}

#[test]
fn burn_rates_are_the_services_and_bare_numbers() {
    let gate = Gate::parse("burn_rate_1h > 14.4 AND burn_rate_5m > 14.4").unwrap();
    assert!(gate.reads_burn_rate());
    assert!(!gate.reads_baseline());
    let healthy = group(1000, 0, 20.0);
    let rates: BurnRates = [(BurnWindow::H1, 20.0), (BurnWindow::M5, 15.0)]
        .into_iter()
        .collect();
    let verdict = gate.evaluate_with(&healthy, None, 500, &rates);
    assert!(
        matches!(&verdict, Verdict::Fail { detail } if detail.contains("burn_rate_1h 20 > 14.4")),
        "{verdict:?}"
    );
    let calm: BurnRates = [(BurnWindow::H1, 20.0), (BurnWindow::M5, 2.0)]
        .into_iter()
        .collect();
    assert!(matches!(
        gate.evaluate_with(&healthy, None, 500, &calm),
        Verdict::Pass { .. }
    ));
    // No SLO events over a window: no data, so no verdict.
    assert!(matches!(
        gate.evaluate(&healthy, None, 500),
        Verdict::Inconclusive { detail } if detail.contains("no SLO of this unit has events over the last 1h")
    ));
    assert_eq!(
        Gate::parse("BURN_RATE_6H >= 6").unwrap().expr.to_string(),
        "burn_rate_6h >= 6"
    );
    for (source, message) in [
        ("baseline.burn_rate_1h > 2", "not the baseline's"),
        ("burn_rate_7m > 2", "unknown burn-rate window"),
        ("burn_rate_1h > 1%", "cannot compare"),
        ("burn_rate > 2", "unknown metric"),
        (
            "significant(burn_rate_1h > baseline.burn_rate_1h)",
            "unknown metric",
        ),
    ] {
        let error = parse_error(source);
        assert!(error.message.contains(message), "{source}: {error}");
    }
}

#[test]
fn custom_metrics_parse_with_their_prefix_and_evaluate_as_bare_numbers() {
    use crate::health::CustomValues;
    let values = |value: f64| {
        let mut custom = CustomValues::default();
        custom.record("queue_depth", value);
        custom
    };
    let kind = |verdict: &Verdict| match verdict {
        Verdict::Pass { .. } => "pass",
        Verdict::Fail { .. } => "fail",
        Verdict::Inconclusive { .. } => "inconclusive",
    };
    let absolute = Gate::parse("custom.queue_depth > 100").unwrap();
    assert_eq!(absolute.custom_metrics(), ["queue_depth"]);
    assert!(absolute.reads_custom() && !absolute.reads_baseline());
    let fail = absolute.evaluate_custom(&values(150.0), None);
    assert_eq!(kind(&fail), "fail", "{fail:?}");
    let Verdict::Fail { detail } = fail else {
        unreachable!()
    };
    assert!(detail.contains("custom.queue_depth 150 > 100"), "{detail}");
    assert_eq!(kind(&absolute.evaluate_custom(&values(50.0), None)), "pass");
    // No reading: inconclusive, never a pass.
    let missing = absolute.evaluate_custom(&CustomValues::default(), None);
    assert_eq!(kind(&missing), "inconclusive");
    assert!(
        format!("{missing:?}").contains("has no data"),
        "{missing:?}"
    );

    let relative = Gate::parse("custom.queue_depth > 1.5 * baseline.custom.queue_depth").unwrap();
    assert!(relative.reads_baseline());
    assert_eq!(
        kind(&relative.evaluate_custom(&values(200.0), Some(&values(100.0)))),
        "fail"
    );
    assert_eq!(
        kind(&relative.evaluate_custom(&values(140.0), Some(&values(100.0)))),
        "pass"
    );
    assert_eq!(
        kind(&relative.evaluate_custom(&values(200.0), None)),
        "inconclusive"
    );
    assert_eq!(
        relative.expr.to_string(),
        "custom.queue_depth > 1.5 * baseline.custom.queue_depth"
    );
    // Built-in evaluation never sees custom values: inconclusive, not a pass.
    assert_eq!(
        kind(&absolute.evaluate(&group(1000, 0, 10.0), None, 1)),
        "inconclusive"
    );
}

#[test]
fn custom_metric_mistakes_are_refused_clearly() {
    for (source, part) in [
        ("queue_depth > 100", "unknown metric `queue_depth`"),
        ("custom. > 1", "custom metric's name after `custom.`"),
        ("custom.Queue > 1", "custom metric's name after `custom.`"),
        ("custom.queue_depth > 5ms", "cannot compare"),
        (
            "custom.queue_depth > 100 OR error_rate > 1%",
            "either custom metrics (custom.NAME) or built-in ones",
        ),
        (
            "significant(custom.queue_depth > baseline.custom.queue_depth)",
            "significant supports error_rate and the latency quantiles",
        ),
    ] {
        let error = Gate::parse(source).unwrap_err();
        assert!(error.message.contains(part), "{source}: {error}");
    }
    assert!(Gate::parse("custom.queue_depth > 10 AND NOT (custom.retries < 1)").is_ok());
}
