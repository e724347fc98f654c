//! Pack files: blobs (compressed, then sealed) back to back, then a sealed header that lists
//! them, then an 8-byte trailer (`docs/format.md` §6). A pack is self-describing, so the index
//! can be rebuilt from packs alone.
//!
//! [`PackBuilder`] assembles one pack in memory; [`Packer`] groups a stream of blobs into packs
//! for every writer; [`parse_header`] reads one back.

mod packer;

pub use packer::{FinishedPack, PackEntries, Packer};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind, PackId};

/// Pack trailer magic (format version 1).
pub const PACK_MAGIC: &[u8; 4] = b"TMP1";
/// Size of the trailer: header length + magic.
pub const TRAILER_LEN: usize = 8;
/// Size of one header entry.
pub const HEADER_ENTRY_LEN: usize = 42;
/// Flag bit 0: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A directory listing.
    Tree,
}

impl BlobKind {
    /// The kind byte of the pack header (`docs/format.md` §6).
    pub fn to_byte(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    /// Parses a kind byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// One blob's place in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlobEntry {
    /// The blob id.
    pub id: BlobId,
    /// Data or tree.
    pub kind: BlobKind,
    /// Flag bits (`FLAG_ZSTD`).
    pub flags: u8,
    /// Offset of the envelope in the pack.
    pub offset: u32,
    /// Length of the envelope.
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

impl BlobEntry {
    /// Whether the payload is zstd-compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// Appends the 42-byte header form (no offset).
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        out.push(self.kind.to_byte());
        out.push(self.flags);
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.id.0);
    }

