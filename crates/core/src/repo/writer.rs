//! Packs new blobs and stores them, writing an index file every [`INDEX_EVERY`] packs: the
//! repository's side of the [`Packer`] (stores, index files, the in-memory index, poisoning).
//!
//! `add` is called from many threads; a full pack is handed back to the caller so that uploads
//! happen outside every lock, on whichever thread the pipeline dedicates to them. After a failed
//! upload the writer is poisoned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, PackId};
use crate::pack::{BlobEntry, BlobKind, FinishedPack, PackEntries, Packer};

use super::Repository;

/// Packs open at once.
pub const OPEN_PACKS: usize = 2;
/// An index file is written after this many uploaded packs.
pub const INDEX_EVERY: usize = 32;

/// What the writer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterStats {
    /// Packs uploaded.
    pub packs: u64,
    /// Bytes of packs uploaded.
    pub pack_bytes: u64,
    /// Index files written.
    pub index_files: u64,
}

/// Concurrent blob packer for one writing session.
pub struct BlobWriter<'r> {
    repo: &'r Repository,
    packer: Packer,
    indexed: Mutex<Vec<(PackId, Vec<BlobEntry>)>>,
    poisoned: Mutex<Option<String>>,
    packs: AtomicU64,
    pack_bytes: AtomicU64,
    index_files: AtomicU64,
}

impl<'r> BlobWriter<'r> {
    /// A writer into `repo`.
    pub fn new(repo: &'r Repository) -> Self {
        BlobWriter {
            repo,
            packer: Packer::new(
                repo.crypto().clone(),
                repo.config().pack_size as usize,
                OPEN_PACKS,
                INDEX_EVERY,
            ),
            indexed: Mutex::new(Vec::new()),
            poisoned: Mutex::new(None),
            packs: AtomicU64::new(0),
            pack_bytes: AtomicU64::new(0),
            index_files: AtomicU64::new(0),
        }
    }

    fn check(&self) -> Result<()> {
        match &*self.poisoned.lock().expect("poison lock") {
            Some(msg) => Err(Error::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }

    /// Adds a sealed blob; returns a pack to upload when one filled up.
    pub fn add(
        &self,
        id: BlobId,
        kind: BlobKind,
        flags: u8,
        raw_len: u32,
        envelope: &[u8],
    ) -> Result<Option<FinishedPack>> {
        self.check()?;
        Ok(self.packer.add(id, kind, flags, raw_len, envelope))
    }

    /// Takes out every non-empty open pack (at the end of a session).
    pub fn flush(&self) -> Vec<FinishedPack> {
        self.packer.flush()
    }

    /// Stores a finished pack; writes an index file every `INDEX_EVERY` packs.
    pub fn upload(&self, pack: FinishedPack) -> Result<()> {
        self.check()?;
        if let Err(e) = self.repo.store().put(Kind::Pack, &pack.id, &pack.bytes) {
            *self.poisoned.lock().expect("poison lock") =
                Some(format!("uploading pack {}: {e}", pack.id.short()));
            return Err(e);
        }
        self.packs.fetch_add(1, Ordering::Relaxed);
        self.pack_bytes
            .fetch_add(pack.bytes.len() as u64, Ordering::Relaxed);
        if let Some(batch) = self.packer.stored(pack) {
            self.write_index(batch)?;
        }
        Ok(())
    }

    fn write_index(&self, batch: PackEntries) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.repo.write_index(&batch) {
            *self.poisoned.lock().expect("poison lock") =
                Some(format!("writing an index file: {e}"));
            return Err(e);
        }
        self.index_files.fetch_add(1, Ordering::Relaxed);
        self.indexed.lock().expect("index lock").extend(batch);
        Ok(())
    }

    /// Uploads what is left and writes the last index file. Returns the stats and every pack
    /// this writer indexed, for the caller's in-memory index.
    pub fn finish_all(self) -> Result<(WriterStats, PackEntries)> {
        for p in self.flush() {
            self.upload(p)?;
        }
        self.write_index(self.packer.take_unindexed())?;
        let stats = WriterStats {
            packs: self.packs.load(Ordering::Relaxed),
            pack_bytes: self.pack_bytes.load(Ordering::Relaxed),
            index_files: self.index_files.load(Ordering::Relaxed),
        };
        Ok((stats, self.indexed.into_inner().expect("index lock")))
    }
}
