//! Limits that more than one component must agree on, in one home. The server refuses up
//! front what would exceed what an agent accepts, and every list the API answers pages at
//! [`LIST_PAGE_MAX`] with a cursor, so nothing is dropped silently at a boundary.

/// Largest desired-state document an agent accepts, in bytes. The server refuses a push or a
/// unit create that could make a node's document larger (422 naming this limit).
pub const DESIRED_DOCUMENT_MAX_BYTES: usize = 1024 * 1024;
/// Most units one desired-state document may list; the server refuses up front a push that
/// could make a node's document list more.
pub const DESIRED_UNITS_MAX: usize = 1024;
/// Longest free-text field (messages, descriptions, reasons), in bytes: the API refuses
/// longer text, the engine keeps this much of a reason it is given, and an agent cuts what it
/// reports to it.
pub const TEXT_MAX_BYTES: usize = 4096;
/// Most rows one page of any list the API answers holds (`?limit=`, at most this; `next` is
/// the cursor of the page after).
pub const LIST_PAGE_MAX: u32 = 1000;

// The relations, checked when the crate compiles: every unit of a full document fits the
// engine's units; a page of units is no larger than what one document may list; the engine
// keeps every byte of a reason the API accepts; a full document leaves each unit room for a
// spec.
const _: () = assert!(DESIRED_UNITS_MAX <= crate::engine::MAX_UNITS);
const _: () = assert!(LIST_PAGE_MAX as usize <= DESIRED_UNITS_MAX);
const _: () = assert!(crate::engine::MAX_TEXT_BYTES == TEXT_MAX_BYTES);
const _: () = assert!(DESIRED_DOCUMENT_MAX_BYTES / DESIRED_UNITS_MAX >= 1024);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_keeps_a_reason_as_long_as_the_api_accepts() {
        use crate::engine::MAX_TEXT_BYTES;
        assert_eq!(MAX_TEXT_BYTES, TEXT_MAX_BYTES);
        assert_eq!(TEXT_MAX_BYTES, 4096);
        assert_eq!(DESIRED_DOCUMENT_MAX_BYTES, 1024 * 1024);
    }
}
