//! The agent's data dir and its atomic writes.
//!
//! Layout:
//! - `DIR/server.key`: the pinned server public key (hex), written once (trust on first use
//!   unless given with `--server-key`).
//! - `DIR/node.id`: the node's id when it was not given.
//! - `DIR/root.json`: the trusted root (given with `--root`, then replaced only by a newer
//!   root it signed for, see [`crate::root`]).
//! - `DIR/seq`: the highest desired-state sequence number trusted so far; `DIR/seq.epoch`:
//!   the root epoch it belongs to.
//! - `DIR/units/<unit>/versions/<sha256>`: the last few versions, immutable.
//! - `DIR/units/<unit>/current`: the active version, its own copy (not a link to the stored
//!   one), replaced only by rename.
//! - `DIR/units/<unit>/good`: the hash (hex) of the last known good version.
//!
//! Every file is written to a temporary name, fsynced, renamed, and its directory fsynced, so
//! a crash at any instant leaves the old or the new file, never a torn one. The version named
//! by `good` and the version in `current` are never deleted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use failsmall_core::domain::{UnitName, VersionHash};

/// Versions kept per unit besides the active one and the last known good.
pub const KEEP_VERSIONS: usize = 4;
/// Most version files looked at when pruning one unit.
pub const MAX_VERSION_FILES: usize = 1024;
/// Largest small state file read (seq, good, key, node id), in bytes.
const SMALL_FILE_MAX_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("unit name {0:?} cannot name a directory; expected a name other than '.' and '..'")]
    UnitPath(String),
    #[error("crash point {0} reached")]
    FailPoint(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Evaluates a fail point; with the `failpoints` feature a test can make it return an error
/// (or crash the process there). Without the feature it does nothing.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err(DiskError::FailPoint($name.to_owned())));
    };
}

/// The freshness of the desired state, as last known (see [`DataDir::freshness`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Freshness {
    pub expires_ms: Option<u64>,
    pub stale_since_ms: Option<u64>,
}

