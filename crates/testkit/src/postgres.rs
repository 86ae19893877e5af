//! A real PostgreSQL server for a test: Debian's `postgresql` binaries, a fresh cluster in a
//! scratch directory, listening on 127.0.0.1 at a port the OS chose, stopped and removed when
//! dropped. PostgreSQL refuses to run as root, so under root the cluster belongs to the
//! `postgres` user the package creates.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server has to accept connections after it is started.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running PostgreSQL server, stopped when dropped.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where Debian keeps the newest PostgreSQL's programs (`/usr/lib/postgresql/N/bin`).
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install Debian's `postgresql` package)"))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL under /usr/lib/postgresql".to_owned())
}

/// The `postgres` user's uid and gid from `/etc/passwd`.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next() != Some("postgres") {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| "no `postgres` user in /etc/passwd (install `postgresql`)".to_owned())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn wait_ready(child: &mut Child, bin: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited: {status}"));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "failsmall",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("postgres not ready within {READY_WITHIN:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Postgres {
    /// Starts a fresh cluster and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// When PostgreSQL is not installed or does not start; the message says which step failed
    /// and, for the server itself, what its log says.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// As [`Postgres::start`], with TLS on (`ssl = on`) under this certificate chain and key
    /// (PEM); clients may still connect without TLS.
    ///
    /// # Errors
    ///
    /// As [`Postgres::start`].
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self, String> {
        let bin = bin_dir()?;
        let owner = if is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("failsmall-postgres-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let initdb = as_owner(Command::new(bin.join("initdb")), owner)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "failsmall",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }
        let mut settings: Vec<&str> = Vec::new();
        if let Some((cert, key)) = tls {
            for (name, text, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let path = data.join(name);
                std::fs::write(&path, text).map_err(|e| e.to_string())?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| e.to_string())?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|e| e.to_string())?;
                }
            }
            settings.extend(["-c", "ssl=on"]);
        }
        let log = dir.path().join("postgres.log");
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&log, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
            let child = as_owner(Command::new(bin.join("postgres")), owner)
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-c", "unix_socket_directories="])
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=200"])
                .args(&settings)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|e| format!("postgres: {e}"))?;
            let mut child = child;
            match wait_ready(&mut child, &bin, port) {
                Ok(()) => {
                    return Ok(Self {
                        child,
                        port,
                        bin,
                        _dir: dir,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!(
                        "{e}; its log: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    // Another process took the port between its choice and the bind: again.
                    if !last_error.contains("already in use") {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// The server's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the server (the postmaster).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates the database `name` and returns its URL.
    ///
    /// # Errors
    ///
    /// When `psql` fails; the message is its error.
    pub fn database(&self, name: &str) -> Result<String, String> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// The URL of database `name`.
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        format!("postgres://failsmall@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` with `psql` in database `db`; its output (unaligned, tuples only).
    ///
    /// # Errors
    ///
    /// When `psql` fails; the message is its error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "failsmall",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command.current_dir(Path::new("/"));
    command
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: an immediate shutdown that also ends the server's children.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
