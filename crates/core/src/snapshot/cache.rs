//! The local snapshot cache (`docs/format.md` §16): the plaintexts of a repository's snapshots in
//! one sealed file on the client, so a listing reads one file and opens only the snapshots added
//! since the last one.
//!
//! ```text
//! store.list(snapshots) ─ids─▶ sync ◀─read, open, check─ <cache>/<repo id>/snapshots
//!                               │ drop ids no longer listed; load + open the missing ones
//!                               ├─▶ SnapshotList (oldest first; each snapshot parsed when asked for)
//!                               └─▶ rewrite (temp file + rename) only when something changed
//! ```
//! This module owns the file format and the merge; the repository owns where the file lives and
//! how a snapshot object is read ([`sync`] takes it as a function). A cache that cannot be used
//! is never an error: it is ignored, rebuilt, and named in [`CacheStats`].

use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;

use super::{nanos, select, Selector, Snapshot, SnapshotFilter};
use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId, SnapshotId};

/// Cache file magic.
pub const CACHE_MAGIC: &[u8; 4] = b"TMSC";
const VERSION: u8 = 1;
/// magic, version, repository id, count, length of the entries.
const HEADER_LEN: usize = 4 + 1 + 32 + 4 + 8;
/// id, time, len.
const ENTRY_HEADER_LEN: usize = 32 + 8 + 4;
const CHECK_LEN: usize = 32;
/// zstd level of the entries: the fastest. Snapshots of one repository repeat most of their
/// JSON, so even this shrinks the file ~5×, and a rewrite stays cheap.
const ZSTD_LEVEL: i32 = 1;
/// A claimed uncompressed length beyond this many times the compressed one is damage.
const MAX_RATIO: usize = 1024;
/// The cache file's name in its repository's directory.
pub const FILE_NAME: &str = "snapshots";
const TEMP_PREFIX: &str = ".snapshots.tmp-";
/// A temp file this old was left by a writer that died; the next writer deletes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Snapshot objects read at once when the cache misses many (remote stores need the overlap).
const LOAD_THREADS: usize = 8;
/// Below this many snapshots, parsing on one thread is cheaper than starting more.
const PARALLEL_PARSE_MIN: usize = 4096;

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by tidemark.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// One snapshot: its id, its time (ns since the epoch, the sort key) and where its JSON is.
#[derive(Debug, Clone)]
struct Entry {
    id: SnapshotId,
    time_ns: i64,
    json: Range<usize>,
}

/// Every snapshot of a repository as of one listing, oldest first (equal times by id). Holds the
/// JSON plaintexts; each snapshot is parsed only when asked for, so `latest` parses one.
#[derive(Debug, Clone, Default)]
pub struct SnapshotList {
    /// The JSON plaintexts; entries point into it (after a merge, some bytes belong to none).
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

impl SnapshotList {
    /// Number of snapshots.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = SnapshotId> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// The time of the `i`-th snapshot, ns since the epoch.
    pub fn time_ns(&self, i: usize) -> i64 {
        self.entries[i].time_ns
    }

    /// The JSON plaintext of the `i`-th snapshot, as stored in its object.
    pub fn json(&self, i: usize) -> &[u8] {
        &self.buf[self.entries[i].json.clone()]
    }

    /// Parses the `i`-th snapshot.
    pub fn get(&self, i: usize) -> Result<(SnapshotId, Snapshot)> {
        let id = self.entries[i].id;
        let s =
            Snapshot::decode(self.json(i)).map_err(|r| Error::corrupt(Kind::Snapshot, id, r))?;
        Ok((id, s))
    }

