//! The state directory (`docs/format.md` §11): where it is, who holds it, what it belongs to, and
//! the status file a running daemon refreshes for `tidemark status`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `$XDG_STATE_HOME/tidemark/<repo id, 16 hex>-<BLAKE3 of the watched path, 16 hex>`.
pub fn default_state_dir(state_home: &Path, repo_id_hex: &str, watched: &Path) -> PathBuf {
    let path_hash = blake3::hash(watched.as_os_str().as_encoded_bytes()).to_hex();
    state_home.join("tidemark").join(format!(
        "{}-{}",
        &repo_id_hex[..16.min(repo_id_hex.len())],
        &path_hash[..16]
    ))
}

/// `watch.json`: which repository and path a state directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchJson {
    /// Format version (1).
    pub version: u32,
    /// The repository location, as given.
    pub repository: String,
    /// The repository id (hex).
    pub repository_id: String,
    /// The watched path (absolute).
    pub path: PathBuf,
}

/// An open, locked state directory.
pub struct StateDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates or opens `path`, takes its lock, and checks (or records) what it belongs to.
    /// `path: None` in `owner` skips the path check (`recover` works without the source).
    ///
    /// The directory and each missing parent are created mode 0700 (paths and metadata of the
    /// watched tree are in the clear in it) and fsynced into their parents, so the log written
    /// inside survives a crash; existing directories keep their mode.
    pub fn open(path: &Path, owner: &WatchJson, check_path: bool) -> Result<Self> {
        create_state_dir(path)?;
        let lock_path = path.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("opening", &lock_path, e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            Error::Invalid(format!(
                "state directory {} is in use by another tidemark process ({e})",
                path.display()
            ))
        })?;
        let json_path = path.join("watch.json");
        match fs::read(&json_path) {
            Ok(b) => {
                let found: WatchJson = serde_json::from_slice(&b).map_err(|e| {
                    Error::Invalid(format!("{} is damaged: {e}", json_path.display()))
                })?;
                if found.repository_id != owner.repository_id {
                    return Err(Error::Invalid(format!(
                        "state directory {} belongs to repository {} at {}, not {} (use another --state-dir)",
                        path.display(),
                        found.repository_id,
                        found.repository,
                        owner.repository_id
                    )));
                }
                if check_path && found.path != owner.path {
                    return Err(Error::Invalid(format!(
                        "state directory {} belongs to the watched path {}, not {}",
                        path.display(),
                        found.path.display(),
                        owner.path.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&json_path, &serde_json::to_vec_pretty(owner).expect("JSON"))?;
            }
            Err(e) => return Err(Error::io("reading", &json_path, e)),
        }
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the state directory says it belongs to.
    pub fn owner(path: &Path) -> Result<WatchJson> {
        let p = path.join("watch.json");
        let b = fs::read(&p).map_err(|e| Error::io("reading", &p, e))?;
        serde_json::from_slice(&b)
            .map_err(|e| Error::Invalid(format!("{} is damaged: {e}", p.display())))
    }
}

/// Creates a state directory and its missing parents, mode 0700, each fsynced into its parent.
fn create_state_dir(path: &Path) -> Result<()> {
    tidemark_core::dir::create_all(path, STATE_DIR_MODE)
        .map_err(|e| Error::io("creating state directory", path, e))
}

/// The mode of the directories tidemark creates for its state: the owner's alone.
const STATE_DIR_MODE: u32 = 0o700;

/// Writes `bytes` to `path` through a temporary file and a rename (readers never see half).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        p.metadata().unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_dir_and_missing_parents_are_created_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        let path = default_state_dir(
            &home.join(".local/state"),
            &"ab".repeat(32),
            Path::new("/w"),
        );
        let owner = WatchJson {
            version: 1,
            repository: "/repo".into(),
            repository_id: "ab".repeat(32),
            path: "/w".into(),
        };
        let state = StateDir::open(&path, &owner, true).unwrap();
        for p in [
            home.join(".local"),
            home.join(".local/state"),
            home.join(".local/state/tidemark"),
            path.clone(),
        ] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
        assert_eq!(mode(&home), 0o755, "an existing parent keeps its mode");
        drop(state);
        // Opening again: the directory exists, nothing changes.
        StateDir::open(&path, &owner, true).unwrap();
        assert_eq!(mode(&path), 0o700);
    }
}