    /// Parses the 42-byte header form; `offset` is supplied by the caller.
    pub fn decode_header(b: &[u8], offset: u32) -> std::result::Result<Self, String> {
        if b.len() < HEADER_ENTRY_LEN {
            return Err("entry truncated".into());
        }
        let kind =
            BlobKind::from_byte(b[0]).ok_or_else(|| format!("unknown blob kind {}", b[0]))?;
        let flags = b[1];
        if flags & !FLAG_ZSTD != 0 {
            return Err(format!("unknown blob flags {flags:#x}"));
        }
        let stored_len = u32::from_le_bytes(b[2..6].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(b[6..10].try_into().expect("4 bytes"));
        let id = BlobId(b[10..42].try_into().expect("32 bytes"));
        Ok(BlobEntry {
            id,
            kind,
            flags,
            offset,
            stored_len,
            raw_len,
        })
    }
}

/// A pack being assembled in memory.
pub struct PackBuilder {
    data: Vec<u8>,
    entries: Vec<BlobEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        PackBuilder {
            data: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// An empty pack that fills `buffer` (cleared); pass a recycled one to avoid allocating.
    pub fn with_buffer(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        PackBuilder {
            data: buffer,
            entries: Vec::new(),
        }
    }

    /// Bytes of blobs so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Bytes reserved for blobs and header.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a sealed blob.
    pub fn add(&mut self, id: BlobId, kind: BlobKind, flags: u8, raw_len: u32, envelope: &[u8]) {
        let offset = u32::try_from(self.data.len()).expect("packs stay below 4 GiB");
        let stored_len = u32::try_from(envelope.len()).expect("blobs stay below 4 GiB");
        self.data.extend_from_slice(envelope);
        self.entries.push(BlobEntry {
            id,
            kind,
            flags,
            offset,
            stored_len,
            raw_len,
        });
    }

    /// Seals the header, appends it and the trailer; returns the pack id, bytes and entries.
    pub fn finish(mut self, crypto: &Crypto) -> (PackId, Vec<u8>, Vec<BlobEntry>) {
        let mut header = Vec::with_capacity(5 + self.entries.len() * HEADER_ENTRY_LEN);
        header.push(1);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.encode_header(&mut header);
        }
        let sealed = crypto.seal(Domain::PackHeader, &header);
        self.data.extend_from_slice(&sealed);
        self.data
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.data.extend_from_slice(PACK_MAGIC);
        let id = PackId::of(&self.data);
        (id, self.data, self.entries)
    }
}

/// Where the header envelope sits, from the pack's trailer: `(offset, len)`.
pub fn header_location(pack_len: u64, trailer: &[u8], id: &PackId) -> Result<(u64, u64)> {
    if trailer.len() != TRAILER_LEN || pack_len < TRAILER_LEN as u64 {
        return Err(Error::corrupt(
            Kind::Pack,
            id,
            format!("pack of {pack_len} bytes is too short for a trailer"),
        ));
    }
    if &trailer[4..8] != PACK_MAGIC {
        return Err(Error::corrupt(
            Kind::Pack,
            id,
            "trailer magic is not TMP1 (truncated or not a tidemark pack)",
        ));
    }
    let hlen = u64::from(u32::from_le_bytes(
        trailer[..4].try_into().expect("4 bytes"),
    ));
    if hlen > pack_len - TRAILER_LEN as u64 {
        return Err(Error::corrupt(
            Kind::Pack,
            id,
            format!("header length {hlen} exceeds pack length {pack_len}"),
        ));
    }
    Ok((pack_len - TRAILER_LEN as u64 - hlen, hlen))
}

/// Opens and parses a header envelope; checks that the blobs exactly fill the space before it.
pub fn parse_header(
    crypto: &Crypto,
    sealed: &[u8],
    header_offset: u64,
    id: &PackId,
) -> Result<Vec<BlobEntry>> {
    let plain = crypto.open(Domain::PackHeader, sealed, Kind::Pack, id)?;
    decode_header(&plain, header_offset)
        .map_err(|reason| Error::corrupt(Kind::Pack, id, format!("header: {reason}")))
}

/// Decodes a header plaintext; `header_offset` is where the blobs must end.
pub fn decode_header(
    plain: &[u8],
    header_offset: u64,
) -> std::result::Result<Vec<BlobEntry>, String> {
    if plain.len() < 5 {
        return Err("shorter than 5 bytes".into());
    }
    if plain[0] != 1 {
        return Err(format!("unknown header version {}", plain[0]));
    }
    let count = u32::from_le_bytes(plain[1..5].try_into().expect("4 bytes")) as usize;
    let body = &plain[5..];
    if body.len()
        != count
            .checked_mul(HEADER_ENTRY_LEN)
            .ok_or("count overflows")?
    {
        return Err(format!(
            "{count} entries need {} bytes, header has {}",
            count * HEADER_ENTRY_LEN,
            body.len()
        ));
    }
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(count);
    for chunk in body.chunks_exact(HEADER_ENTRY_LEN) {
        let off = u32::try_from(offset).map_err(|_| "blob offset beyond 4 GiB")?;
        let e = BlobEntry::decode_header(chunk, off)?;
        offset += u64::from(e.stored_len);
        out.push(e);
    }
    if offset != header_offset {
        return Err(format!(
            "blobs end at {offset} but the header starts at {header_offset}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn pack_round_trip() {
        for crypto in [
            Crypto::encrypted(&MasterKey::generate()),
            Crypto::plain([7; 32]),
        ] {
            let mut b = PackBuilder::new();
            let e1 = crypto.seal(Domain::Blob, b"one");
            let e2 = crypto.seal(Domain::Blob, b"second blob");
            b.add(crypto.blob_id(b"one"), BlobKind::Data, 0, 3, &e1);
            b.add(crypto.blob_id(b"second blob"), BlobKind::Tree, 0, 11, &e2);
            let (id, bytes, entries) = b.finish(&crypto);
            assert_eq!(id, PackId::of(&bytes));
            let (off, len) =
                header_location(bytes.len() as u64, &bytes[bytes.len() - 8..], &id).unwrap();
            let parsed = parse_header(
                &crypto,
                &bytes[off as usize..(off + len) as usize],
                off,
                &id,
            )
            .unwrap();
            assert_eq!(parsed, entries);
            let b2 = &bytes[parsed[1].offset as usize..][..parsed[1].stored_len as usize];
            assert_eq!(
                crypto.open(Domain::Blob, b2, Kind::Blob, &"x").unwrap(),
                b"second blob"
            );
        }
    }

    #[test]
    fn damaged_trailer_is_named() {
        let id = PackId::default();
        let err = header_location(100, b"\0\0\0\0XXXX", &id).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        let err = header_location(100, &[200, 0, 0, 0, b'T', b'M', b'P', b'1'], &id).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
