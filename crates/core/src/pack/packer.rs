//! The one packer every writer uses: backup's [`crate::repo::BlobWriter`] (and through it
//! `copy`), the cluster's state machine and prune's repack.
//!
//! ```text
//! add(blob) ─▶ an open pack (one of `open_packs`, chosen at random) ─▶ full? ─▶ FinishedPack
//! flush()   ─▶ every non-empty open pack ──────────────────────────────────▶ FinishedPack…
//! caller stores the pack (no lock held) ─▶ stored(pack) ─▶ every `index_every` packs: a batch
//!                                                          for one index file
//! ```
//! Several open packs, each blob going to one at random, resist chunk-size fingerprinting
//! (`docs/format.md` §6). A pack is closed before a blob would carry it past the target size, so
//! its buffer never grows; buffers of stored packs are reused. The packer does no I/O: storing
//! packs and index files, and what a failure means, are the caller's.

use std::sync::Mutex;

use rand::Rng;

use super::{BlobEntry, BlobKind, PackBuilder};
use crate::crypto::Crypto;
use crate::id::{BlobId, PackId};

/// Packs with their entries, as an index file lists them.
pub type PackEntries = Vec<(PackId, Vec<BlobEntry>)>;

/// A sealed pack ready to store.
pub struct FinishedPack {
    /// Pack id.
    pub id: PackId,
    /// Pack bytes.
    pub bytes: Vec<u8>,
    /// Its blobs.
    pub entries: Vec<BlobEntry>,
}

/// Groups sealed blobs into packs; safe to share between threads.
pub struct Packer {
    crypto: Crypto,
    /// Target pack size in bytes.
    target: usize,
    open: Mutex<Vec<PackBuilder>>,
    /// Buffers of stored packs, reused for new ones (no 16 MiB allocation per pack).
    spare: Mutex<Vec<Vec<u8>>>,
    /// Stored packs not yet in an index file.
    unindexed: Mutex<PackEntries>,
    index_every: usize,
}

impl Packer {
    /// A packer sealing pack headers with `crypto`, closing packs at `target` bytes, with
    /// `open_packs` packs open at once (at least one), handing out a batch for an index file
    /// every `index_every` stored packs (`usize::MAX`: only when asked, by
    /// [`Packer::take_unindexed`]).
    pub fn new(crypto: Crypto, target: usize, open_packs: usize, index_every: usize) -> Self {
        Packer {
            crypto,
            target,
            open: Mutex::new((0..open_packs.max(1)).map(|_| PackBuilder::new()).collect()),
            spare: Mutex::new(Vec::new()),
            unindexed: Mutex::new(Vec::new()),
            index_every: index_every.max(1),
        }
    }

    /// The target pack size in bytes.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Adds a sealed blob (`envelope`, of a `raw_len`-byte plaintext); returns a pack to store
    /// when one filled up. The pack is sealed outside the lock.
    pub fn add(
        &self,
        id: BlobId,
        kind: BlobKind,
        flags: u8,
        raw_len: u32,
        envelope: &[u8],
    ) -> Option<FinishedPack> {
        let target = self.target;
        let full = {
            let mut open = self.open.lock().expect("pack lock");
            let slot = match open.len() {
                1 => 0,
                n => rand::thread_rng().gen_range(0..n),
            };
            let pack = &mut open[slot];
            // Close the pack before it would cross the target, so its buffer never grows.
            let full = (!pack.is_empty() && pack.len() + envelope.len() > target)
                .then(|| std::mem::replace(pack, PackBuilder::with_buffer(self.buffer())));
            if pack.is_empty() && pack.capacity() < target.min(envelope.len()) {
                *pack = PackBuilder::with_buffer(self.buffer());
            }
            pack.add(id, kind, flags, raw_len, envelope);
            full
        };
        full.map(|p| self.finish(p))
    }

    /// Whether no blob waits in an open pack.
    pub fn is_empty(&self) -> bool {
        self.open
            .lock()
            .expect("pack lock")
            .iter()
            .all(PackBuilder::is_empty)
    }

    /// Takes out every non-empty open pack, sealed (at a seal, or the end of a session).
    pub fn flush(&self) -> Vec<FinishedPack> {
        self.take_open()
            .into_iter()
            .map(|p| self.finish(p))
            .collect()
    }

    /// Takes out every non-empty open pack unsealed, for a caller that seals them with
    /// [`Packer::finish`] outside its own lock.
    pub fn take_open(&self) -> Vec<PackBuilder> {
        let mut open = self.open.lock().expect("pack lock");
        open.iter_mut()
            .filter(|p| !p.is_empty())
            .map(std::mem::take)
            .collect()
    }

