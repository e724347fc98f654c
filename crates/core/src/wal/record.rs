//! Record and segment-header framing (`docs/format.md` §12): encode, check, parse.
//!
//! Pure functions over byte slices. [`decode`] tells a complete record from an incomplete one
//! (flow: read more, or a torn tail) and from a bad one (a CRC or length that cannot be right).
//! Records mean the same in both segment versions; version 2 adds the durable mark (kind 5).

/// Bytes before a record's body: crc (4), len (4), kind (1).
pub const FRAME_LEN: usize = 9;
/// Size of a segment header.
pub const HEADER_LEN: usize = 32;
/// Largest body a record may carry.
pub const MAX_BODY: u32 = 64 << 20;
/// Segment header magic.
pub const MAGIC: &[u8; 4] = b"TMWL";
/// Segment format version written.
pub const VERSION: u8 = 2;
/// The oldest segment format version read: no durable marks.
pub const VERSION_1: u8 = 1;
/// Length of a framed durable mark.
pub const MARK_LEN: usize = FRAME_LEN + 24;

/// Meta slot holding the vote.
pub const SLOT_VOTE: u8 = 0;
/// Meta slot holding the committed log id.
pub const SLOT_COMMITTED: u8 = 1;
/// Number of meta slots.
pub const SLOTS: usize = 2;

/// What a record is (the `kind` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// `index: u64` ‖ entry bytes.
    Entry = 1,
    /// `slot: u8` ‖ value.
    Meta = 2,
    /// `has: u8` ‖ `index: u64`.
    Truncate = 3,
    /// `index: u64` ‖ log-id bytes.
    Purge = 4,
    /// `log_id: u64` ‖ `seq: u64` ‖ `upto: u64` (segment version 2).
    Durable = 5,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => RecordKind::Entry,
            2 => RecordKind::Meta,
            3 => RecordKind::Truncate,
            4 => RecordKind::Purge,
            5 => RecordKind::Durable,
            _ => return None,
        })
    }
}

/// A record's meaning, parsed from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A log entry.
    Entry { index: u64, data: &'a [u8] },
    /// A meta slot's new value.
    Meta { slot: u8, value: &'a [u8] },
    /// Entries after `after` (all when `None`) are discarded.
    Truncate { after: Option<u64> },
    /// Entries up to `index` are discarded for good; `log_id` is the caller's encoding of it.
    Purge { index: u64, log_id: &'a [u8] },
    /// A durable mark: bytes `0..upto` of segment `seq` of log `log_id` had been fsynced before
    /// this record was written. Changes nothing on replay; recovery uses it to tell unsynced
    /// bytes lost to a power cut from damage inside acknowledged data.
    Durable { log_id: u64, seq: u64, upto: u64 },
}

impl Record<'_> {
    /// The kind byte.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Entry { .. } => RecordKind::Entry,
            Record::Meta { .. } => RecordKind::Meta,
            Record::Truncate { .. } => RecordKind::Truncate,
            Record::Purge { .. } => RecordKind::Purge,
            Record::Durable { .. } => RecordKind::Durable,
        }
    }

    /// Appends the framed record to `out`; returns the offset of the body within `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_LEN]);
        match self {
            Record::Entry { index, data } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(data);
            }
            Record::Meta { slot, value } => {
                out.push(*slot);
                out.extend_from_slice(value);
            }
            Record::Truncate { after } => {
                out.push(u8::from(after.is_some()));
                out.extend_from_slice(&after.unwrap_or(0).to_le_bytes());
            }
            Record::Purge { index, log_id } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(log_id);
            }
            Record::Durable { log_id, seq, upto } => {
                out.extend_from_slice(&log_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&upto.to_le_bytes());
            }
        }
        let body_len = u32::try_from(out.len() - start - FRAME_LEN)
            .ok()
            .filter(|l| *l <= MAX_BODY)
            .expect("record bodies are bounded by MAX_BODY (callers split larger batches)");
        out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
        out[start + 8] = self.kind() as u8;
        let crc = crc32c::crc32c(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        start + FRAME_LEN
    }

    /// The framed record as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record of `len` bytes (frame included).
    Record { record: Record<'a>, len: usize },
    /// The buffer ends before the record does; `need` is the whole record's length when known.
    Incomplete { need: Option<usize> },
    /// Not a record: a CRC mismatch, an impossible length or kind, or a malformed body.
    Bad(String),
}

