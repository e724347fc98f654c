//! The deduplicated repository: config and keys, the index, blob reads, pack writes, snapshots.
//!
//! ```text
//! Store ──get──▶ Repository::open (config, key) ──load_index──▶ Index
//!                    │ read_blob / load_tree  (pack range → envelope → zstd → id check)
//!                    │ BlobWriter::add        (random open pack → finished pack → upload → index file)
//!                    └ save_snapshot / snapshots / find_snapshot (through the local snapshot cache)
//! ```

mod config;
pub mod index;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{
    Compression, CompressionAlgorithm, Config, Encryption, PlainKeys, CONFIG_VERSION,
    DEFAULT_PACK_SIZE, DEFAULT_ZSTD_LEVEL, PACK_SIZE,
};
pub use index::{Index, Location};
pub use writer::{BlobWriter, FinishedPack, PackEntries, WriterStats};

use crate::chunk::{Chunker, ChunkerParams};
use crate::crypto::{Crypto, Domain, KdfParams, KeyFile, MasterKey, EMPTY_PASSWORD};
use crate::error::{Error, Result};
use crate::forget::StoredPolicy;
use crate::id::{BlobId, Kind, ObjectId, PackId, SnapshotId};
use crate::lifecycle::{self, Session};
use crate::pack::{self, BlobEntry, BlobKind, FLAG_ZSTD, TRAILER_LEN};
use crate::snapshot::cache::{self, CacheFile, CacheStats, SnapshotList};
use crate::snapshot::{
    paginate, Node, PageRef, Selector, Snapshot, SnapshotFilter, Tree, PAGED_OVER,
};
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

/// An open repository.
pub struct Repository {
    store: Arc<dyn Store>,
    config: Config,
    crypto: Crypto,
    chunker: Chunker,
    key_id: Option<ObjectId>,
    index: Index,
    /// Base directory of the local snapshot cache (`docs/format.md` §16); `None`: no cache.
    cache_dir: Option<PathBuf>,
    /// This writer's lease (`docs/format.md` §19), if it writes.
    session: Option<Session>,
    /// Packs condemned by prune, with when (from the deletion records read by `load_index`, and
    /// those taken in since): their blobs are no longer reused.
    condemned: HashMap<PackId, chrono::DateTime<chrono::Utc>>,
    /// Deletion records this writer has revalidated: it no longer reuses their packs *and* no
    /// longer needs them (what it uses was copied out, stored and indexed). Only these are
    /// declared seen in its session; a pack can be condemned here and not yet revalidated.
    revalidated: HashSet<ObjectId>,
}

/// Deletion records a long-running writer has not revalidated yet
/// ([`Repository::unrevalidated`]).
#[derive(Debug, Clone, Default)]
pub struct Revalidation {
    /// The records, by object id.
    pub records: Vec<ObjectId>,
    /// The packs they condemn, with the time of their record.
    pub packs: Vec<(PackId, chrono::DateTime<chrono::Utc>)>,
    /// Every record present when they were read.
    pub present: Vec<ObjectId>,
    /// This writer's clock just before they were read (the session's `view`, for older prunes).
    pub view: chrono::DateTime<chrono::Utc>,
}

/// What loading the index found.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexStats {
    /// Index files read.
    pub files: usize,
    /// Packs referenced.
    pub packs: usize,
    /// Distinct blobs.
    pub blobs: usize,
}

