//! 32-byte identifiers, and the [`Kind`]s of object they name. Blob ids are keyed BLAKE3 of
//! plaintext; storage ids are plain BLAKE3 of the stored bytes (see `docs/format.md` §2). Each
//! use gets its own newtype so a pack id can never be passed where a blob id is expected; a
//! stored object is named by its kind and its id.

use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as 64 lower-case hex characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::from_hex(s).ok_or_else(|| format!("not a 64-character hex id: {s:?}"))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected a 64-character hex id"))
            }
        }
    };
}

id_type!(
    /// A blob (data chunk or tree): keyed BLAKE3 of its plaintext.
    BlobId
);
id_type!(
    /// Any stored object (pack, index, snapshot, key): BLAKE3 of its stored bytes.
    ObjectId
);

/// A pack file's id: the storage id of the pack.
pub type PackId = ObjectId;
/// A snapshot's id: the storage id of the snapshot object.
pub type SnapshotId = ObjectId;

impl ObjectId {
    /// The storage id of `bytes`: plain BLAKE3.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// The kinds of objects a repository holds; each is a separate namespace in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The single `config` object (id all zeros).
    Config,
    /// Key files wrapping the master key.
    Key,
    /// Snapshot objects.
    Snapshot,
    /// The repository's retention policy (`docs/format.md` §18).
    Policy,
    /// A writer's lease (`docs/format.md` §19).
    Session,
    /// A record of packs condemned by prune (`docs/format.md` §19).
    Deletion,
    /// Index files.
    Index,
    /// Pack files.
    Pack,
    /// A blob inside a pack (only used in error messages).
    Blob,
    /// A tree blob (only used in error messages).
    Tree,
}

impl Kind {
    /// Every kind a store holds as separate objects, in the order `check` walks them.
    pub const STORED: [Kind; 8] = [
        Kind::Config,
        Kind::Key,
        Kind::Snapshot,
        Kind::Policy,
        Kind::Session,
        Kind::Deletion,
        Kind::Index,
        Kind::Pack,
    ];

    /// The directory name of this kind in a local store.
    pub fn dir_name(self) -> &'static str {
        match self {
            Kind::Config => "",
            Kind::Key => "keys",
            Kind::Snapshot => "snapshots",
            Kind::Policy => "policies",
            Kind::Session => "sessions",
            Kind::Deletion => "deletions",
            Kind::Index => "index",
            Kind::Pack | Kind::Blob | Kind::Tree => "data",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Config => "config",
            Kind::Key => "key",
            Kind::Snapshot => "snapshot",
            Kind::Policy => "policy",
            Kind::Session => "session",
            Kind::Deletion => "deletion record",
            Kind::Index => "index",
            Kind::Pack => "pack",
            Kind::Blob => "blob",
            Kind::Tree => "tree",
        })
    }
}
