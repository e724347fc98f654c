//! The write-ahead log over every log device: conformance, recovery, damage, group commit, and a
//! power cut at every sync point checked against a model.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use tidemark_core::wal::record::{self, Decoded, SegmentHeader, HEADER_LEN, MARK_LEN, VERSION_1};
use tidemark_core::wal::{
    FileLogDir, LogDir, Lsn, Record, Wal, WalOptions, SLOT_COMMITTED, SLOT_VOTE,
};
use tidemark_core::Error;
use tidemark_testkit::{log_device_suite, CrashLogDir, MemLogDir, Unsynced};

fn small() -> WalOptions {
    WalOptions {
        segment_size: 2048,
        ..WalOptions::default()
    }
}

fn open(dir: &(impl LogDir + Clone + 'static), opts: WalOptions) -> Wal {
    Wal::open(Arc::new(dir.clone()), opts).unwrap().0
}

fn entries(wal: &Wal) -> BTreeMap<u64, Vec<u8>> {
    wal.read_range(0..u64::MAX).unwrap().into_iter().collect()
}

#[test]
fn log_device_suite_file_mem_crash() {
    let tmp = tempfile::tempdir().unwrap();
    log_device_suite(&FileLogDir::new(tmp.path().join("wal")).unwrap());
    log_device_suite(&MemLogDir::new());
    log_device_suite(&CrashLogDir::new(None));
}

#[test]
fn append_read_reopen_on_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FileLogDir::new(tmp.path()).unwrap();
    let wal = open(&dir, small());
    let mut lsn = Lsn::default();
    for i in 1..=50u64 {
        lsn = wal.append([(i, vec![i as u8; i as usize * 10])]).unwrap();
    }
    wal.set_meta(SLOT_VOTE, b"vote-1").unwrap();
    let lsn2 = wal.set_meta(SLOT_COMMITTED, b"c-40").unwrap();
    assert!(lsn2 > lsn);
    wal.sync(lsn2).unwrap();
    assert!(wal.stats().segments > 3, "2 KiB segments rotate");
    drop(wal);
    let (wal, rec) = Wal::open(Arc::new(dir), small()).unwrap();
    assert_eq!(rec.torn_bytes, 0);
    let got = entries(&wal);
    assert_eq!(got.len(), 50);
    assert_eq!(got[&7], vec![7u8; 70]);
    assert_eq!(wal.meta(SLOT_VOTE).unwrap(), b"vote-1");
    assert_eq!(wal.meta(SLOT_COMMITTED).unwrap(), b"c-40");
    assert_eq!(wal.bounds().unwrap(), Some((1, 50)));
    assert!(matches!(
        wal.append([(52u64, b"gap")]),
        Err(Error::Invalid(m)) if m.contains("does not follow")
    ));
}

