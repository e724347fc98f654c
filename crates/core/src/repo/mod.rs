//! The deduplicated repository: config and keys, the index, blob reads, pack writes, snapshots.
//!
//! ```text
//! Store ──get──▶ Repository::open (config, key) ──load_index──▶ SharedIndex
//!                    │ read_blob / load_tree  (pack range → envelope → zstd → id check)
//!                    │ BlobWriter::add        (Packer: random open pack → finished pack → upload
//!                    │                         → index file every 32 packs)
//!                    └ save_snapshot / snapshots / find_snapshot (through the local snapshot cache)
//! ```
//!
//! A [`Repository`] is a cheap `Clone` handle: the store, config, crypto and chunker are shared
//! and read-only; the index is one [`SharedIndex`] with its own short lock (never held across a
//! store call); a writer's session is its own value ([`Session`]), shared by the clones made
//! after [`Repository::begin_session`]. The methods live by job: `keys.rs` (key files and the
//! config upgrade), `blobs.rs` (index, blob encoding, reads, pack adoption), `trees.rs`,
//! `snapshots.rs` (snapshots and policies), `sessions.rs` and `deletions.rs` (prune's deletion
//! records as a writer sees them).

mod blobs;
mod config;
mod deletions;
pub mod index;
mod keys;
mod sessions;
mod snapshots;
mod trees;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::pack::{FinishedPack, PackEntries};
pub use blobs::IndexStats;
pub use config::{
    Compression, CompressionAlgorithm, Config, Encryption, PlainKeys, CONFIG_VERSION,
    DEFAULT_PACK_SIZE, DEFAULT_ZSTD_LEVEL, PACK_SIZE,
};
pub use deletions::Revalidation;
pub use index::{Index, Location, SharedIndex};
pub use trees::REMOTE_TREE_READS;
pub use writer::{BlobWriter, WriterStats};

use crate::chunk::{Chunker, ChunkerParams};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{Crypto, KdfParams, KeyFile, MasterKey, EMPTY_PASSWORD};
use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId};
use crate::lifecycle::{Lease, Session};
use crate::store::{Store, CONFIG_ID};

/// Settings for a new repository.
#[derive(Clone)]
pub struct InitOptions {
    /// `None` creates an unencrypted repository; wiped when dropped.
    pub password: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Argon2id costs for the first key.
    pub kdf: KdfParams,
    /// Chunker sizes.
    pub chunker: ChunkerParams,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level (0 = off).
    pub compression_level: i32,
    /// Recorded in the key file.
    pub hostname: String,
    /// Recorded in the key file.
    pub username: String,
    /// Reuse this master key (another repository's, so that `copy` between them moves
    /// envelopes as they are); `None` generates one.
    pub master: Option<MasterKey>,
}

impl std::fmt::Debug for InitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitOptions")
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("kdf", &self.kdf)
            .field("chunker", &self.chunker)
            .field("pack_size", &self.pack_size)
            .field("compression_level", &self.compression_level)
            .field("hostname", &self.hostname)
            .field("username", &self.username)
            .field("master", &self.master)
            .finish()
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            password: None,
            kdf: KdfParams::default(),
            chunker: ChunkerParams::default(),
            pack_size: DEFAULT_PACK_SIZE,
            compression_level: DEFAULT_ZSTD_LEVEL,
            hostname: String::new(),
            username: String::new(),
            master: None,
        }
    }
}

/// An open repository: a cheap `Clone` handle.
///
/// Clones share the store, the keys, the chunker and the index (an index loaded or added to
/// through one is seen by all). The config, the snapshot cache directory, the clock, the lease
/// and the session are the handle's own: a clone made after [`Repository::begin_session`] shares
/// that session, one made before has none.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    crypto: Arc<Crypto>,
    chunker: Arc<Chunker>,
    key_id: Option<ObjectId>,
    index: Arc<SharedIndex>,
    clock: Arc<dyn Clock>,
    /// The lease this handle's sessions take and its prunes judge other writers by.
    lease: Lease,
    /// Base directory of the local snapshot cache (`docs/format.md` §16); `None`: no cache.
    cache_dir: Option<PathBuf>,
    /// This writer's lease and what it has revalidated (`docs/format.md` §19), if it writes.
    session: Option<Arc<Session>>,
}

