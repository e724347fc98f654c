//! Log devices for tests: [`MemLogDir`] (segments in memory), [`CrashLogDir`] (keeps live and
//! durable bytes apart and cuts the power at a chosen sync), and [`log_device_suite`], the
//! conformance suite every [`LogDir`] implementation passes.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use tidemark_core::wal::{LogDevice, LogDir};

fn short_read() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the device",
    )
}

fn read_from(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| short_read())?;
    let src = bytes.get(start..start + buf.len()).ok_or_else(short_read)?;
    buf.copy_from_slice(src);
    Ok(())
}

/// One segment in memory.
#[derive(Default)]
pub struct MemDevice {
    bytes: Mutex<Vec<u8>>,
}

impl LogDevice for MemDevice {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_from(&self.bytes.lock().unwrap(), offset, buf)
    }
    fn append(&self, data: &[u8]) -> io::Result<u64> {
        let mut b = self.bytes.lock().unwrap();
        let at = b.len() as u64;
        b.extend_from_slice(data);
        Ok(at)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.bytes.lock().unwrap().truncate(len as usize);
        Ok(())
    }
}

/// Segments in memory; clones share the same files.
#[derive(Default, Clone)]
pub struct MemLogDir {
    files: Arc<Mutex<BTreeMap<u64, Arc<MemDevice>>>>,
}

impl MemLogDir {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory holding these segment files.
    pub fn with_files(files: BTreeMap<u64, Vec<u8>>) -> Self {
        let dir = Self::new();
        for (seq, bytes) in files {
            dir.set_bytes(seq, bytes);
        }
        dir
    }

    /// The bytes of segment `seq`.
    pub fn bytes(&self, seq: u64) -> Option<Vec<u8>> {
        let files = self.files.lock().unwrap();
        files.get(&seq).map(|d| d.bytes.lock().unwrap().clone())
    }

    /// Replaces (or creates) segment `seq`.
    pub fn set_bytes(&self, seq: u64, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(
            seq,
            Arc::new(MemDevice {
                bytes: Mutex::new(bytes),
            }),
        );
    }

    /// Every segment's bytes.
    pub fn files(&self) -> BTreeMap<u64, Vec<u8>> {
        let files = self.files.lock().unwrap();
        files
            .iter()
            .map(|(s, d)| (*s, d.bytes.lock().unwrap().clone()))
            .collect()
    }
}

impl LogDir for MemLogDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.files.lock().unwrap().keys().copied().collect())
    }
    fn create(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>> {
        let d = Arc::new(MemDevice::default());
        self.files.lock().unwrap().insert(seq, d.clone());
        Ok(d)
    }
    fn open(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>> {
        match self.files.lock().unwrap().get(&seq) {
            Some(d) => Ok(d.clone()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such segment")),
        }
    }
    fn remove(&self, seq: u64) -> io::Result<()> {
        self.files.lock().unwrap().remove(&seq);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self, seq: u64) -> String {
        format!("mem:{seq:016x}.wal")
    }
}

/// What survives of bytes that were written but not synced when the power went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsynced {
    /// Nothing: only synced bytes and synced directory entries survive.
    Lost,
    /// Everything written reached the disk after all.
    Kept,
    /// A random prefix of each file's unsynced tail (a torn write); directory changes are lost.
    Torn(u64),
    /// An ordinary power cut: synced bytes survive; of each file's unsynced 4 KiB pages a random
    /// subset reached the disk and the rest read as their old contents (zeros past the synced
    /// end); the file's length is anywhere between its synced and its written length. A random
    /// prefix of the directory changes since the last directory sync survives (a journaling file
    /// system commits them in order). Seeded, so a failure can be replayed.
    Pages(u64),
}

/// The unit in which [`Unsynced::Pages`] persists unsynced bytes.
pub const PAGE: usize = 4096;

type FileRef = Arc<Mutex<CrashFile>>;

struct CrashFile {
    live: Vec<u8>,
    durable: Vec<u8>,
}

impl CrashFile {
    /// The file after a power cut with unordered page write-back (see [`Unsynced::Pages`]).
    fn pages_after_cut(&self, rng: &mut impl Rng) -> Vec<u8> {
        let (live, durable) = (&self.live, &self.durable);
        let n = live.len().max(durable.len());
        let page = |bytes: &[u8], start: usize| -> Vec<u8> {
            let end = (start + PAGE).min(n);
            let mut p = vec![0u8; end - start];
            if start < bytes.len() {
                let have = &bytes[start..end.min(bytes.len())];
                p[..have.len()].copy_from_slice(have);
            }
            p
        };
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(PAGE) {
            let (l, d) = (page(live, start), page(durable, start));
            out.extend_from_slice(if l == d || rng.gen_bool(0.5) { &l } else { &d });
        }
        let (lo, hi) = (live.len().min(durable.len()), live.len().max(durable.len()));
        out.truncate(rng.gen_range(lo..=hi));
        out
    }
}

/// A directory change not yet made durable by a directory sync.
enum DirOp {
    Create(u64, FileRef),
    Remove(u64),
}

struct CrashState {
    files: BTreeMap<u64, FileRef>,
    /// Names as of the last directory sync, and the files they point at.
    durable_names: BTreeMap<u64, FileRef>,
    /// Creations and removals since the last directory sync, in order.
    pending: Vec<DirOp>,
    syncs: u64,
    cut_at: Option<u64>,
    dead: bool,
}

impl CrashState {
    /// Counts a sync; `Err` when this is the one at which the power is cut (or it is already cut).
    fn sync_point(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(power_cut());
        }
        let n = self.syncs;
        self.syncs += 1;
        if self.cut_at == Some(n) {
            self.dead = true;
            return Err(power_cut());
        }
        Ok(())
    }
}

