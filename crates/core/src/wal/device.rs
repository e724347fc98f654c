//! Where the log's bytes live: [`LogDevice`] (one segment file) and [`LogDir`] (the set of them).
//!
//! Both are small blocking traits with a real implementation here ([`FileLogDir`]) and in-memory
//! and crash-simulating ones in `tidemark-testkit`, all held to `testkit::log_device_suite`.
//! Durability is explicit: bytes appended to a device survive a crash only after its `sync`, and a
//! created or removed segment only after the directory's `sync`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One segment's bytes.
#[allow(clippy::len_without_is_empty)] // a log device is never asked whether it is empty
pub trait LogDevice: Send + Sync {
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; an error if the device is shorter.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at the end; returns the offset it was written at. Not durable until `sync`.
    fn append(&self, data: &[u8]) -> io::Result<u64>;
    /// Makes every appended byte durable.
    fn sync(&self) -> io::Result<()>;
    /// Cuts the device to `len` bytes (recovery of a torn tail); durable after `sync`.
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// The directory of segments, by sequence number.
pub trait LogDir: Send + Sync {
    /// Sequence numbers of the segments present, in any order.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates segment `seq`, empty (replacing a leftover file of that number).
    fn create(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>>;
    /// Opens an existing segment.
    fn open(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>>;
    /// Removes a segment.
    fn remove(&self, seq: u64) -> io::Result<()>;
    /// Makes creations and removals durable.
    fn sync(&self) -> io::Result<()>;
    /// How a segment is named in messages (a file path).
    fn describe(&self, seq: u64) -> String;
}

/// Segments as files `<seq, 16 hex>.wal` in a directory.
#[derive(Debug, Clone)]
pub struct FileLogDir {
    path: PathBuf,
}

impl FileLogDir {
    /// Segments in `path`, which is created if missing: mode 0700 (the log holds the watched
    /// tree's paths in the clear), with each directory created fsynced into its parent so that
    /// segments synced inside it survive a crash.
    pub fn new(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        crate::dir::create_all(&path, 0o700)?;
        Ok(FileLogDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, seq: u64) -> PathBuf {
        self.path.join(format!("{seq:016x}.wal"))
    }
}

impl LogDir for FileLogDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".wal") {
                if hex.len() == 16 {
                    if let Ok(seq) = u64::from_str_radix(hex, 16) {
                        out.push(seq);
                    }
                }
            }
        }
        Ok(out)
    }

    fn create(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.file(seq))?;
        Ok(Arc::new(FileDevice {
            file,
            len: AtomicU64::new(0),
        }))
    }

    fn open(&self, seq: u64) -> io::Result<Arc<dyn LogDevice>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.file(seq))?;
        let len = file.metadata()?.len();
        Ok(Arc::new(FileDevice {
            file,
            len: AtomicU64::new(len),
        }))
    }

    fn remove(&self, seq: u64) -> io::Result<()> {
        match fs::remove_file(self.file(seq)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    fn describe(&self, seq: u64) -> String {
        self.file(seq).display().to_string()
    }
}

/// A segment file. Appends are positional writes at the tracked end, so the file offset is never
/// shared between threads; the `Wal` serialises appends.
struct FileDevice {
    file: File,
    len: AtomicU64,
}

impl LogDevice for FileDevice {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Acquire))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn append(&self, data: &[u8]) -> io::Result<u64> {
        let at = self.len.load(Ordering::Acquire);
        self.file.write_all_at(data, at)?;
        self.len.store(at + data.len() as u64, Ordering::Release);
        Ok(at)
    }

    fn sync(&self) -> io::Result<()> {
        // fdatasync: the size change is metadata it covers; mtime is not needed.
        self.file.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len.store(len, Ordering::Release);
        Ok(())
    }
}
