//! Replay after a crash: rebuild the log's state from its segments, cutting what a power cut left
//! of unsynced bytes.
//!
//! A record that is incomplete or fails its check ends the readable data of a segment. Damage in
//! any earlier segment is always an error, since rotation fsyncs a segment before the next one is
//! created. In the last segment (version 2) the durable marks say how far an fsync had reached:
//! the largest `upto` of any intact mark, before the damage or after it. Damage at or past that
//! point is unsynced bytes (a power cut persists pages in any order), cut and reported as never
//! acknowledged; damage before it is corruption of acknowledged data, an error naming the file and
//! offset. A version-1 last segment has no marks: its damage is a torn tail unless an intact
//! record follows it.

use super::record::{self, Decoded, Record, SegmentHeader, HEADER_LEN, VERSION_1};
use super::{Loc, LogDevice, LogDir, LogState, Segment, WalOptions};
use crate::error::{Error, Result};

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Bytes cut from the end of a version-1 last segment (a write that did not finish before a
    /// crash; without durable marks nothing tells how much of it had been synced).
    pub torn_bytes: u64,
    /// Bytes cut from the last segment past its durable point: written but never fsynced, so
    /// never acknowledged (a power cut, or a process killed in the middle of a write).
    pub unsynced_bytes: u64,
    /// The last segment and the offset up to which its marks prove it was fsynced.
    pub durable_point: Option<(String, u64)>,
    /// A last segment whose creation was interrupted (bad or short header) was removed.
    pub removed_unfinished_segment: bool,
    /// With `discard_after_corruption`: where the log was cut although intact records followed.
    pub discarded_at: Option<(String, u64)>,
}

impl Recovery {
    /// What opening the log had to repair, one sentence each, for the operator (empty when the
    /// log was whole).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.unsynced_bytes > 0 {
            let at = self
                .durable_point
                .as_ref()
                .map(|(file, offset)| format!(" (after byte {offset} of {file})"))
                .unwrap_or_default();
            notes.push(format!(
                "discarded {} bytes written after the last durable record{at}: they were never \
                 synced, so never acknowledged",
                self.unsynced_bytes
            ));
        }
        if self.torn_bytes > 0 {
            notes.push(format!(
                "cut a torn tail of {} bytes from the log (a write cut short before it was synced)",
                self.torn_bytes
            ));
        }
        if self.removed_unfinished_segment {
            notes.push("removed a log segment whose creation was interrupted".into());
        }
        if let Some((file, offset)) = &self.discarded_at {
            notes.push(format!(
                "the log was damaged at byte {offset} of {file}; everything after it was discarded"
            ));
        }
        notes
    }
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
        let version = header.version;
        let mut pos = HEADER_LEN;
        let mut max_index = None;
        // How far this segment is proven fsynced (by marks read so far).
        let mut durable = 0u64;
        while pos < buf.len() {
            let reason = match record::decode(&buf[pos..]) {
                Decoded::Record { record, len } => {
                    if let Record::Durable {
                        log_id: id,
                        seq: s,
                        upto,
                    } = record
                    {
                        if version == VERSION_1 {
                            return Err(corrupt(
                                pos as u64,
                                "a durable mark in a version-1 segment".into(),
                            ));
                        }
                        if id != header.log_id || s != seq || upto > pos as u64 {
                            return Err(corrupt(
                                pos as u64,
                                format!("durable mark for byte {upto} of segment {s} of log {id:016x} does not fit here"),
                            ));
                        }
                        durable = durable.max(upto);
                    }
                    let loc = Loc {
                        seq,
                        offset: pos as u64,
                        len: len as u32,
                    };
                    state
                        .apply(&record, loc, true)
                        .map_err(|r| corrupt(pos as u64, r))?;
                    if let Record::Entry { index, .. } = record {
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
            let damaged = if version == VERSION_1 {
                first_intact_record(&buf, pos + 1).map(|next| {
                    format!(
                        "{reason}, and an intact record follows at byte {next}: damage in the \
                         middle of the log"
                    )
                })
            } else {
                durable = durable.max(marks_after(&buf, pos + 1, header.log_id, seq));
                ((pos as u64) < durable).then(|| {
                    format!(
                        "{reason}, inside the first {durable} bytes, which an fsync had made \
                         durable: acknowledged data is damaged"
                    )
                })
            };
            if let Some(damage) = damaged {
                if !opts.discard_after_corruption {
                    return Err(corrupt(
                        pos as u64,
                        format!(
                            "{damage} (`tidemark recover --discard-after-corruption` cuts here, \
                             losing everything after it)"
                        ),
                    ));
                }
                recovery.discarded_at = Some((file.clone(), pos as u64));
            } else if version == VERSION_1 {
                recovery.torn_bytes += (buf.len() - pos) as u64;
            } else {
                recovery.unsynced_bytes += (buf.len() - pos) as u64;
            }
            cut(&*device, pos as u64)
                .map_err(|e| Error::io("cutting the unsynced end of", &file, e))?;
            buf.truncate(pos);
            break;
        }
        if is_last && version != VERSION_1 {
            recovery.durable_point = Some((file.clone(), durable));
        }
        recovery.segments += 1;
        segments.push(Segment {
            seq,
            version,
            device,
            len: buf.len() as u64,
            marked: durable,
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

/// The largest `upto` of the durable marks of segment `seq` of log `log_id` that start at or
/// after `from` and claim no more than their own offset (a mark is written after the bytes it
/// vouches for, so anything else is not a mark of this segment, e.g. bytes inside an entry).
fn marks_after(buf: &[u8], from: usize, log_id: u64, seq: u64) -> u64 {
    let mut best = 0;
    let mut at = from;
    while let Some(start) = first_intact_record(buf, at) {
        at = start;
        // Walk the run of whole records from here; resynchronise after the next damage.
        while let Decoded::Record { record, len } = record::decode(&buf[at..]) {
            if let Record::Durable {
                log_id: id,
                seq: s,
                upto,
            } = record
            {
                if id == log_id && s == seq && upto <= at as u64 {
                    best = best.max(upto);
                }
            }
            at += len;
        }
        at += 1;
    }
    best
}
