//! The rules file (unit `rules`):
//! `{"rules": [{"id": "r-100", "action": "block"|"log"|"execute", "killswitch": false}]}`.
//!
//! A killswitched rule is skipped. Proxy generation [`Generation::Fl1`] mishandles a skipped
//! rule whose action is `execute`: it then reads that rule's result, which a skipped rule never
//! produced, and fails the request, as the older (Lua) proxy did on 5 Dec
//! (`attempt to index field 'execute' (a nil value)`). [`Generation::Fl2`] does not.

use std::collections::HashSet;

use failsmall_client::UnitValue;
use serde::Deserialize;

/// Most rules in one file.
pub const RULES_MAX: usize = 10_000;
/// Largest rules file read, in bytes.
pub const RULES_FILE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest rule id, in bytes.
pub const RULE_ID_MAX_BYTES: usize = 128;
/// The error of the older proxy generation, word for word.
pub const FL1_EXECUTE_ERROR: &str = "attempt to index field 'execute' (a nil value)";

/// Which proxy generation this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// The older proxy: mishandles a killswitched `execute` rule.
    Fl1,
    /// The newer proxy: handles it.
    Fl2,
}

impl Generation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fl1 => "fl1",
            Self::Fl2 => "fl2",
        }
    }
}

/// What a rule does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Block,
    Log,
    Execute,
}

/// One rule as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub action: Action,
    #[serde(default)]
    pub killswitch: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesWire {
    rules: Vec<Rule>,
}

/// Why a rules file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("rules file: {bytes} bytes; the limit is {RULES_FILE_MAX_BYTES}")]
    TooLarge { bytes: usize },
    #[error(
        "rules file: not the expected JSON {{\"rules\": [{{\"id\", \"action\", \"killswitch\"}}]}}: {reason}"
    )]
    Syntax { reason: String },
    #[error("rules file: {count} rules; the limit is {RULES_MAX}")]
    TooMany { count: usize },
    #[error("rules file: rule #{index} {reason}")]
    BadRule { index: usize, reason: String },
}

/// A request that the rules engine failed on (HTTP 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule_id}: {message}")]
pub struct RuleFault {
    pub rule_id: String,
    pub message: &'static str,
}

/// What evaluating the rules did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulesOutcome {
    pub rules_run: usize,
    pub rules_skipped: usize,
}

/// A validated rules file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    pub fn parse(bytes: &[u8]) -> Result<Self, RulesError> {
        if bytes.len() > RULES_FILE_MAX_BYTES {
            return Err(RulesError::TooLarge { bytes: bytes.len() });
        }
        let wire: RulesWire = serde_json::from_slice(bytes).map_err(|e| RulesError::Syntax {
            reason: e.to_string(),
        })?;
        if wire.rules.len() > RULES_MAX {
            return Err(RulesError::TooMany {
                count: wire.rules.len(),
            });
        }
        let mut ids = HashSet::with_capacity(wire.rules.len());
        for (index, rule) in wire.rules.iter().enumerate() {
            let reason = if rule.id.is_empty() {
                Some("has an empty id".to_owned())
            } else if rule.id.len() > RULE_ID_MAX_BYTES {
                Some(format!(
                    "has an id of {} bytes; the limit is {RULE_ID_MAX_BYTES}",
                    rule.id.len()
                ))
            } else if !ids.insert(rule.id.as_str()) {
                Some(format!("repeats the id {:?}", rule.id))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(RulesError::BadRule { index, reason });
            }
        }
        Ok(Self { rules: wire.rules })
    }

    /// Runs the rules for one request, the way `generation` does.
    pub fn evaluate(&self, generation: Generation) -> Result<RulesOutcome, RuleFault> {
        let mut outcome = RulesOutcome {
            rules_run: 0,
            rules_skipped: 0,
        };
        for rule in &self.rules {
            if !rule.killswitch {
                outcome.rules_run += 1;
                continue;
            }
            outcome.rules_skipped += 1;
            if generation == Generation::Fl1 && rule.action == Action::Execute {
                // The skipped rule left no `execute` result, and fl1 reads it anyway.
                return Err(RuleFault {
                    rule_id: rule.id.clone(),
                    message: FL1_EXECUTE_ERROR,
                });
            }
        }
        Ok(outcome)
    }
}

impl UnitValue for RuleSet {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Self::parse(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    const KILLSWITCHED_EXECUTE: &[u8] = br#"{"rules":[
        {"id":"r1","action":"block"},
        {"id":"r2","action":"execute","killswitch":true},
        {"id":"r3","action":"log","killswitch":false}]}"#;

    #[test]
    fn fl1_fails_on_a_killswitched_execute_rule_and_fl2_does_not() {
        let rules = RuleSet::parse(KILLSWITCHED_EXECUTE).unwrap();
        let fault = rules.evaluate(Generation::Fl1).unwrap_err();
        assert_eq!(fault.rule_id, "r2");
        assert_eq!(
            fault.to_string(),
            "rule r2: attempt to index field 'execute' (a nil value)"
        );
        assert_eq!(
            rules.evaluate(Generation::Fl2),
            Ok(RulesOutcome {
                rules_run: 2,
                rules_skipped: 1
            })
        );
    }

    #[test]
    fn other_killswitches_are_harmless_to_both_generations() {
        let rules =
            RuleSet::parse(br#"{"rules":[{"id":"r1","action":"block","killswitch":true}]}"#)
                .unwrap();
        assert!(rules.evaluate(Generation::Fl1).is_ok());
        assert!(rules.evaluate(Generation::Fl2).is_ok());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(matches!(
            RuleSet::parse(br#"{"rules":[{"id":"a","action":"drop"}]}"#),
            Err(RulesError::Syntax { .. })
        ));
        assert_eq!(
            RuleSet::parse(br#"{"rules":[{"id":"a","action":"log"},{"id":"a","action":"log"}]}"#),
            Err(RulesError::BadRule {
                index: 1,
                reason: "repeats the id \"a\"".to_owned()
            })
        );
    }

    proptest! {
        #[test]
        fn fl1_fails_exactly_when_an_execute_rule_is_killswitched(
            rules in proptest::collection::vec((0u8..3, any::<bool>()), 0..20)
        ) {
            let set = RuleSet {
                rules: rules.iter().enumerate().map(|(i, (action, killswitch))| Rule {
                    id: format!("r{i}"),
                    action: [Action::Block, Action::Log, Action::Execute][usize::from(*action)],
                    killswitch: *killswitch,
                }).collect(),
            };
            let poisoned = set.rules.iter().any(|r| r.killswitch && r.action == Action::Execute);
            prop_assert_eq!(set.evaluate(Generation::Fl1).is_err(), poisoned);
            prop_assert!(set.evaluate(Generation::Fl2).is_ok());
        }
    }
}
