//! Blobs: the shared index (loading it, adding to it, writing index files), blob encoding and
//! decoding, reads by id, and adopting packs an interrupted writer left unindexed.

use std::collections::HashMap;
use std::sync::RwLockReadGuard;

use super::index::{self, Index, Location};
use super::Repository;
use crate::crypto::Domain;
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, ObjectId, PackId};
use crate::lifecycle;
use crate::pack::{self, BlobEntry, BlobKind, FLAG_ZSTD, TRAILER_LEN};

/// What loading the index found.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexStats {
    /// Index files read.
    pub files: usize,
    /// Packs referenced.
    pub packs: usize,
    /// Distinct blobs.
    pub blobs: usize,
}

impl Repository {
    /// The loaded index (empty until [`Repository::load_index`]), shared by every clone of
    /// this handle; hold the guard only for lookups (writers wait while it is held).
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    /// The shared index itself (to hand to a [`crate::pack::Packer`]'s user, or to condemn packs).
    pub fn shared_index(&self) -> &super::SharedIndex {
        &self.index
    }

    /// Reads every index file into memory, replacing the shared index.
    pub fn load_index(&self) -> Result<IndexStats> {
        self.load_index_visit(&mut |_, _, _| {})
    }

    /// Like [`Repository::load_index`], also showing every `(index file, pack, entries)` read
    /// to `visit` (prune keeps per-pack lists).
    pub fn load_index_visit(
        &self,
        visit: &mut dyn FnMut(&ObjectId, PackId, &[BlobEntry]),
    ) -> Result<IndexStats> {
        let mut index = Index::default();
        // Deletion records first: a blob with a copy outside condemned packs is located there.
        let view = self.clock.now();
        let mut condemned: HashMap<PackId, chrono::DateTime<chrono::Utc>> = HashMap::new();
        let mut seen = Vec::new();
        for (id, r) in lifecycle::deletions(&*self.store, &self.crypto)? {
            let t = r.time_at();
            for p in r.packs {
                let e = condemned.entry(p).or_insert(t);
                *e = (*e).min(t);
            }
            seen.push(id);
        }
        index.condemn(condemned.keys().copied());
        let files = self.store.list(Kind::Index)?;
        for (id, _) in &files {
            let bytes = match self.store.get(Kind::Index, id, None) {
                Ok(b) => b,
                // Replaced by a prune between list and get: its packs are in the new file.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            for (pack, entries) in index::open(&self.crypto, id, &bytes)? {
                index.add_pack(pack, &entries);
                visit(id, pack, &entries);
            }
        }
        let (packs, blobs) = (index.packs().len(), index.len());
        // Nothing loaded reuses a condemned pack, and nothing was written yet: every record read
        // is revalidated.
        self.index
            .replace(index, condemned, seen.iter().copied().collect());
        if let Some(s) = &self.session {
            s.set_seen(&seen, view)?;
        }
        Ok(IndexStats {
            files: files.len(),
            packs,
            blobs,
        })
    }

    /// Adds entries to the in-memory index (after this process wrote or adopted packs).
    pub fn index_add(&self, pack: PackId, entries: &[BlobEntry]) {
        self.index.add_pack(pack, entries);
    }

    /// Writes an index file for `packs`.
    pub fn write_index(&self, packs: &[(PackId, Vec<BlobEntry>)]) -> Result<ObjectId> {
        self.check_lease()?;
        let (id, bytes) = index::seal(&self.crypto, packs);
        self.store.put(Kind::Index, &id, &bytes)?;
        Ok(id)
    }

    /// Compresses (when worth it) and seals a blob's plaintext: `(flags, envelope)`.
    pub fn encode_blob(
        &self,
        compressor: Option<&mut zstd::bulk::Compressor<'_>>,
        plain: &[u8],
    ) -> (u8, Vec<u8>) {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let flags = self.encode_blob_into(compressor, plain, &mut scratch, &mut out);
        (flags, out)
    }

    /// Like [`Repository::encode_blob`], reusing `scratch` (compressed bytes) and `out`
    /// (the envelope): the backup pipeline's steady state allocates nothing per chunk.
    pub fn encode_blob_into(
        &self,
        compressor: Option<&mut zstd::bulk::Compressor<'_>>,
        plain: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> u8 {
        if let Some(c) = compressor {
            if plain.len() >= 64 {
                scratch.clear();
                scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                if c.compress_to_buffer(plain, scratch).is_ok()
                    && scratch.len() <= plain.len() - plain.len() / 32
                {
                    self.crypto.seal_into(Domain::Blob, scratch, out);
                    return FLAG_ZSTD;
                }
            }
        }
        self.crypto.seal_into(Domain::Blob, plain, out);
        0
    }

    /// A zstd compressor at the configured level, or `None` when compression is off.
    pub fn compressor(&self) -> Option<zstd::bulk::Compressor<'static>> {
        let level = self.config.compression.level;
        (level != 0)
            .then(|| zstd::bulk::Compressor::new(level).expect("zstd accepts the configured level"))
    }

