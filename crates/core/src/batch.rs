//! A batch: the changes of one capture round with the new chunks they need, already compressed
//! and encrypted — the payload of a normal log entry (`docs/format.md` §15).
//!
//! Pure encode/decode. The capture stage builds batches; the state machine applies them.

use std::fmt;

use crate::id::BlobId;
use crate::pack::BlobKind;
use crate::snapshot::Node;

/// Format version of a batch.
pub const BATCH_VERSION: u8 = 1;
/// Longest path a batch can carry (the `u16` length prefix).
pub const MAX_PATH: usize = u16::MAX as usize;

/// A sealed blob as it will sit in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlob {
    /// Blob id (keyed BLAKE3 of the plaintext).
    pub id: BlobId,
    /// Data chunk or tree.
    pub kind: BlobKind,
    /// Pack-header flags (bit 0: zstd).
    pub flags: u8,
    /// Plaintext length.
    pub raw_len: u32,
    /// The envelope (nonce, ciphertext, tag).
    pub envelope: Vec<u8>,
}

/// One change to the live tree. Paths are relative to the watched root, components joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // puts dominate; boxing each node would cost an allocation per edit
pub enum Edit {
    /// Create or replace the entry at `path` (its parent directories are created if missing).
    Put {
        /// Where.
        path: Vec<u8>,
        /// Metadata and, for a file, every chunk id (`name` and `subtree` are ignored).
        node: Node,
    },
    /// Remove the entry at `path` and everything below it.
    Delete {
        /// Where.
        path: Vec<u8>,
    },
    /// Move the entry at `from`, with everything below it, to `to` (replacing what was there).
    Move {
        /// Old path.
        from: Vec<u8>,
        /// New path.
        to: Vec<u8>,
    },
}

/// The payload of a normal log entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// When the batch was cut, ns since the epoch (for lag and RPO figures).
    pub captured_ns: i64,
    /// New chunks the edits need that the repository does not hold yet.
    pub blobs: Vec<NewBlob>,
    /// Changes, applied in order.
    pub edits: Vec<Edit>,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch({} edits, {} blobs, {} bytes)",
            self.edits.len(),
            self.blobs.len(),
            self.blob_bytes()
        )
    }
}

impl Batch {
    /// Bytes of blob envelopes carried.
    pub fn blob_bytes(&self) -> usize {
        self.blobs.iter().map(|b| b.envelope.len()).sum()
    }

    /// The encoded size, for splitting before a record would grow too large.
    pub fn encoded_len_estimate(&self) -> usize {
        13 + self.blob_bytes()
            + self.blobs.len() * 42
            + self.edits.iter().map(|_| 512).sum::<usize>()
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(BATCH_VERSION);
        out.extend_from_slice(&self.captured_ns.to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(self.blobs.len())
                .expect("batch blob count fits u32")
                .to_le_bytes(),
        );
        for b in &self.blobs {
            out.extend_from_slice(&b.id.0);
            out.push(b.kind.to_byte());
            out.push(b.flags);
            out.extend_from_slice(&b.raw_len.to_le_bytes());
            let len = u32::try_from(b.envelope.len()).expect("blob envelopes are < 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&b.envelope);
        }
        out.extend_from_slice(
            &u32::try_from(self.edits.len())
                .expect("batch edit count fits u32")
                .to_le_bytes(),
        );
        for e in &self.edits {
            match e {
                Edit::Put { path, node } => {
                    out.push(1);
                    put_path(out, path);
                    let mut node = node.clone();
                    node.name = None;
                    node.name_hex = None;
                    node.subtree = None;
                    let json = serde_json::to_vec(&node).expect("nodes serialize");
                    out.extend_from_slice(
                        &u32::try_from(json.len())
                            .expect("node JSON < 4 GiB")
                            .to_le_bytes(),
                    );
                    out.extend_from_slice(&json);
                }
                Edit::Delete { path } => {
                    out.push(2);
                    put_path(out, path);
                }
                Edit::Move { from, to } => {
                    out.push(3);
                    put_path(out, from);
                    put_path(out, to);
                }
            }
        }
    }

    /// The encoding as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len_estimate());
        self.encode_into(&mut v);
        v
    }

