//! Deterministic, stable node selection for stages.