    /// Opens, decompresses and verifies a blob envelope read from its pack.
    pub fn decode_blob(&self, id: &BlobId, loc: &Location, envelope: &[u8]) -> Result<Vec<u8>> {
        let kind = if loc.kind() == BlobKind::Tree {
            Kind::Tree
        } else {
            Kind::Blob
        };
        let payload = self.crypto.open(Domain::Blob, envelope, kind, id)?;
        let plain = if loc.flags() & FLAG_ZSTD != 0 {
            // Bounded by the indexed length: a damaged or hostile blob cannot expand further.
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
            }
            let mut out = Vec::with_capacity(loc.raw_len as usize);
            DECOMPRESSOR
                .with_borrow_mut(|d| {
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    d.as_mut()
                        .expect("just set")
                        .decompress_to_buffer(&payload, &mut out)
                })
                .map_err(|e| Error::corrupt(kind, id, format!("zstd: {e}")))?;
            out
        } else {
            payload
        };
        if plain.len() != loc.raw_len as usize {
            return Err(Error::corrupt(
                kind,
                id,
                format!("length {} instead of {}", plain.len(), loc.raw_len),
            ));
        }
        if self.crypto.blob_id(&plain) != *id {
            return Err(Error::corrupt(kind, id, "content does not match its id"));
        }
        Ok(plain)
    }

    /// Reads one blob by id.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let (_, loc, env) = self.read_envelope(id)?;
        self.decode_blob(id, &loc, &env)
    }

    /// Reads one blob, located through `index` (`check` builds its own, tolerating damage).
    pub fn read_blob_in(&self, index: &Index, id: &BlobId) -> Result<Vec<u8>> {
        let (_, loc, env) = self.read_envelope_in(index, id)?;
        self.decode_blob(id, &loc, &env)
    }

    /// A blob's envelope as stored, with where it is (copying it elsewhere needs no key).
    pub fn read_envelope(&self, id: &BlobId) -> Result<(PackId, Location, Vec<u8>)> {
        // The lookup's guard is dropped before the read: no lock is held across a store call.
        let found = self.index().get(id);
        self.fetch_envelope(id, found)
    }

    fn read_envelope_in(&self, index: &Index, id: &BlobId) -> Result<(PackId, Location, Vec<u8>)> {
        self.fetch_envelope(id, index.get(id))
    }

    /// Reads the envelope of blob `id` found at `found` by an index lookup.
    fn fetch_envelope(
        &self,
        id: &BlobId,
        found: Option<(PackId, Location)>,
    ) -> Result<(PackId, Location, Vec<u8>)> {
        let (pack, loc) = found.ok_or_else(|| Error::NotFound {
            kind: Kind::Blob,
            id: id.to_hex(),
        })?;
        let env = self.store.get(Kind::Pack, &pack, Some(loc.range()))?;
        if env.len() != loc.stored_len as usize {
            return Err(Error::corrupt(
                Kind::Pack,
                pack,
                format!("blob {} is cut short (pack truncated?)", id.short()),
            ));
        }
        Ok((pack, loc, env))
    }

    /// Reads a pack's header (trailer, then header envelope).
    pub fn read_pack_header(&self, id: &PackId, len: u64) -> Result<Vec<BlobEntry>> {
        if len < TRAILER_LEN as u64 {
            return Err(Error::corrupt(
                Kind::Pack,
                id,
                format!("{len} bytes is too short to be a pack"),
            ));
        }
        let trailer = self
            .store
            .get(Kind::Pack, id, Some(len - TRAILER_LEN as u64..len))?;
        let (off, hlen) = pack::header_location(len, &trailer, id)?;
        let sealed = self.store.get(Kind::Pack, id, Some(off..off + hlen))?;
        pack::parse_header(&self.crypto, &sealed, off, id)
    }

    /// Packs in the store that no index file references (left by an interrupted backup).
    pub fn unindexed_packs(&self) -> Result<Vec<(PackId, u64)>> {
        let listed = self.store.list(Kind::Pack)?;
        let condemned = self.index.condemned();
        let index = self.index();
        Ok(listed
            .into_iter()
            .filter(|(id, _)| !index.has_pack(id) && !condemned.contains_key(id))
            .collect())
    }

    /// Indexes packs that an interrupted backup wrote but did not index, from their headers, so
    /// their blobs are reused instead of uploaded again. Damaged packs are skipped and returned.
    pub fn adopt_packs(&self) -> Result<(usize, Vec<(PackId, Error)>)> {
        let mut adopted = Vec::new();
        let mut damaged = Vec::new();
        for (id, len) in self.unindexed_packs()? {
            match self.read_pack_header(&id, len) {
                Ok(entries) => adopted.push((id, entries)),
                Err(e @ Error::Corrupt { .. }) => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        if !adopted.is_empty() {
            self.write_index(&adopted)?;
            self.index.add_packs(&adopted);
        }
        Ok((adopted.len(), damaged))
    }
}