#[test]
fn truncate_and_purge_survive_reopen_and_delete_segments() {
    let dir = MemLogDir::new();
    let wal = open(&dir, small());
    for i in 0..40u64 {
        wal.append([(i, vec![1u8; 200])]).unwrap();
    }
    let before = wal.stats().segments;
    wal.truncate_after(Some(29)).unwrap();
    wal.append((30..35u64).map(|i| (i, vec![2u8; 200])))
        .unwrap();
    wal.set_meta(SLOT_VOTE, b"v").unwrap();
    wal.purge(25, b"log-id-25").unwrap();
    assert!(wal.stats().segments < before, "purged segments are deleted");
    assert_eq!(wal.bounds().unwrap(), Some((26, 34)));
    let lsn = wal.append([(35u64, vec![3u8; 10])]).unwrap();
    wal.sync(lsn).unwrap();
    let expect = entries(&wal);
    drop(wal);

    let wal = open(&dir, small());
    assert_eq!(entries(&wal), expect);
    assert_eq!(expect[&31], vec![2u8; 200]);
    assert_eq!(wal.last_purged().unwrap(), (25, b"log-id-25".to_vec()));
    assert_eq!(wal.meta(SLOT_VOTE).unwrap(), b"v");
    assert!(
        wal.truncate_after(Some(20)).is_err(),
        "cannot truncate purged entries"
    );
    // Purging past the end leaves an empty log that continues after the purge point.
    wal.purge(100, b"p100").unwrap();
    assert_eq!(wal.bounds().unwrap(), None);
    assert_eq!(wal.last_index().unwrap(), Some(100));
    wal.append([(101u64, b"x")]).unwrap();
    drop(wal);
    let wal = open(&dir, small());
    assert_eq!(wal.bounds().unwrap(), Some((101, 101)));
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let dir = MemLogDir::new();
    let wal = open(&dir, WalOptions::default());
    let lsn = wal.append((1..=3u64).map(|i| (i, vec![9u8; 100]))).unwrap();
    wal.sync(lsn).unwrap();
    drop(wal);
    let good = dir.bytes(1).unwrap();
    // A fourth record that only half reached the disk.
    let mut torn = good.clone();
    let full = tidemark_core::wal::Record::Entry {
        index: 4,
        data: &[7u8; 100],
    }
    .encode();
    torn.extend_from_slice(&full[..60]);
    dir.set_bytes(1, torn);
    let (wal, rec) = Wal::open(Arc::new(dir.clone()), WalOptions::default()).unwrap();
    assert_eq!((rec.torn_bytes, rec.unsynced_bytes), (0, 60));
    assert_eq!(
        rec.notes(),
        vec![format!(
            "discarded 60 bytes written after the last durable record (after byte {} of \
             mem:0000000000000001.wal): they were never synced, so never acknowledged",
            good.len() - MARK_LEN
        )],
        "the last durable record is the mark written after the sync"
    );
    let now = dir.bytes(1).unwrap();
    assert_eq!(now[..good.len()], good, "cut back to the last whole record");
    assert_eq!(
        now.len(),
        good.len() + MARK_LEN,
        "then marked durable on open"
    );
    assert_eq!(wal.bounds().unwrap(), Some((1, 3)));
    wal.append([(4u64, b"after")]).unwrap();
    assert_eq!(wal.read(4).unwrap().unwrap(), b"after");
    // Zeroed pages after the end (a preallocated tail) are a torn tail too.
    drop(wal);
    let mut zeros = dir.bytes(1).unwrap();
    zeros.extend_from_slice(&[0u8; 4096]);
    dir.set_bytes(1, zeros);
    let (wal, rec) = Wal::open(Arc::new(dir), WalOptions::default()).unwrap();
    assert_eq!(rec.unsynced_bytes, 4096);
    assert_eq!(wal.bounds().unwrap(), Some((1, 4)));
}

#[test]
fn damage_before_the_tail_names_segment_and_offset() {
    let dir = MemLogDir::new();
    let wal = open(&dir, small());
    for i in 1..=30u64 {
        let lsn = wal.append([(i, vec![5u8; 150])]).unwrap();
        wal.sync(lsn).unwrap();
    }
    drop(wal);
    let files = dir.files();
    assert!(files.len() >= 3);
    let last = *files.keys().last().unwrap();

    // A flipped bit in an earlier segment.
    let mut bad = files.clone();
    bad.get_mut(&1).unwrap()[32 + 20] ^= 0x04;
    let err = Wal::open(Arc::new(MemLogDir::with_files(bad)), small())
        .err()
        .expect("damage is an error");
    let msg = err.to_string();
    assert!(
        msg.contains("0000000000000001.wal") && msg.contains("byte 32"),
        "{msg}"
    );

    // A flipped bit in the middle of the last segment, with intact records after it.
    let mut bad = files.clone();
    let seg = bad.get_mut(&last).unwrap();
    assert!(
        seg.len() > 32 + 400,
        "the last segment holds several records"
    );
    seg[32 + 20] ^= 0x04;
    let err = Wal::open(Arc::new(MemLogDir::with_files(bad.clone())), small())
        .err()
        .expect("damage before the durable point is an error");
    assert!(
        matches!(err, Error::LogCorrupt { ref reason, offset: 32, .. }
            if reason.contains("acknowledged data is damaged")),
        "{err}"
    );
    // …unless the operator asks to cut there.
    let opts = WalOptions {
        discard_after_corruption: true,
        ..small()
    };
    let (_, rec) = Wal::open(Arc::new(MemLogDir::with_files(bad)), opts).unwrap();
    assert!(rec.discarded_at.is_some());

    // A missing segment in the middle.
    let mut gap = files.clone();
    gap.remove(&2);
    let err = Wal::open(Arc::new(MemLogDir::with_files(gap)), small())
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing"), "{err}");

    // A segment from another log.
    let other = MemLogDir::new();
    let w2 = open(&other, small());
    w2.append([(1u64, b"x")]).unwrap();
    drop(w2);
    let mut mixed = files;
    mixed.insert(last + 1, other.bytes(1).unwrap());
    let err = Wal::open(Arc::new(MemLogDir::with_files(mixed)), small())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("header says segment") || err.to_string().contains("two logs"),
        "{err}"
    );
}

