//! The master key, envelopes and key files (`docs/format.md` §4–§5).
//!
//! A [`MasterKey`] holds everything secret about a repository: the AEAD key, the blob-id key and
//! the chunker seed. [`Crypto`] seals and opens envelopes with it, or passes bytes through for an
//! unencrypted repository.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::store::Kind;

/// Bytes an envelope adds: a 24-byte nonce and a 16-byte tag.
pub const ENVELOPE_OVERHEAD: usize = 40;

/// What an envelope holds; bound into it as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A blob in a pack.
    Blob,
    /// A pack header.
    PackHeader,
    /// An index file.
    Index,
    /// A snapshot.
    Snapshot,
    /// A retention policy.
    Policy,
    /// A writer's session.
    Session,
    /// A deletion record.
    Deletion,
    /// The local snapshot cache (`docs/format.md` §16); never stored in a repository.
    SnapshotCache,
}

impl Domain {
    fn aad(self) -> &'static [u8] {
        match self {
            Domain::Blob => b"B",
            Domain::PackHeader => b"H",
            Domain::Index => b"I",
            Domain::Snapshot => b"S",
            Domain::Policy => b"P",
            Domain::Session => b"W",
            Domain::Deletion => b"D",
            Domain::SnapshotCache => b"C",
        }
    }
}

/// The secret material of a repository.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKey {
    /// Format version of this JSON (1).
    pub version: u32,
    /// XChaCha20-Poly1305 key for envelopes.
    #[serde(with = "hex32")]
    pub encrypt: [u8; 32],
    /// BLAKE3 key for blob ids.
    #[serde(with = "hex32")]
    pub id_key: [u8; 32],
    /// Seed of the FastCDC gear table; never 0 (0 means "no seed" to fastcdc).
    pub chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let mut encrypt = [0u8; 32];
        let mut id_key = [0u8; 32];
        rng.fill_bytes(&mut encrypt);
        rng.fill_bytes(&mut id_key);
        let chunker_seed = rng.next_u64() | 1;
        MasterKey {
            version: 1,
            encrypt,
            id_key,
            chunker_seed,
        }
    }
}

/// Seals and opens envelopes, and computes blob ids.
#[derive(Clone)]
pub struct Crypto {
    cipher: Option<XChaCha20Poly1305>,
    id_key: [u8; 32],
    /// A one-way digest of both keys: equal for repositories that share their keys.
    fingerprint: [u8; 32],
}

fn fingerprint(encrypt: Option<&[u8; 32]>, id_key: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tidemark 2026 key fingerprint");
    h.update(id_key);
    h.update(encrypt.map_or(&[0u8; 32][..], |k| &k[..]));
    *h.finalize().as_bytes()
}

impl Crypto {
    /// Encryption with `key`.
    pub fn encrypted(key: &MasterKey) -> Self {
        Crypto {
            cipher: Some(XChaCha20Poly1305::new((&key.encrypt).into())),
            id_key: key.id_key,
            fingerprint: fingerprint(Some(&key.encrypt), &key.id_key),
        }
    }

    /// No encryption; ids are still keyed with `id_key`.
    pub fn plain(id_key: [u8; 32]) -> Self {
        Crypto {
            cipher: None,
            id_key,
            fingerprint: fingerprint(None, &id_key),
        }
    }

    /// Whether `other` has the same keys: blob ids are equal and envelopes can be copied as
    /// they are (`tidemark copy` between repositories made with `init --from-repo`).
    pub fn same_keys(&self, other: &Crypto) -> bool {
        self.fingerprint == other.fingerprint
    }

    /// Whether envelopes are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// Bytes an envelope adds to its plaintext.
    pub fn overhead(&self) -> usize {
        if self.cipher.is_some() {
            ENVELOPE_OVERHEAD
        } else {
            0
        }
    }

    /// The blob id of `plaintext`.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Whether the entry `name` ends a page of a paged tree (`docs/format.md` §8.1): keyed, so
    /// page sizes say nothing about names to anyone without the key.
    pub fn ends_page(&self, name: &[u8]) -> bool {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(b"tidemark page v1\0");
        h.update(name);
        let b = h.finalize();
        let first = u32::from_le_bytes(b.as_bytes()[..4].try_into().expect("4 bytes"));
        first % crate::snapshot::PAGE_SPAN == 0
    }

    /// Wraps `plaintext` in an envelope.
    pub fn seal(&self, domain: Domain, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(domain, plaintext, &mut out);
        out
    }

    /// Like [`Crypto::seal`], into `out` (cleared first), reusing its allocation.
    pub fn seal_into(&self, domain: Domain, plaintext: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let Some(cipher) = &self.cipher else {
            out.extend_from_slice(plaintext);
            return;
        };
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.reserve(plaintext.len() + ENVELOPE_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), domain.aad(), &mut out[24..])
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&tag);
    }

    /// Opens an envelope; `kind` and `id` only name the object in the error.
    pub fn open(
        &self,
        domain: Domain,
        envelope: &[u8],
        kind: Kind,
        id: &dyn std::fmt::Display,
    ) -> Result<Vec<u8>> {
        let Some(cipher) = &self.cipher else {
            return Ok(envelope.to_vec());
        };
        if envelope.len() < ENVELOPE_OVERHEAD {
            return Err(Error::corrupt(
                kind,
                id,
                format!("envelope of {} bytes is shorter than 40", envelope.len()),
            ));
        }
        let (nonce, ct) = envelope.split_at(24);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: domain.aad(),
                },
            )
            .map_err(|_| {
                Error::corrupt(
                    kind,
                    id,
                    "authentication failed (bit rot, tampering, or a different key)",
                )
            })
    }
}

