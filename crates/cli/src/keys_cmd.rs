//! `failsmall keys`: the offline root and the online keys (README: Keys).
//!
//! Every command works on files, never on a server: `init-root` makes N root key shares and
//! a first root document; `add`, `rotate`, `revoke` and `new-epoch` draft the next root
//! version (its signatures cleared); each share holder runs `sign` on the draft, on their own
//! machine, and the signatures gather in the file; `show` says what a root names and whether
//! its threshold is met. The signed `root.json` goes into the server's data dir (served to
//! agents at `GET /v1/root`) and, once, to each agent at install (`--root`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use failsmall_core::trust::{RootDocument, SignedRoot, parse_seed, public_key_hex};
use failsmall_server::signing::{self, KEY_FILE, NEXT_KEY_FILE};

use crate::Outcome;

/// Most root key shares `init-root` makes.
pub const SHARES_MAX: u32 = failsmall_core::trust::ROLE_KEYS_MAX as u32;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make N root key shares (one file each, for N people) and the first root document,
    /// unsigned: then M holders run `keys sign`.
    InitRoot(InitRootArgs),
    /// Sign a root document with one root key share (offline; each holder in turn).
    Sign(SignArgs),
    /// Draft the next root version with one more online key.
    Add(AddArgs),
    /// Draft the next root version with a new online key in place of the server's current
    /// one; the new key waits in the data dir until the signed root names it.
    Rotate(RotateArgs),
    /// Draft the next root version that revokes an online key: agents refuse what it signs.
    Revoke(RevokeArgs),
    /// Draft the next root version of a new epoch: agents start their sequence check afresh
    /// (a server restored from an older backup).
    NewEpoch(EditArgs),
    /// Show what a root names and whether its threshold of signatures is met.
    Show(ShowArgs),
    /// Make one private key file (0600) and print its public key: a break-glass key for one
    /// holder, made on their own machine.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The private key file to make; must not exist.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitRootArgs {
    /// Where to write the shares (`root-share-1.key`...) and `root.json`; must not hold them yet.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How many root key shares (N).
    #[arg(long, default_value_t = 3)]
    pub shares: u32,
    /// How many shares must sign a root document (M).
    #[arg(long, default_value_t = 2)]
    pub threshold: u32,
    /// The server's data dir: its online key is named by the root (made there if it has none).
    #[arg(long, value_name = "DIR", required_unless_present = "online_key")]
    pub data_dir: Option<PathBuf>,
    /// An online key's public key (hex), instead of --data-dir.
    #[arg(long, value_name = "HEX")]
    pub online_key: Option<String>,
    /// How long the root is valid; agents refuse documents under an expired root.
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    pub expires_in: String,
    /// A break-glass key holder's public key (hex; repeatable). None: the root key shares
    /// are the break-glass keys.
    #[arg(long, value_name = "HEX")]
    pub break_glass_key: Vec<String>,
    /// How many break-glass keys must sign an order [default: --threshold].
    #[arg(long, value_name = "M")]
    pub break_glass_threshold: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The root document to sign; the signature is added to it.
    #[arg(long, value_name = "FILE")]
    pub root: PathBuf,
    /// This holder's root key share.
    #[arg(long, value_name = "FILE")]
    pub share: PathBuf,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The current root document; the next version replaces it in place.
    #[arg(long, value_name = "FILE")]
    pub root: PathBuf,
    /// How long the next version is valid.
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    pub expires_in: String,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub edit: EditArgs,
    /// The online key to add (hex public key).
    #[arg(long, value_name = "HEX", required_unless_present = "data_dir")]
    pub key: Option<String>,
    /// Or: the server's data dir, whose key is added; where the key file is lost, a new one
    /// is made there.
    #[arg(long, value_name = "DIR", conflicts_with = "key")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub edit: EditArgs,
    /// The server's data dir: a new key is made there as `signing.key.next`, and takes over
    /// at the first server start whose root names it.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub edit: EditArgs,
    /// The online key to revoke (hex public key).
    #[arg(long, value_name = "HEX")]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The root document to show.
    #[arg(long, value_name = "FILE")]
    pub root: PathBuf,
}

