//! The bodies of the log's records for Raft (`docs/format.md` §13): entries (a normal entry's
//! payload is a request, §15), vote, committed, purge log id; and the membership JSON shared
//! with the catalog and snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::impls::BasicNode;
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, Membership};
use serde::{Deserialize, Serialize};
use tidemark_core::batch::Batch;

use crate::request::{Request, Seal};
use crate::{Entry, LogId, StoredMembership, TypeConfig, Vote};

type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;

/// The request version written (§15); version 1 (a bare batch) is still read.
const REQUEST_VERSION: u8 = 2;
const REQUEST_BATCH: u8 = 1;
const REQUEST_SEAL: u8 = 2;

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("{} bytes is too short", b.len()))
}

/// `term ‖ node` of a committed leader id.
pub fn leader_bytes(log_id: &LogId, out: &mut Vec<u8>) {
    out.extend_from_slice(&log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&log_id.leader_id.node_id.to_le_bytes());
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(LeaderId::new(term, node).to_committed(), index)
}

/// An entry's record body after its index.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    leader_bytes(&entry.log_id, &mut out);
    match &entry.payload {
        EntryPayload::Blank => out.push(0),
        EntryPayload::Normal(request) => {
            out.extend_from_slice(&[1, REQUEST_VERSION]);
            match request {
                Request::Batch(batch) => {
                    out.push(REQUEST_BATCH);
                    batch.encode_into(&mut out);
                }
                Request::Seal(seal) => {
                    out.push(REQUEST_SEAL);
                    seal.encode_into(&mut out);
                }
            }
        }
        EntryPayload::Membership(m) => {
            out.push(2);
            out.extend_from_slice(&serde_json::to_vec(&MembershipJson::from(m)).expect("JSON"));
        }
    }
    out
}

/// Parses an entry record body.
pub fn decode_entry(index: u64, b: &[u8]) -> Result<Entry, String> {
    let id = log_id(u64_at(b, 0)?, u64_at(b, 8)?, index);
    let payload = match b.get(16) {
        Some(0) if b.len() == 17 => EntryPayload::Blank,
        Some(1) => EntryPayload::Normal(decode_request(&b[17..])?),
        Some(2) => {
            let m: MembershipJson = serde_json::from_slice(&b[17..])
                .map_err(|e| format!("membership is not valid JSON: {e}"))?;
            EntryPayload::Membership(m.into_membership()?)
        }
        Some(t) => return Err(format!("unknown entry type {t}")),
        None => return Err("entry body too short".into()),
    };
    Ok(Entry::new(id, payload))
}

/// A normal entry's payload: version 2 is `2 ‖ kind ‖ body`; version 1 is a bare batch, whose
/// own first byte (its version) is 1.
fn decode_request(b: &[u8]) -> Result<Request, String> {
    match b {
        [1, ..] => Ok(Request::Batch(Arc::new(Batch::decode(b)?))),
        [REQUEST_VERSION, REQUEST_BATCH, body @ ..] => {
            Ok(Request::Batch(Arc::new(Batch::decode(body)?)))
        }
        [REQUEST_VERSION, REQUEST_SEAL, body @ ..] => {
            Ok(Request::Seal(Arc::new(Seal::decode(body)?)))
        }
        [REQUEST_VERSION, kind, ..] => Err(format!("unknown request kind {kind}")),
        [version, ..] => Err(format!("request version {version} is not supported")),
        [] => Err("normal entry without a request".into()),
    }
}

/// `term ‖ node ‖ committed`.
pub fn encode_vote(v: &Vote) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(&v.leader_id.term.to_le_bytes());
    out.extend_from_slice(&v.leader_id.node_id.to_le_bytes());
    out.push(u8::from(v.committed));
    out
}

/// Parses a vote.
pub fn decode_vote(b: &[u8]) -> Result<Vote, String> {
    if b.len() != 17 || b[16] > 1 {
        return Err(format!("vote of {} bytes is malformed", b.len()));
    }
    let mut v = Vote::new(u64_at(b, 0)?, u64_at(b, 8)?);
    v.committed = b[16] == 1;
    Ok(v)
}

/// `has ‖ term ‖ node ‖ index`.
pub fn encode_committed(c: Option<&LogId>) -> Vec<u8> {
    let mut out = vec![u8::from(c.is_some())];
    match c {
        Some(id) => {
            leader_bytes(id, &mut out);
            out.extend_from_slice(&id.index.to_le_bytes());
        }
        None => out.extend_from_slice(&[0; 24]),
    }
    out
}

/// Parses a committed log id.
pub fn decode_committed(b: &[u8]) -> Result<Option<LogId>, String> {
    if b.len() != 25 {
        return Err(format!("committed record of {} bytes, not 25", b.len()));
    }
    Ok((b[0] == 1).then(|| {
        log_id(
            u64_at(b, 1).unwrap_or(0),
            u64_at(b, 9).unwrap_or(0),
            u64_at(b, 17).unwrap_or(0),
        )
    }))
}

/// The log id of a purge record.
pub fn decode_purged(index: u64, b: &[u8]) -> Result<LogId, String> {
    if b.len() != 16 {
        return Err(format!("purge log id of {} bytes, not 16", b.len()));
    }
    Ok(log_id(u64_at(b, 0)?, u64_at(b, 8)?, index))
}

