//! Replay after a crash: rebuild the log's state from its segments, cutting a torn tail.
//!
//! A record that is incomplete or fails its check ends the readable data of a segment. In the last
//! segment that is a torn tail, cut, unless an intact record starts after it: then the damage is in
//! the middle of the log and opening fails with the file and offset (nothing is skipped
//! silently). Damage in any earlier segment is always an error, since rotation fsyncs a segment
//! before the next one is created.

use super::record::{self, Decoded, SegmentHeader, HEADER_LEN};
use super::{Loc, LogDevice, LogDir, LogState, Segment, WalOptions};
use crate::error::{Error, Result};

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Bytes cut from the end of the last segment (a write that did not finish before a crash).
    pub torn_bytes: u64,
    /// A last segment whose creation was interrupted (bad or short header) was removed.
    pub removed_unfinished_segment: bool,
    /// With `discard_after_corruption`: where the log was cut although intact records followed.
    pub discarded_at: Option<(String, u64)>,
}

type Replayed = (u64, Vec<Segment>, LogState, Recovery);

pub(super) fn replay(dir: &dyn LogDir, opts: &WalOptions) -> Result<Replayed> {
    let listing = |e| Error::io("listing log segments in", dir.describe(0), e);
    let mut seqs = dir.list().map_err(listing)?;
    seqs.sort_unstable();
    let mut recovery = Recovery::default();
    let mut state = LogState::default();
    let mut segments: Vec<Segment> = Vec::new();
    let mut log_id = None;
    let n = seqs.len();
    for (i, &seq) in seqs.iter().enumerate() {
        let file = dir.describe(seq);
        let corrupt = |offset: u64, reason: String| Error::LogCorrupt {
            file: file.clone(),
            offset,
            reason,
        };
        if let Some(prev) = segments.last() {
            if seq != prev.seq + 1 {
                return Err(corrupt(
                    0,
                    format!(
                        "segment {} is missing (found {} then {seq})",
                        prev.seq + 1,
                        prev.seq
                    ),
                ));
            }
        }
        let is_last = i + 1 == n;
        let device = dir
            .open(seq)
            .map_err(|e| Error::io("opening log segment", &file, e))?;
        let len = device
            .len()
            .map_err(|e| Error::io("reading log segment", &file, e))?;
        let mut buf = vec![0u8; usize::try_from(len).expect("segments fit in memory")];
        device
            .read_at(0, &mut buf)
            .map_err(|e| Error::io("reading log segment", &file, e))?;
        let header = match SegmentHeader::decode(&buf) {
            Ok(h) => h,
            Err(reason) => {
                // The creation of a new segment writes its header and checkpoint, then fsyncs; a
                // crash before that leaves a short or torn header and nothing acknowledged in it.
                if is_last && first_intact_record(&buf, HEADER_LEN).is_none() {
                    dir.remove(seq)
                        .and_then(|()| dir.sync())
                        .map_err(|e| Error::io("removing unfinished log segment", &file, e))?;
                    recovery.removed_unfinished_segment = true;
                    break;
                }
                return Err(corrupt(0, reason));
            }
        };
        if header.seq != seq {
            return Err(corrupt(0, format!("header says segment {}", header.seq)));
        }
        match log_id {
            None => log_id = Some(header.log_id),
            Some(id) if id != header.log_id => {
                return Err(corrupt(
                    0,
                    format!(
                        "belongs to log {:016x}, not {id:016x} (segments of two logs mixed)",
                        header.log_id
                    ),
                ))
            }
            Some(_) => {}
        }
        let mut pos = HEADER_LEN;
        let mut max_index = None;
        while pos < buf.len() {
            let reason = match record::decode(&buf[pos..]) {
                Decoded::Record { record, len } => {
                    let loc = Loc {
                        seq,
                        offset: pos as u64,
                        len: len as u32,
                    };
                    state
                        .apply(&record, loc, true)
                        .map_err(|r| corrupt(pos as u64, r))?;
                    if let record::Record::Entry { index, .. } = record {
                        max_index = Some(index);
                    }
                    recovery.records += 1;
                    pos += len;
                    continue;
                }
                Decoded::Incomplete { .. } => "incomplete record".to_string(),
                Decoded::Bad(reason) => reason,
            };
            if !is_last {
                return Err(corrupt(pos as u64, reason));
            }
            if let Some(next) = first_intact_record(&buf, pos + 1) {
                if !opts.discard_after_corruption {
                    return Err(corrupt(
                        pos as u64,
                        format!(
                            "{reason}, and an intact record follows at byte {next}: damage in the \
                             middle of the log (`tidemark recover --discard-after-corruption` cuts here)"
                        ),
                    ));
                }
                recovery.discarded_at = Some((file.clone(), pos as u64));
            }
            cut(&*device, pos as u64)
                .map_err(|e| Error::io("cutting the torn tail of", &file, e))?;
            recovery.torn_bytes += (buf.len() - pos) as u64;
            buf.truncate(pos);
            break;
        }
        recovery.segments += 1;
        segments.push(Segment {
            seq,
            device,
            len: buf.len() as u64,
            max_index,
        });
    }
    if let (Some(gap), purged) = (state.gap, &state.purged) {
        if purged.as_ref().is_none_or(|p| p.0 < gap) {
            return Err(Error::LogCorrupt {
                file: dir.describe(segments.first().map_or(0, |s| s.seq)),
                offset: 0,
                reason: format!("entries up to {gap} are missing but were never purged"),
            });
        }
    }
    state.gap = None;
    let log_id = log_id.unwrap_or_else(rand::random);
    Ok((log_id, segments, state, recovery))
}

fn cut(device: &dyn LogDevice, len: u64) -> std::io::Result<()> {
    device.truncate(len)?;
    device.sync()
}

/// The offset of the first intact record starting at or after `from`, if any.
fn first_intact_record(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|&at| matches!(record::decode(&buf[at..]), Decoded::Record { .. }))
}
