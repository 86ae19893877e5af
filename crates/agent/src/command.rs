//! A unit's local commands (validator, reload): run with a time limit, their output bounded.
//!
//! Commands come from the agent's own configuration on the node, never from the control
//! plane: the agent does not run what the network tells it to.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Most bytes of a command's output kept (for the reason reported).
pub const OUTPUT_MAX_BYTES: usize = 4096;
/// Most arguments in one command.
pub const MAX_ARGS: usize = 64;

/// A command line: the program and its arguments. The bundle's path is appended as the last
/// argument.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl LocalCommand {
    /// Runs the command with `file` as its last argument; `Ok` when it exits with status 0.
    pub async fn run(&self, file: &Path) -> Result<(), CommandError> {
        if self.args.len() > MAX_ARGS {
            return Err(CommandError::TooManyArgs {
                program: self.program.clone(),
                count: self.args.len(),
            });
        }
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CommandError::Start {
                program: self.program.clone(),
                reason: e.to_string(),
            })?;
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
            Err(e) => Err(CommandError::Start {
                program: self.program.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

async fn read_bounded(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
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
            args: vec!["-c".into(), script.into(), "validator".into()],
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
}
