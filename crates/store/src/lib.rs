//! `Store` adapters for tidemark repositories. [`LocalStore`]: a directory on a local or mounted
//! filesystem, with atomic, durable puts (write temp, fsync, rename, fsync directory) and durable
//! deletes (unlink, fsync directory). [`S3Store`]: a prefix of an S3-compatible bucket.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::RngCore;
use tidemark_core::dir::{self as durable_dir, sync as sync_dir};
use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::store::{Store, CONFIG_ID};
use tidemark_core::{Error, Result};

mod s3;
pub use s3::{S3Location, S3Store, MULTIPART_OVER};

/// A repository in a local directory (layout in `docs/format.md` §1).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Object directories known to be durable, with every directory between them and the root:
    /// fsynced into their parents by this process. A directory that merely exists may have been
    /// made a moment ago by another writer that has not fsynced its parent yet, so an object put
    /// into it is not acknowledged before this process has fsynced that parent itself, once.
    durable_dirs: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalStore {
    /// A store rooted at `root`; directories are created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            durable_dirs: Arc::default(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, kind: Kind, id: &ObjectId) -> PathBuf {
        match kind {
            Kind::Config => self.root.clone(),
            Kind::Pack | Kind::Blob | Kind::Tree => self.root.join("data").join(&id.to_hex()[..2]),
            _ => self.root.join(kind.dir_name()),
        }
    }

    fn path(&self, kind: Kind, id: &ObjectId) -> PathBuf {
        if kind == Kind::Config {
            self.root.join("config")
        } else {
            self.dir(kind, id).join(id.to_hex())
        }
    }

    /// Creates `dir` (an object directory: the root, or below it) if missing, and makes sure its
    /// entry, and each one between it and the root, is durable before anything in it is
    /// acknowledged (see `durable_dirs`).
    fn durable_dir(&self, dir: &Path) -> Result<()> {
        let mut known = self
            .durable_dirs
            .lock()
            .expect("no panics while it is held");
        if known.contains(dir) {
            return Ok(());
        }
        durable_dir::create_all(dir, 0o777).map_err(|e| Error::io("creating directory", dir, e))?;
        let mut d = dir;
        while d != self.root {
            let Some(parent) = d.parent() else { break };
            sync_dir(parent).map_err(|e| Error::io("syncing directory", parent, e))?;
            d = parent;
        }
        known.insert(dir.to_path_buf());
        Ok(())
    }
}

impl Store for LocalStore {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        let dir = self.dir(kind, id);
        let final_path = self.path(kind, id);
        if kind != Kind::Config && final_path.exists() {
            // Same id, same bytes. But a concurrent put may have renamed it into place and not yet
            // fsynced the directory: acknowledge only once the name is durable.
            self.durable_dir(&dir)?;
            return sync_dir(&dir).map_err(|e| Error::io("syncing directory", &dir, e));
        }
        self.durable_dir(&dir)?;
        let tmp = dir.join(format!(".tmp-{:016x}", rand::thread_rng().next_u64()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &final_path)?;
            sync_dir(&dir)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("writing", &final_path, e)
        })
    }

    fn put_new(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        let dir = self.dir(kind, id);
        let final_path = self.path(kind, id);
        self.durable_dir(&dir)?;
        let tmp = dir.join(format!(".tmp-{:016x}", rand::thread_rng().next_u64()));
        // link(2) fails if the name exists, so of two racing creators exactly one wins.
        let write = || -> std::io::Result<bool> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            let created = match fs::hard_link(&tmp, &final_path) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            fs::remove_file(&tmp)?;
            sync_dir(&dir)?;
            Ok(created)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("writing", &final_path, e)
        })
    }

    fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        let path = self.path(kind, id);
        let mut f = File::open(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::NotFound {
                kind,
                id: if kind == Kind::Config {
                    "config".into()
                } else {
                    id.to_hex()
                },
            },
            _ => Error::io("opening", &path, e),
        })?;
        let read = |f: &mut File| -> std::io::Result<Vec<u8>> {
            match range {
                None => {
                    let mut v = Vec::new();
                    f.read_to_end(&mut v)?;
                    Ok(v)
                }
                Some(r) => {
                    let len = r.end.saturating_sub(r.start) as usize;
                    let mut v = vec![0; len];
                    f.seek(SeekFrom::Start(r.start))?;
                    let mut got = 0;
                    while got < len {
                        match f.read(&mut v[got..])? {
                            0 => break,
                            n => got += n,
                        }
                    }
                    v.truncate(got);
                    Ok(v)
                }
            }
        };
        read(&mut f).map_err(|e| Error::io("reading", &path, e))
    }

    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        self.scan(kind, true)
    }

    fn list_ids(&self, kind: Kind) -> Result<Vec<ObjectId>> {
        Ok(self
            .scan(kind, false)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        let p = self.path(kind, id);
        match fs::remove_file(&p) {
            Ok(()) => {}
            // Missing: a concurrent delete may have unlinked it and not fsynced the directory
            // yet, so the directory is synced here too before the object is reported gone.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("deleting", &p, e)),
        }
        let dir = durable_dir::parent_of(&p);
        match sync_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()), // never created: nothing to delete
            Err(e) => Err(Error::io("syncing directory", dir, e)),
        }
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

impl LocalStore {
    /// The objects of a kind; sizes (one `stat` each) only with `with_len`.
    fn scan(&self, kind: Kind, with_len: bool) -> Result<Vec<(ObjectId, u64)>> {
        if kind == Kind::Config {
            let p = self.root.join("config");
            return Ok(p
                .metadata()
                .map(|m| vec![(CONFIG_ID, m.len())])
                .unwrap_or_default());
        }
        let base = self.root.join(kind.dir_name());
        let dirs: Vec<PathBuf> = if kind == Kind::Pack {
            match fs::read_dir(&base) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect(),
                Err(e) if e.kind() == ErrorKind::NotFound => vec![],
                Err(e) => return Err(Error::io("listing", &base, e)),
            }
        } else {
            vec![base]
        };
        let mut out = Vec::new();
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("listing", &d, e)),
            };
            for e in rd {
                let e = e.map_err(|e| Error::io("listing", &d, e))?;
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                // Temp files of interrupted writes start with '.', and are not objects.
                let Some(id) = ObjectId::from_hex(name) else {
                    continue;
                };
                let len = if with_len {
                    match e.metadata() {
                        Ok(m) => m.len(),
                        // Deleted between the directory read and the stat: not listed, as if
                        // the listing had been taken a moment later.
                        Err(err) if err.kind() == ErrorKind::NotFound => continue,
                        Err(err) => return Err(Error::io("stat", e.path(), err)),
                    }
                } else {
                    0
                };
                out.push((id, len));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        tidemark_testkit::store_suite(&LocalStore::new(dir.path().join("repo")));
        tidemark_testkit::store_create_race(&LocalStore::new(dir.path().join("race")));
    }

    #[test]
    fn listing_tolerates_entries_deleted_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        tidemark_testkit::store_list_while_deleting(&LocalStore::new(dir.path()));
    }

    #[test]
    fn temp_files_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        s.put(Kind::Index, &ObjectId([1; 32]), b"x").unwrap();
        fs::write(dir.path().join("index/.tmp-123"), b"partial").unwrap();
        assert_eq!(s.list(Kind::Index).unwrap(), vec![(ObjectId([1; 32]), 1)]);
    }
}
