//! Shared set-up: a small encrypted repository in memory and helpers to build batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tidemark_cluster::{Engine, EngineParts};
use tidemark_core::wal::Recovery;

use tidemark_core::batch::{Batch, Edit, NewBlob};
use tidemark_core::check::{check, CheckOptions};
use tidemark_core::crypto::KdfParams;
use tidemark_core::id::BlobId;
use tidemark_core::id::SnapshotId;
use tidemark_core::pack::BlobKind;
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::snapshot::{Node, NodeType, NodeTypeField};
use tidemark_testkit::MemStore;

/// A repository with a cheap key derivation (tests unlock it many times).
pub fn repo() -> Repository {
    init_repo(Arc::new(MemStore::new()), InitOptions::default().pack_size)
}

/// A repository in `store` with a cheap key derivation and packs of `pack_size`, index loaded.
pub fn init_repo(store: Arc<dyn tidemark_core::store::Store>, pack_size: u32) -> Repository {
    let opts = InitOptions {
        password: Some(b"pw".to_vec().into()),
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        pack_size,
        ..InitOptions::default()
    };
    let r = Repository::init(store, &opts).unwrap();
    r.load_index().unwrap();
    r
}

/// A file node holding `data` as one chunk, and the sealed chunk.
pub fn file(repo: &Repository, data: &[u8]) -> (Node, NewBlob) {
    let id: BlobId = repo.crypto().blob_id(data);
    let (flags, envelope) = repo.encode_blob(repo.compressor().as_mut(), data);
    let node = Node {
        node_type: NodeTypeField(NodeType::File),
        mode: 0o644,
        size: data.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        content: if data.is_empty() {
            Vec::new()
        } else {
            vec![id]
        },
        ..Node::default()
    };
    let blob = NewBlob {
        id,
        kind: BlobKind::Data,
        flags,
        raw_len: data.len() as u32,
        envelope,
    };
    (node, blob)
}

/// A batch putting `files` (path, content).
pub fn put_files(repo: &Repository, files: &[(&str, &[u8])]) -> Batch {
    let mut b = Batch {
        captured_ns: 1,
        ..Batch::default()
    };
    for (path, data) in files {
        let (node, blob) = file(repo, data);
        if !data.is_empty() {
            b.blobs.push(blob);
        }
        b.edits.push(Edit::Put {
            path: path.as_bytes().to_vec(),
            node,
        });
    }
    b
}

/// A directory node.
pub fn dir() -> Node {
    Node {
        node_type: NodeTypeField(NodeType::Dir),
        mode: 0o755,
        ..Node::default()
    }
}

/// Every entry of snapshot `id` below the watched directory `/srv/share`, as `(path, node)`.
pub fn snapshot_nodes(repo: &Repository, id: &SnapshotId) -> Vec<(String, Node)> {
    let snap = repo.load_snapshot(id).unwrap();
    assert_eq!(snap.paths, ["/srv/share"]);
    let mut tree = repo.load_tree(&snap.tree).unwrap();
    for name in ["srv", "share"] {
        let n = tree.find(name.as_bytes()).expect("ancestor").clone();
        tree = repo.load_tree(&n.subtree.unwrap()).unwrap();
    }
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), tree)];
    while let Some((prefix, t)) = stack.pop() {
        for n in t.nodes {
            let name = String::from_utf8(n.name_bytes().unwrap()).unwrap();
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if let Some(sub) = n.subtree {
                stack.push((path.clone(), repo.load_tree(&sub).unwrap()));
            }
            out.push((path, n));
        }
    }
    out
}

/// Every file of snapshot `id` below the watched directory, with its content.
pub fn snapshot_files(repo: &Repository, id: &SnapshotId) -> BTreeMap<String, Vec<u8>> {
    snapshot_nodes(repo, id)
        .into_iter()
        .filter(|(_, n)| n.subtree.is_none())
        .map(|(path, n)| {
            let mut content = Vec::new();
            for c in &n.content {
                content.extend(
                    repo.read_blob(c)
                        .unwrap_or_else(|e| panic!("{path}: chunk {} unreadable: {e}", c.short())),
                );
            }
            (path, content)
        })
        .collect()
}

/// Asserts that snapshot `id` holds exactly `want`, byte for byte, and that the repository passes
/// `check --read-data`.
pub fn assert_complete(
    repo: &Repository,
    id: &SnapshotId,
    want: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let got = snapshot_files(repo, id);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: files"
    );
    for (p, d) in want {
        assert!(got[p] == *d, "{what}: content of {p}");
    }
    let report = check(
        repo,
        CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        },
    )
    .unwrap();
    assert!(
        report.errors.is_empty(),
        "{what}: check: {:?}",
        report.errors
    );
}

/// Engine options for a watched `/srv/share` on host `nas`.
pub fn options() -> tidemark_cluster::EngineOptions {
    let sm = tidemark_cluster::SmOptions {
        watched: "/srv/share".into(),
        hostname: "nas".into(),
        ..tidemark_cluster::SmOptions::default()
    };
    tidemark_cluster::EngineOptions::new(sm)
}

/// A standalone engine with its state in `state`, as the daemon opens one: a group of one,
/// initialised when new, leading and with its log replayed.
pub async fn open_engine(repo: Repository, state: &std::path::Path) -> (Engine, Recovery) {
    let parts = EngineParts::standalone(state).unwrap();
    let (engine, recovery) = Engine::open(parts, repo, options()).await.unwrap();
    if !engine.is_initialized().await.unwrap() {
        engine
            .initialize(Engine::standalone_members())
            .await
            .unwrap();
    }
    engine.ready(Duration::from_secs(30)).await.unwrap();
    (engine, recovery)
}

/// A runtime like the daemon's.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
