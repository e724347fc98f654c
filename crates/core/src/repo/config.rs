//! The repository config object (`docs/format.md` §3): parsing with bounds on every size, and
//! the MAC that ties an encrypted repository's config to its master key.
//!
//! [`Config::decode`] needs no key (the config says how to open the repository);
//! [`Config::authenticate`] runs once a key is unlocked, before the config is used.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkerParams;
use crate::crypto::Crypto;
use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId};

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
    /// Format version: [`CONFIG_VERSION`] when written; 1 is still read.
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
    /// The MAC over the rest of the config (version 2, encrypted only), set by
    /// [`Config::seal`] and checked by [`Config::authenticate`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "mac_hex")]
    pub mac: Option<[u8; 32]>,
}

/// The config version this build writes (`docs/format.md` §3).
pub const CONFIG_VERSION: u32 = 2;

/// The error for a config that the unlocked key does not authenticate.
const NOT_AUTHENTICATED: &str =
    "it is not authenticated by this repository's key: refusing (it may have been replaced)";

/// The id that config errors name: "config file is damaged: …".
const FILE: &str = "file";

/// Accepted sizes (`docs/format.md` §3): wide enough for any setting worth measuring, narrow
/// enough that a replaced config cannot make chunks tiny (a huge index) or packs huge (memory).
const MIN_SIZE: std::ops::RangeInclusive<u32> = 1 << 10..=1 << 20;
const AVG_SIZE: std::ops::RangeInclusive<u32> = 4 << 10..=4 << 20;
const MAX_SIZE: std::ops::RangeInclusive<u32> = 16 << 10..=16 << 20;
/// Accepted `pack_size`.
pub const PACK_SIZE: std::ops::RangeInclusive<u32> = 64 << 10..=128 << 20;

/// Default target pack size: 8 MiB (see `docs/format.md` §10).
pub const DEFAULT_PACK_SIZE: u32 = 8 << 20;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

fn corrupt(reason: impl Into<String>) -> Error {
    Error::corrupt(Kind::Config, FILE, reason)
}

/// The error for a config that says "no encryption" in a store that holds key files: the
/// downgrade an attacker with write access would try (the next backup would store plaintext).
pub(crate) fn unencrypted_with_keys() -> Error {
    corrupt(
        "it says the repository is not encrypted, but the repository holds key files: refusing \
         (the config may have been replaced to turn encryption off)",
    )
}

/// Checks one size against its bounds, naming the field.
fn bounded(field: &str, v: u32, range: &std::ops::RangeInclusive<u32>) -> Result<()> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(corrupt(format!(
            "{field} {v} is outside {}..={}",
            range.start(),
            range.end()
        )))
    }
}

impl Config {
    /// Parses and validates the stored config: version, bounds on every size (the error names
    /// the field), and that `plain_keys` goes with `encryption: none`. Does not check the MAC:
    /// that needs the key ([`Config::authenticate`]).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let c: Config = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not a tidemark config: {e}")))?;
        if !(1..=CONFIG_VERSION).contains(&c.version) {
            return Err(Error::UnsupportedVersion {
                kind: Kind::Config,
                id: FILE.into(),
                version: c.version,
                supported: CONFIG_VERSION,
            });
        }
        c.check_sizes()?;
        if (c.encryption == Encryption::None) != c.plain_keys.is_some() {
            return Err(corrupt(
                "plain_keys must be present exactly when encryption is none",
            ));
        }
        if c.mac.is_some() && (c.version == 1 || c.encryption == Encryption::None) {
            return Err(corrupt(
                "a mac belongs only in a version-2 config of an encrypted repository",
            ));
        }
        Ok(c)
    }

    /// The bounds of `docs/format.md` §3 on the chunker, pack size and compression level; `init`
    /// applies them to new repositories as readers do to stored configs.
    pub fn check_sizes(&self) -> Result<()> {
        let ch = &self.chunker;
        bounded("chunker.min_size", ch.min_size, &MIN_SIZE)?;
        bounded("chunker.avg_size", ch.avg_size, &AVG_SIZE)?;
        bounded("chunker.max_size", ch.max_size, &MAX_SIZE)?;
        if ch.min_size > ch.avg_size || ch.avg_size > ch.max_size {
            return Err(corrupt(format!(
                "chunker sizes must grow: min_size {} <= avg_size {} <= max_size {}",
                ch.min_size, ch.avg_size, ch.max_size
            )));
        }
        if ch.normalization > 3 {
            return Err(corrupt(format!(
                "chunker.normalization {} is outside 0..=3",
                ch.normalization
            )));
        }
        ch.validate()
            .map_err(|e| corrupt(format!("chunker: {e}")))?;
        bounded("pack_size", self.pack_size, &PACK_SIZE)?;
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.compression.level) {
            return Err(corrupt(format!(
                "compression.level {} is outside {}..={}",
                self.compression.level,
                levels.start(),
                levels.end()
            )));
        }
        Ok(())
    }

    /// Serializes as it is (with whatever `version` and `mac` it holds).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config serializes")
    }

    /// This config as version 2, with its MAC when `crypto` is encrypted: what a writer stores.
    #[must_use]
    pub fn seal(&self, crypto: &Crypto) -> Config {
        let mut c = self.clone();
        c.version = CONFIG_VERSION;
        c.mac = None;
        let value = serde_json::to_value(&c).expect("config serializes");
        c.mac = crypto.config_mac(&canonical(&value)).map(|h| *h.as_bytes());
        c
    }

    /// Checks the stored config `bytes` (which decoded to `self`) against the unlocked key:
    /// a version-2 encrypted config must carry the MAC of every member it holds; a version-1
    /// one is refused when `key_requires_mac` (the key was written by a writer that
    /// authenticates configs, `docs/format.md` §3).
    pub fn authenticate(
        &self,
        bytes: &[u8],
        crypto: &Crypto,
        key_requires_mac: bool,
    ) -> Result<()> {
        if !crypto.is_encrypted() {
            return Ok(());
        }
        if self.version == 1 {
            return if key_requires_mac {
                Err(corrupt(format!(
                    "{NOT_AUTHENTICATED}: a version-1 config, but the key was written by a \
                     version that authenticates the config"
                )))
            } else {
                Ok(())
            };
        }
        let Some(stored) = self.mac else {
            return Err(corrupt(NOT_AUTHENTICATED));
        };
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not a tidemark config: {e}")))?;
        let expected = crypto
            .config_mac(&canonical(&value))
            .expect("an encrypted Crypto has a config key");
        // blake3::Hash compares in constant time.
        if expected == blake3::Hash::from(stored) {
            Ok(())
        } else {
            Err(corrupt(NOT_AUTHENTICATED))
        }
    }
}