    /// Parses a batch; the error says what is wrong and where.
    pub fn decode(bytes: &[u8]) -> Result<Batch, String> {
        let mut r = Reader { b: bytes, at: 0 };
        let version = r.u8("version")?;
        if version != BATCH_VERSION {
            return Err(format!(
                "batch version {version}, this tidemark reads {BATCH_VERSION}"
            ));
        }
        let captured_ns = i64::from_le_bytes(r.array("capture time")?);
        let n = r.u32("blob count")?;
        let mut blobs = Vec::with_capacity((n as usize).min(bytes.len() / 42));
        for i in 0..n {
            let id = BlobId(r.array("blob id")?);
            let kind_byte = r.u8("blob kind")?;
            let kind = BlobKind::from_byte(kind_byte)
                .ok_or_else(|| format!("blob {i}: unknown kind {kind_byte}"))?;
            let flags = r.u8("blob flags")?;
            if flags & !1 != 0 {
                return Err(format!("blob {i}: unknown flags {flags:#x}"));
            }
            let raw_len = r.u32("blob length")?;
            let len = r.u32("envelope length")? as usize;
            let envelope = r.take(len, "envelope")?.to_vec();
            blobs.push(NewBlob {
                id,
                kind,
                flags,
                raw_len,
                envelope,
            });
        }
        let n = r.u32("edit count")?;
        let mut edits = Vec::with_capacity((n as usize).min(bytes.len() / 3));
        for i in 0..n {
            let op = r.u8("edit op")?;
            let edit = match op {
                1 => {
                    let path = r.path()?;
                    let len = r.u32("node length")? as usize;
                    let json = r.take(len, "node")?;
                    let node: Node = serde_json::from_slice(json)
                        .map_err(|e| format!("edit {i}: node is not valid JSON: {e}"))?;
                    Edit::Put { path, node }
                }
                2 => Edit::Delete { path: r.path()? },
                3 => Edit::Move {
                    from: r.path()?,
                    to: r.path()?,
                },
                _ => return Err(format!("edit {i}: unknown op {op}")),
            };
            edits.push(edit);
        }
        if r.at != bytes.len() {
            return Err(format!(
                "{} trailing bytes after the batch",
                bytes.len() - r.at
            ));
        }
        Ok(Batch {
            captured_ns,
            blobs,
            edits,
        })
    }
}

fn put_path(out: &mut Vec<u8>, path: &[u8]) {
    let len = u16::try_from(path.len()).expect("paths are checked against MAX_PATH at capture");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(path);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "batch ends inside the {what} at byte {} (needs {n} bytes)",
                    self.at
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn path(&mut self) -> Result<Vec<u8>, String> {
        let len = u16::from_le_bytes(self.array("path length")?) as usize;
        let p = self.take(len, "path")?;
        if let Some(problem) = path_problem(p) {
            return Err(format!("path {:?} {problem}", String::from_utf8_lossy(p)));
        }
        Ok(p.to_vec())
    }
}

/// Why a batch path is not acceptable, if it is not: it must be relative, with non-empty
/// components other than `.` and `..`, and no NUL. The empty path is the watched root.
pub fn path_problem(p: &[u8]) -> Option<&'static str> {
    if p.is_empty() {
        return None;
    }
    if p.contains(&0) {
        return Some("contains NUL");
    }
    if p.split(|b| *b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Some("has an empty, `.` or `..` component (or a leading or trailing `/`)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::NodeTypeField;

    fn sample() -> Batch {
        let node = Node {
            node_type: NodeTypeField(crate::snapshot::NodeType::File),
            mode: 0o644,
            size: 5,
            mtime_ns: 1_700_000_000_123_456_789,
            content: vec![BlobId([7; 32])],
            ..Node::default()
        };
        Batch {
            captured_ns: 42,
            blobs: vec![NewBlob {
                id: BlobId([7; 32]),
                kind: BlobKind::Data,
                flags: 1,
                raw_len: 5,
                envelope: b"sealed".to_vec(),
            }],
            edits: vec![
                Edit::Put {
                    path: b"a/b.txt".to_vec(),
                    node,
                },
                Edit::Move {
                    from: b"a".to_vec(),
                    to: b"c".to_vec(),
                },
                Edit::Delete {
                    path: b"c/b.txt".to_vec(),
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_truncation() {
        let b = sample();
        let bytes = b.encode();
        assert_eq!(Batch::decode(&bytes).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(Batch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Batch::decode(&long).unwrap_err().contains("trailing"));
        assert!(b.to_string().contains("3 edits"));
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [&b"/abs"[..], b"a//b", b"a/./b", b"../x", b"a/", b"a\0b"] {
            let b = Batch {
                edits: vec![Edit::Delete { path: bad.to_vec() }],
                ..Batch::default()
            };
            assert!(Batch::decode(&b.encode()).is_err(), "{bad:?}");
        }
        assert_eq!(path_problem(b""), None);
        assert_eq!(path_problem(b"a/b c/d"), None);
    }
}