/// The agent's data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating it if needed) the data dir.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DiskError> {
        let root = root.into();
        fs::create_dir_all(root.join("units")).map_err(io("creating data dir", &root))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one unit.
    pub fn unit_dir(&self, unit: &UnitName) -> Result<PathBuf, DiskError> {
        if matches!(unit.as_str(), "." | "..") {
            return Err(DiskError::UnitPath(unit.to_string()));
        }
        Ok(self.root.join("units").join(unit.as_str()))
    }

    /// The stable path consumers read: `DIR/units/<unit>/current`.
    pub fn current_path(&self, unit: &UnitName) -> Result<PathBuf, DiskError> {
        Ok(self.unit_dir(unit)?.join("current"))
    }

    fn version_path(&self, unit: &UnitName, hash: &VersionHash) -> Result<PathBuf, DiskError> {
        Ok(self.unit_dir(unit)?.join("versions").join(hash.to_string()))
    }

    /// Reads a small text file; `None` when it does not exist.
    fn read_small(&self, path: &Path) -> Result<Option<String>, DiskError> {
        match fs::metadata(path) {
            Ok(meta) if meta.len() > SMALL_FILE_MAX_BYTES => {
                return Err(DiskError::Corrupt {
                    path: path.to_owned(),
                    reason: format!(
                        "{} bytes; expected at most {SMALL_FILE_MAX_BYTES}",
                        meta.len()
                    ),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", path)(e)),
        }
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", path)(e)),
        }
    }

    /// The pinned server key (hex), if any.
    pub fn pinned_key(&self) -> Result<Option<String>, DiskError> {
        self.read_small(&self.root.join("server.key"))
    }

    pub fn pin_key(&self, key_hex: &str) -> Result<(), DiskError> {
        write_atomic(&self.root, "server.key", key_hex.as_bytes())
    }

    pub fn node_id(&self) -> Result<Option<String>, DiskError> {
        self.read_small(&self.root.join("node.id"))
    }

    pub fn save_node_id(&self, id: &str) -> Result<(), DiskError> {
        write_atomic(&self.root, "node.id", id.as_bytes())
    }

    /// The trusted root file (`DIR/root.json`), if any: the text as it was verified.
    pub fn pinned_root(&self) -> Result<Option<String>, DiskError> {
        let path = self.root.join("root.json");
        match fs::metadata(&path) {
            Ok(meta) if meta.len() > failsmall_core::trust::ROOT_FILE_MAX_BYTES as u64 => {
                return Err(DiskError::Corrupt {
                    path,
                    reason: format!(
                        "{} bytes; expected at most {}",
                        meta.len(),
                        failsmall_core::trust::ROOT_FILE_MAX_BYTES
                    ),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &path)(e)),
        }
        fs::read_to_string(&path)
            .map(Some)
            .map_err(io("reading", &path))
    }

    /// Pins `text` as the trusted root (verified by the caller).
    pub fn pin_root(&self, text: &str) -> Result<(), DiskError> {
        write_atomic(&self.root, "root.json", text.as_bytes())
    }

    /// The root epoch the trusted sequence number (`DIR/seq`) belongs to (0 when none).
    pub fn seq_epoch(&self) -> Result<u64, DiskError> {
        let path = self.root.join("seq.epoch");
        match self.read_small(&path)? {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| DiskError::Corrupt {
                path,
                reason: format!("{text:?} is not an epoch number"),
            }),
        }
    }

    /// Starts the sequence check afresh for `epoch`: the sequence number first, then the
    /// epoch it belongs to, so a crash between leaves a sequence number of 0 (documents are
    /// bound to their epoch: an older epoch's are refused all the same).
    pub fn start_epoch(&self, epoch: u64) -> Result<(), DiskError> {
        self.save_trusted_seq(0)?;
        write_atomic(&self.root, "seq.epoch", epoch.to_string().as_bytes())
    }

    /// The highest trusted sequence number (0 when none yet).
    pub fn trusted_seq(&self) -> Result<u64, DiskError> {
        let path = self.root.join("seq");
        match self.read_small(&path)? {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| DiskError::Corrupt {
                path,
                reason: format!("{text:?} is not a sequence number"),
            }),
        }
    }

    pub fn save_trusted_seq(&self, seq: u64) -> Result<(), DiskError> {
        write_atomic(&self.root, "seq", seq.to_string().as_bytes())
    }

    /// When the latest trusted document expires, and since when what is served is stale
    /// (kept across restarts, so an agent started with the control plane down knows whether it
    /// is stale, and one restarted while stale still reports when it is fresh again).
    pub fn freshness(&self) -> Result<Freshness, DiskError> {
        let path = self.root.join("freshness");
        match self.read_small(&path)? {
            None => Ok(Freshness::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| DiskError::Corrupt {
                path,
                reason: format!("{e}; expected {{\"expires_ms\": ..., \"stale_since_ms\": ...}}"),
            }),
        }
    }

    pub fn save_freshness(&self, freshness: &Freshness) -> Result<(), DiskError> {
        let text = serde_json::to_string(freshness).unwrap_or_default();
        write_atomic(&self.root, "freshness", text.as_bytes())
    }

    /// Units that have a directory.
    pub fn units(&self) -> Result<Vec<UnitName>, DiskError> {
        let dir = self.root.join("units");
        let entries = fs::read_dir(&dir).map_err(io("listing", &dir))?;
        let mut units = Vec::new();
        for entry in entries.take(MAX_VERSION_FILES) {
            let entry = entry.map_err(io("listing", &dir))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(unit) = UnitName::new(name)
                && !matches!(name, "." | "..")
            {
                units.push(unit);
            }
        }
        units.sort();
        Ok(units)
    }

    /// The last known good version of `unit`, if any.
    pub fn good(&self, unit: &UnitName) -> Result<Option<VersionHash>, DiskError> {
        let path = self.unit_dir(unit)?.join("good");
        match self.read_small(&path)? {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| DiskError::Corrupt {
                path,
                reason: format!("{text:?} is not a SHA-256 hex"),
            }),
        }
    }

    /// Records `hash` as the last known good version of `unit`.
    pub fn set_good(&self, unit: &UnitName, hash: &VersionHash) -> Result<(), DiskError> {
        crash_point!("agent::before_good");
        write_atomic(&self.unit_dir(unit)?, "good", hash.to_string().as_bytes())
    }

    /// The active version's bytes and hash (computed from the bytes, so they always agree).
    pub fn current(&self, unit: &UnitName) -> Result<Option<(Vec<u8>, VersionHash)>, DiskError> {
        let path = self.current_path(unit)?;
        match fs::read(&path) {
            Ok(bytes) => {
                let hash = VersionHash::of(&bytes);
                Ok(Some((bytes, hash)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// A stored version's bytes, checked against its hash; `None` if missing or damaged.
    pub fn version(
        &self,
        unit: &UnitName,
        hash: &VersionHash,
    ) -> Result<Option<Vec<u8>>, DiskError> {
        let path = self.version_path(unit, hash)?;
        match fs::read(&path) {
            Ok(bytes) if VersionHash::of(&bytes) == *hash => Ok(Some(bytes)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// Stores a version (not yet active) and returns its path. The bytes must hash to `hash`.
    pub fn store_version(
        &self,
        unit: &UnitName,
        hash: &VersionHash,
        bytes: &[u8],
    ) -> Result<PathBuf, DiskError> {
        let dir = self.unit_dir(unit)?.join("versions");
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let name = hash.to_string();
        let path = dir.join(&name);
        if self.version(unit, hash)?.is_none() {
            write_atomic(&dir, &name, bytes)?;
        }
        crash_point!("agent::after_version_stored");
        Ok(path)
    }

    /// Makes the stored version `hash` the active one: a new file with its bytes, read from
    /// the stored copy and checked against `hash`, written and fsynced, replaces `current` by
    /// rename. `current` is its own copy (never a link to the stored version), so a write into
    /// it cannot damage the verified copy it is restored from. A stored version that is
    /// missing or damaged is never activated.
    pub fn activate(&self, unit: &UnitName, hash: &VersionHash) -> Result<(), DiskError> {
        let source = self.version_path(unit, hash)?;
        let Some(bytes) = self.version(unit, hash)? else {
            return Err(DiskError::Corrupt {
                path: source,
                reason: format!(
                    "the stored copy is missing or does not hash to {hash}; not activated"
                ),
            });
        };
        let dir = self.unit_dir(unit)?;
        let temporary = dir.join(format!(".current.{}.tmp", std::process::id()));
        remove_if_exists(&temporary)?;
        crash_point!("agent::before_current_written");
        let mut file = fs::File::create(&temporary).map_err(io("creating", &temporary))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io("writing", &temporary))?;
        drop(file);
        crash_point!("agent::before_current_renamed");
        let current = dir.join("current");
        fs::rename(&temporary, &current).map_err(io("renaming into", &current))?;
        crash_point!("agent::after_current_renamed");
        sync_dir(&dir)?;
        crash_point!("agent::after_current_synced");
        Ok(())
    }

    /// Removes `current` (no version active); the stored versions stay. For a first version
    /// that failed after activation: there is no last known good to put back.
    pub fn deactivate(&self, unit: &UnitName) -> Result<(), DiskError> {
        let dir = self.unit_dir(unit)?;
        let current = dir.join("current");
        remove_if_exists(&current)?;
        sync_dir(&dir)
    }

    /// Takes the unit off the node: `current`, the last known good and the trial mark go (the
    /// stored versions stay, pruned as usual). For a unit that left the node's desired state.
    pub fn remove_unit(&self, unit: &UnitName) -> Result<(), DiskError> {
        let dir = self.unit_dir(unit)?;
        for name in ["current", "good", "trial"] {
            remove_if_exists(&dir.join(name))?;
        }
        sync_dir(&dir)
    }

    /// The version on trial (active and checked while a rollout still judges it), if any.
    pub fn trial(&self, unit: &UnitName) -> Result<Option<VersionHash>, DiskError> {
        let path = self.unit_dir(unit)?.join("trial");
        match self.read_small(&path)? {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| DiskError::Corrupt {
                path,
                reason: format!("{text:?} is not a SHA-256 hex"),
            }),
        }
    }

    /// Marks `hash` as on trial (none: nothing is), so a restart keeps it active instead of
    /// taking it for an interrupted apply.
    pub fn set_trial(&self, unit: &UnitName, hash: Option<&VersionHash>) -> Result<(), DiskError> {
        let dir = self.unit_dir(unit)?;
        match hash {
            Some(hash) => write_atomic(&dir, "trial", hash.to_string().as_bytes()),
            None => {
                remove_if_exists(&dir.join("trial"))?;
                sync_dir(&dir)
            }
        }
    }

    /// Deletes old versions beyond [`KEEP_VERSIONS`], never `keep` (the active one and the
    /// last known good).
    pub fn prune(&self, unit: &UnitName, keep: &[VersionHash]) -> Result<usize, DiskError> {
        let dir = self.unit_dir(unit)?.join("versions");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        let keep: Vec<String> = keep.iter().map(ToString::to_string).collect();
        let mut candidates = Vec::new();
        for entry in entries.take(MAX_VERSION_FILES) {
            let entry = entry.map_err(io("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || name.starts_with('.') {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            candidates.push((modified, entry.path()));
        }
        candidates.sort();
        let excess = candidates.len().saturating_sub(KEEP_VERSIONS);
        for (_, path) in candidates.iter().take(excess) {
            remove_if_exists(path)?;
        }
        Ok(excess)
    }

    /// Removes temporary files a crash may have left in a unit's directories.
    pub fn clean_temporaries(&self, unit: &UnitName) -> Result<(), DiskError> {
        let dir = self.unit_dir(unit)?;
        for dir in [dir.clone(), dir.join("versions")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.take(MAX_VERSION_FILES).flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    remove_if_exists(&entry.path())?;
                }
            }
        }
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> Result<(), DiskError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Writes `dir/name` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DiskError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = fs::File::create(&temporary).map_err(io("creating", &temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("writing", &temporary))?;
    drop(file);
    crash_point!("agent::before_rename");
    let path = dir.join(name);
    fs::rename(&temporary, &path).map_err(io("renaming into", &path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir inside a fresh temporary directory, removed when the guard is dropped.
    fn fresh(name: &str) -> (tempfile::TempDir, DataDir) {
        let scratch = tempfile::Builder::new()
            .prefix(&format!("failsmall-agent-disk-{name}-"))
            .tempdir()
            .unwrap();
        let disk = DataDir::open(scratch.path().join("agent")).unwrap();
        (scratch, disk)
    }

    #[test]
    fn activate_replaces_current_and_good_survives_pruning() {
        let (_dir, disk) = fresh("activate");
        let unit = UnitName::new("features").unwrap();
        let mut hashes = Vec::new();
        for i in 0..10u8 {
            let bytes = vec![i; 100 + usize::from(i)];
            let hash = VersionHash::of(&bytes);
            disk.store_version(&unit, &hash, &bytes).unwrap();
            disk.activate(&unit, &hash).unwrap();
            let (active, active_hash) = disk.current(&unit).unwrap().unwrap();
            assert_eq!(active, bytes);
            assert_eq!(active_hash, hash);
            if i == 0 {
                disk.set_good(&unit, &hash).unwrap();
            }
            let good = disk.good(&unit).unwrap().unwrap();
            disk.prune(&unit, &[hash, good]).unwrap();
            hashes.push(hash);
        }
        let first = hashes.first().unwrap();
        assert!(disk.version(&unit, first).unwrap().is_some(), "good kept");
        let last = hashes.last().unwrap();
        assert!(disk.version(&unit, last).unwrap().is_some(), "active kept");
        let stored = fs::read_dir(disk.unit_dir(&unit).unwrap().join("versions"))
            .unwrap()
            .count();
        assert_eq!(
            stored,
            KEEP_VERSIONS + 2,
            "the few kept, the active one and the good one"
        );
    }

    #[test]
    fn a_damaged_version_file_is_not_served() {
        let (_dir, disk) = fresh("damaged");
        let unit = UnitName::new("flags").unwrap();
        let hash = VersionHash::of(b"good");
        let path = disk.store_version(&unit, &hash, b"good").unwrap();
        fs::write(&path, b"evil").unwrap();
        assert_eq!(disk.version(&unit, &hash).unwrap(), None);
        assert!(matches!(
            disk.activate(&unit, &hash),
            Err(DiskError::Corrupt { .. })
        ));
        assert_eq!(disk.current(&unit).unwrap(), None, "never activated");
    }

    #[test]
    fn a_write_into_current_leaves_the_stored_version_intact() {
        let (_dir, disk) = fresh("independent");
        let unit = UnitName::new("flags").unwrap();
        let hash = VersionHash::of(b"v1");
        let stored = disk.store_version(&unit, &hash, b"v1").unwrap();
        disk.activate(&unit, &hash).unwrap();
        let current = disk.current_path(&unit).unwrap();
        // Written in place (same inode), as an editor or a stray process might.
        fs::OpenOptions::new()
            .write(true)
            .open(&current)
            .unwrap()
            .write_all(b"X")
            .unwrap();
        assert_eq!(fs::read(&current).unwrap(), b"X1");
        assert_eq!(fs::read(&stored).unwrap(), b"v1");
        assert_eq!(
            disk.version(&unit, &hash).unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        disk.activate(&unit, &hash).unwrap();
        assert_eq!(disk.current(&unit).unwrap().unwrap().1, hash);
    }

    #[test]
    fn dot_units_cannot_escape_the_data_dir() {
        // No unit can be named so (names start with a letter or digit); `unit_dir` checks too.
        for name in [".", ".."] {
            assert!(UnitName::new(name).is_err(), "{name}");
        }
        let (_dir, disk) = fresh("dots");
        let unit = UnitName::new("flags").unwrap();
        assert!(disk.unit_dir(&unit).unwrap().starts_with(disk.root()));
    }

    #[test]
    fn seq_and_key_round_trip() {
        let (_dir, disk) = fresh("seq");
        assert_eq!(disk.trusted_seq().unwrap(), 0);
        disk.save_trusted_seq(42).unwrap();
        assert_eq!(disk.trusted_seq().unwrap(), 42);
        assert_eq!(disk.pinned_key().unwrap(), None);
        disk.pin_key("ab").unwrap();
        assert_eq!(disk.pinned_key().unwrap().as_deref(), Some("ab"));
    }
}
