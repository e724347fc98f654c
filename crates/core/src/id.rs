//! 32-byte identifiers. Blob ids are keyed BLAKE3 of plaintext; storage ids are plain BLAKE3 of
//! the stored bytes (see `docs/format.md` §2). Each use gets its own newtype so a pack id can never
//! be passed where a blob id is expected.

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
