//! What the server does once at start before it opens its data dir: raise the open-file
//! limit, and take the data dir's lock so that one server at a time uses it.
//!
//! Two servers on one SQLite data dir would each believe their own engine state: the second
//! is refused at start instead. The lock is an exclusive `flock` on [`LOCK_FILE`] in the data
//! dir, held for the life of the process (the kernel drops it when the process ends, however
//! it ends, so a crash never leaves a stale lock); the file holds the holder's pid, for the
//! error a second server prints.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt as _;

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "server.lock";
/// Most bytes of the lock file read for the holder's pid.
const LOCK_FILE_MAX_BYTES: u64 = 64;

/// The data dir's lock, held until dropped (the process's life, in `run`).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the data dir's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data dir {data_dir} is in use by another failsmall server{holder} (lock file {path}); \
         one server per data dir: stop the other one or give this one another --data-dir"
    )]
    Held {
        data_dir: PathBuf,
        path: PathBuf,
        holder: String,
    },
    #[error("data dir lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes the exclusive lock on `data_dir`'s lock file (creating it), writing this process's
/// pid into it; refuses when another process holds it, naming that process's pid.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    if !file.try_lock_exclusive().map_err(io)? {
        let mut written = String::new();
        let _ = (&file)
            .take(LOCK_FILE_MAX_BYTES)
            .read_to_string(&mut written);
        let holder = match written.trim().parse::<u32>() {
            Ok(pid) => format!(" (pid {pid})"),
            Err(_) => String::new(),
        };
        return Err(LockError::Held {
            data_dir: data_dir.to_owned(),
            path,
            holder,
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(DataDirLock { _file: file })
}

/// Raises this process's soft open-file limit to its hard limit (each agent's long poll holds
/// one connection, so a server's fleet size is bounded by it), and logs the limit it runs with.
/// A limit that cannot be raised is logged, never fatal.
pub fn raise_open_file_limit(who: &'static str) -> Option<u64> {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => {
                tracing::info!(
                    process = who,
                    open_files = now,
                    was = soft,
                    hard,
                    "open-file limit"
                );
                Some(now)
            }
            Err(error) => {
                tracing::warn!(process = who, open_files = soft, hard, %error, "open-file limit not raised");
                Some(soft)
            }
        },
        Err(error) => {
            tracing::warn!(process = who, %error, "open-file limit unknown");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_data_dir_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        let refused = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains(&dir.path().display().to_string()),
            "{refused}"
        );
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        drop(held);
        lock_data_dir(dir.path()).unwrap();
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let now = raise_open_file_limit("test").unwrap();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(now, soft);
        assert_eq!(soft, hard);
    }
}