    /// Parses the snapshots in `range` (positions, oldest first), on several threads when many.
    pub fn parse(&self, range: Range<usize>) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let range = range.start.min(self.len())..range.end.min(self.len());
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if range.len() < PARALLEL_PARSE_MIN || threads < 2 {
            return range.map(|i| self.get(i)).collect();
        }
        let per = range.len().div_ceil(threads);
        let parts: Vec<Result<Vec<_>>> = std::thread::scope(|s| {
            let handles: Vec<_> = range
                .clone()
                .step_by(per)
                .map(|start| {
                    let part = start..(start + per).min(range.end);
                    s.spawn(move || part.map(|i| self.get(i)).collect::<Result<Vec<_>>>())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("snapshot parsing does not panic"))
                .collect()
        });
        let mut out = Vec::with_capacity(range.len());
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// Parses every snapshot, oldest first.
    pub fn parse_all(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        self.parse(0..self.len())
    }

    /// How many snapshots are at or before `t`: the position after the last of them.
    pub fn count_at_or_before(&self, t: DateTime<Utc>) -> usize {
        let t = nanos(t);
        self.entries.partition_point(|e| e.time_ns <= t)
    }

    /// The snapshot `selector` picks among those `filter` lets through (as
    /// [`super::select`] does on parsed snapshots). `Latest` and `AtOrBefore` parse from the
    /// newest candidate backwards until one passes the filter; `Revision` parses all.
    pub fn select(
        &self,
        filter: &SnapshotFilter,
        selector: Selector,
    ) -> Result<Option<(SnapshotId, Snapshot)>> {
        let end = match selector {
            Selector::Latest => self.len(),
            Selector::AtOrBefore(t) => self.count_at_or_before(t),
            Selector::Revision(_) => {
                let all = self.parse_all()?;
                return Ok(select(&all, filter, selector).cloned());
            }
        };
        for i in (0..end).rev() {
            let (id, s) = self.get(i)?;
            if filter.matches(&s) {
                return Ok(Some((id, s)));
            }
        }
        Ok(None)
    }

    /// Adds a snapshot at the end; call [`SnapshotList::sort`] afterwards.
    fn push(&mut self, id: SnapshotId, time_ns: i64, json: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(json);
        self.entries.push(Entry {
            id,
            time_ns,
            json: start..self.buf.len(),
        });
    }

    fn sort(&mut self) {
        // Ids are unique, so the order is total and an unstable sort is deterministic.
        self.entries.sort_unstable_by_key(|e| (e.time_ns, e.id));
    }

    /// The file's plaintext (§16), before sealing.
    pub fn encode(&self, repository: &ObjectId) -> Vec<u8> {
        let len: usize = self
            .entries
            .iter()
            .map(|e| ENTRY_HEADER_LEN + e.json.len())
            .sum();
        let mut entries = Vec::with_capacity(len);
        for e in &self.entries {
            entries.extend_from_slice(&e.id.0);
            entries.extend_from_slice(&e.time_ns.to_le_bytes());
            entries.extend_from_slice(&(e.json.len() as u32).to_le_bytes());
            entries.extend_from_slice(&self.buf[e.json.clone()]);
        }
        let packed = zstd::bulk::compress(&entries, ZSTD_LEVEL)
            .expect("zstd compresses an in-memory buffer at a valid level");
        drop(entries);
        let mut out = Vec::with_capacity(HEADER_LEN + packed.len() + CHECK_LEN);
        out.extend_from_slice(CACHE_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&repository.0);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(len as u64).to_le_bytes());
        out.extend_from_slice(&packed);
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    /// Parses a file's plaintext (after opening); the decompressed entries become the buffer
    /// they point into. Never panics, whatever the bytes (the `snapshot_cache` fuzz target).
    pub fn decode(plain: &[u8], repository: &ObjectId) -> std::result::Result<Self, String> {
        if plain.len() < HEADER_LEN + CHECK_LEN {
            return Err(format!("{} bytes is too short", plain.len()));
        }
        let (body, check) = plain.split_at(plain.len() - CHECK_LEN);
        if blake3::hash(body).as_bytes() != check {
            return Err("check hash mismatch".into());
        }
        if &body[..4] != CACHE_MAGIC {
            return Err("bad magic".into());
        }
        if body[4] != VERSION {
            return Err(format!("unknown version {}", body[4]));
        }
        if body[5..37] != repository.0 {
            return Err("written for another repository".into());
        }
        let count = u32::from_le_bytes(body[37..41].try_into().expect("4 bytes")) as usize;
        let len = u64::from_le_bytes(body[41..49].try_into().expect("8 bytes"));
        let packed = &body[HEADER_LEN..];
        // Before allocating: the length must fit the count and a ratio zstd reaches on JSON.
        if usize::try_from(len).map_or(true, |l| {
            l > packed.len().saturating_mul(MAX_RATIO) || count > l / ENTRY_HEADER_LEN
        }) {
            return Err(format!(
                "{count} entries in {len} bytes do not fit {} compressed bytes",
                packed.len()
            ));
        }
        let len = len as usize;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|e| format!("{len} bytes: {e}"))?;
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(packed, &mut buf))
            .map_err(|e| format!("zstd: {e}"))?;
        if buf.len() != len {
            return Err(format!("{} bytes of entries instead of {len}", buf.len()));
        }
        let mut entries = Vec::with_capacity(count);
        let mut at = 0;
        for _ in 0..count {
            if buf.len() - at < ENTRY_HEADER_LEN {
                return Err("entry cut short".into());
            }
            let id = ObjectId(buf[at..at + 32].try_into().expect("32 bytes"));
            let time_ns = i64::from_le_bytes(buf[at + 32..at + 40].try_into().expect("8 bytes"));
            let json_len = u32::from_le_bytes(buf[at + 40..at + 44].try_into().expect("4 bytes"));
            at += ENTRY_HEADER_LEN;
            let json_len = json_len as usize;
            if buf.len() - at < json_len {
                return Err(format!("entry {} cut short", id.short()));
            }
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                if (prev.time_ns, prev.id) >= (time_ns, id) {
                    return Err(format!("entry {} out of order", id.short()));
                }
            }
            entries.push(Entry {
                id,
                time_ns,
                json: at..at + json_len,
            });
            at += json_len;
        }
        if at != buf.len() {
            return Err(format!("{} bytes after the last entry", buf.len() - at));
        }
        Ok(SnapshotList { buf, entries })
    }
}