#[test]
fn interrupted_rotation_leaves_a_removable_segment() {
    let dir = MemLogDir::new();
    let wal = open(&dir, WalOptions::default());
    let lsn = wal.append([(1u64, b"one")]).unwrap();
    wal.sync(lsn).unwrap();
    drop(wal);
    dir.set_bytes(2, b"TMW".to_vec()); // the next segment's header never finished
    let (wal, rec) = Wal::open(Arc::new(dir.clone()), WalOptions::default()).unwrap();
    assert!(rec.removed_unfinished_segment);
    assert_eq!(dir.list().unwrap(), vec![1]);
    assert_eq!(wal.read(1).unwrap().unwrap(), b"one");
}

#[test]
fn group_commit_shares_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Arc::new(open(
        &FileLogDir::new(tmp.path()).unwrap(),
        WalOptions::default(),
    ));
    let next = Arc::new(Mutex::new(1u64));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (wal, next) = (wal.clone(), next.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let lsn = {
                        let mut n = next.lock().unwrap();
                        let lsn = wal.append([(*n, vec![t as u8; 64])]).unwrap();
                        *n += 1;
                        lsn
                    };
                    wal.sync(lsn).unwrap();
                    assert!(wal.durable() >= lsn);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.entries, 400);
    println!(
        "400 acknowledged appends from 4 threads took {} fsyncs",
        stats.syncs
    );
    assert!(stats.syncs < 400, "concurrent appends share fsyncs");
}

#[test]
fn a_failed_sync_poisons_the_log() {
    let dir = CrashLogDir::new(None);
    let wal = open(&dir, WalOptions::default());
    let n = dir.syncs();
    drop(wal);
    let dir = CrashLogDir::new(Some(n));
    let wal = open(&dir, WalOptions::default());
    let lsn = wal.append([(1u64, b"a")]).unwrap();
    assert!(wal.sync(lsn).is_err());
    assert!(matches!(
        wal.append([(2u64, b"b")]),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(wal.sync(lsn), Err(Error::Poisoned(_))));
}

/// The logical content of a log, as the model and the recovered log see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Model {
    entries: BTreeMap<u64, Vec<u8>>,
    meta: [Option<Vec<u8>>; 2],
    purged: Option<(u64, Vec<u8>)>,
}

impl Model {
    fn read(wal: &Wal) -> Model {
        Model {
            entries: entries(wal),
            meta: [wal.meta(SLOT_VOTE), wal.meta(SLOT_COMMITTED)],
            purged: wal.last_purged(),
        }
    }
}

/// The shape of a [`workload`].
#[derive(Debug, Clone, Copy)]
struct Shape {
    ops: usize,
    /// Entries are 0..max_len bytes.
    max_len: usize,
    /// Sync after an operation with probability 1/group (1: after every one), so a group
    /// commit covers several writes.
    group: u32,
}

const SMALL: Shape = Shape {
    ops: 60,
    max_len: 700,
    group: 1,
};