/// Argon2id cost parameters of a key file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: ~0.2 s on this class of machine (OWASP's second recommended set).
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

/// A key file (`keys/<id>`): the master key wrapped by a password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version (1).
    pub version: u32,
    /// When the key was added (RFC 3339).
    pub created: String,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
    /// Always "argon2id".
    pub kdf: String,
    /// Argon2id costs.
    #[serde(flatten)]
    pub params: KdfParams,
    /// Base64 of the 16-byte salt.
    pub salt: String,
    /// Base64 of the envelope of the master-key JSON.
    pub data: String,
}

const KEY_AAD: &[u8] = b"tidemark key v1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn derive(password: &[u8], salt: &[u8], params: KdfParams) -> Result<[u8; 32]> {
    let p = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| Error::Invalid(format!("bad Argon2id parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::Invalid(format!("Argon2id failed: {e}")))?;
    Ok(out)
}

impl KeyFile {
    /// Wraps `key` with `password`.
    pub fn create(
        key: &MasterKey,
        password: &[u8],
        params: KdfParams,
        hostname: &str,
        username: &str,
    ) -> Result<Self> {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let kek = derive(password, &salt, params)?;
        let cipher = XChaCha20Poly1305::new((&kek).into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let plain = serde_json::to_vec(key).expect("master key serializes");
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: KEY_AAD,
                },
            )
            .expect("encryption of a small buffer cannot fail");
        let mut data = nonce.to_vec();
        data.extend_from_slice(&ct);
        Ok(KeyFile {
            version: 1,
            created: chrono::Utc::now().to_rfc3339(),
            hostname: hostname.to_owned(),
            username: username.to_owned(),
            kdf: "argon2id".into(),
            params,
            salt: B64.encode(salt),
            data: B64.encode(data),
        })
    }

    /// Parses a stored key file.
    pub fn decode(bytes: &[u8], id: &dyn std::fmt::Display) -> Result<Self> {
        let kf: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(Kind::Key, id, format!("not a key file: {e}")))?;
        if kf.version != 1 {
            return Err(Error::UnsupportedVersion {
                kind: Kind::Key,
                id: id.to_string(),
                version: kf.version,
                supported: 1,
            });
        }
        if kf.kdf != "argon2id" {
            return Err(Error::corrupt(
                Kind::Key,
                id,
                format!("unknown kdf {:?}", kf.kdf),
            ));
        }
        Ok(kf)
    }

    /// Unwraps the master key. `Ok(None)` means the password does not open this key file.
    pub fn open(&self, password: &[u8], id: &dyn std::fmt::Display) -> Result<Option<MasterKey>> {
        let salt = B64
            .decode(&self.salt)
            .map_err(|e| Error::corrupt(Kind::Key, id, format!("salt: {e}")))?;
        let data = B64
            .decode(&self.data)
            .map_err(|e| Error::corrupt(Kind::Key, id, format!("data: {e}")))?;
        if data.len() < ENVELOPE_OVERHEAD {
            return Err(Error::corrupt(Kind::Key, id, "data too short"));
        }
        // Bound the cost an attacker-supplied key file can make us pay.
        if self.params.m_cost_kib > 4 * 1024 * 1024
            || self.params.t_cost > 100
            || self.params.p_cost > 64
        {
            return Err(Error::corrupt(
                Kind::Key,
                id,
                "unreasonable Argon2id parameters",
            ));
        }
        let kek = derive(password, &salt, self.params)?;
        let cipher = XChaCha20Poly1305::new((&kek).into());
        let (nonce, ct) = data.split_at(24);
        let Ok(plain) = cipher.decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: KEY_AAD,
            },
        ) else {
            return Ok(None);
        };
        let key: MasterKey = serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt(Kind::Key, id, format!("master key: {e}")))?;
        if key.version != 1 {
            return Err(Error::UnsupportedVersion {
                kind: Kind::Key,
                id: id.to_string(),
                version: key.version,
                supported: 1,
            });
        }
        Ok(Some(key))
    }
}

/// Serde for `[u8; 32]` as hex.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn envelope_round_trip_and_domain_binding() {
        let c = Crypto::encrypted(&MasterKey::generate());
        let env = c.seal(Domain::Blob, b"hello");
        assert_eq!(env.len(), 5 + ENVELOPE_OVERHEAD);
        assert_eq!(
            c.open(Domain::Blob, &env, Kind::Blob, &"x").unwrap(),
            b"hello"
        );
        assert!(c.open(Domain::Snapshot, &env, Kind::Blob, &"x").is_err());
        let mut bad = env.clone();
        bad[30] ^= 1;
        assert!(c.open(Domain::Blob, &bad, Kind::Blob, &"x").is_err());
        assert!(c.open(Domain::Blob, &env[..10], Kind::Blob, &"x").is_err());
    }

    #[test]
    fn key_file_wraps_and_rejects_wrong_password() {
        let k = MasterKey::generate();
        let kf = KeyFile::create(&k, b"pw", CHEAP, "h", "u").unwrap();
        let bytes = serde_json::to_vec(&kf).unwrap();
        let kf = KeyFile::decode(&bytes, &"k").unwrap();
        assert_eq!(kf.open(b"pw", &"k").unwrap().unwrap().encrypt, k.encrypt);
        assert!(kf.open(b"nope", &"k").unwrap().is_none());
    }
}
