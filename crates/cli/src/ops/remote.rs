//! Where the server is and which token to show it: flags, then `FAILSMALL_ADDR` /
//! `FAILSMALL_TOKEN`, then the config file (`$XDG_CONFIG_HOME/failsmall/config.toml` or
//! `~/.config/failsmall/config.toml`, keys `addr` and `token`), then the default address.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The address used when no flag, variable or config file names one.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";
/// The environment variable naming the server's address.
pub const ADDR_ENV: &str = "FAILSMALL_ADDR";
/// The environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "FAILSMALL_TOKEN";
/// Largest config file read, in bytes.
pub const CONFIG_MAX_BYTES: u64 = 64 * 1024;
/// Longest address or token accepted, in bytes.
pub const VALUE_MAX_BYTES: usize = 2048;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    ConfigFile(PathBuf),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => write!(f, "the {flag} flag"),
            Self::Env(name) => write!(f, "the {name} variable"),
            Self::ConfigFile(path) => write!(f, "the config file {}", path.display()),
            Self::Default => f.write_str("the default"),
        }
    }
}

/// A resolved server address and token.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    /// `http://host:port`, with no trailing slash.
    pub addr: String,
    pub addr_source: Source,
    pub token: Option<String>,
    pub token_source: Option<Source>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("addr", &self.addr)
            .field("addr_source", &self.addr_source)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_source", &self.token_source)
            .finish()
    }
}

/// Why the address or token could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("config file {path}: {reason}; expected TOML with the keys addr and token")]
    ConfigFile { path: PathBuf, reason: String },
    #[error("{origin}: {reason}")]
    BadValue { origin: Source, reason: String },
}

/// The config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub addr: Option<String>,
    pub token: Option<String>,
}

/// The config file's path from the environment: `$XDG_CONFIG_HOME/failsmall/config.toml`
/// when that is an absolute path, else `$HOME/.config/failsmall/config.toml`.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let xdg = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(dir) => dir,
        None => PathBuf::from(env("HOME").filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("failsmall").join("config.toml"))
}

