//! The blob index: which pack holds each blob, at which offset (`docs/format.md` §7).
//!
//! [`Index`] is the in-memory union of all index files; [`SharedIndex`] is the one every handle
//! of a repository shares, behind its own short lock; [`encode`]/[`decode`] are the file format.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use chrono::{DateTime, Utc};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, ObjectId, PackId};
use crate::pack::{BlobEntry, BlobKind, HEADER_ENTRY_LEN};

/// Index file magic.
pub const INDEX_MAGIC: &[u8; 4] = b"TMIX";
const ENTRY_LEN: usize = HEADER_ENTRY_LEN + 4;

/// A blob's location, packed to 20 bytes; the pack is a position in [`Index::packs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pack: u32,
    /// Offset of the envelope in the pack.
    pub offset: u32,
    /// Length of the envelope.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    kind_flags: u8,
}

impl Location {
    /// Data or tree.
    pub fn kind(&self) -> BlobKind {
        if self.kind_flags & 0x80 == 0 {
            BlobKind::Data
        } else {
            BlobKind::Tree
        }
    }

    /// Flag bits as in the pack header.
    pub fn flags(&self) -> u8 {
        self.kind_flags & 0x7f
    }

    /// The envelope's byte range in its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.stored_len)
    }
}

/// The in-memory index: blob id → location; about 56 bytes per blob.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, Location>,
    /// Packs condemned by prune (`docs/format.md` §19): readable, never reused.
    condemned: HashSet<PackId>,
    condemned_pos: HashSet<u32>,
}

impl Index {
    /// Adds one pack's entries. A blob already known keeps its first location, unless that one
    /// is in a condemned pack and this one is not.
    pub fn add_pack(&mut self, pack: PackId, entries: &[BlobEntry]) {
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        });
        if self.condemned.contains(&pack) {
            self.condemned_pos.insert(pos);
        }
        let live = !self.condemned_pos.contains(&pos);
        self.blobs.reserve(entries.len());
        for e in entries {
            let kind_flags = e.flags | if e.kind == BlobKind::Tree { 0x80 } else { 0 };
            let loc = Location {
                pack: pos,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                kind_flags,
            };
            match self.blobs.entry(e.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(loc);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if live && self.condemned_pos.contains(&o.get().pack) {
                        o.insert(loc);
                    }
                }
            }
        }
    }

    /// Marks packs as condemned; call before adding index files, so that a blob with a copy
    /// in a live pack is located there.
    pub fn condemn(&mut self, packs: impl IntoIterator<Item = PackId>) {
        for p in packs {
            if let Some(pos) = self.pack_pos.get(&p) {
                self.condemned_pos.insert(*pos);
            }
            self.condemned.insert(p);
        }
    }

    /// Whether a pack is condemned.
    pub fn is_condemned(&self, pack: &PackId) -> bool {
        self.condemned.contains(pack)
    }

    /// Where a blob is.
    pub fn get(&self, id: &BlobId) -> Option<(PackId, Location)> {
        self.blobs
            .get(id)
            .map(|l| (self.packs[l.pack as usize], *l))
    }

    /// Whether a blob may be reused by a writer: indexed, and not only in a condemned pack.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs
            .get(id)
            .is_some_and(|l| !self.condemned_pos.contains(&l.pack))
    }

    /// Whether a pack is referenced by the index.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// All packs the index references.
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }

    /// Every blob with its pack and location.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, PackId, &Location)> {
        self.blobs
            .iter()
            .map(|(id, l)| (id, self.packs[l.pack as usize], l))
    }
}

/// The index of a repository, shared by its handles ([`super::Repository`] clones).
///
/// Readers take a read lock for one lookup (or one iteration); writers take the write lock only
/// to add entries already stored or to swap in a freshly loaded index. No lock is held across a
/// store call: a slow put or get never blocks lookups.
#[derive(Default)]
pub struct SharedIndex {
    index: RwLock<Index>,
    /// Packs condemned by prune, with the time of their deletion record (`docs/format.md` §19):
    /// their blobs are no longer reused.
    condemned: Mutex<HashMap<PackId, DateTime<Utc>>>,
    /// Deletion records revalidated for this index: it no longer reuses their packs *and* no
    /// longer needs them (what it uses was copied out, stored and indexed). Only these are
    /// declared seen in a session; a pack can be condemned here and not yet revalidated.
    revalidated: Mutex<HashSet<ObjectId>>,
}

impl SharedIndex {
    /// The index, for lookups; hold the guard only for them (a writer waits while it is held).
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    /// Adds one stored pack's entries.
    pub fn add_pack(&self, pack: PackId, entries: &[BlobEntry]) {
        self.index
            .write()
            .expect("index lock")
            .add_pack(pack, entries);
    }

    /// Adds stored packs' entries under one lock.
    pub fn add_packs(&self, packs: &[(PackId, Vec<BlobEntry>)]) {
        let mut index = self.index.write().expect("index lock");
        for (pack, entries) in packs {
            index.add_pack(*pack, entries);
        }
    }

    /// Replaces the index, the condemned packs and the revalidated records with a freshly
    /// loaded set.
    pub fn replace(
        &self,
        index: Index,
        condemned: HashMap<PackId, DateTime<Utc>>,
        revalidated: HashSet<ObjectId>,
    ) {
        *self.condemned.lock().expect("condemned lock") = condemned;
        *self.revalidated.lock().expect("revalidated lock") = revalidated;
        *self.index.write().expect("index lock") = index;
    }

