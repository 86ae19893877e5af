//! The example unit files in examples/units behave as their names say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use failsmall_client::UnitValue;
use failsmall_demo::features::{FEATURES_MAX, FeatureFile, FeatureTable};
use failsmall_demo::rules::{FL1_EXECUTE_ERROR, Generation, RuleSet};

fn example(name: &str) -> Vec<u8> {
    let path = format!("{}/../../examples/units/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_good_feature_file_loads() {
    let table = FeatureTable::from_bytes(&example("bot-features.json")).unwrap();
    assert_eq!(table.len(), 60);
}

#[test]
fn the_nov18_feature_file_is_over_the_limit() {
    let bytes = example("bot-features-oversized.json");
    let file = FeatureFile::parse(&bytes).unwrap();
    assert!(
        file.features.len() > FEATURES_MAX,
        "{}",
        file.features.len()
    );
    let reason = FeatureTable::from_bytes(&bytes).unwrap_err();
    assert!(reason.contains("412 features"), "{reason}");
}

#[test]
fn the_dec5_rules_break_fl1_only() {
    let rules = RuleSet::from_bytes(&example("rules.json")).unwrap();
    assert!(rules.evaluate(Generation::Fl1).is_ok());
    assert!(rules.evaluate(Generation::Fl2).is_ok());
    let killswitch = RuleSet::from_bytes(&example("rules-killswitch.json")).unwrap();
    assert_eq!(
        killswitch.evaluate(Generation::Fl1).unwrap_err().message,
        FL1_EXECUTE_ERROR
    );
    assert!(killswitch.evaluate(Generation::Fl2).is_ok());
}
