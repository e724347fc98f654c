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