fn power_cut() -> io::Error {
    io::Error::other("simulated power cut")
}

/// A log directory that keeps what was written apart from what was synced, and cuts the power
/// at the `cut_at`-th sync (device and directory syncs count alike, from 0). After the cut every
/// call fails; [`CrashLogDir::after_crash`] gives the disk as a reboot would find it.
#[derive(Clone)]
pub struct CrashLogDir {
    state: Arc<Mutex<CrashState>>,
}

impl CrashLogDir {
    /// A fresh directory; `cut_at: None` never cuts (to count the sync points of a run).
    pub fn new(cut_at: Option<u64>) -> Self {
        CrashLogDir {
            state: Arc::new(Mutex::new(CrashState {
                files: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending: Vec::new(),
                syncs: 0,
                cut_at,
                dead: false,
            })),
        }
    }

    /// Syncs performed so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    /// Whether the power has been cut.
    pub fn is_dead(&self) -> bool {
        self.state.lock().unwrap().dead
    }

    /// The files a reboot finds, as a [`MemLogDir`].
    pub fn after_crash(&self, unsynced: Unsynced) -> MemLogDir {
        let st = self.state.lock().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(match unsynced {
            Unsynced::Torn(seed) | Unsynced::Pages(seed) => seed,
            Unsynced::Lost | Unsynced::Kept => 0,
        });
        let mut names = match unsynced {
            Unsynced::Kept => st.files.clone(),
            _ => st.durable_names.clone(),
        };
        if let Unsynced::Pages(_) = unsynced {
            let survive = rng.gen_range(0..=st.pending.len());
            for op in &st.pending[..survive] {
                match op {
                    DirOp::Create(seq, file) => names.insert(*seq, file.clone()),
                    DirOp::Remove(seq) => names.remove(seq),
                };
            }
        }
        let mut out = BTreeMap::new();
        for (seq, file) in names {
            let f = file.lock().unwrap();
            let bytes = match unsynced {
                Unsynced::Kept => f.live.clone(),
                Unsynced::Lost => f.durable.clone(),
                Unsynced::Torn(_) => {
                    if f.live.starts_with(&f.durable) {
                        let extra = f.live.len() - f.durable.len();
                        let keep = rng.gen_range(0..=extra);
                        f.live[..f.durable.len() + keep].to_vec()
                    } else {
                        f.durable.clone()
                    }
                }
                Unsynced::Pages(_) => f.pages_after_cut(&mut rng),
            };
            out.insert(seq, bytes);
        }
        MemLogDir::with_files(out)
    }
}

