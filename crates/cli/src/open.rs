//! Finding the repository and its password: --repo / TIDEMARK_REPOSITORY, or the embedded
//! default repository (created on first use with a generated password file, mode 0600).

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::store::Store;
use tidemark_store::{LocalStore, S3Location, S3Store};
use zeroize::{Zeroize, Zeroizing};

use crate::args::Global;

/// The embedded default: `<data dir>/tidemark/{repository, password}`.
pub fn default_location() -> Result<(PathBuf, PathBuf)> {
    let base = dirs::data_dir()
        .context(
            "cannot find the user's data directory (set HOME or XDG_DATA_HOME), or pass --repo",
        )?
        .join("tidemark");
    Ok((base.join("repository"), base.join("password")))
}

/// The password in `path`, without its trailing line ends. Passwords are held in buffers that
/// are wiped when dropped; the core refuses an empty one.
pub fn read_password_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut s = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?,
    );
    let end = s
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    s.truncate(end);
    Ok(s)
}

/// The bytes of a password read as a `String`, which is moved, not copied.
fn secret(s: String) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(s.into_bytes())
}

/// Hands a password to the core's `Repository::open` callback (a plain `Vec`, which the core
/// wraps again): moved out, so no unwiped copy is left behind.
pub fn take(mut p: Zeroizing<Vec<u8>>) -> Vec<u8> {
    std::mem::take(&mut *p)
}

/// The password from the flags/environment, or a prompt on a terminal.
pub fn password(g: &Global, prompt: &str) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = &g.password_file {
        return read_password_file(f);
    }
    if let Ok(p) = std::env::var("TIDEMARK_PASSWORD") {
        return Ok(secret(p));
    }
    if std::io::stdin().is_terminal() {
        return Ok(secret(
            rpassword::prompt_password(prompt).context("reading the password")?,
        ));
    }
    bail!("no password given: set TIDEMARK_PASSWORD, TIDEMARK_PASSWORD_FILE or --password-file")
}

/// A new password: from a file, TIDEMARK_NEW_PASSWORD, or asked twice.
pub fn new_password(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if let Ok(p) = std::env::var("TIDEMARK_NEW_PASSWORD") {
        return Ok(secret(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no new password given: set TIDEMARK_NEW_PASSWORD or --new-password-file");
    }
    let a = secret(rpassword::prompt_password("enter new password: ")?);
    let b = secret(rpassword::prompt_password("enter it again: ")?);
    if a != b {
        bail!("the passwords do not match");
    }
    if a.is_empty() {
        bail!("{}", tidemark_core::crypto::EMPTY_PASSWORD);
    }
    Ok(a)
}

/// The password for a new repository: given (flag, environment) or asked twice.
pub fn new_password_or_given(g: &Global) -> Result<Zeroizing<Vec<u8>>> {
    if g.password_file.is_some() || std::env::var_os("TIDEMARK_PASSWORD").is_some() {
        return password(g, "");
    }
    new_password(None)
}

/// The store named by the flags, or the default one.
pub fn store(g: &Global) -> Result<(Arc<dyn Store>, bool)> {
    match &g.repo {
        Some(p) => Ok((store_at(p)?, false)),
        None => Ok((Arc::new(LocalStore::new(default_location()?.0)), true)),
    }
}

/// The store at a repository location: `s3:[http[s]://]HOST[:PORT]/BUCKET[/PREFIX]` is an S3
/// bucket (credentials from the AWS environment variables), anything else a directory.
pub fn store_at(location: &Path) -> Result<Arc<dyn Store>> {
    if let Some(s) = location.to_str() {
        if let Some(parsed) = S3Location::parse(s) {
            return Ok(Arc::new(S3Store::open(parsed?)?));
        }
    }
    Ok(Arc::new(LocalStore::new(location)))
}

/// The base directory of the local snapshot cache: --cache-dir / TIDEMARK_CACHE_DIR, else
/// `$XDG_CACHE_HOME/tidemark`; none with --no-cache or without a cache directory.
pub fn cache_dir(g: &Global) -> Option<PathBuf> {
    if g.no_cache {
        return None;
    }
    g.cache_dir
        .clone()
        .or_else(|| dirs::cache_dir().map(|d| d.join("tidemark")))
}

/// Opens the repository; the default one is created on first use.
pub fn open(g: &Global) -> Result<Repository> {
    let (store, is_default) = store(g)?;
    let mut repo = if is_default {
        open_default(g, store)?
    } else {
        Repository::open(store, &mut || {
            password(g, "enter password for repository: ")
                .map(take)
                .map_err(|e| tidemark_core::Error::Invalid(format!("{e:#}")))
        })?
    };
    repo.set_cache_dir(cache_dir(g));
    if let Some(lease) = g.lease_for_testing {
        repo.set_lease(lease);
    }
    Ok(repo)
}

fn open_default(g: &Global, store: Arc<dyn Store>) -> Result<Repository> {
    let (dir, pw_file) = default_location()?;
    let explicit = g.password_file.is_some() || std::env::var_os("TIDEMARK_PASSWORD").is_some();
    if !dir.join("config").exists() {
        let pw = if explicit {
            password(g, "")?
        } else {
            let mut raw = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut raw);
            let pw = secret(hex::encode(raw));
            raw.zeroize();
            std::fs::create_dir_all(pw_file.parent().expect("has a parent"))
                .with_context(|| format!("creating {}", dir.display()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pw_file)
                .with_context(|| format!("creating password file {}", pw_file.display()))?;
            f.write_all(&pw)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            pw
        };
        let opts = InitOptions {
            password: Some(pw),
            hostname: hostname(),
            username: username(),
            ..InitOptions::default()
        };
        let repo = Repository::init(store, &opts)?;
        if !g.quiet {
            eprintln!("created the default repository at {}", dir.display());
            if !explicit {
                eprintln!("its password is in {} (readable only by you): keep a copy somewhere safe, without it the backups cannot be read", pw_file.display());
            }
        }
        return Ok(repo);
    }
    let repo = Repository::open(store, &mut || {
        if explicit || !pw_file.exists() {
            password(g, "enter password for repository: ")
                .map(take)
                .map_err(|e| tidemark_core::Error::Invalid(format!("{e:#}")))
        } else {
            read_password_file(&pw_file)
                .map(take)
                .map_err(|e| tidemark_core::Error::Invalid(format!("{e:#}")))
        }
    })?;
    Ok(repo)
}

/// This machine's hostname.
pub fn hostname() -> String {
    nix_hostname().unwrap_or_else(|| "localhost".into())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The current user's name.
pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
}

/// Exclude patterns from `--exclude` plus every line of each `--exclude-file`.
pub fn excludes(patterns: &[String], files: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = patterns.to_vec();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading exclude file {}", f.display()))?;
        out.extend(text.lines().map(str::to_owned));
    }
    Ok(out)
}
