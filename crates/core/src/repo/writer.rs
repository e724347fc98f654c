//! Packs new blobs and uploads them, writing an index file every `INDEX_EVERY` packs.
//!
//! Several packs are open at once and each blob goes to one chosen at random (against
//! chunk-size fingerprinting, `docs/format.md` §6). `add` is called from many threads; a full pack
//! is handed back to the caller so uploads happen outside the lock, on whichever thread the
//! pipeline dedicates to them. After a failed upload the writer is poisoned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::Rng;

use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, PackId};
use crate::pack::{BlobEntry, BlobKind, PackBuilder};

use super::Repository;

/// Packs open at once.
pub const OPEN_PACKS: usize = 2;
/// An index file is written after this many uploaded packs.
pub const INDEX_EVERY: usize = 32;

/// Packs with their entries, as an index file lists them.
pub type PackEntries = Vec<(PackId, Vec<BlobEntry>)>;

/// A sealed pack ready to upload.
pub struct FinishedPack {
    /// Pack id.
    pub id: PackId,
    /// Pack bytes.
    pub bytes: Vec<u8>,
    /// Its blobs.
    pub entries: Vec<BlobEntry>,
}

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
    open: Mutex<Vec<PackBuilder>>,
    unindexed: Mutex<Vec<(PackId, Vec<BlobEntry>)>>,
    indexed: Mutex<Vec<(PackId, Vec<BlobEntry>)>>,
    poisoned: Mutex<Option<String>>,
    /// Buffers of uploaded packs, reused for new ones (no 16 MiB allocation per pack).
    spare: Mutex<Vec<Vec<u8>>>,
    packs: AtomicU64,
    pack_bytes: AtomicU64,
    index_files: AtomicU64,
}

impl<'r> BlobWriter<'r> {
    /// A writer into `repo`.
    pub fn new(repo: &'r Repository) -> Self {
        BlobWriter {
            repo,
            open: Mutex::new((0..OPEN_PACKS).map(|_| PackBuilder::new()).collect()),
            unindexed: Mutex::new(Vec::new()),
            indexed: Mutex::new(Vec::new()),
            poisoned: Mutex::new(None),
            spare: Mutex::new(Vec::new()),
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
        let target = self.repo.config().pack_size as usize;
        let full = {
            let mut open = self.open.lock().expect("pack lock");
            let slot = rand::thread_rng().gen_range(0..open.len());
            let pack = &mut open[slot];
            // Close the pack before it would cross the target, so its buffer never grows.
            let full = (!pack.is_empty() && pack.len() + envelope.len() > target)
                .then(|| std::mem::replace(pack, PackBuilder::with_buffer(self.buffer(target))));
            if pack.is_empty() && pack.capacity() < target.min(envelope.len()) {
                *pack = PackBuilder::with_buffer(self.buffer(target));
            }
            pack.add(id, kind, flags, raw_len, envelope);
            full
        };
        Ok(full.map(|p| self.finish(p)))
    }

    /// A pack buffer: a recycled one, or a new one sized for a full pack and its header.
    fn buffer(&self, target: usize) -> Vec<u8> {
        self.spare
            .lock()
            .expect("spare lock")
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(target + target / 64 + 4096))
    }

    fn recycle(&self, bytes: Vec<u8>) {
        let mut spare = self.spare.lock().expect("spare lock");
        if spare.is_empty() {
            spare.push(bytes);
        }
    }

    fn finish(&self, pack: PackBuilder) -> FinishedPack {
        let (id, bytes, entries) = pack.finish(self.repo.crypto());
        FinishedPack { id, bytes, entries }
    }

    /// Takes out every non-empty open pack (at the end of a session).
    pub fn flush(&self) -> Vec<FinishedPack> {
        let packs: Vec<PackBuilder> = {
            let mut open = self.open.lock().expect("pack lock");
            open.iter_mut()
                .filter(|p| !p.is_empty())
                .map(std::mem::take)
                .collect()
        };
        packs.into_iter().map(|p| self.finish(p)).collect()
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
        self.recycle(pack.bytes);
        let batch = {
            let mut u = self.unindexed.lock().expect("index lock");
            u.push((pack.id, pack.entries));
            (u.len() >= INDEX_EVERY).then(|| std::mem::take(&mut *u))
        };
        if let Some(batch) = batch {
            self.write_index(batch)?;
        }
        Ok(())
    }

    fn write_index(&self, batch: Vec<(PackId, Vec<BlobEntry>)>) -> Result<()> {
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
        let rest = std::mem::take(&mut *self.unindexed.lock().expect("index lock"));
        self.write_index(rest)?;
        let stats = WriterStats {
            packs: self.packs.load(Ordering::Relaxed),
            pack_bytes: self.pack_bytes.load(Ordering::Relaxed),
            index_files: self.index_files.load(Ordering::Relaxed),
        };
        Ok((stats, self.indexed.into_inner().expect("index lock")))
    }
}
