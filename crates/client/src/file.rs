//! Feeding a [`Config`] from the file an agent keeps at a stable path
//! (`DIR/units/<unit>/current`). The agent replaces that file atomically (rename), so a read
//! sees the old or the new version, never a torn one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::{Config, Rejection, UnitValue};

/// Shortest polling interval accepted.
pub const POLL_INTERVAL_MIN_MS: u64 = 10;

/// Largest file read; a larger one is rejected like any invalid version.
pub const FILE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A background thread that offers the file's content to a [`Config`] whenever it changes.
/// Dropping the handle stops the thread.
#[derive(Debug)]
pub struct FileWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a file looked like last time: enough to skip reading it when nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

impl<T: UnitValue> Config<T> {
    /// Offers the content of `path` once. A missing file offers nothing (`Ok(None)`).
    pub fn offer_file(
        &self,
        path: &Path,
    ) -> std::io::Result<Option<Result<crate::Offered, Rejection>>> {
        let len = match std::fs::metadata(path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        if len > FILE_MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "{}: {len} bytes; the limit is {FILE_MAX_BYTES}",
                path.display()
            )));
        }
        let bytes = std::fs::read(path)?;
        Ok(Some(self.offer(&bytes)))
    }

    /// Offers `path` now, then again whenever its size or modification time changes, checking
    /// every `poll_interval_ms` (at least [`POLL_INTERVAL_MIN_MS`]). When a file that was there
    /// disappears (the agent removed the unit), [`Config::withdraw`]s.
    pub fn watch_file(
        self: &Arc<Self>,
        path: impl Into<PathBuf>,
        poll_interval_ms: u64,
    ) -> FileWatch {
        let path = path.into();
        let config = Arc::clone(self);
        let interval = Duration::from_millis(poll_interval_ms.max(POLL_INTERVAL_MIN_MS));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut seen: Option<Stamp> = None;
            loop {
                let now = stamp(&path);
                if now.is_none() && seen.is_some() {
                    // The agent replaces the file by rename, so it is never missing in between:
                    // gone means the unit was taken off the node; the fail mode answers.
                    config.withdraw();
                    seen = None;
                } else if now.is_some() && now != seen {
                    // Errors and rejections are counted and reported by `offer`; a read error is
                    // retried at the next poll.
                    if config.offer_file(&path).is_ok() {
                        seen = now;
                    }
                }
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        FileWatch {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}
