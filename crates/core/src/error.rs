//! The one error type of `tidemark-core`.

use std::io;
use std::path::PathBuf;

use crate::id::Kind;

/// What went wrong, in the words a user needs to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No repository where one was expected.
    #[error("no repository at {location}: {reason} (create one with `tidemark init`)")]
    NoRepository { location: String, reason: String },
    /// No key file could be opened with the given password.
    #[error("wrong password: no key file in the repository opens with it")]
    WrongPassword,
    /// An object is missing from the store.
    #[error("{kind} {id} not found")]
    NotFound { kind: Kind, id: String },
    /// An object exists but its bytes are damaged or not what the format allows.
    #[error("{kind} {id} is damaged: {reason}")]
    Corrupt {
        kind: Kind,
        id: String,
        reason: String,
    },
    /// A format version this build cannot read.
    #[error("{kind} {id} has format version {version}, this tidemark reads version {supported}")]
    UnsupportedVersion {
        kind: Kind,
        id: String,
        version: u32,
        supported: u32,
    },
    /// An I/O error, with what was being done and on which path.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The write-ahead log is damaged somewhere other than a torn tail.
    #[error("write-ahead log {file} is damaged at byte {offset}: {reason}")]
    LogCorrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// A request that cannot be satisfied (bad snapshot prefix, bad option …).
    #[error("{0}")]
    Invalid(String),
    /// A restore refused an entry that would write outside the target.
    #[error("refusing unsafe path {path:?} in tree {tree}: {reason}")]
    UnsafePath {
        path: String,
        tree: String,
        reason: String,
    },
    /// A previous write failed; this handle no longer accepts work.
    #[error("stopped after an earlier write error: {0}")]
    Poisoned(String),
    /// The operation was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A damaged object.
    pub fn corrupt(kind: Kind, id: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            kind,
            id: id.to_string(),
            reason: reason.into(),
        }
    }
}