/// Runs a random workload; returns the model state after every record, and how many of those
/// states were acknowledged (synced) before the run stopped.
fn workload(wal: &Wal, seed: u64, shape: Shape) -> (Vec<Model>, usize) {
    let Shape {
        ops,
        max_len,
        group,
    } = shape;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut states = vec![model.clone()];
    let mut acked = 1;
    let mut next = 1u64;
    for op in 0..ops {
        let result = match rng.gen_range(0..10) {
            0..=5 => {
                let n = rng.gen_range(1..4);
                let batch: Vec<(u64, Vec<u8>)> = (0..n)
                    .map(|k| {
                        let len = rng.gen_range(0..max_len);
                        (next + k, (0..len).map(|_| rng.gen()).collect())
                    })
                    .collect();
                for (i, d) in &batch {
                    model.entries.insert(*i, d.clone());
                    states.push(model.clone());
                }
                next += n;
                wal.append(batch)
            }
            6 => {
                let slot = rng.gen_range(0..2u8);
                let v = format!("meta {op}").into_bytes();
                model.meta[slot as usize] = Some(v.clone());
                states.push(model.clone());
                wal.set_meta(slot, &v)
            }
            7 if next > 1 => {
                let low = model.purged.as_ref().map_or(0, |p| p.0);
                let after = rng.gen_range(low..next);
                model.entries.retain(|i, _| *i <= after);
                states.push(model.clone());
                next = after + 1;
                wal.truncate_after(Some(after))
            }
            _ if next > 3 && model.purged.as_ref().map_or(0, |p| p.0 + 1) < next - 1 => {
                let low = model.purged.as_ref().map_or(0, |p| p.0 + 1);
                let upto = rng.gen_range(low..next - 1);
                if model.purged.as_ref().is_some_and(|p| p.0 >= upto) {
                    continue;
                }
                let id = format!("term-of-{upto}").into_bytes();
                model.entries.retain(|i, _| *i > upto);
                model.purged = Some((upto, id.clone()));
                states.push(model.clone());
                match wal.purge(upto, &id) {
                    Ok(()) => {
                        acked = states.len();
                        continue;
                    }
                    Err(_) => return (states, acked),
                }
            }
            _ => continue,
        };
        let Ok(lsn) = result else {
            return (states, acked);
        };
        if group > 1 && rng.gen_range(0..group) != 0 && op + 1 < ops {
            continue; // a later sync covers it: one group commit for several writes
        }
        if wal.sync(lsn).is_err() {
            return (states, acked);
        }
        acked = states.len();
    }
    (states, acked)
}

/// How many seeds of unordered page write-back each power cut is recovered from.
const PAGE_SEEDS: u64 = 12;

#[test]
fn power_cut_at_every_sync_point_loses_nothing_acknowledged() {
    for seed in 0..4u64 {
        power_cut_at_every_sync_point(seed, SMALL, small(), 4);
    }
}

/// Issue 9: an ordinary power cut persists unsynced pages in any order, so a hole can lie before
/// whole records. Segments span many pages and group commits cover several writes; recovery
/// must never fail and must keep every acknowledged record.
#[test]
fn issue_9_power_cut_with_unordered_pages_keeps_every_acknowledged_record() {
    let shape = Shape {
        ops: 80,
        max_len: 3000,
        group: 4,
    };
    let opts = WalOptions {
        segment_size: 48 << 10,
        ..WalOptions::default()
    };
    for seed in 0..6u64 {
        power_cut_at_every_sync_point(seed, shape, opts, 0);
    }
}

/// Runs the workload once to count its sync points, then again cutting the power at each one,
/// and recovers each cut disk in the classic ways (when `classic` > 0) and with
/// [`PAGE_SEEDS`] seeds of unordered page write-back, checking against the model.
fn power_cut_at_every_sync_point(seed: u64, shape: Shape, opts: WalOptions, classic: usize) {
    let probe = CrashLogDir::new(None);
    let wal = open(&probe, opts);
    let (_, _) = workload(&wal, seed, shape);
    let points = probe.syncs();
    drop(wal);
    assert!(points > 20, "the workload syncs often ({points})");
    println!(
        "seed {seed}: {points} sync points, each cut and recovered {} ways",
        classic as u64 + PAGE_SEEDS
    );
    for cut in 0..points {
        let dir = CrashLogDir::new(Some(cut));
        let (wal, states, acked) = match Wal::open(Arc::new(dir.clone()), opts) {
            Ok((wal, _)) => {
                let (states, acked) = workload(&wal, seed, shape);
                (Some(wal), states, acked)
            }
            Err(_) => (None, vec![Model::default()], 0), // cut while creating the log
        };
        assert!(dir.is_dead(), "seed {seed} cut {cut}: the power was cut");
        drop(wal);
        let modes = [
            Unsynced::Lost,
            Unsynced::Kept,
            Unsynced::Torn(cut),
            Unsynced::Torn(cut + 7),
        ]
        .into_iter()
        .take(classic)
        .chain((0..PAGE_SEEDS).map(|k| Unsynced::Pages(seed << 32 | cut << 8 | k)));
        for unsynced in modes {
            let disk = dir.after_crash(unsynced);
            let (wal, _) = Wal::open(Arc::new(disk.clone()), opts).unwrap_or_else(|e| {
                panic!("seed {seed} cut {cut} {unsynced:?}: recovery failed: {e}")
            });
            let got = Model::read(&wal);
            let found = states
                .iter()
                .skip(acked.saturating_sub(1))
                .any(|s| *s == got);
            assert!(
                found,
                "seed {seed} cut {cut} {unsynced:?}: recovered state is not one the log went \
                 through since the last acknowledgement ({} states, {acked} acked)\n{got:?}",
                states.len()
            );
            // The recovered log takes new writes and keeps them.
            let next = wal.last_index().unwrap().map_or(1, |l| l + 1);
            let lsn = wal.append([(next, b"after recovery")]).unwrap();
            wal.sync(lsn).unwrap();
            drop(wal);
            let (wal, _) = Wal::open(Arc::new(disk), opts).unwrap();
            assert_eq!(wal.read(next).unwrap().unwrap(), b"after recovery");
        }
    }
}

