//! A unit's local commands (validator, reload, readiness probe): argv only, no shell, run
//! with a time limit, their output bounded.
//!
//! Commands come from the agent's own configuration on the node, never from the control
//! plane: the agent does not run what the network tells it to.
//!
//! # The contract (the same as the server's validator, `failsmall_server::validator`)
//!
//! A command is run exactly as written: nothing is appended to its arguments. Every
//! occurrence of `{path}` in an argument (alone, or inside a larger one such as
//! `--file={path}`) is replaced by a path:
//!
//! - a **validator** gets the version's bytes on its stdin, and `{path}` is a file holding
//!   exactly those bytes (the stored version). It must say how it reads them: an argument
//!   holds `{path}`, or an argument is `-` or `/dev/stdin` (reads stdin); anything else is
//!   refused when the configuration is loaded, since the bytes would never reach it.
//! - a **reload** command and a health check's **readiness probe** get no stdin, and `{path}`
//!   is the unit's `current` file. They need not use it: `nginx -s reload` and
//!   `systemctl reload proxy` work as written.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes of a command's output kept (for the reason reported).
pub const OUTPUT_MAX_BYTES: usize = 4096;
/// Most arguments in one command.
pub const MAX_ARGS: usize = 64;
/// Longest program name or argument, in bytes.
pub const MAX_ARG_BYTES: usize = 4096;
/// Longest time a command may be given, in milliseconds.
pub const TIMEOUT_MS_MAX: u64 = 600_000;
/// The placeholder replaced by a file's path in every argument.
pub const PATH_PLACEHOLDER: &str = "{path}";
/// Arguments by which a validator says it reads the version from stdin.
pub const STDIN_ARGS: [&str; 2] = ["-", "/dev/stdin"];

/// A command line: the program and its arguments, run as written with `{path}` replaced
/// (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCommand {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Longest run before the command is killed and counted as failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// What a command is for; it decides what it gets (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The version's bytes on stdin, `{path}` a file holding them.
    Validator,
    /// No stdin, `{path}` the unit's `current`.
    Reload,
    /// A readiness probe: as a reload command.
    Probe,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command {program:?} could not start: {reason}")]
    Start { program: String, reason: String },
    #[error("command {program:?} has {count} arguments; the limit is {MAX_ARGS}")]
    TooManyArgs { program: String, count: usize },
    #[error("command {program:?} ran longer than {timeout_ms} ms and was killed")]
    Timeout { program: String, timeout_ms: u64 },
    #[error("command {program:?} exited with {status}: {output}")]
    Failed {
        program: String,
        status: String,
        output: String,
    },
}