pub fn run(command: &KeysCommand) -> anyhow::Result<Outcome> {
    match command {
        KeysCommand::InitRoot(args) => init_root(args),
        KeysCommand::Sign(args) => sign(args),
        KeysCommand::Add(args) => add(args),
        KeysCommand::Rotate(args) => rotate(args),
        KeysCommand::Revoke(args) => revoke(args),
        KeysCommand::NewEpoch(args) => edit(args, "a new epoch", |document| {
            document.epoch = document.epoch.saturating_add(1);
            Ok(())
        }),
        KeysCommand::Show(args) => show(args),
        KeysCommand::Generate(args) => generate(args),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn expires_ms(expires_in: &str) -> anyhow::Result<u64> {
    let duration = humantime::parse_duration(expires_in)
        .with_context(|| format!("--expires-in {expires_in:?}: expected e.g. 90d or 8h"))?;
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        bail!("--expires-in {expires_in:?}: a root must be valid for some time");
    }
    Ok(now_ms().saturating_add(ms))
}

fn read_root(path: &Path) -> anyhow::Result<SignedRoot> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SignedRoot::parse(&text).with_context(|| format!("{}", path.display()))
}

/// Writes `root` to `path` whole or not at all.
fn write_root(path: &Path, root: &SignedRoot) -> anyhow::Result<()> {
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, root.to_text())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn init_root(args: &InitRootArgs) -> anyhow::Result<Outcome> {
    if args.shares == 0 || args.shares > SHARES_MAX {
        bail!("--shares {}: expected 1 to {SHARES_MAX}", args.shares);
    }
    if args.threshold == 0 || args.threshold > args.shares {
        bail!(
            "--threshold {}: expected 1 to {} (--shares)",
            args.threshold,
            args.shares
        );
    }
    let online = online_key(args.online_key.as_deref(), args.data_dir.as_deref())?;
    for key in &args.break_glass_key {
        failsmall_core::trust::parse_public_key(key)
            .with_context(|| format!("--break-glass-key {key}"))?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let root_path = args.out.join("root.json");
    if root_path.exists() {
        bail!(
            "{} exists: a root is made once (`keys add`/`rotate`/`revoke` draft the next version)",
            root_path.display()
        );
    }
    let expires_ms = expires_ms(&args.expires_in)?;
    let mut root_keys = Vec::new();
    for share in 1..=args.shares {
        let name = format!("root-share-{share}.key");
        let public = signing::create_key_file(&args.out, &name)
            .with_context(|| format!("making {}", args.out.join(&name).display()))?;
        println!(
            "root key share {share}: {} ({public})",
            args.out.join(&name).display()
        );
        root_keys.push(public);
    }
    let root = SignedRoot {
        signed: RootDocument {
            version: 1,
            epoch: 1,
            expires_ms,
            threshold: args.threshold,
            root_keys: root_keys.clone(),
            online_keys: vec![online],
            revoked_keys: vec![],
            break_glass_threshold: args.break_glass_threshold.unwrap_or(args.threshold),
            break_glass_keys: if args.break_glass_key.is_empty() {
                root_keys
            } else {
                args.break_glass_key
                    .iter()
                    .map(|k| k.trim().to_lowercase())
                    .collect()
            },
        },
        signatures: vec![],
    };
    root.signed.validate()?;
    write_root(&root_path, &root)?;
    println!(
        "wrote {} (version 1, unsigned). Give each share to its holder and delete it here; \
         {} of them sign with `failsmall keys sign --root {} --share FILE`, then copy the \
         signed root.json into the server's data dir and give it to each agent (--root).",
        root_path.display(),
        args.threshold,
        root_path.display()
    );
    Ok(Outcome::Success)
}

/// The online key: given, or the server data dir's (made there if the dir has none).
fn online_key(key: Option<&str>, data_dir: Option<&Path>) -> anyhow::Result<String> {
    if let Some(key) = key {
        failsmall_core::trust::parse_public_key(key)?;
        return Ok(key.trim().to_lowercase());
    }
    let Some(dir) = data_dir else {
        bail!("give --key HEX or --data-dir DIR");
    };
    if let Some(public) = signing::key_file_public(dir, KEY_FILE)? {
        return Ok(public);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let public = signing::create_key(dir)?;
    println!(
        "made a new online key {} ({public})",
        dir.join(KEY_FILE).display()
    );
    Ok(public)
}

fn sign(args: &SignArgs) -> anyhow::Result<Outcome> {
    let mut root = read_root(&args.root)?;
    let text = std::fs::read_to_string(&args.share)
        .with_context(|| format!("reading {}", args.share.display()))?;
    let seed = parse_seed(&text).with_context(|| {
        format!(
            "{}: expected 64 hex characters (a root key share)",
            args.share.display()
        )
    })?;
    let public = public_key_hex(&seed);
    if !root.signed.root_keys.iter().any(|k| k == &public) {
        bail!(
            "{} is not one of the root keys of {} (its key is {public})",
            args.share.display(),
            args.root.display()
        );
    }
    root.signed.validate()?;
    root.sign_with(&seed);
    write_root(&args.root, &root)?;
    let valid = failsmall_core::trust::count_signers(
        &root.signed.signed_message(),
        &root.signatures,
        &root.signed.root_keys,
    );
    println!(
        "signed root version {} (epoch {}) with {public}: {valid} of {} signatures needed",
        root.signed.version, root.signed.epoch, root.signed.threshold
    );
    Ok(Outcome::Success)
}

/// Drafts the next version of the root at `args.root`: `change`, a higher version, a new
/// expiry, signatures cleared.
fn edit(
    args: &EditArgs,
    what: &str,
    change: impl FnOnce(&mut RootDocument) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let mut root = read_root(&args.root)?;
    change(&mut root.signed)?;
    root.signed.version = root.signed.version.saturating_add(1);
    root.signed.expires_ms = expires_ms(&args.expires_in)?;
    root.signatures.clear();
    root.signed.validate()?;
    write_root(&args.root, &root)?;
    println!(
        "drafted root version {} (epoch {}): {what}. Now {} root key holders sign it \
         (`failsmall keys sign --root {} --share FILE`); then copy it into the server's data \
         dir and restart the server. Agents fetch it themselves.",
        root.signed.version,
        root.signed.epoch,
        root.signed.threshold,
        args.root.display()
    );
    Ok(Outcome::Success)
}

fn add(args: &AddArgs) -> anyhow::Result<Outcome> {
    let key = online_key(args.key.as_deref(), args.data_dir.as_deref())?;
    edit(&args.edit, &format!("online key {key} added"), |document| {
        if document.is_online_key(&key) {
            bail!("{key} is already an online key");
        }
        document.revoked_keys.retain(|k| k != &key);
        document.online_keys.push(key.clone());
        Ok(())
    })
}

fn rotate(args: &RotateArgs) -> anyhow::Result<Outcome> {
    let current = signing::key_file_public(&args.data_dir, KEY_FILE)?;
    let next = match signing::key_file_public(&args.data_dir, NEXT_KEY_FILE)? {
        Some(next) => next,
        None => signing::create_key_file(&args.data_dir, NEXT_KEY_FILE)?,
    };
    edit(
        &args.edit,
        &format!("online key {next} in place of the server's current one"),
        |document| {
            if let Some(current) = &current {
                document.online_keys.retain(|k| k != current);
            }
            if !document.online_keys.contains(&next) {
                document.online_keys.push(next.clone());
            }
            Ok(())
        },
    )
}

fn revoke(args: &RevokeArgs) -> anyhow::Result<Outcome> {
    let key = args.key.trim().to_lowercase();
    edit(
        &args.edit,
        &format!("online key {key} revoked"),
        |document| {
            document.online_keys.retain(|k| k != &key);
            if !document.revoked_keys.contains(&key) {
                document.revoked_keys.push(key.clone());
            }
            Ok(())
        },
    )
}

fn generate(args: &GenerateArgs) -> anyhow::Result<Outcome> {
    let (dir, name) = match (args.out.parent(), args.out.file_name()) {
        (Some(dir), Some(name)) => (dir, name.to_string_lossy().into_owned()),
        _ => bail!("--out {}: expected a file path", args.out.display()),
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let public = signing::create_key_file(dir, &name)
        .with_context(|| format!("making {}", args.out.display()))?;
    println!("{public}");
    Ok(Outcome::Success)
}

fn show(args: &ShowArgs) -> anyhow::Result<Outcome> {
    let root = read_root(&args.root)?;
    let document = &root.signed;
    let valid = failsmall_core::trust::count_signers(
        &document.signed_message(),
        &root.signatures,
        &document.root_keys,
    );
    println!(
        "root version {} epoch {}, expires {}",
        document.version,
        document.epoch,
        failsmall_core::domain::rfc3339_from_ms(document.expires_ms.min(253_402_300_799_000))
    );
    println!(
        "root keys ({} of {} must sign):",
        document.threshold,
        document.root_keys.len()
    );
    for key in &document.root_keys {
        let signed = root.signatures.iter().any(|s| &s.key == key);
        println!("  {key}{}", if signed { "  signed" } else { "" });
    }
    println!("online keys:");
    for key in &document.online_keys {
        println!("  {key}");
    }
    for key in &document.revoked_keys {
        println!("revoked: {key}");
    }
    println!(
        "break-glass keys ({} of {} must sign):",
        document.break_glass_threshold,
        document.break_glass_keys.len()
    );
    for key in &document.break_glass_keys {
        println!("  {key}");
    }
    let met = valid >= document.threshold as usize;
    println!(
        "signatures: {valid} valid of {} needed: {}",
        document.threshold,
        if met { "complete" } else { "threshold NOT met" }
    );
    Ok(if met {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}