/// The largest `upto` of the durable marks in the run of whole records at the start of a
/// segment's bytes.
fn proven_durable(segment: &[u8]) -> u64 {
    let mut at = HEADER_LEN;
    let mut best = 0;
    while let Decoded::Record { record, len } = record::decode(&segment[at..]) {
        if let Record::Durable { upto, .. } = record {
            best = best.max(upto);
        }
        at += len;
    }
    best
}

/// Issue 9: a power cut is no excuse for damage inside bytes an fsync covered. After each cut
/// (with unordered page write-back), one flipped byte anywhere before the durable point the
/// marks prove makes opening fail, naming the segment and offset; the operator can still cut
/// there.
#[test]
fn issue_9_damage_inside_synced_data_is_still_an_error() {
    let shape = Shape {
        ops: 60,
        max_len: 3000,
        group: 3,
    };
    let opts = WalOptions {
        segment_size: 48 << 10,
        ..WalOptions::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut checked = 0;
    for cut in (4..60).step_by(3) {
        let dir = CrashLogDir::new(Some(cut));
        let wal = open(&dir, opts);
        let _ = workload(&wal, 1, shape);
        drop(wal);
        for k in 0..4 {
            let mut files = dir.after_crash(Unsynced::Pages(cut << 8 | k)).files();
            let (&last, bytes) = files.iter_mut().next_back().unwrap();
            if SegmentHeader::decode(bytes).is_err() {
                continue; // a rotation cut before its header was synced: removed on open
            }
            let durable = proven_durable(bytes);
            if durable <= HEADER_LEN as u64 + 1 {
                continue; // nothing in this segment is vouched for yet
            }
            let at = rng.gen_range(HEADER_LEN..usize::try_from(durable).unwrap());
            bytes[at] ^= 1 << rng.gen_range(0..8);
            let name = format!("mem:{last:016x}.wal");
            let err = Wal::open(Arc::new(MemLogDir::with_files(files.clone())), opts)
                .err()
                .unwrap_or_else(|| {
                    panic!("cut {cut} page seed {k}: a flip at byte {at} < {durable} was accepted")
                });
            match &err {
                Error::LogCorrupt {
                    file,
                    offset,
                    reason,
                } => {
                    assert_eq!(*file, name, "{err}");
                    assert!(*offset <= at as u64 && *offset < durable, "{err}");
                    assert!(reason.contains("acknowledged data is damaged"), "{err}");
                }
                other => panic!("cut {cut}: not a corruption error: {other}"),
            }
            let discard = WalOptions {
                discard_after_corruption: true,
                ..opts
            };
            // Cutting there can also cut the purge record that let earlier segments go; then
            // the log cannot open at all, but never for the damage the operator chose to cut.
            match Wal::open(Arc::new(MemLogDir::with_files(files)), discard) {
                Ok((_, rec)) => {
                    assert_eq!(rec.discarded_at.as_ref().map(|d| &d.0), Some(&name));
                }
                Err(e) => assert!(e.to_string().contains("never purged"), "{e}"),
            }
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "enough cuts had vouched-for data to damage ({checked})"
    );
}

/// A log written before durable marks (segment version 1) still opens and replays; its damage
/// follows the old rule; new records go to a fresh version-2 segment.
#[test]
fn issue_9_version_1_segments_still_open() {
    let v1 = |seq: u64, records: &[Record<'_>]| {
        let mut b = SegmentHeader {
            version: VERSION_1,
            seq,
            log_id: 42,
        }
        .encode()
        .to_vec();
        for r in records {
            r.encode_into(&mut b);
        }
        b
    };
    let entry = |index, data: &'static [u8]| Record::Entry { index, data };
    let files = BTreeMap::from([
        (1, v1(1, &[entry(1, b"one"), entry(2, b"two")])),
        (
            2,
            v1(
                2,
                &[
                    Record::Meta {
                        slot: SLOT_VOTE,
                        value: b"v",
                    },
                    entry(3, b"three"),
                ],
            ),
        ),
    ]);
    let dir = MemLogDir::with_files(files.clone());
    let (wal, rec) = Wal::open(Arc::new(dir.clone()), WalOptions::default()).unwrap();
    assert_eq!((rec.segments, rec.records), (2, 4));
    assert_eq!(entries(&wal)[&3], b"three");
    assert_eq!(wal.meta(SLOT_VOTE).unwrap(), b"v");
    let lsn = wal.append([(4u64, b"four")]).unwrap();
    wal.sync(lsn).unwrap();
    drop(wal);
    assert_eq!(
        dir.list().unwrap(),
        vec![1, 2, 3],
        "a version-1 log rotates on open"
    );
    assert_eq!(dir.bytes(3).unwrap()[4], 2, "into a version-2 segment");
    let (wal, _) = Wal::open(Arc::new(dir), WalOptions::default()).unwrap();
    assert_eq!(entries(&wal).len(), 4);
    assert_eq!(
        wal.meta(SLOT_VOTE).unwrap(),
        b"v",
        "the checkpoint carried the vote"
    );

    // A torn tail of a version-1 last segment is cut and reported as such.
    let mut torn = files.clone();
    torn.get_mut(&2)
        .unwrap()
        .extend_from_slice(&entry(4, b"four").encode()[..10]);
    let (_, rec) = Wal::open(Arc::new(MemLogDir::with_files(torn)), WalOptions::default()).unwrap();
    assert_eq!((rec.torn_bytes, rec.unsynced_bytes), (10, 0));
    // Damage followed by an intact record stays an error there (no marks to tell otherwise).
    let mut bad = files;
    let seg = bad.get_mut(&2).unwrap();
    seg[HEADER_LEN + 5] ^= 1; // the vote record's length
    let err = Wal::open(Arc::new(MemLogDir::with_files(bad)), WalOptions::default())
        .err()
        .expect("damage before an intact record is an error in version 1");
    assert!(err.to_string().contains("intact record follows"), "{err}");
}

/// The power-cut model itself: synced bytes always survive, and over seeds some unsynced page is
/// lost while a later one is kept (a hole before whole data), and lengths vary.
#[test]
fn crash_log_dir_pages_persist_unsynced_pages_in_any_order() {
    let dir = CrashLogDir::new(None);
    let d = dir.create(1).unwrap();
    d.append(&[1u8; 5000]).unwrap();
    d.sync().unwrap();
    dir.sync().unwrap();
    d.append(&[2u8; 4 * 4096]).unwrap();
    let (mut hole, mut lengths) = (false, std::collections::BTreeSet::new());
    for seed in 0..64 {
        let b = dir.after_crash(Unsynced::Pages(seed)).bytes(1).unwrap();
        assert_eq!(b[..5000], [1u8; 5000], "seed {seed}: synced bytes survive");
        assert!(b.len() >= 5000 && b.len() <= 5000 + 4 * 4096);
        let page = |p: usize| b.get(p * 4096 + 100).copied();
        hole |= (1..4).any(|p| page(p) == Some(0) && page(p + 1) == Some(2));
        lengths.insert(b.len());
    }
    assert!(hole, "some seed loses a page but keeps a later one");
    assert!(lengths.len() > 10, "lengths vary: {lengths:?}");
}
