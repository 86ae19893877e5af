//! The `failsmall` binary.
#![forbid(unsafe_code)]

fn main() {}
