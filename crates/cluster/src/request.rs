//! What a normal log entry asks of the state machine (`docs/format.md` §15): apply a batch of
//! changes, or seal what was applied so far. Every replica applies the same requests at the same
//! log indexes, so a request carries everything its effect depends on: a seal carries its stamp
//! (time, host, watched path and ancestors) from the proposer, and the applying process reads
//! none of them from its own clock or options.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidemark_core::batch::Batch;
use tidemark_core::snapshot::Node;

/// The payload of a normal entry. Clones are cheap (openraft clones entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Changes of one capture round with the new chunks they need (§15.1).
    Batch(Arc<Batch>),
    /// Seal what was applied up to and including this entry (§15.2).
    Seal(Arc<Seal>),
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Batch(b) => b.fmt(f),
            Request::Seal(s) => write!(f, "seal(at {} ns by {})", s.time_ns, s.host),
        }
    }
}

impl From<Batch> for Request {
    fn from(b: Batch) -> Self {
        Request::Batch(Arc::new(b))
    }
}

/// The stamp of a seal, chosen by the proposer and applied as it is by every replica: the
/// snapshot's `time`, `hostname` and `paths`, and the ancestors its root tree is wrapped in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Layout version of this JSON (1).
    pub version: u32,
    /// The proposer's clock when it proposed the seal, ns since the epoch.
    pub time_ns: i64,
    /// The proposer's hostname.
    pub host: String,
    /// The watched directory, absolute (lossy UTF-8, as the snapshot's `paths`).
    pub path: String,
    /// The watched directory's ancestors, outermost first, each named (`docs/format.md` §14).
    pub ancestors: Vec<Node>,
}

impl Seal {
    /// The JSON body of a seal entry.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a seal serializes to JSON");
    }

    /// Parses the JSON body of a seal entry.
    pub fn decode(b: &[u8]) -> Result<Seal, String> {
        let seal: Seal =
            serde_json::from_slice(b).map_err(|e| format!("seal is not valid JSON: {e}"))?;
        if seal.version != 1 {
            return Err(format!("seal version {} is not supported", seal.version));
        }
        Ok(seal)
    }
}
