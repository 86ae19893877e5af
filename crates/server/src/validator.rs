//! A unit's validator command: the consumer's own parser, run in check mode by the server on
//! every pushed version before it is stored.
//!
//! Where it lives: on the unit (`UnitRecord::validator`, set through `/v1/units` beside
//! `spec`), not in `failsmall_core::validate::UnitSpec`. The spec is what agents receive and
//! check before they activate a version; the validator command runs only on the server, so it
//! never reaches an agent and no agent ever executes it. Only an admin may set, change or
//! remove it, since it names a program the server runs.
//!
//! How it runs: `command` is an argv (the program, then its arguments), started directly with
//! no shell, with an empty environment except `PATH`; nothing is appended to it. The contract
//! is the one of the agent's local validator (`failsmall_agent::command`), so one validator
//! works on both:
//!
//! - the version's bytes are its **stdin**;
//! - every `{path}` in an argument (alone or inside one, e.g. `--file={path}`) is replaced by
//!   the path of a file holding exactly those bytes (here a temporary file in the server's
//!   data dir, created only when `{path}` is used, readable by the server's user only, and
//!   removed after the run);
//! - the command must say how it reads the version: an argument holds `{path}`, or an
//!   argument is `-` or `/dev/stdin`. Anything else is refused when it is set
//!   ([`ValidatorCommand::check`]), since the bytes would never reach it.
//!
//! Stdout is discarded, and at most [`MAX_STDERR_BYTES`] of stderr are kept. It has
//! `timeout_ms` to exit; then it is killed. Exit status 0 accepts the version; anything else
//! refuses it, with the first lines of stderr as the reason.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Most entries of a validator's argv (the program included).
pub const MAX_ARGS: usize = failsmall_wire::units::VALIDATOR_ARGS_MAX;
/// Longest argv entry, in bytes.
pub const MAX_ARG_BYTES: usize = failsmall_wire::units::VALIDATOR_ARG_MAX_BYTES;
/// Longest time a validator may be given, and the time it gets by default, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = failsmall_wire::units::VALIDATOR_TIMEOUT_MAX_MS;
pub const DEFAULT_TIMEOUT_MS: u64 = failsmall_wire::units::VALIDATOR_TIMEOUT_DEFAULT_MS;
/// Most stderr kept from one run, in bytes; the rest is read and dropped.
pub const MAX_STDERR_BYTES: usize = 64 * 1024;
/// A refusal quotes at most this many lines of stderr, and at most this many bytes of them.
pub const REASON_LINES: usize = 5;
pub const MAX_REASON_BYTES: usize = 1024;

/// The placeholder replaced by the path of a file holding the version's bytes.
pub const PATH_PLACEHOLDER: &str = "{path}";
/// Arguments by which a validator says it reads the version from stdin.
pub const STDIN_ARGS: [&str; 2] = ["-", "/dev/stdin"];

/// `validator: {command: [argv...], timeout_ms}` on a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorCommand {
    /// The program and its arguments; never a shell string.
    pub command: Vec<String>,
    /// How long the program may run before it is killed and the version refused.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// Why a validator command itself is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidatorSpecError {
    #[error("validator command is empty; expected [program, args...]")]
    Empty,
    #[error("validator command has {count} entries; the limit is {MAX_ARGS}")]
    TooManyArgs { count: usize },
    #[error("validator command entry {index} is {bytes} bytes; the limit is {MAX_ARG_BYTES}")]
    ArgTooLong { index: usize, bytes: usize },
    #[error("validator command entry {index} holds a NUL byte")]
    ArgHasNul { index: usize },
    #[error("validator command entry 0 (the program) is empty")]
    EmptyProgram,
    #[error("validator timeout_ms is {timeout_ms}; expected 1 to {MAX_TIMEOUT_MS}")]
    Timeout { timeout_ms: u64 },
    #[error(
        "validator command names no input: no argument holds {{path}} and none is - or /dev/stdin, so the version's bytes would never reach it; put {{path}} where the file goes (e.g. [\"nginx\", \"-t\", \"-c\", \"{{path}}\"]), or - if it reads stdin"
    )]
    NoInput,
}

