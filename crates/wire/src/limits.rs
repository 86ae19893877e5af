//! Bounds of request fields that the server enforces and the document states. Those that the
//! domain owns are re-exported from `failsmall_core`; the rest have their home here and the
//! server reads them from here.

pub use failsmall_core::limits::TEXT_MAX_BYTES;
pub use failsmall_core::validate::{MAX_BYTES_CEILING, MAX_RULES};

/// A unit name's longest spelling, in bytes (see [`crate::UNIT_NAME_PATTERN`]).
pub const UNIT_NAME_MAX_BYTES: usize = 64;
/// Most labels a node may carry, and the longest label key or value, in bytes.
pub const LABELS_MAX: usize = 64;
pub use failsmall_core::engine::MAX_LABEL_BYTES as LABEL_MAX_BYTES;
/// A selector's bounds (freezes, maintenance): labels, and accepted values per label.
pub use failsmall_core::freeze::{MAX_SELECTOR_LABELS, MAX_SELECTOR_VALUES};
/// Text that must say something: at least one character that is not whitespace.
pub const NOT_BLANK_PATTERN: &str = r"\S";