/// `arg` with every `{path}` replaced by `path` (bytes of a path need not be UTF-8).
pub fn substitute(arg: &str, path: &Path) -> OsString {
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

impl LocalCommand {
    /// Whether an argument holds `{path}`.
    pub fn uses_path(&self) -> bool {
        self.args.iter().any(|arg| arg.contains(PATH_PLACEHOLDER))
    }

    /// Whether an argument says the program reads stdin (`-` or `/dev/stdin`).
    pub fn reads_stdin(&self) -> bool {
        self.args
            .iter()
            .any(|arg| STDIN_ARGS.contains(&arg.as_str()))
    }

    /// Checks the command's shape and limits for `role`; every problem, each a sentence.
    pub fn check(&self, role: Role) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.program.trim().is_empty() {
            problems.push("program is empty; expected the program to run, e.g. \"nginx\"".into());
        }
        if self.args.len() > MAX_ARGS {
            problems.push(format!(
                "args has {} entries; the limit is {MAX_ARGS}",
                self.args.len()
            ));
        }
        for (index, arg) in std::iter::once(&self.program)
            .chain(&self.args)
            .enumerate()
            .take(MAX_ARGS.saturating_add(1))
        {
            let what = if index == 0 {
                "program".to_owned()
            } else {
                format!("args[{}]", index.saturating_sub(1))
            };
            if arg.len() > MAX_ARG_BYTES {
                problems.push(format!(
                    "{what} is {} bytes; the limit is {MAX_ARG_BYTES}",
                    arg.len()
                ));
            }
            if arg.contains('\0') {
                problems.push(format!("{what} holds a NUL byte"));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > TIMEOUT_MS_MAX {
            problems.push(format!(
                "timeout_ms is {}; expected 1 to {TIMEOUT_MS_MAX}",
                self.timeout_ms
            ));
        }
        if role == Role::Validator && !self.uses_path() && !self.reads_stdin() {
            problems.push(format!(
                "no argument holds {PATH_PLACEHOLDER} and none is - or /dev/stdin, so the version's bytes would never reach {:?}: put {PATH_PLACEHOLDER} where the file goes (e.g. [\"-t\", \"-c\", \"{PATH_PLACEHOLDER}\"]), or - if it reads stdin",
                self.program
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Runs the command as a validator of the file `version`: its bytes on stdin, and
    /// `{path}` replaced by its path. `Ok` when it exits with status 0 in time.
    pub async fn run(&self, version: &Path) -> Result<(), CommandError> {
        self.run_as(version, true).await
    }

    /// Runs the command as a reload command or readiness probe: no stdin, `{path}` replaced
    /// by `current`. `Ok` when it exits with status 0 in time.
    pub async fn run_reload(&self, current: &Path) -> Result<(), CommandError> {
        self.run_as(current, false).await
    }

    async fn run_as(&self, path: &Path, feed_stdin: bool) -> Result<(), CommandError> {
        if self.args.len() > MAX_ARGS {
            return Err(CommandError::TooManyArgs {
                program: self.program.clone(),
                count: self.args.len(),
            });
        }
        let start_error = |reason: String| CommandError::Start {
            program: self.program.clone(),
            reason,
        };
        // The validator's stdin is the version file itself: the child reads it directly.
        let stdin = if feed_stdin {
            let file = std::fs::File::open(path)
                .map_err(|e| start_error(format!("opening {}: {e}", path.display())))?;
            Stdio::from(file)
        } else {
            Stdio::null()
        };
        let mut child = tokio::process::Command::new(&self.program)
            .args(self.args.iter().map(|arg| substitute(arg, path)))
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| start_error(e.to_string()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let collect = async {
            // Both streams at once, so a child filling one pipe never blocks; the first bytes
            // of each are kept and the rest is drained.
            let (out, err) = tokio::join!(read_bounded(stdout), read_bounded(stderr));
            let status = child.wait().await;
            let mut output = out;
            output.extend(err);
            output.truncate(OUTPUT_MAX_BYTES);
            (status, output)
        };
        let limit = Duration::from_millis(self.timeout_ms);
        let Ok((status, output)) = tokio::time::timeout(limit, collect).await else {
            return Err(CommandError::Timeout {
                program: self.program.clone(),
                timeout_ms: self.timeout_ms,
            });
        };
        let output = String::from_utf8_lossy(&output).trim().to_owned();
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(CommandError::Failed {
                program: self.program.clone(),
                status: status.to_string(),
                output,
            }),
            Err(e) => Err(start_error(e.to_string())),
        }
    }
}

async fn read_bounded(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut output = Vec::new();
    let Some(mut stream) = stream else {
        return output;
    };
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return output,
            Ok(read) => {
                let room = OUTPUT_MAX_BYTES.saturating_sub(output.len());
                output.extend(buffer.iter().take(read.min(room)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> LocalCommand {
        LocalCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                script.into(),
                "validator".into(),
                "{path}".into(),
            ],
            timeout_ms,
        }
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        let file = Path::new("/dev/null");
        sh("test -e \"$1\"", 5000).run(file).await.unwrap();
        let failed = sh("echo too many features >&2; exit 3", 5000)
            .run(file)
            .await
            .unwrap_err();
        assert!(
            matches!(&failed, CommandError::Failed { output, .. } if output == "too many features"),
            "{failed}"
        );
        let slow = sh("sleep 5", 100).run(file).await.unwrap_err();
        assert!(matches!(slow, CommandError::Timeout { .. }), "{slow}");
        let chatty = sh("head -c 100000 /dev/zero; exit 1", 5000)
            .run(file)
            .await
            .unwrap_err();
        assert!(
            matches!(&chatty, CommandError::Failed { output, .. } if output.len() <= OUTPUT_MAX_BYTES)
        );
        let missing = LocalCommand {
            program: "/nonexistent/validator".into(),
            args: vec![],
            timeout_ms: 100,
        };
        assert!(matches!(
            missing.run(file).await,
            Err(CommandError::Start { .. })
        ));
    }

    #[tokio::test]
    async fn nothing_is_appended_and_path_is_substituted_inside_arguments() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("current");
        std::fs::write(&file, b"features: 3\n").unwrap();
        // Exactly two arguments: an implicit extra one would make $# 3.
        let exact = LocalCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "test $# -eq 1 && test \"$1\" = \"--file=$(dirname \"${1#--file=}\")/current\""
                    .into(),
                "reload".into(),
                "--file={path}".into(),
            ],
            timeout_ms: 5000,
        };
        exact.run_reload(&file).await.unwrap();
        // A reload written as operators write it: no placeholder, no extra argument.
        let plain = LocalCommand {
            program: "sh".into(),
            args: vec!["-c".into(), "test $# -eq 0".into()],
            timeout_ms: 5000,
        };
        plain.run_reload(&file).await.unwrap();
        // A reload has no stdin (it reads end of file at once).
        let no_stdin = LocalCommand {
            program: "sh".into(),
            args: vec!["-c".into(), "test -z \"$(cat)\"".into()],
            timeout_ms: 5000,
        };
        no_stdin.run_reload(&file).await.unwrap();
        // A validator gets the bytes on stdin and the same bytes at {path}.
        let both = LocalCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "cat - | cmp -s - \"$1\" && grep -q 'features: 3' \"$1\"".into(),
                "validator".into(),
                "{path}".into(),
            ],
            timeout_ms: 5000,
        };
        both.run(&file).await.unwrap();
        let stdin_only = LocalCommand {
            program: "grep".into(),
            args: vec!["-q".into(), "features: 3".into(), "-".into()],
            timeout_ms: 5000,
        };
        stdin_only.run(&file).await.unwrap();
    }

    #[test]
    fn a_validator_must_say_how_it_reads_the_version() {
        let command = |args: &[&str]| LocalCommand {
            program: "proxy".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            timeout_ms: 1000,
        };
        assert!(
            command(&["--check", "{path}"])
                .check(Role::Validator)
                .is_ok()
        );
        assert!(command(&["--file={path}"]).check(Role::Validator).is_ok());
        assert!(command(&["--check", "-"]).check(Role::Validator).is_ok());
        let problems = command(&["--check"]).check(Role::Validator).unwrap_err();
        assert!(
            problems[0].contains("no argument holds {path}"),
            "{problems:?}"
        );
        assert!(command(&["-s", "reload"]).check(Role::Reload).is_ok());
        let mut slow = command(&[]);
        slow.timeout_ms = 0;
        assert!(slow.check(Role::Reload).unwrap_err()[0].contains("timeout_ms"));
        slow.program = String::new();
        assert_eq!(slow.check(Role::Reload).unwrap_err().len(), 2);
    }
}
