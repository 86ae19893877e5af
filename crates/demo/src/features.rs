//! The bot-detection feature file (unit `bot-features`):
//! `{"features": [{"name": "ua_entropy", "weight": 0.8}, ...]}`.
//!
//! The consumer keeps its features in a table preallocated for [`FEATURES_MAX`] entries, as the
//! 18 Nov proxy did. Loading a file with more is an error ([`FeaturesError::TooMany`]); what a
//! consumer does with that error is the whole difference between failing every request and
//! failing stale.

use failsmall_client::UnitValue;
use serde::Deserialize;

/// The hard limit of the consumer's feature table.
pub const FEATURES_MAX: usize = 200;
/// Most entries parsed at all (the table's limit is checked after parsing).
pub const FEATURES_PARSE_MAX: usize = 100_000;
/// Largest feature file read, in bytes.
pub const FEATURE_FILE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest feature name, in bytes.
pub const FEATURE_NAME_MAX_BYTES: usize = 256;

/// Why a feature file cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeaturesError {
    #[error("feature file: {bytes} bytes; the limit is {FEATURE_FILE_MAX_BYTES}")]
    TooLarge { bytes: usize },
    #[error(
        "feature file: not the expected JSON {{\"features\": [{{\"name\", \"weight\"}}]}}: {reason}"
    )]
    Syntax { reason: String },
    #[error("feature file: {count} features; the table holds at most {limit}")]
    TooMany { count: usize, limit: usize },
    #[error("feature file: feature #{index} {reason}")]
    BadFeature { index: usize, reason: String },
}

/// One feature as written in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub weight: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureFileWire {
    features: Vec<Feature>,
}

/// A parsed feature file, not yet loaded into the table (so not yet checked against
/// [`FEATURES_MAX`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureFile {
    pub features: Vec<Feature>,
}

impl FeatureFile {
    /// Parses the JSON and checks each feature; the count is checked only against
    /// [`FEATURES_PARSE_MAX`].
    pub fn parse(bytes: &[u8]) -> Result<Self, FeaturesError> {
        if bytes.len() > FEATURE_FILE_MAX_BYTES {
            return Err(FeaturesError::TooLarge { bytes: bytes.len() });
        }
        let wire: FeatureFileWire =
            serde_json::from_slice(bytes).map_err(|e| FeaturesError::Syntax {
                reason: e.to_string(),
            })?;
        if wire.features.len() > FEATURES_PARSE_MAX {
            return Err(FeaturesError::TooMany {
                count: wire.features.len(),
                limit: FEATURES_PARSE_MAX,
            });
        }
        for (index, feature) in wire.features.iter().enumerate() {
            let reason = if feature.name.is_empty() {
                Some("has an empty name".to_owned())
            } else if feature.name.len() > FEATURE_NAME_MAX_BYTES {
                Some(format!(
                    "has a name of {} bytes; the limit is {FEATURE_NAME_MAX_BYTES}",
                    feature.name.len()
                ))
            } else if !feature.weight.is_finite() {
                Some(format!(
                    "{:?} has a weight that is not finite",
                    feature.name
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(FeaturesError::BadFeature { index, reason });
            }
        }
        Ok(Self {
            features: wire.features,
        })
    }
}

/// The consumer's feature table: at most [`FEATURES_MAX`] features.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTable {
    features: Vec<Feature>,
}

impl FeatureTable {
    /// Loads a parsed file into a table preallocated for [`FEATURES_MAX`] features.
    pub fn load(file: FeatureFile) -> Result<Self, FeaturesError> {
        if file.features.len() > FEATURES_MAX {
            return Err(FeaturesError::TooMany {
                count: file.features.len(),
                limit: FEATURES_MAX,
            });
        }
        let mut features = Vec::with_capacity(FEATURES_MAX);
        features.extend(file.features);
        Ok(Self { features })
    }

    /// An empty table: what a consumer uses before any file arrives.
    pub fn empty() -> Self {
        Self {
            features: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The bot score of a request that shows the named signals: the sum of their weights.
    pub fn score<'a>(&self, signals: impl IntoIterator<Item = &'a str>) -> f64 {
        signals
            .into_iter()
            .filter_map(|signal| self.features.iter().find(|f| f.name == signal))
            .map(|feature| feature.weight)
            .sum()
    }
}

/// Through `failsmall-client`: a file over the limit is a rejected version.
impl UnitValue for FeatureTable {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        FeatureFile::parse(bytes)
            .and_then(FeatureTable::load)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn file_with(count: usize) -> String {
        let features: Vec<String> = (0..count)
            .map(|i| format!("{{\"name\":\"f{i}\",\"weight\":0.5}}"))
            .collect();
        format!("{{\"features\":[{}]}}", features.join(","))
    }

    #[test]
    fn a_file_within_the_limit_loads() {
        let table = FeatureTable::from_bytes(file_with(FEATURES_MAX).as_bytes()).unwrap();
        assert_eq!(table.len(), FEATURES_MAX);
        assert_eq!(table.score(["f1", "f2", "unknown"]), 1.0);
    }

    #[test]
    fn a_file_over_the_limit_parses_but_does_not_load() {
        let file = FeatureFile::parse(file_with(412).as_bytes()).unwrap();
        assert_eq!(file.features.len(), 412);
        assert_eq!(
            FeatureTable::load(file),
            Err(FeaturesError::TooMany {
                count: 412,
                limit: FEATURES_MAX
            })
        );
        let reason = FeatureTable::from_bytes(file_with(201).as_bytes()).unwrap_err();
        assert_eq!(
            reason,
            "feature file: 201 features; the table holds at most 200"
        );
    }

    #[test]
    fn bad_features_are_named_by_index() {
        let empty_name = br#"{"features":[{"name":"a","weight":1},{"name":"","weight":1}]}"#;
        assert!(matches!(
            FeatureFile::parse(empty_name),
            Err(FeaturesError::BadFeature { index: 1, .. })
        ));
        let unknown_field = br#"{"features":[{"name":"a","weight":1,"x":2}]}"#;
        assert!(matches!(
            FeatureFile::parse(unknown_field),
            Err(FeaturesError::Syntax { .. })
        ));
    }

    proptest! {
        #[test]
        fn loads_exactly_when_within_the_limit(count in 0usize..400) {
            let loaded = FeatureTable::from_bytes(file_with(count).as_bytes());
            prop_assert_eq!(loaded.is_ok(), count <= FEATURES_MAX);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = FeatureTable::from_bytes(&bytes);
        }
    }
}