struct CrashDevice {
    file: Arc<Mutex<CrashFile>>,
    state: Arc<Mutex<CrashState>>,
}

impl CrashDevice {
    fn alive(&self) -> io::Result<()> {
        if self.state.lock().unwrap().dead {
            Err(power_cut())
        } else {
            Ok(())
        }
    }
}

impl LogDevice for CrashDevice {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.lock().unwrap().live.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_from(&self.file.lock().unwrap().live, offset, buf)
    }
    fn append(&self, data: &[u8]) -> io::Result<u64> {
        self.alive()?;
        let mut f = self.file.lock().unwrap();
        let at = f.live.len() as u64;
        f.live.extend_from_slice(data);
        Ok(at)
    }
    fn sync(&self) -> io::Result<()> {
        self.state.lock().unwrap().sync_point()?;
        let mut f = self.file.lock().unwrap();
        let f = &mut *f;
        f.durable.clone_from(&f.live);
        Ok(())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        self.file.lock().unwrap().live.truncate(len as usize);
        Ok(())
    }
}

impl LogDir for CrashLogDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.state.lock().unwrap().files.keys().copied().collect())
    }
    fn create(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>> {
        let mut st = self.state.lock().unwrap();
        if st.dead {
            return Err(power_cut());
        }
        let file = Arc::new(Mutex::new(CrashFile {
            live: Vec::new(),
            durable: Vec::new(),
        }));
        st.files.insert(seq, file.clone());
        st.pending.push(DirOp::Create(seq, file.clone()));
        Ok(Arc::new(CrashDevice {
            file,
            state: self.state.clone(),
        }))
    }
    fn open(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>> {
        let st = self.state.lock().unwrap();
        match st.files.get(&seq) {
            Some(f) => Ok(Arc::new(CrashDevice {
                file: f.clone(),
                state: self.state.clone(),
            })),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such segment")),
        }
    }
    fn remove(&self, seq: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        if st.dead {
            return Err(power_cut());
        }
        st.files.remove(&seq);
        st.pending.push(DirOp::Remove(seq));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.sync_point()?;
        st.durable_names = st.files.clone();
        st.pending.clear();
        Ok(())
    }
    fn describe(&self, seq: u64) -> String {
        format!("crash:{seq:016x}.wal")
    }
}

/// The conformance suite for a [`LogDir`] and its devices. `dir` must start empty.
pub fn log_device_suite(dir: &dyn LogDir) {
    assert!(
        dir.list().unwrap().is_empty(),
        "the suite needs an empty directory"
    );
    let d = dir.create(3).unwrap();
    assert_eq!(d.len().unwrap(), 0);
    assert_eq!(d.append(b"hello").unwrap(), 0);
    assert_eq!(d.append(b" world").unwrap(), 5);
    assert_eq!(d.len().unwrap(), 11);
    d.sync().unwrap();
    let mut buf = [0u8; 5];
    d.read_at(6, &mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert!(
        d.read_at(8, &mut buf).is_err(),
        "reading past the end fails"
    );
    d.truncate(5).unwrap();
    assert_eq!(d.len().unwrap(), 5);
    assert_eq!(d.append(b"!").unwrap(), 5, "appends continue at the cut");
    dir.sync().unwrap();

    let again = dir.open(3).unwrap();
    assert_eq!(again.len().unwrap(), 6);
    let mut all = [0u8; 6];
    again.read_at(0, &mut all).unwrap();
    assert_eq!(&all, b"hello!");

    dir.create(4).unwrap().append(b"x").unwrap();
    let recreated = dir.create(4).unwrap();
    assert_eq!(
        recreated.len().unwrap(),
        0,
        "create replaces a leftover file"
    );
    let mut listed = dir.list().unwrap();
    listed.sort_unstable();
    assert_eq!(listed, vec![3, 4]);
    dir.remove(3).unwrap();
    dir.remove(3).unwrap();
    dir.sync().unwrap();
    assert_eq!(dir.list().unwrap(), vec![4]);
    assert!(dir.open(3).is_err());
    assert!(dir.describe(4).contains("0000000000000004"));
}
