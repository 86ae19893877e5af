//! failsmall-testkit: helpers shared by failsmall's integration tests.
//!
//! - [`wire`]: raw HTTP exchanges for the fuzzers ([`wire::Wire`] is a request exactly as
//!   written on a fresh TCP connection, [`wire::exchange`] sends it and reads the whole
//!   [`wire::Answer`]), so malformed targets reach the server as they are and a dropped
//!   connection is seen as such.
//! - [`fuzz`]: the seed plumbing of the generated tests (`FAILSMALL_FUZZ_SEED`,
//!   `FAILSMALL_FUZZ_CASES`) and seeded proptest runners, so every CI run checks the same cases.
//! - [`scratch_dir`]: a fresh temporary directory, removed when the test drops it.
//!
//! Test support only: it is a dev-dependency of the crates whose tests use it, and no shipped
//! crate depends on it.
#![forbid(unsafe_code)]

pub mod fuzz;
pub mod postgres;
pub mod wire;

/// A fresh directory under the system's temporary directory whose name starts with `prefix`,
/// removed when the test drops it.
///
/// # Panics
///
/// If the directory cannot be created: a test cannot run without its scratch space.
#[allow(clippy::expect_used)]
#[must_use]
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a scratch directory")
}

#[cfg(test)]
mod tests {
    use super::scratch_dir;

    #[test]
    fn scratch_dirs_are_fresh_prefixed_and_removed_on_drop() {
        let one = scratch_dir("failsmall-testkit-");
        let two = scratch_dir("failsmall-testkit-");
        assert_ne!(one.path(), two.path());
        let name = one
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("failsmall-testkit-"), "{name}");
        assert!(one.path().is_dir());
        let path = one.path().to_path_buf();
        drop(one);
        assert!(!path.exists());
    }
}