/// A log id as JSON (catalog meta, snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdJson {
    /// Leader term.
    pub term: u64,
    /// Leader node.
    pub node: u64,
    /// Log index.
    pub index: u64,
}

impl From<&LogId> for LogIdJson {
    fn from(id: &LogId) -> Self {
        LogIdJson {
            term: id.leader_id.term,
            node: id.leader_id.node_id,
            index: id.index,
        }
    }
}

impl LogIdJson {
    /// Back to openraft's type.
    pub fn to_log_id(self) -> LogId {
        log_id(self.term, self.node, self.index)
    }
}

/// A membership as JSON: `{"configs": [[ids]], "nodes": {"id": {"addr": …}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipJson {
    configs: Vec<BTreeSet<u64>>,
    nodes: BTreeMap<u64, NodeJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeJson {
    addr: String,
}

impl From<&Membership<u64, BasicNode>> for MembershipJson {
    fn from(m: &Membership<u64, BasicNode>) -> Self {
        MembershipJson {
            configs: m.get_joint_config().clone(),
            nodes: m
                .nodes()
                .map(|(id, n)| {
                    (
                        *id,
                        NodeJson {
                            addr: n.addr.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl MembershipJson {
    /// Back to openraft's type.
    pub fn into_membership(self) -> Result<Membership<u64, BasicNode>, String> {
        let nodes: BTreeMap<u64, BasicNode> = self
            .nodes
            .into_iter()
            .map(|(id, n)| (id, BasicNode { addr: n.addr }))
            .collect();
        Membership::new(self.configs, nodes).map_err(|e| format!("invalid membership: {e}"))
    }
}

/// A stored membership as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembershipJson {
    log: Option<LogIdJson>,
    membership: MembershipJson,
}

impl From<&StoredMembership> for StoredMembershipJson {
    fn from(m: &StoredMembership) -> Self {
        StoredMembershipJson {
            log: m.log_id().as_ref().map(LogIdJson::from),
            membership: MembershipJson::from(m.membership()),
        }
    }
}

impl StoredMembershipJson {
    /// Back to openraft's type.
    pub fn into_stored(self) -> Result<StoredMembership, String> {
        Ok(StoredMembership::new(
            self.log.map(LogIdJson::to_log_id),
            self.membership.into_membership()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written before seals were entries holds bare batches (request version 1): they
    /// still read, as the same batch.
    #[test]
    fn version_1_batches_still_read() {
        let batch = Batch {
            captured_ns: 42,
            edits: vec![tidemark_core::batch::Edit::Delete {
                path: b"gone".to_vec(),
            }],
            ..Batch::default()
        };
        // The old encoder: term ‖ node ‖ type 1 ‖ the batch's own bytes.
        let mut old = Vec::new();
        old.extend_from_slice(&3u64.to_le_bytes());
        old.extend_from_slice(&1u64.to_le_bytes());
        old.push(1);
        batch.encode_into(&mut old);
        let e = decode_entry(9, &old).unwrap();
        assert_eq!(e.log_id, log_id(3, 1, 9));
        match e.payload {
            EntryPayload::Normal(Request::Batch(b)) => assert_eq!(*b, batch),
            other => panic!("not a batch: {other:?}"),
        }
        // Re-encoded, it is a version-2 request.
        let new = encode_entry(&decode_entry(9, &old).unwrap());
        assert_eq!(&new[16..19], &[1, REQUEST_VERSION, REQUEST_BATCH]);
    }

    #[test]
    fn entries_votes_and_ids_round_trip() {
        let m = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([
                (1, BasicNode { addr: "a:1".into() }),
                (2, BasicNode { addr: "b:2".into() }),
            ]),
        )
        .unwrap();
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Membership(m),
            EntryPayload::Normal(Request::from(Batch {
                captured_ns: 5,
                ..Batch::default()
            })),
            EntryPayload::Normal(Request::Seal(Arc::new(Seal {
                version: 1,
                time_ns: 1_764_871_234_000_000_007,
                host: "nas".into(),
                path: "/srv/share".into(),
                ancestors: vec![tidemark_core::snapshot::Node {
                    name: Some("srv".into()),
                    mode: 0o755,
                    ..tidemark_core::snapshot::Node::default()
                }],
            }))),
        ] {
            let e = Entry::new(log_id(3, 1, 9), payload);
            let back = decode_entry(9, &encode_entry(&e)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        let mut v = Vote::new(4, 2);
        v.committed = true;
        assert_eq!(decode_vote(&encode_vote(&v)).unwrap(), v);
        let c = log_id(2, 1, 77);
        assert_eq!(
            decode_committed(&encode_committed(Some(&c))).unwrap(),
            Some(c)
        );
        assert_eq!(decode_committed(&encode_committed(None)).unwrap(), None);
        assert!(decode_entry(1, b"short").is_err());
        let mut unknown = vec![0; 16];
        unknown.extend_from_slice(&[1, REQUEST_VERSION, 9]);
        assert_eq!(
            decode_entry(1, &unknown).unwrap_err(),
            "unknown request kind 9"
        );
        unknown[17] = 3;
        assert_eq!(
            decode_entry(1, &unknown).unwrap_err(),
            "request version 3 is not supported"
        );
        assert!(decode_vote(&[0; 16]).is_err());
    }
}