/// Reads the config file; a missing file is an empty config.
pub fn read_config(path: &Path) -> Result<ConfigFile, RemoteError> {
    let error = |reason: String| RemoteError::ConfigFile {
        path: path.to_owned(),
        reason,
    };
    let size_bytes = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(error(e.to_string())),
    };
    if size_bytes > CONFIG_MAX_BYTES {
        return Err(error(format!(
            "{size_bytes} bytes; the limit is {CONFIG_MAX_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    toml::from_str(&text).map_err(|e| error(e.to_string().trim().to_owned()))
}

fn check_value(origin: &Source, value: &str) -> Result<(), RemoteError> {
    if value.len() > VALUE_MAX_BYTES {
        return Err(RemoteError::BadValue {
            origin: origin.clone(),
            reason: format!("{} bytes; the limit is {VALUE_MAX_BYTES}", value.len()),
        });
    }
    Ok(())
}

/// `127.0.0.1:7070` → `http://127.0.0.1:7070`; no trailing slash.
pub fn normalize_addr(origin: &Source, addr: &str) -> Result<String, RemoteError> {
    let addr = addr.trim().trim_end_matches('/');
    check_value(origin, addr)?;
    if addr.is_empty() {
        return Err(RemoteError::BadValue {
            origin: origin.clone(),
            reason: "the address is empty; expected e.g. http://127.0.0.1:7070".to_owned(),
        });
    }
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return Ok(addr.to_owned());
    }
    if addr.contains("://") {
        return Err(RemoteError::BadValue {
            origin: origin.clone(),
            reason: format!("address {addr:?} is not http:// or https://"),
        });
    }
    Ok(format!("http://{addr}"))
}

/// Resolves the address and token: flag, then environment, then config file, then default.
/// The config file is only read when a flag or variable leaves something unset.
pub fn resolve(
    flag_addr: Option<&str>,
    flag_token: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Remote, RemoteError> {
    let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let mut addr = flag_addr
        .map(|a| (a.to_owned(), Source::Flag("--addr")))
        .or_else(|| non_empty(env(ADDR_ENV)).map(|a| (a, Source::Env(ADDR_ENV))));
    let mut token = flag_token
        .map(|t| (t.to_owned(), Source::Flag("--token")))
        .or_else(|| non_empty(env(TOKEN_ENV)).map(|t| (t, Source::Env(TOKEN_ENV))));
    if (addr.is_none() || token.is_none())
        && let Some(path) = config_path(env)
    {
        let config = read_config(&path)?;
        if addr.is_none() {
            addr = non_empty(config.addr).map(|a| (a, Source::ConfigFile(path.clone())));
        }
        if token.is_none() {
            token = non_empty(config.token).map(|t| (t, Source::ConfigFile(path.clone())));
        }
    }
    let (addr, addr_source) = addr.unwrap_or_else(|| (DEFAULT_ADDR.to_owned(), Source::Default));
    let addr = normalize_addr(&addr_source, &addr)?;
    if let Some((value, origin)) = &token {
        check_value(origin, value)?;
    }
    let (token, token_source) = match token {
        Some((value, origin)) => (Some(value.trim().to_owned()), Some(origin)),
        None => (None, None),
    };
    Ok(Remote {
        addr,
        addr_source,
        token,
        token_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| map.get(key).cloned()
    }

    /// A config home holding `failsmall/config.toml`, removed when dropped.
    fn temp_config(name: &str, text: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("failsmall-cli-remote-{name}-"))
            .tempdir()
            .unwrap();
        let config = dir.path().join("failsmall");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("config.toml"), text).unwrap();
        dir
    }

    #[test]
    fn flags_win_over_environment_and_config() {
        let dir = temp_config("flags", "addr = \"10.0.0.1:1\"\ntoken = \"file\"\n");
        let env = env_of(&[
            ("FAILSMALL_ADDR", "10.0.0.2:2"),
            ("FAILSMALL_TOKEN", "env"),
            ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
        ]);
        let remote = resolve(Some("http://h:3/"), Some("flag"), &env).unwrap();
        assert_eq!(remote.addr, "http://h:3");
        assert_eq!(remote.addr_source, Source::Flag("--addr"));
        assert_eq!(remote.token.as_deref(), Some("flag"));
        assert_eq!(remote.token_source, Some(Source::Flag("--token")));
    }

    #[test]
    fn environment_wins_over_config_and_config_fills_the_rest() {
        let dir = temp_config("env", "addr = \"10.0.0.1:1\"\ntoken = \"file\"\n");
        let env = env_of(&[
            ("FAILSMALL_TOKEN", "env"),
            ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
        ]);
        let remote = resolve(None, None, &env).unwrap();
        assert_eq!(remote.addr, "http://10.0.0.1:1");
        assert!(matches!(remote.addr_source, Source::ConfigFile(_)));
        assert_eq!(remote.token.as_deref(), Some("env"));
        assert_eq!(remote.token_source, Some(Source::Env(TOKEN_ENV)));
    }

    #[test]
    fn nothing_set_gives_the_default_address_and_no_token() {
        let env = env_of(&[("HOME", "/nonexistent-failsmall-home")]);
        let remote = resolve(None, None, &env).unwrap();
        assert_eq!(remote.addr, DEFAULT_ADDR);
        assert_eq!(remote.addr_source, Source::Default);
        assert_eq!(remote.token, None);
    }

    #[test]
    fn config_path_prefers_an_absolute_xdg_config_home() {
        let env = env_of(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/home/a")]);
        assert_eq!(
            config_path(&env),
            Some(PathBuf::from("/x/failsmall/config.toml"))
        );
        let env = env_of(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/a")]);
        assert_eq!(
            config_path(&env),
            Some(PathBuf::from("/home/a/.config/failsmall/config.toml"))
        );
        assert_eq!(config_path(&env_of(&[])), None);
    }

    #[test]
    fn a_broken_config_file_names_its_path() {
        let dir = temp_config("broken", "adress = 1\n");
        let env = env_of(&[("XDG_CONFIG_HOME", dir.path().to_str().unwrap())]);
        let error = resolve(None, None, &env).unwrap_err().to_string();
        assert!(error.contains("config.toml"), "{error}");
        assert!(error.contains("adress"), "{error}");
    }

    #[test]
    fn bad_addresses_are_refused_with_their_origin() {
        let env = env_of(&[]);
        let error = resolve(Some("ftp://x"), None, &env)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--addr"), "{error}");
        assert!(resolve(Some("  "), None, &env).is_err());
    }
}