/// Why a validator refused a version (or could not judge it, which refuses it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("validator command {program:?} was not found")]
    NotFound { program: String },
    #[error("validator command {program:?} could not start: {reason}")]
    Spawn { program: String, reason: String },
    #[error(
        "validator command {program:?} timed out after {} and was killed",
        failsmall_core::duration::format_ms(*timeout_ms)
    )]
    TimedOut { program: String, timeout_ms: u64 },
    #[error("validator command {program:?} refused the version ({status}): {stderr}")]
    Refused {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("validator command {program:?} failed: {reason}")]
    Io { program: String, reason: String },
}

impl ValidatorCommand {
    /// Checks the command's shape and limits; returns every problem.
    pub fn check(&self) -> Result<(), Vec<ValidatorSpecError>> {
        let mut errors = Vec::new();
        match self.command.first() {
            None => errors.push(ValidatorSpecError::Empty),
            Some(program) if program.is_empty() => errors.push(ValidatorSpecError::EmptyProgram),
            Some(_) => {}
        }
        if self.command.len() > MAX_ARGS {
            errors.push(ValidatorSpecError::TooManyArgs {
                count: self.command.len(),
            });
        }
        for (index, arg) in self.command.iter().enumerate().take(MAX_ARGS) {
            if arg.len() > MAX_ARG_BYTES {
                errors.push(ValidatorSpecError::ArgTooLong {
                    index,
                    bytes: arg.len(),
                });
            }
            if arg.contains('\0') {
                errors.push(ValidatorSpecError::ArgHasNul { index });
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            errors.push(ValidatorSpecError::Timeout {
                timeout_ms: self.timeout_ms,
            });
        }
        let args = self.command.get(1..).unwrap_or_default();
        if !self.command.is_empty()
            && !args
                .iter()
                .any(|arg| arg.contains(PATH_PLACEHOLDER) || STDIN_ARGS.contains(&arg.as_str()))
        {
            errors.push(ValidatorSpecError::NoInput);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The program's name, for messages.
    pub fn program(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// Whether an argument holds `{path}`.
    pub fn uses_path(&self) -> bool {
        self.command
            .get(1..)
            .unwrap_or_default()
            .iter()
            .any(|arg| arg.contains(PATH_PLACEHOLDER))
    }

    /// Runs the command on `content` (see the module documentation), a `{path}` file written
    /// in the system's temporary directory; `Ok` when it exits with status 0 in time.
    pub async fn run(&self, content: &[u8]) -> Result<(), Refusal> {
        self.run_in(&std::env::temp_dir(), content).await
    }

    /// Runs the command on `content`, a `{path}` file written in `scratch_dir` (e.g. the
    /// server's data dir) and removed after; `Ok` when it exits with status 0 in time.
    pub async fn run_in(&self, scratch_dir: &Path, content: &[u8]) -> Result<(), Refusal> {
        let program = self.program().to_owned();
        let Some((first, args)) = self.command.split_first() else {
            return Err(Refusal::Spawn {
                program,
                reason: ValidatorSpecError::Empty.to_string(),
            });
        };
        let file = if self.uses_path() {
            let written = ScratchFile::write(scratch_dir, content).await;
            Some(written.map_err(|error| Refusal::Io {
                program: program.clone(),
                reason: format!(
                    "writing the version for {PATH_PLACEHOLDER} in {}: {error}",
                    scratch_dir.display()
                ),
            })?)
        } else {
            None
        };
        let path = file.as_ref().map_or_else(PathBuf::new, |f| f.path.clone());
        let mut command = tokio::process::Command::new(first);
        command
            .args(args.iter().map(|arg| substitute(arg, &path)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        let mut child = command.spawn().map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                Refusal::NotFound {
                    program: program.clone(),
                }
            } else {
                Refusal::Spawn {
                    program: program.clone(),
                    reason: error.to_string(),
                }
            }
        })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A validator may exit before reading everything; its verdict is its status.
                let _ = stdin.write_all(content).await;
                let _ = stdin.shutdown().await;
            }
        };
        let capture = async move {
            let mut captured = Vec::new();
            if let Some(mut stderr) = stderr {
                let mut buffer = [0u8; 4096];
                loop {
                    match stderr.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => {
                            let room = MAX_STDERR_BYTES.saturating_sub(captured.len());
                            let kept = buffer.get(..read.min(room)).unwrap_or_default();
                            captured.extend_from_slice(kept);
                        }
                    }
                }
            }
            captured
        };
        let work = async {
            let ((), captured, status) = tokio::join!(feed, capture, child.wait());
            (captured, status)
        };
        let waited = tokio::time::timeout(Duration::from_millis(self.timeout_ms), work).await;
        match waited {
            Ok((_, Ok(status))) if status.success() => Ok(()),
            Ok((captured, Ok(status))) => Err(Refusal::Refused {
                program,
                status: status.to_string(),
                stderr: first_lines(&captured),
            }),
            Ok((_, Err(error))) => Err(Refusal::Io {
                program,
                reason: error.to_string(),
            }),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(Refusal::TimedOut {
                    program,
                    timeout_ms: self.timeout_ms,
                })
            }
        }
    }
}

