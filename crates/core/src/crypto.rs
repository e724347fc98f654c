//! The master key, envelopes and key files (`docs/format.md` §4–§5).
//!
//! A [`MasterKey`] holds everything secret about a repository: the AEAD key, the blob-id key and
//! the chunker seed. [`Crypto`] seals and opens envelopes with it, or passes bytes through for an
//! unencrypted repository.
//!
//! Secrets are wiped when dropped: the master key, the keys a [`Crypto`] holds (the AEAD key by
//! `chacha20poly1305` itself), key-encryption keys and the decrypted master-key JSON.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::id::{BlobId, Kind};

/// Bytes an envelope adds: a 24-byte nonce and a 16-byte tag.
pub const ENVELOPE_OVERHEAD: usize = 40;

/// One name in `PAGE_SPAN` ends a page of a paged tree, on average ([`Crypto::ends_page`],
/// `docs/format.md` §8.1).
pub const PAGE_SPAN: u32 = 256;

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
    /// Whether this key was written by a writer that authenticates the config
    /// (`docs/format.md` §3): such a key refuses a version-1 config. Every key file written now
    /// carries `true`.
    #[serde(default)]
    pub authenticated_config: bool,
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.encrypt.zeroize();
        self.id_key.zeroize();
        self.chunker_seed.zeroize();
    }
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
            authenticated_config: true,
        }
    }
}

/// Seals and opens envelopes, and computes blob ids.
#[derive(Clone)]
pub struct Crypto {
    cipher: Option<XChaCha20Poly1305>,
    id_key: [u8; 32],
    /// The key of the config's MAC (`docs/format.md` §3); encrypted repositories only.
    config_key: Option<[u8; 32]>,
    /// A one-way digest of both keys: equal for repositories that share their keys.
    fingerprint: [u8; 32],
}

impl Drop for Crypto {
    fn drop(&mut self) {
        self.id_key.zeroize();
        if let Some(k) = &mut self.config_key {
            k.zeroize();
        }
    }
}

