//! Scenario and fleet files are user input: any text, and in particular any edit of a valid
//! file, parses or is refused with an error that names the file — never a panic, and never a
//! scenario beyond the limits (the run that follows must stay bounded).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_sim::scenario::{BUILT_IN, SCENARIO_MAX_DURATION_MS, SCENARIO_MAX_PUSHES};
use failsmall_sim::{FleetSpec, Scenario};
use proptest::prelude::*;

const FLEET: &str = include_str!("../../../examples/fleet.yaml");

/// Replacements spliced into a valid file: values of other kinds, numbers at the edges,
/// YAML structure, and nothing at all.
const SPLICES: [&str; 24] = [
    "",
    "0",
    "-1",
    "1e308",
    "18446744073709551616",
    "NaN",
    ".inf",
    "100%",
    "101%",
    "0s",
    "999999h",
    "null",
    "~",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: d}}}",
    "&x [*x]",
    "*undefined",
    "\"\\u0000\"",
    "'",
    ":",
    "- - -",
    "\n  extra: field\n",
];

/// `text` with `[start, start + len)` (clamped to character boundaries) replaced by `splice`.
fn edit(text: &str, start: usize, len: usize, splice: &str) -> String {
    let mut start = start % text.len().max(1);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + len).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{splice}{}", &text[..start], &text[end..])
}

fn named_error(file: &str, error: &impl std::fmt::Display) {
    let text = error.to_string();
    assert!(text.starts_with(file), "error does not name {file}: {text}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn an_edited_scenario_parses_within_limits_or_names_the_file(
        which in 0..BUILT_IN.len(),
        start in 0usize..20_000,
        len in 0usize..64,
        splice in 0..SPLICES.len(),
    ) {
        let (name, text) = BUILT_IN[which];
        let file = format!("{name}.yaml");
        let edited = edit(text, start, len, SPLICES[splice]);
        match Scenario::parse(&file, &edited) {
            Ok(scenario) => {
                prop_assert!(scenario.duration_ms > 0);
                prop_assert!(scenario.duration_ms <= SCENARIO_MAX_DURATION_MS);
                prop_assert!(scenario.pushes().len() <= SCENARIO_MAX_PUSHES);
            }
            Err(error) => named_error(&file, &error),
        }
    }

    #[test]
    fn an_edited_fleet_parses_within_limits_or_names_the_file(
        start in 0usize..20_000,
        len in 0usize..64,
        splice in 0..SPLICES.len(),
    ) {
        let edited = edit(FLEET, start, len, SPLICES[splice]);
        match FleetSpec::parse("fleet.yaml", &edited) {
            Ok(spec) => prop_assert!(spec.node_count() <= failsmall_sim::fleet::FLEET_MAX_NODES),
            Err(error) => named_error("fleet.yaml", &error),
        }
    }

    #[test]
    fn any_text_is_a_scenario_or_an_error(text in "\\PC{0,400}") {
        if let Err(error) = Scenario::parse("any.yaml", &text) {
            named_error("any.yaml", &error);
        }
    }
}
