//! tidemark-core: the data path of tidemark, std only.
//!
//! ```text
//! Source tree ──backup──▶ Chunker ─▶ blob ids (keyed BLAKE3) ─▶ BlobWriter (zstd, XChaCha20-Poly1305,
//!                                                                 random open pack) ─▶ Store
//!      Tree per directory (content-addressed) ─▶ Snapshot (root tree, parent, summary)
//! Store ──Repository::open / load_index──▶ restore (plan, then parallel pack reads) / check / diff
//! ```
//! Principal types: [`repo::Repository`] (an open repository over a [`store::Store`]: a cheap
//! `Clone` handle sharing one index), [`snapshot::Snapshot`] and [`snapshot::Tree`],
//! [`chunk::Chunker`], [`pack::Packer`] (the one packer every writer uses) over
//! [`pack::PackBuilder`], and [`clock::Clock`] (where every time-based decision reads the time).
//! The byte layouts are in `docs/format.md`.
//!
//! Two paths lead into a repository:
//! * **One-shot** ([`backup::backup`], [`restore::restore`], [`check`], [`prune`]): a command
//!   walks a tree (or a snapshot) once, in a pipeline of threads, and writes a snapshot (or
//!   files) at the end.
//! * **Continuous** ([`capture::Capturer`] over [`watch`]'s change queue): every change becomes
//!   a [`batch::Batch`] that `tidemark-cluster`'s engine appends to its log and applies to a live
//!   tree; the engine seals it into a snapshot every 500 ms. Both paths read the disk through
//!   [`source`] and store through [`pack::Packer`], so a `backup` and a seal of the same tree
//!   give the same root tree id.
//!
//! The one-shot path, from a directory to a snapshot and back:
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{atomic::AtomicBool, Arc};
//! use tidemark_core::backup::{backup, BackupOptions, BackupProgress};
//! use tidemark_core::repo::{InitOptions, Repository};
//! use tidemark_core::restore::{restore, RestoreOptions, RestoreProgress};
//!
//! let src = tempfile::tempdir()?;
//! std::fs::write(src.path().join("a.txt"), b"hello")?;
//! let mut repo = Repository::init(Arc::new(tidemark_testkit::MemStore::new()), &InitOptions::default())?;
//! repo.load_index()?;
//! let opts = BackupOptions { paths: vec![src.path().to_path_buf()], ..BackupOptions::default() };
//! let done = backup(&mut repo, &opts, &BackupProgress::default(), &AtomicBool::new(false))?;
//!
//! let dst = tempfile::tempdir()?;
//! let to = RestoreOptions { target: dst.path().to_path_buf(), ..RestoreOptions::default() };
//! restore(&repo, &done.snapshot.tree, &to, &RestoreProgress::default())?;
//! let restored = dst.path().join(src.path().strip_prefix("/")?).join("a.txt");
//! assert_eq!(std::fs::read(restored)?, b"hello");
//! # Ok(()) }
//! ```
//!
//! ```
//! # fn main() -> tidemark_core::Result<()> {
//! use tidemark_core::chunk::{Chunker, ChunkerParams};
//! let chunker = Chunker::new(ChunkerParams::default(), 42)?;
//! let data = vec![7u8; 3 << 20];
//! let mut buf = chunker.buffer();
//! let mut sizes = Vec::new();
//! chunker.stream(&mut data.as_slice(), &mut buf, |c| { sizes.push(c.len()); Ok(()) }).unwrap();
//! assert_eq!(sizes.iter().sum::<usize>(), data.len());
//! # Ok(()) }
//! ```

pub mod backup;
pub mod batch;
pub mod capture;
pub mod check;
pub mod chunk;
pub mod clock;
pub mod copy;
pub mod crypto;
pub mod dir;
mod error;
pub mod forget;
pub mod id;
pub mod lifecycle;
pub mod pack;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod source;
pub mod stats;
pub mod store;
pub mod wal;
pub mod watch;

pub use error::{Error, Result};