impl Repository {
    /// Creates a repository in an empty store.
    pub fn init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<Self> {
        opts.chunker.validate()?;
        if opts.password.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        match store.get(Kind::Config, &CONFIG_ID, None) {
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "a repository already exists at {}",
                    store.location()
                )))
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let master = opts.master.clone().unwrap_or_else(MasterKey::generate);
        let mut id = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
        let (encryption, plain_keys) = match opts.password {
            Some(_) => (Encryption::XChaCha20Poly1305, None),
            None => (
                Encryption::None,
                Some(PlainKeys {
                    id_key: master.id_key,
                    chunker_seed: master.chunker_seed,
                }),
            ),
        };
        let crypto = if opts.password.is_some() {
            Crypto::encrypted(&master)
        } else {
            Crypto::plain(master.id_key)
        };
        let config = Config {
            version: CONFIG_VERSION,
            id: ObjectId(id),
            encryption,
            compression: Compression {
                algorithm: CompressionAlgorithm::Zstd,
                level: opts.compression_level,
            },
            chunker: opts.chunker,
            pack_size: opts.pack_size,
            plain_keys,
            mac: None,
        }
        .seal(&crypto);
        config.check_sizes().map_err(|e| match e {
            // The stored-config wording ("config file is damaged") does not fit a new one.
            Error::Corrupt { reason, .. } => Error::Invalid(format!("cannot init: {reason}")),
            e => e,
        })?;
        let mut key_id = None;
        if let Some(pw) = &opts.password {
            let kf = KeyFile::create(&master, pw, opts.kdf, &opts.hostname, &opts.username)?;
            let bytes = serde_json::to_vec_pretty(&kf).expect("key files serialize");
            let kid = ObjectId::of(&bytes);
            store.put(Kind::Key, &kid, &bytes)?;
            key_id = Some(kid);
        }
        // The config goes last: a repository without one is not a repository, so a crash during
        // init leaves nothing that `open` would accept. Created only if absent, so of two racing
        // inits one fails instead of replacing the other's config.
        if !store.put_new(Kind::Config, &CONFIG_ID, &config.encode())? {
            return Err(Error::Invalid(format!(
                "a repository already exists at {}",
                store.location()
            )));
        }
        Self::assemble(store, config, crypto, master.chunker_seed, key_id)
    }

    /// Opens an existing repository. `password` is called only if the repository is encrypted.
    ///
    /// The config is checked before it is used (`docs/format.md` §3): one that says "no
    /// encryption" in a store holding key files is refused before a password is asked for; an
    /// encrypted one must be authenticated by the key the password unlocks.
    pub fn open(
        store: Arc<dyn Store>,
        password: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<Self> {
        let bytes = match store.get(Kind::Config, &CONFIG_ID, None) {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => {
                return Err(Error::NoRepository {
                    location: store.location(),
                    reason: "no config file".into(),
                })
            }
            Err(e) => return Err(e),
        };
        let config = Config::decode(&bytes)?;
        let (crypto, seed, key_id) =
            if let (Encryption::None, Some(pk)) = (config.encryption, config.plain_keys) {
                if !store.list_ids(Kind::Key)?.is_empty() {
                    return Err(config::unencrypted_with_keys());
                }
                (Crypto::plain(pk.id_key), pk.chunker_seed, None)
            } else {
                let pw = zeroize::Zeroizing::new(password()?);
                let (kid, master) = Self::unlock(&*store, &pw)?;
                let crypto = Crypto::encrypted(&master);
                config.authenticate(&bytes, &crypto, master.authenticated_config)?;
                (crypto, master.chunker_seed, Some(kid))
            };
        Self::assemble(store, config, crypto, seed, key_id)
    }

    /// An open repository with an empty index, from its parts.
    fn assemble(
        store: Arc<dyn Store>,
        config: Config,
        crypto: Crypto,
        chunker_seed: u64,
        key_id: Option<ObjectId>,
    ) -> Result<Self> {
        let chunker = Chunker::new(config.chunker, chunker_seed)?;
        Ok(Repository {
            store,
            config: Arc::new(config),
            crypto: Arc::new(crypto),
            chunker: Arc::new(chunker),
            key_id,
            index: Arc::new(SharedIndex::default()),
            clock: Arc::new(SystemClock),
            lease: Lease::DEFAULT,
            cache_dir: None,
            session: None,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Envelope and id functions.
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// The configured chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// The clock this handle stamps and judges time by (the system's unless
    /// [`Repository::set_clock`] changed it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Sets the clock: sessions begun after this, index loads, revalidations and snapshot
    /// stamps read it (tests use a [`crate::clock::ManualClock`]).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// The lease this handle's sessions take, and that its prunes and `repair index` judge other
    /// writers by ([`Lease::DEFAULT`] unless [`Repository::set_lease`] changed it).
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// Sets the lease: sessions begun after this, and prunes and `repair index` runs, read it
    /// (tests shorten it to pause writers past it in seconds). Every process that writes to or
    /// prunes the repository must use the same lease (see [`Lease`]).
    pub fn set_lease(&mut self, lease: Lease) {
        self.lease = lease;
    }

    /// The key file this session unlocked with.
    pub fn key_id(&self) -> Option<ObjectId> {
        self.key_id
    }

    /// Sets the base directory of the local snapshot cache (`$XDG_CACHE_HOME/tidemark`; the
    /// file is `<dir>/<repository id>/snapshots`, `docs/format.md` §16). `None` (the default)
    /// reads every snapshot from the store each time.
    pub fn set_cache_dir(&mut self, dir: Option<PathBuf>) {
        self.cache_dir = dir;
    }

    /// The base directory of the local snapshot cache, if one is set.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }
}