/// Parses the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < FRAME_LEN {
        return Decoded::Incomplete { need: None };
    }
    let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len > MAX_BODY {
        return Decoded::Bad(format!(
            "record length {len} exceeds the maximum {MAX_BODY}"
        ));
    }
    let Some(kind) = RecordKind::from_byte(buf[8]) else {
        return Decoded::Bad(format!("unknown record kind {}", buf[8]));
    };
    let total = FRAME_LEN + len as usize;
    if buf.len() < total {
        return Decoded::Incomplete { need: Some(total) };
    }
    let actual = crc32c::crc32c(&buf[4..total]);
    if actual != crc {
        return Decoded::Bad(format!(
            "CRC mismatch (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    match parse_body(kind, &buf[FRAME_LEN..total]) {
        Ok(record) => Decoded::Record { record, len: total },
        Err(reason) => Decoded::Bad(reason),
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn parse_body(kind: RecordKind, body: &[u8]) -> Result<Record<'_>, String> {
    let short = || format!("{kind:?} record body of {} bytes is too short", body.len());
    Ok(match kind {
        RecordKind::Entry => Record::Entry {
            index: u64_at(body, 0).ok_or_else(short)?,
            data: &body[8..],
        },
        RecordKind::Meta => {
            let slot = *body.first().ok_or_else(short)?;
            if usize::from(slot) >= SLOTS {
                return Err(format!("unknown meta slot {slot}"));
            }
            Record::Meta {
                slot,
                value: &body[1..],
            }
        }
        RecordKind::Truncate => {
            if body.len() != 9 {
                return Err(format!(
                    "truncate record body of {} bytes, not 9",
                    body.len()
                ));
            }
            let index = u64_at(body, 1).ok_or_else(short)?;
            match body[0] {
                0 if index == 0 => Record::Truncate { after: None },
                1 => Record::Truncate { after: Some(index) },
                _ => return Err("malformed truncate record".into()),
            }
        }
        RecordKind::Purge => Record::Purge {
            index: u64_at(body, 0).ok_or_else(short)?,
            log_id: &body[8..],
        },
        RecordKind::Durable => {
            if body.len() != 24 {
                return Err(format!("durable mark body of {} bytes, not 24", body.len()));
            }
            Record::Durable {
                log_id: u64_at(body, 0).ok_or_else(short)?,
                seq: u64_at(body, 8).ok_or_else(short)?,
                upto: u64_at(body, 16).ok_or_else(short)?,
            }
        }
    })
}

/// A segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version: [`VERSION`] when written; [`VERSION_1`] segments are still read.
    pub version: u8,
    /// Segment number (also in the file name).
    pub seq: u64,
    /// The log's random id, the same in every segment of one log.
    pub log_id: u64,
}

impl SegmentHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(MAGIC);
        h[4] = self.version;
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header.
    pub fn decode(h: &[u8]) -> Result<Self, String> {
        if h.len() < HEADER_LEN {
            return Err(format!(
                "header is {} bytes, expected {HEADER_LEN}",
                h.len()
            ));
        }
        if &h[0..4] != MAGIC {
            return Err("bad magic (not a tidemark log segment)".into());
        }
        let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
        if crc32c::crc32c(&h[0..28]) != crc {
            return Err("header CRC mismatch".into());
        }
        if h[4] != VERSION && h[4] != VERSION_1 {
            return Err(format!(
                "segment format version {}, this tidemark reads versions {VERSION_1} and {VERSION}",
                h[4]
            ));
        }
        if h[5..8] != [0; 3] || h[24..28] != [0; 4] {
            return Err("reserved header bytes are not zero".into());
        }
        Ok(SegmentHeader {
            version: h[4],
            seq: u64_at(h, 8).expect("in bounds"),
            log_id: u64_at(h, 16).expect("in bounds"),
        })
    }
}

/// The framed durable mark for bytes `0..upto` of segment `seq` of log `log_id`.
pub fn durable_mark(log_id: u64, seq: u64, upto: u64) -> [u8; MARK_LEN] {
    let mut v = Vec::with_capacity(MARK_LEN);
    Record::Durable { log_id, seq, upto }.encode_into(&mut v);
    v.try_into().expect("a durable mark is MARK_LEN bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Record<'static>> {
        vec![
            Record::Entry {
                index: 7,
                data: b"hello",
            },
            Record::Entry {
                index: u64::MAX,
                data: b"",
            },
            Record::Meta {
                slot: SLOT_VOTE,
                value: b"vote",
            },
            Record::Meta {
                slot: SLOT_COMMITTED,
                value: b"",
            },
            Record::Truncate { after: None },
            Record::Truncate { after: Some(0) },
            Record::Truncate { after: Some(9) },
            Record::Purge {
                index: 3,
                log_id: b"\x01\x02",
            },
            Record::Durable {
                log_id: 0xfeed,
                seq: 2,
                upto: 4096,
            },
        ]
    }

    #[test]
    fn round_trip() {
        for r in all() {
            let bytes = r.encode();
            assert_eq!(
                decode(&bytes),
                Decoded::Record {
                    record: r.clone(),
                    len: bytes.len()
                }
            );
            // Every strict prefix is incomplete, never bad.
            for cut in 0..bytes.len() {
                assert!(
                    matches!(decode(&bytes[..cut]), Decoded::Incomplete { .. }),
                    "{r:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        for r in all() {
            let bytes = r.encode();
            for bit in 0..bytes.len() * 8 {
                let mut b = bytes.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                match decode(&b) {
                    Decoded::Record { record, .. } => panic!("flip {bit} of {r:?} gave {record:?}"),
                    Decoded::Incomplete { .. } | Decoded::Bad(_) => {}
                }
            }
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            version: VERSION,
            seq: 12,
            log_id: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[10] ^= 1;
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("CRC"));
        assert!(SegmentHeader::decode(&b[..20]).is_err());
        let v1 = SegmentHeader {
            version: VERSION_1,
            ..h
        };
        assert_eq!(SegmentHeader::decode(&v1.encode()), Ok(v1));
        let v3 = SegmentHeader { version: 3, ..h };
        assert!(SegmentHeader::decode(&v3.encode())
            .unwrap_err()
            .contains("version 3"));
    }
}