/// The bytes the MAC covers (`docs/format.md` §3): the object without its top-level `mac`,
/// compact, members sorted by key at every level.
fn canonical(value: &serde_json::Value) -> Vec<u8> {
    fn write(v: &serde_json::Value, top: bool, out: &mut Vec<u8>) {
        use serde_json::Value;
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map
                    .keys()
                    .filter(|k| !(top && k.as_str() == "mac"))
                    .collect();
                keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k).expect("writing to a Vec");
                    out.push(b':');
                    write(&map[k], false, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, false, out);
                }
                out.push(b']');
            }
            leaf => serde_json::to_writer(&mut *out, leaf).expect("writing to a Vec"),
        }
    }
    let mut out = Vec::new();
    write(value, true, &mut out);
    out
}

/// Serde for `Option<[u8; 32]>` as hex.
mod mac_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // the signature serde's `with` calls
    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(m) => s.serialize_str(&hex::encode(m)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    /// A change to a stored config, named.
    type Edit = (&'static str, fn(&mut serde_json::Value));

    fn config(encryption: Encryption, key: &MasterKey) -> Config {
        Config {
            version: CONFIG_VERSION,
            id: ObjectId([7; 32]),
            encryption,
            compression: Compression {
                algorithm: CompressionAlgorithm::Zstd,
                level: DEFAULT_ZSTD_LEVEL,
            },
            chunker: ChunkerParams::default(),
            pack_size: DEFAULT_PACK_SIZE,
            plain_keys: (encryption == Encryption::None).then_some(PlainKeys {
                id_key: key.id_key,
                chunker_seed: key.chunker_seed,
            }),
            mac: None,
        }
    }

    /// The stored bytes of an encrypted repository's config, and its crypto.
    fn sealed() -> (Vec<u8>, Crypto) {
        let key = MasterKey::generate();
        let crypto = Crypto::encrypted(&key);
        let bytes = config(Encryption::XChaCha20Poly1305, &key)
            .seal(&crypto)
            .encode();
        (bytes, crypto)
    }

    fn edit(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        f(&mut v);
        serde_json::to_vec_pretty(&v).unwrap()
    }

    fn check(bytes: &[u8], crypto: &Crypto, key_requires_mac: bool) -> Result<Config> {
        let c = Config::decode(bytes)?;
        c.authenticate(bytes, crypto, key_requires_mac)?;
        Ok(c)
    }

    #[test]
    fn sealed_config_authenticates_and_any_change_is_refused() {
        let (bytes, crypto) = sealed();
        let c = check(&bytes, &crypto, true).unwrap();
        assert_eq!(c.version, 2);
        let edits: [Edit; 6] = [
            ("chunker", |v| v["chunker"]["min_size"] = 65536.into()),
            ("pack", |v| v["pack_size"] = 65536.into()),
            ("level", |v| v["compression"]["level"] = 19.into()),
            ("id", |v| v["id"] = hex::encode([8u8; 32]).into()),
            ("mac", |v| v["mac"] = hex::encode([0u8; 32]).into()),
            ("new member", |v| v["later"] = true.into()),
        ];
        for (what, f) in edits {
            let forged = edit(&bytes, f);
            let err = check(&forged, &crypto, true).unwrap_err().to_string();
            assert!(
                err.contains("not authenticated by this repository's key"),
                "{what}: {err}"
            );
        }
        // Another repository's key does not authenticate it either.
        let other = Crypto::encrypted(&MasterKey::generate());
        assert!(check(&bytes, &other, true).is_err());
    }

    #[test]
    fn mac_ignores_layout_and_covers_members_a_reader_does_not_know() {
        let (bytes, crypto) = sealed();
        // Compact, members sorted by key (not in the order written): the same config.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let compact = serde_json::to_vec(&v).unwrap();
        assert_ne!(compact, bytes);
        assert!(check(&compact, &crypto, true).is_ok());
        // A later writer's optional member, authenticated by that writer, is accepted.
        let later = edit(&bytes, |v| v["later"] = "x\n\u{1}ü".into());
        let mut parsed: serde_json::Value = serde_json::from_slice(&later).unwrap();
        let mac = crypto.config_mac(&canonical(&parsed)).unwrap();
        parsed["mac"] = hex::encode(mac.as_bytes()).into();
        let later = serde_json::to_vec(&parsed).unwrap();
        assert!(check(&later, &crypto, true).is_ok());
    }

    #[test]
    fn canonical_sorts_members_and_drops_only_the_top_mac() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{ "b": [1, {"z": "\u0001\"", "mac": 2}], "mac": "x", "a": null }"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(canonical(&v)).unwrap(),
            r#"{"a":null,"b":[1,{"mac":2,"z":"\u0001\""}]}"#
        );
    }

    #[test]
    fn missing_mac_or_version_1_is_refused_by_a_key_that_requires_it() {
        let (bytes, crypto) = sealed();
        let no_mac = edit(&bytes, |v| {
            v.as_object_mut().unwrap().remove("mac");
        });
        let err = check(&no_mac, &crypto, false).unwrap_err().to_string();
        assert!(err.contains("not authenticated"), "{err}");
        let v1 = edit(&no_mac, |v| v["version"] = 1.into());
        let err = check(&v1, &crypto, true).unwrap_err().to_string();
        assert!(err.contains("not authenticated"), "{err}");
        // A key written before configs were authenticated still opens a version-1 config.
        assert_eq!(check(&v1, &crypto, false).unwrap().version, 1);
        // A version-1 config never carries a mac.
        assert!(Config::decode(&edit(&bytes, |v| v["version"] = 1.into())).is_err());
    }

    #[test]
    fn sizes_out_of_bounds_are_refused_naming_the_field() {
        let key = MasterKey::generate();
        let plain = config(Encryption::None, &key).encode();
        assert!(Config::decode(&plain).is_ok());
        let cases: [Edit; 7] = [
            ("chunker.min_size 64 ", |v| {
                v["chunker"]["min_size"] = 64.into();
            }),
            ("chunker.avg_size 256 ", |v| {
                v["chunker"]["avg_size"] = 256.into();
            }),
            ("chunker.max_size 33554432 ", |v| {
                v["chunker"]["max_size"] = (32 << 20).into();
            }),
            ("chunker.normalization 9 ", |v| {
                v["chunker"]["normalization"] = 9.into();
            }),
            (
                "min_size 1048576 <= avg_size 1048576 <= max_size 524288",
                |v| {
                    v["chunker"]["min_size"] = (1 << 20).into();
                    v["chunker"]["avg_size"] = (1 << 20).into();
                    v["chunker"]["max_size"] = (1 << 19).into();
                },
            ),
            ("pack_size 1073741824 ", |v| {
                v["pack_size"] = (1u32 << 30).into();
            }),
            ("compression.level 99 ", |v| {
                v["compression"]["level"] = 99.into();
            }),
        ];
        for (field, f) in cases {
            let err = Config::decode(&edit(&plain, f)).unwrap_err().to_string();
            assert!(
                err.starts_with("config file is damaged: ") && err.contains(field),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn unencrypted_config_needs_no_mac_and_refuses_one() {
        let key = MasterKey::generate();
        let crypto = Crypto::plain(key.id_key);
        let c = config(Encryption::None, &key).seal(&crypto);
        assert_eq!(c.mac, None);
        let bytes = c.encode();
        assert!(check(&bytes, &crypto, false).is_ok());
        let with_mac = edit(&bytes, |v| v["mac"] = hex::encode([1u8; 32]).into());
        assert!(Config::decode(&with_mac).is_err());
    }
}
