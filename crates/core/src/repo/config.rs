//! The repository config object (`docs/format.md` §3).

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkerParams;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::store::{Kind, CONFIG_ID};

/// How envelopes are sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// XChaCha20-Poly1305 with a master key wrapped by Argon2id key files.
    #[serde(rename = "xchacha20poly1305-argon2id")]
    XChaCha20Poly1305,
    /// No encryption (`init --insecure-no-encryption`).
    #[serde(rename = "none")]
    None,
}

/// Compression settings for writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Always "zstd".
    pub algorithm: CompressionAlgorithm,
    /// zstd level; 0 disables compression.
    pub level: i32,
}

/// The only compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard.
    Zstd,
}

/// Keys of an unencrypted repository, kept in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainKeys {
    /// BLAKE3 key for blob ids.
    #[serde(with = "crate::crypto::hex32")]
    pub id_key: [u8; 32],
    /// Chunker seed.
    pub chunker_seed: u64,
}

/// The repository config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version (1).
    pub version: u32,
    /// Random repository id.
    pub id: ObjectId,
    /// Envelope mode.
    pub encryption: Encryption,
    /// Compression for new blobs.
    pub compression: Compression,
    /// Chunker settings; never change after init.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Present only when `encryption` is `none`.
    #[serde(default)]
    pub plain_keys: Option<PlainKeys>,
}

/// Default target pack size: 8 MiB (see `docs/format.md` §10).
pub const DEFAULT_PACK_SIZE: u32 = 8 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

impl Config {
    /// Parses and validates the stored config.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let c: Config = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                Kind::Config,
                CONFIG_ID.short(),
                format!("not a tidemark config: {e}"),
            )
        })?;
        if c.version != 1 {
            return Err(Error::UnsupportedVersion {
                kind: Kind::Config,
                id: "config".into(),
                version: c.version,
                supported: 1,
            });
        }
        c.chunker.validate()?;
        if !(1024..=1 << 30).contains(&c.pack_size) {
            return Err(Error::corrupt(
                Kind::Config,
                "config",
                format!("pack_size {} outside 1 KiB..1 GiB", c.pack_size),
            ));
        }
        if (c.encryption == Encryption::None) != c.plain_keys.is_some() {
            return Err(Error::corrupt(
                Kind::Config,
                "config",
                "plain_keys must be present exactly when encryption is none",
            ));
        }
        Ok(c)
    }

    /// Serializes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config serializes")
    }
}