/// What one [`sync`] did with the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// The cache file in use; `None` when there is no cache (none set, or it cannot be created).
    pub file: Option<PathBuf>,
    /// Snapshots taken from the cache.
    pub cached: usize,
    /// Snapshots read from the store and opened.
    pub loaded: usize,
    /// Cache entries dropped because their snapshot is no longer listed.
    pub dropped: usize,
    /// Whether the cache file was rewritten.
    pub written: bool,
    /// Why an existing cache file was ignored (damaged or unreadable); it was rebuilt.
    pub damaged: Option<String>,
    /// Why there is no cache or it could not be updated: a directory that cannot be created, a
    /// file that cannot be written. The listing is complete anyway.
    pub unusable: Option<String>,
}

/// The cache file of one repository: `<base>/<repository id hex>/snapshots` (§16).
#[derive(Debug, Clone)]
pub struct CacheFile {
    base: PathBuf,
    dir: PathBuf,
    path: PathBuf,
    repository: ObjectId,
}

impl CacheFile {
    /// The cache of `repository` under `base` (`$XDG_CACHE_HOME/tidemark` by default).
    pub fn new(base: &Path, repository: &ObjectId) -> Self {
        let dir = base.join(repository.to_hex());
        CacheFile {
            base: base.to_path_buf(),
            path: dir.join(FILE_NAME),
            dir,
            repository: *repository,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directories (mode 0700) and the base's `CACHEDIR.TAG`.
    fn prepare(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tag = self.base.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Only a courtesy to backup tools: failing to write it is not a reason to stop.
            let _ = std::fs::write(tag, CACHEDIR_TAG);
        }
        Ok(())
    }

    /// The cached snapshots; `Err` says why an existing file cannot be used. A missing file is
    /// an empty cache.
    fn read(&self, crypto: &Crypto) -> std::result::Result<SnapshotList, String> {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SnapshotList::default())
            }
            Err(e) => return Err(format!("cannot be read: {e}")),
        };
        let plain = crypto
            .open(
                Domain::SnapshotCache,
                &raw,
                Kind::Snapshot,
                &self.path.display(),
            )
            .map_err(|_| "cannot be opened (damaged, or sealed with another key)".to_owned())?;
        drop(raw);
        SnapshotList::decode(&plain, &self.repository)
    }

    /// Replaces the file with `list`: a temp file in the same directory, renamed over it.
    fn write(&self, crypto: &Crypto, list: &SnapshotList) -> std::io::Result<()> {
        self.remove_stale_temps();
        let sealed = crypto.seal(Domain::SnapshotCache, &list.encode(&self.repository));
        let tmp = self.dir.join(format!(
            "{TEMP_PREFIX}{:016x}",
            rand::thread_rng().next_u64()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&sealed)?;
            // No fsync: a crash can at worst leave a torn cache, which is ignored and rebuilt.
            std::fs::rename(&tmp, &self.path)
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    fn remove_stale_temps(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in dir.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if stale && e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Reads one snapshot object: its opened, checked plaintext and the parsed snapshot.
pub type LoadFn<'a> = dyn Fn(&SnapshotId) -> Result<(Snapshot, Vec<u8>)> + Sync + 'a;

/// The snapshots `listed` (one store listing), taken from `file` where it has them and read
/// with `load` where it does not; the file is rewritten when anything was added or dropped.
/// Without a file (or when its directory cannot be created) every snapshot is loaded.
///
/// A snapshot that fails to load fails the call, as it would without a cache, but the ones
/// loaded before it are kept in the file.
pub fn sync(
    file: Option<&CacheFile>,
    crypto: &Crypto,
    listed: &[SnapshotId],
    load: &LoadFn<'_>,
) -> Result<(SnapshotList, CacheStats)> {
    let mut stats = CacheStats::default();
    let file = file.and_then(|f| match f.prepare() {
        Ok(()) => Some(f),
        Err(e) => {
            stats.unusable = Some(format!(
                "cannot create the cache directory {}: {e}",
                f.dir.display()
            ));
            None
        }
    });
    stats.file = file.map(|f| f.path.clone());
    let (mut list, damaged) = match file.map(|f| f.read(crypto)) {
        None => (SnapshotList::default(), false),
        Some(Ok(list)) => (list, false),
        Some(Err(reason)) => {
            stats.damaged = Some(format!(
                "ignored the damaged snapshot cache {} ({reason}); rebuilding it",
                file.expect("read from a file").path.display()
            ));
            (SnapshotList::default(), true)
        }
    };

    // Sorted ids and binary search rather than a hash set: no hashing of 100,000 ids, and no
    // way for names planted in the store to degrade it.
    let mut wanted = listed.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = vec![false; wanted.len()];
    let before = list.len();
    list.entries.retain(|e| match wanted.binary_search(&e.id) {
        Ok(i) => {
            found[i] = true;
            true
        }
        Err(_) => false,
    });
    stats.dropped = before - list.len();
    stats.cached = list.len();
    let missing: Vec<SnapshotId> = wanted
        .iter()
        .zip(&found)
        .filter(|(_, &found)| !found)
        .map(|(id, _)| *id)
        .collect();

    let (loaded, error) = load_all(&missing, load);
    stats.loaded = loaded.len();
    for (id, time_ns, json) in &loaded {
        list.push(*id, *time_ns, json);
    }
    drop(loaded);
    list.sort();

    if let Some(f) = file {
        if stats.loaded > 0 || stats.dropped > 0 || damaged {
            match f.write(crypto, &list) {
                Ok(()) => stats.written = true,
                Err(e) => {
                    stats.unusable = Some(format!(
                        "cannot write the snapshot cache {}: {e}",
                        f.path.display()
                    ));
                }
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((list, stats)),
    }
}

/// A snapshot read from the store: id, time (ns) and JSON plaintext.
type Loaded = (SnapshotId, i64, Vec<u8>);

/// Loads `ids` on up to [`LOAD_THREADS`] threads; stops at the first error and returns it with
/// everything loaded so far.
fn load_all(ids: &[SnapshotId], load: &LoadFn<'_>) -> (Vec<Loaded>, Option<Error>) {
    let threads = LOAD_THREADS.min(ids.len().div_ceil(16)).max(1);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let error = Mutex::new(None);
    let work = || {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(id) = ids.get(i) else { break };
            match load(id) {
                Ok((s, json)) => out.push((*id, s.time_ns(), json)),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    error.lock().expect("error lock").get_or_insert(e);
                }
            }
        }
        out
    };
    let loaded = if threads == 1 {
        work()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("snapshot loading does not panic"))
                .collect()
        })
    };
    (loaded, error.into_inner().expect("error lock"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crypto::MasterKey;
    use crate::id::BlobId;
    use crate::snapshot::{LogPosition, Summary};

    fn snap(time: &str, host: &str, revision: Option<u64>) -> Snapshot {
        Snapshot {
            version: 1,
            time: time.into(),
            hostname: host.into(),
            username: "u".into(),
            uid: 1,
            gid: 1,
            paths: vec!["/data".into()],
            tags: vec![],
            parent: None,
            tree: BlobId([7; 32]),
            program_version: "test".into(),
            summary: Summary::default(),
            revision,
            log: revision.map(|_| LogPosition { term: 2, node: 1 }),
            membership: None,
        }
    }

    /// A fake store of snapshot objects that counts reads.
    struct Objects {
        crypto: Crypto,
        stored: Mutex<BTreeMap<SnapshotId, Vec<u8>>>,
        reads: AtomicUsize,
    }

    impl Objects {
        fn new(crypto: Crypto) -> Self {
            Objects {
                crypto,
                stored: Mutex::default(),
                reads: AtomicUsize::new(0),
            }
        }

        fn add(&self, s: &Snapshot) -> SnapshotId {
            let (id, bytes) = s.seal(&self.crypto);
            self.stored.lock().unwrap().insert(id, bytes);
            id
        }

        fn remove(&self, id: &SnapshotId) {
            self.stored.lock().unwrap().remove(id);
        }

        fn ids(&self) -> Vec<SnapshotId> {
            self.stored.lock().unwrap().keys().copied().collect()
        }

        fn load(&self, id: &SnapshotId) -> Result<(Snapshot, Vec<u8>)> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let bytes = self
                .stored
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .ok_or(Error::NotFound {
                    kind: Kind::Snapshot,
                    id: id.to_hex(),
                })?;
            Snapshot::open_plain(&self.crypto, id, &bytes)
        }

        fn sync(&self, file: Option<&CacheFile>) -> Result<(SnapshotList, CacheStats)> {
            sync(file, &self.crypto, &self.ids(), &|id| self.load(id))
        }

        fn reads(&self) -> usize {
            self.reads.swap(0, Ordering::Relaxed)
        }
    }

    fn setup() -> (tempfile::TempDir, CacheFile, Objects) {
        let dir = tempfile::tempdir().unwrap();
        let file = CacheFile::new(dir.path(), &ObjectId([3; 32]));
        let objects = Objects::new(Crypto::encrypted(&MasterKey::generate()));
        (dir, file, objects)
    }

    fn times(list: &SnapshotList) -> Vec<String> {
        list.parse_all()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.time)
            .collect()
    }

    #[test]
    fn round_trip_then_warm_reads_nothing() {
        let (dir, file, objects) = setup();
        for t in [
            "2026-01-02T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "2026-01-03T00:00:00Z",
        ] {
            objects.add(&snap(t, "h", None));
        }
        let (cold, stats) = objects.sync(Some(&file)).unwrap();
        assert_eq!((stats.cached, stats.loaded, stats.written), (0, 3, true));
        assert_eq!(objects.reads(), 3);
        assert_eq!(
            times(&cold),
            [
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                "2026-01-03T00:00:00Z"
            ]
        );
        assert!(dir.path().join("CACHEDIR.TAG").exists());

        let (warm, stats) = objects.sync(Some(&file)).unwrap();
        assert_eq!((stats.cached, stats.loaded, stats.written), (3, 0, false));
        assert_eq!((stats.damaged, stats.unusable), (None, None));
        assert_eq!(objects.reads(), 0);
        assert_eq!(warm.parse_all().unwrap(), cold.parse_all().unwrap());
        // The JSON is kept byte for byte.
        for i in 0..3 {
            assert_eq!(warm.json(i), cold.json(i));
        }
    }

    #[test]
    fn encode_decode_is_identity() {
        let mut list = SnapshotList::default();
        list.push(ObjectId([1; 32]), -5, b"{}");
        list.push(ObjectId([2; 32]), 7, b"[1, 2]");
        list.push(ObjectId([0; 32]), 7, b"");
        list.sort();
        let repo = ObjectId([9; 32]);
        let back = SnapshotList::decode(&list.encode(&repo), &repo).unwrap();
        let ids: Vec<_> = back.ids().collect();
        assert_eq!(
            ids,
            [ObjectId([1; 32]), ObjectId([0; 32]), ObjectId([2; 32])]
        );
        assert_eq!(back.json(2), b"[1, 2]");
        assert_eq!(back.time_ns(0), -5);
        // A claimed length far beyond what the compressed bytes can hold is refused before
        // anything is allocated, even with a matching check hash.
        let mut forged = list.encode(&repo);
        forged.truncate(forged.len() - CHECK_LEN);
        forged[41..49].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let check = blake3::hash(&forged);
        forged.extend_from_slice(check.as_bytes());
        assert!(SnapshotList::decode(&forged, &repo)
            .unwrap_err()
            .contains("do not fit"));
        assert!(
            SnapshotList::decode(&list.encode(&repo), &ObjectId([8; 32]))
                .unwrap_err()
                .contains("another repository")
        );
    }

    #[test]
    fn stale_ids_are_dropped_and_new_ids_loaded() {
        let (_dir, file, objects) = setup();
        let a = objects.add(&snap("2026-01-01T00:00:00Z", "h", None));
        let b = objects.add(&snap("2026-01-02T00:00:00Z", "h", None));
        objects.sync(Some(&file)).unwrap();
        objects.reads();
        objects.remove(&a);
        let c = objects.add(&snap("2026-01-03T00:00:00Z", "h", None));
        let (list, stats) = objects.sync(Some(&file)).unwrap();
        assert_eq!(
            (stats.cached, stats.loaded, stats.dropped, stats.written),
            (1, 1, 1, true)
        );
        assert_eq!(objects.reads(), 1, "only the new snapshot is read");
        assert_eq!(list.ids().collect::<Vec<_>>(), [b, c]);
        // The rewritten file holds exactly the listed snapshots.
        let (again, stats) = objects.sync(Some(&file)).unwrap();
        assert_eq!((stats.cached, stats.loaded, stats.dropped), (2, 0, 0));
        assert_eq!(again.ids().collect::<Vec<_>>(), [b, c]);
    }

    #[test]
    fn damaged_cache_is_ignored_and_rebuilt() {
        let (_dir, file, objects) = setup();
        for t in ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"] {
            objects.add(&snap(t, "h", None));
        }
        let (good, _) = objects.sync(Some(&file)).unwrap();
        let mut bytes = std::fs::read(file.path()).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        for damaged in [
            bytes.clone(),
            bytes[..n / 2].to_vec(),
            Vec::new(),
            b"junk".to_vec(),
        ] {
            std::fs::write(file.path(), damaged).unwrap();
            objects.reads();
            let (list, stats) = objects.sync(Some(&file)).unwrap();
            assert!(
                stats.damaged.as_deref().unwrap().contains("damaged"),
                "{stats:?}"
            );
            assert_eq!((stats.cached, stats.loaded, stats.written), (0, 2, true));
            assert_eq!(objects.reads(), 2);
            assert_eq!(list.parse_all().unwrap(), good.parse_all().unwrap());
            let (_, stats) = objects.sync(Some(&file)).unwrap();
            assert_eq!((stats.cached, stats.damaged), (2, None), "rebuilt");
        }
        // A cache sealed with another key is damaged too (not an error).
        let other = Objects::new(Crypto::encrypted(&MasterKey::generate()));
        other.add(&snap("2026-01-05T00:00:00Z", "h", None));
        let (list, stats) = other.sync(Some(&file)).unwrap();
        assert!(stats.damaged.is_some());
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn unencrypted_cache_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = CacheFile::new(dir.path(), &ObjectId([3; 32]));
        let objects = Objects::new(Crypto::plain([5; 32]));
        objects.add(&snap("2026-01-01T00:00:00Z", "host-a", None));
        objects.sync(Some(&file)).unwrap();
        // In the clear, nothing but the check hash notices a flipped bit in the entries.
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes[HEADER_LEN + 3] ^= 1;
        std::fs::write(file.path(), &bytes).unwrap();
        let plain = Crypto::plain([5; 32]);
        let opened = plain
            .open(Domain::SnapshotCache, &bytes, Kind::Snapshot, &"cache")
            .unwrap();
        assert_eq!(
            SnapshotList::decode(&opened, &ObjectId([3; 32])).unwrap_err(),
            "check hash mismatch"
        );
        let (list, stats) = objects.sync(Some(&file)).unwrap();
        assert!(stats.damaged.is_some());
        assert_eq!(list.get(0).unwrap().1.hostname, "host-a");
    }

    #[test]
    fn without_a_usable_directory_everything_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let file = CacheFile::new(&blocker, &ObjectId([3; 32]));
        let objects = Objects::new(Crypto::plain([5; 32]));
        objects.add(&snap("2026-01-01T00:00:00Z", "h", None));
        for f in [None, Some(&file)] {
            let (list, stats) = objects.sync(f).unwrap();
            assert_eq!((list.len(), stats.loaded, stats.written), (1, 1, false));
            assert_eq!(stats.file, None);
            assert_eq!(stats.unusable.is_some(), f.is_some());
            assert_eq!(stats.damaged, None);
        }
    }

    #[test]
    fn a_failed_load_keeps_what_was_loaded() {
        let (_dir, file, objects) = setup();
        for day in 1..=40 {
            objects.add(&snap(
                &format!("2026-01-{:02}T00:00:00Z", day % 28 + 1),
                "h",
                None,
            ));
        }
        let bad = ObjectId([0xff; 32]);
        objects
            .stored
            .lock()
            .unwrap()
            .insert(bad, b"not a snapshot".to_vec());
        let err = objects.sync(Some(&file)).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        objects.remove(&bad);
        objects.reads();
        let (list, stats) = objects.sync(Some(&file)).unwrap();
        assert_eq!(list.len(), 40);
        assert_eq!(stats.cached + stats.loaded, 40);
        assert_eq!(objects.reads(), stats.loaded);
        assert!(stats.cached > 0, "{stats:?}");
    }

    #[test]
    fn select_by_time_and_revision() {
        let objects = Objects::new(Crypto::plain([5; 32]));
        let a = objects.add(&snap("2026-01-01T10:00:00Z", "h1", Some(5)));
        let b = objects.add(&snap("2026-01-01T11:00:00Z", "h2", Some(9)));
        let c = objects.add(&snap("2026-01-01T12:00:00Z", "h1", Some(7)));
        let d = objects.add(&snap("2026-01-01T13:00:00Z", "h1", None));
        let (list, _) = objects.sync(None).unwrap();
        let all = list.parse_all().unwrap();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let any = SnapshotFilter::default();
        let h1 = SnapshotFilter {
            hostname: Some("h1".into()),
            paths: vec![],
        };
        let cases = [
            (&any, Selector::Latest, Some(d)),
            (
                &any,
                Selector::AtOrBefore(t("2026-01-01T11:30:00Z")),
                Some(b),
            ),
            (
                &any,
                Selector::AtOrBefore(t("2026-01-01T11:00:00Z")),
                Some(b),
            ),
            (
                &h1,
                Selector::AtOrBefore(t("2026-01-01T11:30:00Z")),
                Some(a),
            ),
            (&any, Selector::AtOrBefore(t("2026-01-01T09:59:59Z")), None),
            (&any, Selector::Revision(8), Some(c)),
            (&any, Selector::Revision(100), Some(b)),
            (&h1, Selector::Revision(100), Some(c)),
            (&any, Selector::Revision(4), None),
        ];
        for (filter, selector, want) in cases {
            let got = list.select(filter, selector).unwrap().map(|(id, _)| id);
            assert_eq!(got, want, "{selector:?} {filter:?}");
            let pure = select(&all, filter, selector).map(|(id, _)| *id);
            assert_eq!(pure, want, "pure {selector:?} {filter:?}");
        }
        let paths = SnapshotFilter {
            hostname: None,
            paths: vec!["/elsewhere".into()],
        };
        assert_eq!(list.select(&paths, Selector::Latest).unwrap(), None);
    }

    #[test]
    fn new_fields_are_optional_and_round_trip() {
        let plain = br#"{"version":1,"time":"2026-01-01T00:00:00Z","hostname":"h","username":"u",
            "uid":0,"gid":0,"paths":[],"tree":"0707070707070707070707070707070707070707070707070707070707070707",
            "program_version":"old"}"#;
        let old = Snapshot::decode(plain).unwrap();
        assert_eq!(
            (old.revision, old.log, &old.membership),
            (None, None, &None)
        );
        let json = String::from_utf8(serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(
            !json.contains("revision") && !json.contains("membership"),
            "{json}"
        );
        let mut new = old;
        new.revision = Some(42);
        new.log = Some(LogPosition { term: 3, node: 2 });
        new.membership = Some(serde_json::json!({"configs": [[1, 2]]}));
        let back = Snapshot::decode(&serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }

    #[test]
    fn parse_in_parallel_keeps_order() {
        let mut list = SnapshotList::default();
        let objects = Objects::new(Crypto::plain([5; 32]));
        for i in 0..PARALLEL_PARSE_MIN as i64 + 10 {
            let s = snap(
                &DateTime::from_timestamp(1_700_000_000 + i, 0)
                    .unwrap()
                    .to_rfc3339(),
                "h",
                Some(i as u64),
            );
            let (id, bytes) = s.seal(&objects.crypto);
            list.push(id, s.time_ns(), &bytes);
        }
        list.sort();
        let all = list.parse_all().unwrap();
        assert_eq!(all.len(), PARALLEL_PARSE_MIN + 10);
        assert!(all.windows(2).all(|w| w[0].1.revision < w[1].1.revision));
    }
}