    /// Drops every open pack unstored (after a failure, when their blobs are forgotten).
    pub fn discard(&self) {
        for p in self.open.lock().expect("pack lock").iter_mut() {
            *p = PackBuilder::new();
        }
    }

    /// Records that `pack` is stored: its buffer is reused and its entries wait for an index
    /// file. Returns the packs for one when `index_every` of them are waiting.
    pub fn stored(&self, pack: FinishedPack) -> Option<PackEntries> {
        {
            let mut spare = self.spare.lock().expect("spare lock");
            if spare.is_empty() {
                spare.push(pack.bytes);
            }
        }
        let mut u = self.unindexed.lock().expect("index lock");
        u.push((pack.id, pack.entries));
        (u.len() >= self.index_every).then(|| std::mem::take(&mut *u))
    }

    /// Puts back packs taken by [`Packer::take_unindexed`] whose index file could not be
    /// written, ahead of those stored since.
    pub fn put_back_unindexed(&self, mut packs: PackEntries) {
        let mut u = self.unindexed.lock().expect("index lock");
        packs.append(&mut u);
        *u = packs;
    }

    /// Takes the stored packs not yet handed out for an index file.
    pub fn take_unindexed(&self) -> PackEntries {
        std::mem::take(&mut *self.unindexed.lock().expect("index lock"))
    }

    /// A pack buffer: a recycled one, or a new one sized for a full pack and its header.
    fn buffer(&self) -> Vec<u8> {
        let target = self.target;
        self.spare
            .lock()
            .expect("spare lock")
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(target + target / 64 + 4096))
    }

    /// Seals a pack taken out by [`Packer::take_open`].
    pub fn finish(&self, pack: PackBuilder) -> FinishedPack {
        let (id, bytes, entries) = pack.finish(&self.crypto);
        FinishedPack { id, bytes, entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Domain, MasterKey};
    use crate::pack::{header_location, parse_header};

    fn blob(crypto: &Crypto, n: u8, len: usize) -> (BlobId, Vec<u8>) {
        let plain = vec![n; len];
        (crypto.blob_id(&plain), crypto.seal(Domain::Blob, &plain))
    }

    #[test]
    fn closes_packs_before_the_target_and_batches_index_files() {
        let crypto = Crypto::encrypted(&MasterKey::generate());
        let packer = Packer::new(crypto.clone(), 1000, 1, 2);
        let mut finished = Vec::new();
        let mut added = Vec::new();
        for n in 0..10u8 {
            let (id, env) = blob(&crypto, n, 300);
            added.push(id);
            finished.extend(packer.add(id, BlobKind::Data, 0, 300, &env));
        }
        assert!(!packer.is_empty());
        finished.extend(packer.flush());
        assert!(packer.is_empty());
        // Every pack stays under the target and is a valid pack holding its entries.
        let mut seen = Vec::new();
        for p in &finished {
            let blobs: u32 = p.entries.iter().map(|e| e.stored_len).sum();
            assert!(blobs as usize <= 1000, "{blobs} bytes of blobs");
            let (off, len) =
                header_location(p.bytes.len() as u64, &p.bytes[p.bytes.len() - 8..], &p.id)
                    .unwrap();
            let parsed = parse_header(
                &crypto,
                &p.bytes[off as usize..(off + len) as usize],
                off,
                &p.id,
            )
            .unwrap();
            assert_eq!(parsed, p.entries);
            seen.extend(p.entries.iter().map(|e| e.id));
        }
        assert_eq!(seen, added, "one open pack keeps the order");
        // Closed only when the next blob would not fit.
        let env_len = blob(&crypto, 0, 300).1.len() as u32;
        for p in &finished[..finished.len() - 1] {
            let blobs: u32 = p.entries.iter().map(|e| e.stored_len).sum();
            assert!(
                blobs + env_len > 1000,
                "a pack of {blobs} bytes closed early"
            );
        }
        let count = finished.len();
        let batches: Vec<PackEntries> = finished
            .into_iter()
            .filter_map(|p| packer.stored(p))
            .collect();
        assert_eq!(batches.len(), count / 2);
        assert!(batches.iter().all(|b| b.len() == 2));
        assert_eq!(packer.take_unindexed().len(), count % 2);
        assert!(packer.take_unindexed().is_empty());
    }

    #[test]
    fn discard_forgets_open_packs() {
        let crypto = Crypto::plain([3; 32]);
        let packer = Packer::new(crypto.clone(), 1 << 20, 2, usize::MAX);
        let (id, env) = blob(&crypto, 1, 100);
        assert!(packer.add(id, BlobKind::Tree, 0, 100, &env).is_none());
        packer.discard();
        assert!(packer.is_empty());
        assert!(packer.flush().is_empty());
    }
}
