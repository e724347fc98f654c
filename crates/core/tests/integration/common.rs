//! A repository built blob by blob in a [`MemStore`], unencrypted and uncompressed, so that every
//! pack's bytes, and so what prune and repair decide about it, are known exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidemark_core::id::{BlobId, Kind, ObjectId, PackId, SnapshotId};
use tidemark_core::pack::{BlobKind, PackBuilder};
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::snapshot::{Node, NodeType, NodeTypeField, Snapshot, Summary, Tree};
use tidemark_core::store::Store;
use tidemark_testkit::MemStore;

/// A new repository with a 64 KiB target pack size (packs under 16 KiB count as small), and the
/// store it lives in.
pub fn init() -> (Arc<MemStore>, Repository) {
    let mem = Arc::new(MemStore::new());
    let opts = InitOptions {
        password: None,
        compression_level: 0,
        pack_size: 64 << 10,
        ..InitOptions::default()
    };
    let repo = Repository::init(mem.clone(), &opts).unwrap();
    (mem, repo)
}

/// The repository in `mem`, opened afresh (no session, index not loaded).
pub fn open(mem: &Arc<MemStore>) -> Repository {
    Repository::open(mem.clone(), &mut || unreachable!("unencrypted")).unwrap()
}

/// Stores one pack holding `blobs` (stored as they are: no encryption, no compression) and an
/// index file listing it.
pub fn pack(repo: &Repository, blobs: &[(BlobKind, &[u8])]) -> PackId {
    let mut builder = PackBuilder::new();
    for (kind, plain) in blobs {
        let (flags, envelope) = repo.encode_blob(None, plain);
        assert_eq!(envelope.len(), plain.len(), "stored as it is");
        let raw_len = u32::try_from(plain.len()).unwrap();
        builder.add(
            repo.crypto().blob_id(plain),
            *kind,
            flags,
            raw_len,
            &envelope,
        );
    }
    let (id, bytes, entries) = builder.finish(repo.crypto());
    repo.store().put(Kind::Pack, &id, &bytes).unwrap();
    repo.write_index(&[(id, entries)]).unwrap();
    id
}

/// A root tree with one file per entry of `files` (its chunks): `(tree id, tree blob)`.
pub fn tree(repo: &Repository, files: &[&[BlobId]]) -> (BlobId, Vec<u8>) {
    let nodes = files
        .iter()
        .enumerate()
        .map(|(i, content)| Node {
            name: Some(format!("f{i}")),
            node_type: NodeTypeField(NodeType::File),
            mode: 0o644,
            content: content.to_vec(),
            ..Node::default()
        })
        .collect();
    let bytes = Tree::listing(nodes).encode();
    (repo.crypto().blob_id(&bytes), bytes)
}

/// Stores a snapshot of the tree `root`.
pub fn snapshot(repo: &Repository, root: BlobId) -> SnapshotId {
    repo.save_snapshot(&Snapshot {
        version: 1,
        time: "2026-12-01T00:00:00Z".into(),
        hostname: "h".into(),
        username: "u".into(),
        uid: 0,
        gid: 0,
        paths: vec!["/src".into()],
        tags: Vec::new(),
        parent: None,
        tree: root,
        program_version: "test".into(),
        summary: Summary::default(),
        revision: None,
        log: None,
        membership: None,
    })
    .unwrap()
}

/// Every object in `store`, by kind and id: equal before and after means nothing changed.
pub fn everything(store: &dyn Store) -> BTreeMap<(Kind, ObjectId), Vec<u8>> {
    let mut out = BTreeMap::new();
    for kind in Kind::STORED {
        for (id, _) in store.list(kind).unwrap() {
            out.insert((kind, id), store.get(kind, &id, None).unwrap());
        }
    }
    out
}

/// Ids of a kind's objects, sorted.
pub fn ids(store: &dyn Store, kind: Kind) -> Vec<ObjectId> {
    let mut out: Vec<ObjectId> = store
        .list(kind)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    out.sort();
    out
}

/// Three packs of one snapshot `f0 = a`, `f1 = b`: `keep` holds the tree and `a` (all used),
/// `unused` holds `x` (no snapshot uses it), `sparse` holds `b` and `y` (half unused).
pub struct Known {
    /// The store.
    pub mem: Arc<MemStore>,
    /// Tree and `a`.
    pub keep: PackId,
    /// `x`.
    pub unused: PackId,
    /// `b` and `y`.
    pub sparse: PackId,
    /// Bytes of the tree blob.
    pub tree_len: u64,
    /// The blobs by name.
    pub blobs: BTreeMap<&'static str, (BlobId, Vec<u8>)>,
}

/// Bytes of each data blob of [`known`].
pub const BLOB: u64 = 20_000;

/// The repository of [`Known`].
pub fn known() -> Known {
    let (mem, repo) = init();
    let blobs: BTreeMap<&'static str, (BlobId, Vec<u8>)> = [("a", 1), ("x", 2), ("b", 3), ("y", 4)]
        .into_iter()
        .map(|(name, seed)| {
            let data = tidemark_testkit::seeded_bytes(BLOB as usize, seed);
            (name, (repo.crypto().blob_id(&data), data))
        })
        .collect();
    let blob = |n: &str| blobs[n].1.as_slice();
    let (root, tree_bytes) = tree(&repo, &[&[blobs["a"].0], &[blobs["b"].0]]);
    let keep = pack(
        &repo,
        &[(BlobKind::Tree, &tree_bytes), (BlobKind::Data, blob("a"))],
    );
    let unused = pack(&repo, &[(BlobKind::Data, blob("x"))]);
    let sparse = pack(
        &repo,
        &[(BlobKind::Data, blob("b")), (BlobKind::Data, blob("y"))],
    );
    snapshot(&repo, root);
    Known {
        mem,
        keep,
        unused,
        sparse,
        tree_len: tree_bytes.len() as u64,
        blobs,
    }
}