/// Tree reads in flight when a walk over an object store reads ahead.
pub const REMOTE_TREE_READS: usize = 16;

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
            config,
            crypto,
            chunker,
            key_id,
            index: Index::default(),
            cache_dir: None,
            session: None,
            condemned: HashMap::new(),
            revalidated: HashSet::new(),
        })
    }

    /// The master key of the repository in `store`, unlocked with `password` (to create
    /// another repository with the same keys: `init --from-repo`).
    pub fn master_key(store: &dyn Store, password: &[u8]) -> Result<MasterKey> {
        Self::unlock(store, password).map(|(_, m)| m)
    }

    fn unlock(store: &dyn Store, password: &[u8]) -> Result<(ObjectId, MasterKey)> {
        if password.is_empty() {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        let keys = store.list(Kind::Key)?;
        if keys.is_empty() {
            return Err(Error::corrupt(
                Kind::Key,
                "-",
                "the repository is encrypted but has no key files",
            ));
        }
        let mut damaged = None;
        for (id, _) in keys {
            let parsed = store
                .get(Kind::Key, &id, None)
                .and_then(|b| KeyFile::decode(&b, &id));
            match parsed.and_then(|kf| kf.open(password, &id)) {
                Ok(Some(master)) => return Ok((id, master)),
                Ok(None) => {}
                Err(e) => damaged = Some(e),
            }
        }
        Err(damaged.unwrap_or(Error::WrongPassword))
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

    /// The key file this session unlocked with.
    pub fn key_id(&self) -> Option<ObjectId> {
        self.key_id
    }

    /// The loaded index (empty until [`Repository::load_index`]).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Reads every index file into memory.
    pub fn load_index(&mut self) -> Result<IndexStats> {
        self.load_index_visit(&mut |_, _, _| {})
    }

    /// Like [`Repository::load_index`], also showing every `(index file, pack, entries)` read
    /// to `visit` (prune keeps per-pack lists).
    pub fn load_index_visit(
        &mut self,
        visit: &mut dyn FnMut(&ObjectId, PackId, &[BlobEntry]),
    ) -> Result<IndexStats> {
        let mut index = Index::default();
        // Deletion records first: a blob with a copy outside condemned packs is located there.
        let view = chrono::Utc::now();
        self.condemned.clear();
        let mut seen = Vec::new();
        for (id, r) in lifecycle::deletions(&*self.store, &self.crypto)? {
            let t = r.time_at();
            for p in r.packs {
                let e = self.condemned.entry(p).or_insert(t);
                *e = (*e).min(t);
            }
            seen.push(id);
        }
        index.condemn(self.condemned.keys().copied());
        let files = self.store.list(Kind::Index)?;
        for (id, _) in &files {
            let bytes = match self.store.get(Kind::Index, id, None) {
                Ok(b) => b,
                // Replaced by a prune between list and get: its packs are in the new file.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            for (pack, entries) in index::open(&self.crypto, id, &bytes)? {
                index.add_pack(pack, &entries);
                visit(id, pack, &entries);
            }
        }
        self.index = index;
        // Nothing loaded reuses a condemned pack, and nothing was written yet: every record read
        // is revalidated.
        self.revalidated = seen.iter().copied().collect();
        if let Some(s) = &self.session {
            s.set_seen(&seen, view)?;
        }
        Ok(IndexStats {
            files: files.len(),
            packs: self.index.packs().len(),
            blobs: self.index.len(),
        })
    }

    /// Adds entries to the in-memory index (after this process wrote or adopted packs).
    pub fn index_add(&mut self, pack: PackId, entries: &[BlobEntry]) {
        self.index.add_pack(pack, entries);
    }

    /// Starts this writer's session (`docs/format.md` §19); call before [`Repository::load_index`],
    /// so that the session's view covers the deletion records it reads.
    ///
    /// A version-1 config of an encrypted repository is upgraded to version 2 (authenticated)
    /// first: a writer holds the key (`docs/format.md` §3).
    pub fn begin_session(&mut self, command: &str, host: &str) -> Result<()> {
        if let Some(upgraded) = self.upgrade_config()? {
            self.config = upgraded;
        }
        self.session = Some(Session::start(
            Arc::clone(&self.store),
            &self.crypto,
            command,
            host,
        )?);
        Ok(())
    }

    /// Stores this repository's config as version 2 with its MAC, if it is an encrypted
    /// version-1 one; returns the stored config. Rewriting is safe against a racing writer: both
    /// store the same bytes (the MAC is deterministic).
    fn upgrade_config(&self) -> Result<Option<Config>> {
        if self.config.version >= CONFIG_VERSION || !self.crypto.is_encrypted() {
            return Ok(None);
        }
        let sealed = self.config.seal(&self.crypto);
        self.store.put(Kind::Config, &CONFIG_ID, &sealed.encode())?;
        Ok(Some(sealed))
    }

    /// Ends this writer's session (after its last object is stored).
    pub fn end_session(&mut self) -> Result<()> {
        match self.session.take() {
            Some(s) => s.end(),
            None => Ok(()),
        }
    }

    /// This writer's session, if it has one.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Fails if this writer's lease may have expired (it must store nothing more).
    fn check_lease(&self) -> Result<()> {
        self.session.as_ref().map_or(Ok(()), Session::check)
    }

    /// Takes in packs condemned by a deletion record read after [`Repository::load_index`]: their
    /// blobs are no longer reused (a long-running writer calls this, then copies what it still
    /// needs).
    pub fn condemn_packs(&mut self, packs: &[(PackId, chrono::DateTime<chrono::Utc>)]) {
        for (p, t) in packs {
            self.condemned.entry(*p).or_insert(*t);
        }
        self.index.condemn(packs.iter().map(|(p, _)| *p));
    }

    /// Packs condemned by prune, with the time of their deletion record.
    pub fn condemned(&self) -> &HashMap<PackId, chrono::DateTime<chrono::Utc>> {
        &self.condemned
    }

    /// Reads the deletion records and returns those this writer has not revalidated yet (a
    /// long-running writer calls this every few minutes). Hand [`Revalidation::packs`] to the
    /// code that stops reusing them and copies out what is still needed, then, only once that is
    /// stored and indexed, to [`Repository::mark_revalidated`].
    pub fn unrevalidated(&self) -> Result<Revalidation> {
        let view = chrono::Utc::now();
        let mut out = Revalidation {
            view,
            ..Revalidation::default()
        };
        for (id, r) in lifecycle::deletions(&*self.store, &self.crypto)? {
            out.present.push(id);
            if self.revalidated.contains(&id) {
                continue;
            }
            let t = r.time_at();
            out.packs.extend(r.packs.into_iter().map(|p| (p, t)));
            out.records.push(id);
        }
        Ok(out)
    }

    /// Declares the records of `r` revalidated: call only after every blob this writer still
    /// uses from their packs is copied into packs that are stored and indexed. Renews the
    /// session with them as seen, which lets prune delete those packs.
    pub fn mark_revalidated(&mut self, r: &Revalidation) -> Result<()> {
        self.condemn_packs(&r.packs);
        self.revalidated.extend(r.records.iter().copied());
        // Records swept meanwhile need not be listed any more.
        let present: HashSet<&ObjectId> = r.present.iter().collect();
        self.revalidated.retain(|id| present.contains(id));
        let mut seen: Vec<ObjectId> = self.revalidated.iter().copied().collect();
        seen.sort_by_key(|id| id.0);
        match &self.session {
            Some(s) => s.set_seen(&seen, r.view),
            None => Ok(()),
        }
    }

    /// Writes an index file for `packs`.
    pub fn write_index(&self, packs: &[(PackId, Vec<BlobEntry>)]) -> Result<ObjectId> {
        self.check_lease()?;
        let (id, bytes) = index::seal(&self.crypto, packs);
        self.store.put(Kind::Index, &id, &bytes)?;
        Ok(id)
    }

    /// Compresses (when worth it) and seals a blob's plaintext: `(flags, envelope)`.
    pub fn encode_blob(
        &self,
        compressor: Option<&mut zstd::bulk::Compressor<'_>>,
        plain: &[u8],
    ) -> (u8, Vec<u8>) {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let flags = self.encode_blob_into(compressor, plain, &mut scratch, &mut out);
        (flags, out)
    }

    /// Like [`Repository::encode_blob`], reusing `scratch` (compressed bytes) and `out`
    /// (the envelope): the backup pipeline's steady state allocates nothing per chunk.
    pub fn encode_blob_into(
        &self,
        compressor: Option<&mut zstd::bulk::Compressor<'_>>,
        plain: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> u8 {
        if let Some(c) = compressor {
            if plain.len() >= 64 {
                scratch.clear();
                scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                if c.compress_to_buffer(plain, scratch).is_ok()
                    && scratch.len() <= plain.len() - plain.len() / 32
                {
                    self.crypto.seal_into(Domain::Blob, scratch, out);
                    return FLAG_ZSTD;
                }
            }
        }
        self.crypto.seal_into(Domain::Blob, plain, out);
        0
    }

    /// A zstd compressor at the configured level, or `None` when compression is off.
    pub fn compressor(&self) -> Option<zstd::bulk::Compressor<'static>> {
        let level = self.config.compression.level;
        (level != 0)
            .then(|| zstd::bulk::Compressor::new(level).expect("zstd accepts the configured level"))
    }

    /// Opens, decompresses and verifies a blob envelope read from its pack.
    pub fn decode_blob(&self, id: &BlobId, loc: &Location, envelope: &[u8]) -> Result<Vec<u8>> {
        let kind = if loc.kind() == BlobKind::Tree {
            Kind::Tree
        } else {
            Kind::Blob
        };
        let payload = self.crypto.open(Domain::Blob, envelope, kind, id)?;
        let plain = if loc.flags() & FLAG_ZSTD != 0 {
            // Bounded by the indexed length: a damaged or hostile blob cannot expand further.
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
            }
            let mut out = Vec::with_capacity(loc.raw_len as usize);
            DECOMPRESSOR
                .with_borrow_mut(|d| {
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    d.as_mut()
                        .expect("just set")
                        .decompress_to_buffer(&payload, &mut out)
                })
                .map_err(|e| Error::corrupt(kind, id, format!("zstd: {e}")))?;
            out
        } else {
            payload
        };
        if plain.len() != loc.raw_len as usize {
            return Err(Error::corrupt(
                kind,
                id,
                format!("length {} instead of {}", plain.len(), loc.raw_len),
            ));
        }
        if self.crypto.blob_id(&plain) != *id {
            return Err(Error::corrupt(kind, id, "content does not match its id"));
        }
        Ok(plain)
    }

    /// Reads one blob by id.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_in(&self.index, id)
    }

    /// Reads one blob, located through `index` (`check` builds its own, tolerating damage).
    pub fn read_blob_in(&self, index: &Index, id: &BlobId) -> Result<Vec<u8>> {
        let (_, loc, env) = self.read_envelope_in(index, id)?;
        self.decode_blob(id, &loc, &env)
    }

    /// A blob's envelope as stored, with where it is (copying it elsewhere needs no key).
    pub fn read_envelope(&self, id: &BlobId) -> Result<(PackId, Location, Vec<u8>)> {
        self.read_envelope_in(&self.index, id)
    }

    fn read_envelope_in(&self, index: &Index, id: &BlobId) -> Result<(PackId, Location, Vec<u8>)> {
        let (pack, loc) = index.get(id).ok_or_else(|| Error::NotFound {
            kind: Kind::Blob,
            id: id.to_hex(),
        })?;
        let env = self.store.get(Kind::Pack, &pack, Some(loc.range()))?;
        if env.len() != loc.stored_len as usize {
            return Err(Error::corrupt(
                Kind::Pack,
                pack,
                format!("blob {} is cut short (pack truncated?)", id.short()),
            ));
        }
        Ok((pack, loc, env))
    }

    /// Reads and parses a tree.
    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        self.load_tree_in(&self.index, id)
    }

    /// Reads and parses a tree located through `index`; a paged tree's pages are read too and
    /// their nodes concatenated (`docs/format.md` §8.1).
    pub fn load_tree_in(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        let bytes = self.read_blob_in(index, id)?;
        let mut tree = Tree::decode(&bytes).map_err(|r| Error::corrupt(Kind::Tree, id, r))?;
        if tree.is_paged() {
            for p in &tree.pages {
                let bytes = self.read_blob_in(index, &p.tree)?;
                let page = Tree::decode(&bytes).map_err(|r| {
                    Error::corrupt(Kind::Tree, id, format!("page {}: {r}", p.tree.short()))
                })?;
                let problem = if page.is_paged() {
                    Some("is itself paged".to_string())
                } else if page.nodes.len() as u64 != p.count {
                    Some(format!(
                        "holds {} entries, the index says {}",
                        page.nodes.len(),
                        p.count
                    ))
                } else {
                    None
                };
                if let Some(r) = problem {
                    return Err(Error::corrupt(
                        Kind::Tree,
                        id,
                        format!("page {} {r}", p.tree.short()),
                    ));
                }
                tree.nodes.extend(page.nodes);
            }
            tree.validate()
                .map_err(|r| Error::corrupt(Kind::Tree, id, format!("across pages: {r}")))?;
        }
        Ok(tree)
    }

    /// The blobs that store a directory listing, each `(id, plaintext)`, the directory's own tree
    /// id last: one version-1 tree, or for more than [`PAGED_OVER`] entries its pages and then
    /// their index (`docs/format.md` §8.1).
    pub fn tree_blobs(&self, nodes: Vec<Node>) -> Vec<(BlobId, Vec<u8>)> {
        let encode = |t: &Tree| {
            let bytes = t.encode();
            (self.crypto.blob_id(&bytes), bytes)
        };
        if nodes.len() <= PAGED_OVER {
            return vec![encode(&Tree::listing(nodes))];
        }
        let mut out = Vec::new();
        let mut refs = Vec::new();
        for page in paginate(nodes, |name| self.crypto.ends_page(name)) {
            let count = page.len() as u64;
            let (id, bytes) = encode(&Tree::listing(page));
            refs.push(PageRef { tree: id, count });
            out.push((id, bytes));
        }
        out.push(encode(&Tree::index(refs)));
        out
    }

    /// The repository's default retention policy, if one was set (the newest, `docs/format.md`
    /// §18).
    pub fn load_policy(&self) -> Result<Option<StoredPolicy>> {
        let mut best: Option<StoredPolicy> = None;
        let all: Vec<(ObjectId, StoredPolicy)> =
            lifecycle::load_all(&*self.store, &self.crypto, Kind::Policy, Domain::Policy)?;
        for (id, p) in all {
            p.check(&id)?;
            if best.as_ref().is_none_or(|b| b.time < p.time) {
                best = Some(p);
            }
        }
        Ok(best)
    }

    /// Stores `policy` as the default, then deletes the older ones.
    pub fn save_policy(&self, policy: &StoredPolicy) -> Result<ObjectId> {
        let (id, bytes) = policy.seal(&self.crypto);
        let old = self.store.list(Kind::Policy)?;
        self.store.put(Kind::Policy, &id, &bytes)?;
        for (o, _) in old {
            if o != id {
                self.store.delete(Kind::Policy, &o)?;
            }
        }
        Ok(id)
    }

    /// Stores a snapshot object; call only after everything it references is indexed.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        self.check_lease()?;
        let (id, bytes) = snap.seal(&self.crypto);
        self.store.put(Kind::Snapshot, &id, &bytes)?;
        // Stopped between the check and the put, past the lease: a prune may have deleted packs
        // it uses, so the snapshot is taken back.
        if let Err(e) = self.check_lease() {
            let _ = self.store.delete(Kind::Snapshot, &id);
            return Err(e);
        }
        Ok(id)
    }

    /// Loads one snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.load_snapshot_plain(id).map(|(s, _)| s)
    }

    /// Loads one snapshot; also returns its checked JSON plaintext.
    fn load_snapshot_plain(&self, id: &SnapshotId) -> Result<(Snapshot, Vec<u8>)> {
        let bytes = self.store.get(Kind::Snapshot, id, None)?;
        Snapshot::open_plain(&self.crypto, id, &bytes)
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

    /// The ids of every snapshot: one store listing; nothing is read or opened.
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        self.store.list_ids(Kind::Snapshot)
    }

    /// Every snapshot, oldest first, each parsed on demand. With a cache directory set, only
    /// the snapshots the cache does not hold yet are read from the store, and the cache is
    /// brought up to date; a damaged cache is rebuilt and reported in the stats, never an error.
    pub fn snapshot_list(&self) -> Result<(SnapshotList, CacheStats)> {
        let file = self
            .cache_dir
            .as_deref()
            .map(|dir| CacheFile::new(dir, &self.config.id));
        cache::sync(file.as_ref(), &self.crypto, &self.snapshot_ids()?, &|id| {
            self.load_snapshot_plain(id)
        })
    }

    /// All snapshots, oldest first (equal times by id).
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        self.snapshot_list()?.0.parse_all()
    }

    /// The snapshot `selector` picks among those `filter` lets through, if any.
    pub fn select_snapshot(
        &self,
        filter: &SnapshotFilter,
        selector: Selector,
    ) -> Result<Option<(SnapshotId, Snapshot)>> {
        self.snapshot_list()?.0.select(filter, selector)
    }

    /// Resolves `latest` (through the cache; one snapshot is parsed) or a unique id prefix
    /// (one listing, one snapshot read).
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            return self
                .select_snapshot(&SnapshotFilter::default(), Selector::Latest)?
                .ok_or_else(|| Error::Invalid("the repository has no snapshots yet".into()));
        }
        let spec = spec.to_ascii_lowercase();
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "{spec:?} is neither `latest` nor a hex snapshot id prefix"
            )));
        }
        let ids: Vec<ObjectId> = self
            .snapshot_ids()?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec))
            .collect();
        match ids.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id)?)),
            [] => Err(Error::Invalid(format!("no snapshot with id prefix {spec}"))),
            _ => Err(Error::Invalid(format!(
                "snapshot prefix {spec} is ambiguous ({} matches); give more characters",
                ids.len()
            ))),
        }
    }

    /// Reads a pack's header (trailer, then header envelope).
    pub fn read_pack_header(&self, id: &PackId, len: u64) -> Result<Vec<BlobEntry>> {
        if len < TRAILER_LEN as u64 {
            return Err(Error::corrupt(
                Kind::Pack,
                id,
                format!("{len} bytes is too short to be a pack"),
            ));
        }
        let trailer = self
            .store
            .get(Kind::Pack, id, Some(len - TRAILER_LEN as u64..len))?;
        let (off, hlen) = pack::header_location(len, &trailer, id)?;
        let sealed = self.store.get(Kind::Pack, id, Some(off..off + hlen))?;
        pack::parse_header(&self.crypto, &sealed, off, id)
    }

    /// Packs in the store that no index file references (left by an interrupted backup).
    pub fn unindexed_packs(&self) -> Result<Vec<(PackId, u64)>> {
        Ok(self
            .store
            .list(Kind::Pack)?
            .into_iter()
            .filter(|(id, _)| !self.index.has_pack(id) && !self.condemned.contains_key(id))
            .collect())
    }

    /// Indexes packs that an interrupted backup wrote but did not index, from their headers, so
    /// their blobs are reused instead of uploaded again. Damaged packs are skipped and returned.
    pub fn adopt_packs(&mut self) -> Result<(usize, Vec<(PackId, Error)>)> {
        let mut adopted = Vec::new();
        let mut damaged = Vec::new();
        for (id, len) in self.unindexed_packs()? {
            match self.read_pack_header(&id, len) {
                Ok(entries) => adopted.push((id, entries)),
                Err(e @ Error::Corrupt { .. }) => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        if !adopted.is_empty() {
            self.write_index(&adopted)?;
            for (id, entries) in &adopted {
                self.index.add_pack(*id, entries);
            }
        }
        Ok((adopted.len(), damaged))
    }

    /// Key files with their ids.
    pub fn keys(&self) -> Result<Vec<(ObjectId, KeyFile)>> {
        let mut out = Vec::new();
        for (id, _) in self.store.list(Kind::Key)? {
            let bytes = self.store.get(Kind::Key, &id, None)?;
            out.push((id, KeyFile::decode(&bytes, &id)?));
        }
        Ok(out)
    }

    /// Adds a password: a new key file wrapping the same master key.
    pub fn add_key(
        &self,
        password: &[u8],
        kdf: KdfParams,
        hostname: &str,
        username: &str,
        current_password: &[u8],
    ) -> Result<ObjectId> {
        if !self.crypto.is_encrypted() {
            return Err(Error::Invalid(
                "this repository is not encrypted; it has no keys".into(),
            ));
        }
        if password.is_empty() {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        let (_, master) = Self::unlock(&*self.store, current_password)?;
        // The new key refuses a version-1 config (`docs/format.md` §4), so the config is
        // authenticated before the key is written.
        self.upgrade_config()?;
        let kf = KeyFile::create(&master, password, kdf, hostname, username)?;
        let bytes = serde_json::to_vec_pretty(&kf).expect("key files serialize");
        let id = ObjectId::of(&bytes);
        self.store.put(Kind::Key, &id, &bytes)?;
        Ok(id)
    }

    /// Removes a key file by id prefix; refuses the key in use and the last key.
    pub fn remove_key(&self, prefix: &str) -> Result<ObjectId> {
        let keys: Vec<ObjectId> = self
            .store
            .list(Kind::Key)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let matching: Vec<&ObjectId> = keys
            .iter()
            .filter(|id| id.to_hex().starts_with(&prefix.to_ascii_lowercase()))
            .collect();
        let id = match matching.as_slice() {
            [id] => **id,
            [] => return Err(Error::Invalid(format!("no key with id prefix {prefix}"))),
            _ => return Err(Error::Invalid(format!("key prefix {prefix} is ambiguous"))),
        };
        if Some(id) == self.key_id {
            return Err(Error::Invalid(
                "refusing to remove the key this command was unlocked with; use another password"
                    .into(),
            ));
        }
        if keys.len() <= 1 {
            return Err(Error::Invalid("refusing to remove the last key".into()));
        }
        self.store.delete(Kind::Key, &id)?;
        Ok(id)
    }

    /// Reads every tree reachable from `roots` with `threads` reads in flight, for a walk that
    /// needs them all (restore's plan on an object store, where one read at a time pays a round
    /// trip per directory). Trees that fail to load are left out, so that the walk's own
    /// `load_tree` reports them where it meets them. Holds every tree in memory.
    pub fn prefetch_trees(&self, roots: &[BlobId], threads: usize) -> HashMap<BlobId, Tree> {
        let out = std::sync::Mutex::new(HashMap::new());
        let _ = self.parallel_walk(roots, threads, false, &|id, tree| {
            out.lock().expect("out lock").insert(id, tree);
            Ok(())
        });
        out.into_inner().expect("out lock")
    }

    /// Every tree reachable from `roots`, each visited once: calls `each(tree_id, tree)`, in no
    /// particular order. On an object store the trees are read 16 at a time (`each` still runs
    /// one call at a time), so only the trees in flight are in memory.
    pub fn walk_trees(
        &self,
        roots: &[BlobId],
        each: &mut (dyn FnMut(&BlobId, &Tree) -> Result<()> + Send),
    ) -> Result<()> {
        if self.store.is_remote() {
            let each = std::sync::Mutex::new(each);
            return self.parallel_walk(roots, REMOTE_TREE_READS, true, &|id, tree| {
                (each.lock().expect("walk lock"))(&id, &tree)
            });
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<BlobId> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let tree = self.load_tree(&id)?;
            each(&id, &tree)?;
            stack.extend(tree.nodes.iter().filter_map(|n| n.subtree));
        }
        Ok(())
    }

    /// Reads the trees reachable from `roots` on `threads` threads, each once, and hands each to
    /// `visit`. With `strict`, the first failure (a read or `visit`) stops the walk and is
    /// returned; without, trees that fail to load are skipped.
    fn parallel_walk(
        &self,
        roots: &[BlobId],
        threads: usize,
        strict: bool,
        visit: &(dyn Fn(BlobId, Tree) -> Result<()> + Sync),
    ) -> Result<()> {
        struct Work {
            todo: Vec<BlobId>,
            in_flight: usize,
            failed: Option<Error>,
        }
        let work = std::sync::Mutex::new(Work {
            todo: Vec::new(),
            in_flight: 0,
            failed: None,
        });
        let wake = std::sync::Condvar::new();
        let seen: std::sync::Mutex<HashSet<BlobId>> = std::sync::Mutex::new(HashSet::new());
        {
            let mut seen = seen.lock().expect("seen lock");
            let mut w = work.lock().expect("work lock");
            w.todo = roots.iter().copied().filter(|r| seen.insert(*r)).collect();
        }
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let id = {
                        let mut w = work.lock().expect("work lock");
                        loop {
                            if w.failed.is_some() {
                                wake.notify_all();
                                return;
                            }
                            if let Some(id) = w.todo.pop() {
                                w.in_flight += 1;
                                break id;
                            }
                            if w.in_flight == 0 {
                                wake.notify_all();
                                return;
                            }
                            w = wake.wait(w).expect("work lock");
                        }
                    };
                    let result = self.load_tree(&id).and_then(|tree| {
                        let subs: Vec<BlobId> =
                            tree.nodes.iter().filter_map(|n| n.subtree).collect();
                        visit(id, tree).map(|()| subs)
                    });
                    let mut w = work.lock().expect("work lock");
                    match result {
                        Ok(subs) => {
                            let mut seen = seen.lock().expect("seen lock");
                            w.todo.extend(subs.into_iter().filter(|s| seen.insert(*s)));
                        }
                        Err(e) if strict => {
                            if w.failed.is_none() {
                                w.failed = Some(e);
                            }
                        }
                        Err(_) => {}
                    }
                    w.in_flight -= 1;
                    wake.notify_all();
                });
            }
        });
        match work.into_inner().expect("work lock").failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