    /// Condemns packs (keeping the earliest time of each): their blobs are no longer reused.
    pub fn condemn(&self, packs: &[(PackId, DateTime<Utc>)]) {
        {
            let mut c = self.condemned.lock().expect("condemned lock");
            for (p, t) in packs {
                c.entry(*p).or_insert(*t);
            }
        }
        self.index
            .write()
            .expect("index lock")
            .condemn(packs.iter().map(|(p, _)| *p));
    }

    /// The condemned packs with the time of their deletion record.
    pub fn condemned(&self) -> HashMap<PackId, DateTime<Utc>> {
        self.condemned.lock().expect("condemned lock").clone()
    }

    /// Whether deletion record `id` was revalidated.
    pub fn is_revalidated(&self, id: &ObjectId) -> bool {
        self.revalidated
            .lock()
            .expect("revalidated lock")
            .contains(id)
    }

    /// Adds `records` to the revalidated ones and forgets those not `present` any more (swept);
    /// returns them all, sorted.
    pub fn revalidate(&self, records: &[ObjectId], present: &[ObjectId]) -> Vec<ObjectId> {
        let mut r = self.revalidated.lock().expect("revalidated lock");
        r.extend(records.iter().copied());
        let present: HashSet<&ObjectId> = present.iter().collect();
        r.retain(|id| present.contains(id));
        let mut seen: Vec<ObjectId> = r.iter().copied().collect();
        seen.sort_by_key(|id| id.0);
        seen
    }
}

/// Encodes an index file's plaintext.
pub fn encode(packs: &[(PackId, Vec<BlobEntry>)]) -> Vec<u8> {
    let n: usize = packs.iter().map(|(_, e)| 36 + e.len() * ENTRY_LEN).sum();
    let mut out = Vec::with_capacity(9 + n);
    out.extend_from_slice(INDEX_MAGIC);
    out.push(1);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (id, entries) in packs {
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            e.encode_header(&mut out);
            out.extend_from_slice(&e.offset.to_le_bytes());
        }
    }
    out
}

/// Decodes an index file's plaintext.
pub fn decode(b: &[u8]) -> std::result::Result<Vec<(PackId, Vec<BlobEntry>)>, String> {
    if b.len() < 9 || &b[..4] != INDEX_MAGIC {
        return Err("missing TMIX magic".into());
    }
    if b[4] != 1 {
        return Err(format!("unknown index version {}", b[4]));
    }
    let count = u32::from_le_bytes(b[5..9].try_into().expect("4 bytes")) as usize;
    let mut rest = &b[9..];
    let mut out = Vec::with_capacity(count.min(rest.len() / 36));
    for _ in 0..count {
        if rest.len() < 36 {
            return Err("truncated pack record".into());
        }
        let id = ObjectId(rest[..32].try_into().expect("32 bytes"));
        let n = u32::from_le_bytes(rest[32..36].try_into().expect("4 bytes")) as usize;
        rest = &rest[36..];
        let need = n.checked_mul(ENTRY_LEN).ok_or("entry count overflows")?;
        if rest.len() < need {
            return Err(format!(
                "pack {} lists {n} entries but only {} bytes follow",
                id.short(),
                rest.len()
            ));
        }
        let mut entries = Vec::with_capacity(n);
        for e in rest[..need].chunks_exact(ENTRY_LEN) {
            let offset = u32::from_le_bytes(e[HEADER_ENTRY_LEN..].try_into().expect("4 bytes"));
            entries.push(BlobEntry::decode_header(e, offset)?);
        }
        rest = &rest[need..];
        out.push((id, entries));
    }
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(out)
}

/// Seals an index file; returns its storage id and bytes.
pub fn seal(crypto: &Crypto, packs: &[(PackId, Vec<BlobEntry>)]) -> (ObjectId, Vec<u8>) {
    let bytes = crypto.seal(Domain::Index, &encode(packs));
    (ObjectId::of(&bytes), bytes)
}

/// Opens and decodes a stored index file.
pub fn open(crypto: &Crypto, id: &ObjectId, bytes: &[u8]) -> Result<Vec<(PackId, Vec<BlobEntry>)>> {
    if ObjectId::of(bytes) != *id {
        return Err(Error::corrupt(
            Kind::Index,
            id,
            "content does not match its name (BLAKE3 mismatch)",
        ));
    }
    let plain = crypto.open(Domain::Index, bytes, Kind::Index, id)?;
    decode(&plain).map_err(|r| Error::corrupt(Kind::Index, id, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip() {
        let e = BlobEntry {
            id: BlobId([3; 32]),
            kind: BlobKind::Tree,
            flags: 1,
            offset: 77,
            stored_len: 9,
            raw_len: 20,
        };
        let packs = vec![(ObjectId([1; 32]), vec![e]), (ObjectId([2; 32]), vec![])];
        let enc = encode(&packs);
        assert_eq!(decode(&enc).unwrap(), packs);
        assert!(decode(&enc[..enc.len() - 1]).is_err());
        let mut idx = Index::default();
        idx.add_pack(packs[0].0, &packs[0].1);
        let (p, l) = idx.get(&BlobId([3; 32])).unwrap();
        assert_eq!(p, ObjectId([1; 32]));
        assert_eq!((l.kind(), l.flags(), l.offset), (BlobKind::Tree, 1, 77));
    }
}