/// `arg` with every `{path}` replaced by `path`.
fn substitute(arg: &str, path: &Path) -> OsString {
    let mut out = OsString::new();
    let mut parts = arg.split(PATH_PLACEHOLDER);
    if let Some(first) = parts.next() {
        out.push(first);
    }
    for part in parts {
        out.push(path.as_os_str());
        out.push(part);
    }
    out
}

/// Temporary files made so far by this process (part of each one's name).
static SCRATCH_FILES: AtomicU64 = AtomicU64::new(0);

/// A file holding one version's bytes for a validator's `{path}`, removed when dropped.
struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    async fn write(dir: &Path, content: &[u8]) -> std::io::Result<Self> {
        let n = SCRATCH_FILES.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = dir.join(format!(
            ".validator-{}-{n}-{}.tmp",
            std::process::id(),
            hex::encode(random)
        ));
        let file = Self { path };
        let (path, content) = (file.path.clone(), content.to_vec());
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?
                .write_all(&content)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(file)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The first [`REASON_LINES`] non-empty lines of `stderr`, joined with " / ", cut to
/// [`MAX_REASON_BYTES`] on a character boundary.
fn first_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .take(REASON_LINES)
        .collect();
    if lines.is_empty() {
        return "no message on stderr".to_owned();
    }
    let mut joined = lines.join(" / ");
    if joined.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !joined.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        joined.truncate(end);
        joined.push('…');
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(argv: &[&str], timeout_ms: u64) -> ValidatorCommand {
        ValidatorCommand {
            command: argv.iter().map(|s| (*s).to_owned()).collect(),
            timeout_ms,
        }
    }

    #[test]
    fn check_refuses_empty_long_and_unbounded_commands() {
        assert_eq!(
            command(&[], 10).check(),
            Err(vec![ValidatorSpecError::Empty])
        );
        assert_eq!(
            command(&["", "-"], 10).check(),
            Err(vec![ValidatorSpecError::EmptyProgram])
        );
        assert_eq!(
            command(&["x", "-"], 0).check(),
            Err(vec![ValidatorSpecError::Timeout { timeout_ms: 0 }])
        );
        let long = "a".repeat(MAX_ARG_BYTES + 1);
        assert_eq!(
            command(&["x", &long, "-"], 10).check(),
            Err(vec![ValidatorSpecError::ArgTooLong {
                index: 1,
                bytes: MAX_ARG_BYTES + 1
            }])
        );
        let many: Vec<&str> = vec!["-"; MAX_ARGS + 1];
        assert_eq!(
            command(&many, 10).check(),
            Err(vec![ValidatorSpecError::TooManyArgs {
                count: MAX_ARGS + 1
            }])
        );
        assert_eq!(
            command(&["x", "--check", "-"], MAX_TIMEOUT_MS).check(),
            Ok(())
        );
        assert_eq!(command(&["x", "--file={path}"], 10).check(), Ok(()));
        assert_eq!(
            command(&["x", "--check"], 10).check(),
            Err(vec![ValidatorSpecError::NoInput])
        );
    }

    #[test]
    fn timeout_defaults_and_unknown_fields_are_refused() {
        let parsed: ValidatorCommand =
            serde_json::from_str(r#"{"command": ["parser", "--check"]}"#).unwrap();
        assert_eq!(parsed.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(serde_json::from_str::<ValidatorCommand>(r#"{"command": "sh -c x"}"#).is_err());
        assert!(
            serde_json::from_str::<ValidatorCommand>(r#"{"command": ["x"], "shell": true}"#)
                .is_err()
        );
    }

    #[test]
    fn first_lines_keeps_the_start_of_stderr_within_bounds() {
        assert_eq!(first_lines(b""), "no message on stderr");
        assert_eq!(first_lines(b"a\n\n b \nc\nd\ne\nf\n"), "a / b / c / d / e");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = first_lines(long.as_bytes());
        assert!(cut.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[tokio::test]
    async fn the_version_is_the_commands_stdin() {
        let accepts_good = command(&["grep", "-q", "good", "-"], 5_000);
        assert_eq!(accepts_good.run(b"a good file\n").await, Ok(()));
        assert!(matches!(
            accepts_good.run(b"a bad file\n").await,
            Err(Refusal::Refused { .. })
        ));
    }

    #[tokio::test]
    async fn path_names_a_file_with_the_same_bytes_removed_after() {
        let scratch =
            std::env::temp_dir().join(format!("failsmall-validator-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        // stdin and {path} hold the same bytes; {path} is substituted inside an argument.
        let same = command(
            &[
                "sh",
                "-c",
                "cmp -s - \"${1#--file=}\"",
                "validator",
                "--file={path}",
            ],
            5_000,
        );
        assert_eq!(same.run_in(&scratch, b"features: 3\n").await, Ok(()));
        let sees = command(&["grep", "-q", "features: 3", "{path}"], 5_000);
        assert_eq!(sees.run_in(&scratch, b"features: 3\n").await, Ok(()));
        assert!(matches!(
            sees.run_in(&scratch, b"features: 4\n").await,
            Err(Refusal::Refused { .. })
        ));
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "removed after"
        );
        std::fs::remove_dir(&scratch).unwrap();
    }

    #[tokio::test]
    async fn a_refusal_quotes_stderr_a_hang_is_killed_a_missing_program_is_named() {
        let refuses = command(
            &["sh", "-c", "echo 'features: 412, limit 200' >&2; exit 3"],
            5_000,
        );
        match refuses.run(b"{}").await {
            Err(Refusal::Refused { status, stderr, .. }) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "features: 412, limit 200");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let started = std::time::Instant::now();
        let hangs = command(&["sleep", "30"], 200);
        assert_eq!(
            hangs.run(b"").await,
            Err(Refusal::TimedOut {
                program: "sleep".to_owned(),
                timeout_ms: 200
            })
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let missing = command(&["failsmall-no-such-validator"], 1_000);
        assert_eq!(
            missing.run(b"").await,
            Err(Refusal::NotFound {
                program: "failsmall-no-such-validator".to_owned()
            })
        );
    }

    #[tokio::test]
    async fn a_large_version_to_a_program_that_does_not_read_it_is_judged_by_status() {
        let ignores = command(&["true", "-"], 5_000);
        let large = vec![b'x'; 1024 * 1024];
        assert_eq!(ignores.run(&large).await, Ok(()));
    }
}