/// `BLAKE3-derive_key("tidemark 2026 config mac", encrypt || id_key)` (`docs/format.md` §3).
fn config_key(encrypt: &[u8; 32], id_key: &[u8; 32]) -> [u8; 32] {
    let mut material = Zeroizing::new([0u8; 64]);
    material[..32].copy_from_slice(encrypt);
    material[32..].copy_from_slice(id_key);
    blake3::derive_key("tidemark 2026 config mac", &*material)
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
            config_key: Some(config_key(&key.encrypt, &key.id_key)),
            fingerprint: fingerprint(Some(&key.encrypt), &key.id_key),
        }
    }

    /// No encryption; ids are still keyed with `id_key`.
    pub fn plain(id_key: [u8; 32]) -> Self {
        Crypto {
            cipher: None,
            id_key,
            config_key: None,
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

    /// The MAC of a config's canonical bytes (`docs/format.md` §3); `None` for an unencrypted
    /// repository, whose config cannot be authenticated. Compare with `blake3::Hash`'s `==`,
    /// which takes constant time.
    pub fn config_mac(&self, canonical: &[u8]) -> Option<blake3::Hash> {
        self.config_key
            .as_ref()
            .map(|k| blake3::keyed_hash(k, canonical))
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
        first % PAGE_SPAN == 0
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

/// The message for an empty password, wherever one is given.
pub const EMPTY_PASSWORD: &str = "an empty password is not allowed";

impl KdfParams {
    /// Most memory a key file may ask for: 1 GiB, in KiB.
    pub const MAX_M_COST_KIB: u32 = 1 << 20;
    /// Most passes a key file may ask for (at 1 GiB: about 50 times the default's cost).
    pub const MAX_T_COST: u32 = 10;
    /// Most lanes a key file may ask for.
    pub const MAX_P_COST: u32 = 16;

    /// Checks the costs against the bounds of `docs/format.md` §4, before anything is allocated;
    /// the error names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let outside = |field: &str, v: u32, lo: u32, hi: u32| {
            format!(
                "Argon2id {field} {v} is outside {lo}..={hi} (refused before deriving, so that a \
                 key file cannot make tidemark spend unbounded memory or time)"
            )
        };
        if !(1..=Self::MAX_P_COST).contains(&self.p_cost) {
            return Err(outside("p_cost", self.p_cost, 1, Self::MAX_P_COST));
        }
        let min_m = 8 * self.p_cost;
        if !(min_m..=Self::MAX_M_COST_KIB).contains(&self.m_cost_kib) {
            return Err(outside(
                "m_cost_kib",
                self.m_cost_kib,
                min_m,
                Self::MAX_M_COST_KIB,
            ));
        }
        if !(1..=Self::MAX_T_COST).contains(&self.t_cost) {
            return Err(outside("t_cost", self.t_cost, 1, Self::MAX_T_COST));
        }
        Ok(())
    }
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

/// The key-encryption key; callers have checked `params` with [`KdfParams::check`].
fn derive(password: &[u8], salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let p = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| Error::Invalid(format!("bad Argon2id parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(password, salt, &mut *out)
        .map_err(|e| Error::Invalid(format!("Argon2id failed: {e}")))?;
    Ok(out)
}

impl KeyFile {
    /// Wraps `key` with `password`. The wrapped key carries `authenticated_config` (this writer
    /// authenticates the config). Refuses an empty password and costs outside the bounds.
    pub fn create(
        key: &MasterKey,
        password: &[u8],
        params: KdfParams,
        hostname: &str,
        username: &str,
    ) -> Result<Self> {
        if password.is_empty() {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        params.check().map_err(Error::Invalid)?;
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let kek = derive(password, &salt, params)?;
        let cipher = XChaCha20Poly1305::new((&*kek).into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut key = key.clone();
        key.authenticated_config = true;
        let plain = Zeroizing::new(serde_json::to_vec(&key).expect("master key serializes"));
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

    /// Unwraps the master key. `Ok(None)` means the password does not open this key file. Costs
    /// outside the bounds are refused before Argon2id runs; so is an empty password.
    pub fn open(&self, password: &[u8], id: &dyn std::fmt::Display) -> Result<Option<MasterKey>> {
        if password.is_empty() {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        // Bound the cost an attacker-supplied key file can make us pay.
        self.params
            .check()
            .map_err(|reason| Error::corrupt(Kind::Key, id, reason))?;
        let salt = B64
            .decode(&self.salt)
            .map_err(|e| Error::corrupt(Kind::Key, id, format!("salt: {e}")))?;
        let data = B64
            .decode(&self.data)
            .map_err(|e| Error::corrupt(Kind::Key, id, format!("data: {e}")))?;
        if data.len() < ENVELOPE_OVERHEAD {
            return Err(Error::corrupt(Kind::Key, id, "data too short"));
        }
        let kek = derive(password, &salt, self.params)?;
        let cipher = XChaCha20Poly1305::new((&*kek).into());
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
        let plain = Zeroizing::new(plain);
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

/// Serde for `[u8; 32]` as hex, through buffers that are wiped (the keys are secret).
pub(crate) mod hex32 {
    use serde::{Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Zeroizing::new([0u8; 64]);
        hex::encode_to_slice(v, &mut *buf).expect("64 bytes hold 32 in hex");
        s.serialize_str(std::str::from_utf8(&*buf).expect("hex is ASCII"))
    }

    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = [u8; 32];

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("64 hex characters")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<[u8; 32], E> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).map_err(E::custom)?;
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        d.deserialize_str(Visitor)
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

    /// A key file as an attacker would store it: valid JSON, any costs.
    fn with_costs(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> KeyFile {
        let mut kf = KeyFile::create(&MasterKey::generate(), b"pw", CHEAP, "h", "u").unwrap();
        kf.params = KdfParams {
            m_cost_kib,
            t_cost,
            p_cost,
        };
        let bytes = serde_json::to_vec(&kf).unwrap();
        KeyFile::decode(&bytes, &"k").unwrap()
    }

    #[test]
    fn absurd_argon2_costs_are_refused_before_deriving() {
        // (m KiB, t, p, the field the error names). The first is within the old bounds and
        // took seconds there; the second would have allocated 4 GiB.
        let cases = [
            (64 * 1024, 100, 1, "t_cost 100 is outside 1..=10"),
            (4 << 20, 3, 1, "m_cost_kib 4194304 is outside 8..=1048576"),
            (64 << 20, 3, 1, "m_cost_kib 67108864 is outside"),
            (64 * 1024, 3, 64, "p_cost 64 is outside 1..=16"),
            (64 * 1024, 0, 1, "t_cost 0 is outside"),
            (8, 1, 4, "m_cost_kib 8 is outside 32..=1048576"),
        ];
        for (m, t, p, field) in cases {
            let kf = with_costs(m, t, p);
            let start = std::time::Instant::now();
            let err = kf.open(b"pw", &"k").unwrap_err();
            let took = start.elapsed();
            assert!(
                took < std::time::Duration::from_millis(100),
                "{field}: took {took:?}"
            );
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    Error::Corrupt {
                        kind: Kind::Key,
                        ..
                    }
                ) && msg.contains(field),
                "{field}: {msg}"
            );
            // Nor is such a key file ever written.
            assert!(KeyFile::create(&MasterKey::generate(), b"pw", kf.params, "h", "u").is_err());
        }
    }

    #[test]
    fn empty_password_is_refused() {
        let k = MasterKey::generate();
        let err = KeyFile::create(&k, b"", CHEAP, "h", "u").unwrap_err();
        assert_eq!(err.to_string(), EMPTY_PASSWORD);
        let kf = KeyFile::create(&k, b"pw", CHEAP, "h", "u").unwrap();
        assert_eq!(kf.open(b"", &"k").unwrap_err().to_string(), EMPTY_PASSWORD);
    }

    #[test]
    fn written_keys_require_an_authenticated_config_and_old_ones_do_not() {
        let mut k = MasterKey::generate();
        k.authenticated_config = false;
        let kf = KeyFile::create(&k, b"pw", CHEAP, "h", "u").unwrap();
        let opened = kf.open(b"pw", &"k").unwrap().unwrap();
        assert!(opened.authenticated_config);
        assert_eq!(opened.id_key, k.id_key);
        // A master key written before the flag existed.
        let old = format!(
            r#"{{"version":1,"encrypt":"{}","id_key":"{}","chunker_seed":5}}"#,
            hex::encode([1u8; 32]),
            hex::encode([2u8; 32])
        );
        let old: MasterKey = serde_json::from_str(&old).unwrap();
        assert!(!old.authenticated_config);
        assert_eq!(old.id_key, [2u8; 32]);
    }

    #[test]
    fn config_mac_is_keyed_and_absent_without_encryption() {
        let k = MasterKey::generate();
        let a = Crypto::encrypted(&k).config_mac(b"x").unwrap();
        assert_eq!(Crypto::encrypted(&k.clone()).config_mac(b"x").unwrap(), a);
        assert_ne!(Crypto::encrypted(&k).config_mac(b"y").unwrap(), a);
        assert_ne!(
            Crypto::encrypted(&MasterKey::generate())
                .config_mac(b"x")
                .unwrap(),
            a
        );
        assert!(Crypto::plain(k.id_key).config_mac(b"x").is_none());
    }
}
