//! Seal time against tree size: how long sealing one changed file takes in a tree of N files
//! (issue 3: ≤ 10 ms at 100k files). Files sit 100 to a directory, directories 3 levels deep;
//! `flatN` puts all N files in one directory (a paged tree, `docs/format.md` §8.1).
//!
//! `cargo run --release -p tidemark-cluster --example seal_time -- [N…=1000 10000 100000 flat100000]`
//! prints, per N: the first (full) seal and the median / p90 of 30 seals after one changed file.
//! The repository is in memory (the seal's own cost); with `SEAL_STORE=local` it is a local
//! directory next to the state, so every seal also pays its fsyncs (pack, index, snapshot, catalog).

use std::sync::Arc;
use std::time::Instant;

use tidemark_cluster::{Engine, EngineOptions, EngineParts, SmOptions};
use tidemark_core::batch::{Batch, Edit};
use tidemark_core::repo::{InitOptions, Repository};
use tidemark_core::snapshot::{Node, NodeType, NodeTypeField};
use tidemark_testkit::MemStore;

fn file(size: u64, mtime: i64) -> Node {
    Node {
        node_type: NodeTypeField(NodeType::File),
        mode: 0o644,
        size,
        mtime_ns: mtime,
        ..Node::default()
    }
}

fn path(flat: bool, i: usize) -> Vec<u8> {
    if flat {
        return format!("flat/file-{i}").into_bytes();
    }
    format!(
        "d{}/e{}/f{}/file-{i}",
        i / 100_000 % 10,
        i / 10_000 % 10,
        i / 100 % 100
    )
    .into_bytes()
}

fn main() {
    let mut sizes: Vec<String> = std::env::args().skip(1).collect();
    if sizes.is_empty() {
        sizes = ["1000", "10000", "100000", "flat100000"]
            .map(String::from)
            .to_vec();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "layout,files,first_seal_ms,one_change_seal_p50_ms,one_change_seal_p90_ms,catalog_entries"
    );
    for arg in sizes {
        let flat = arg.starts_with("flat");
        let n: usize = arg.trim_start_matches("flat").parse().expect("N or flatN");
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn tidemark_core::store::Store> =
            if std::env::var("SEAL_STORE").as_deref() == Ok("local") {
                Arc::new(tidemark_store::LocalStore::new(tmp.path().join("repo")))
            } else {
                Arc::new(MemStore::new())
            };
        let repo = Repository::init(store, &InitOptions::default()).unwrap();
        repo.load_index().unwrap();
        let sm = SmOptions {
            watched: "/srv/share".into(),
            ..SmOptions::default()
        };
        rt.block_on(async {
            let parts = EngineParts::standalone(tmp.path()).unwrap();
            let (engine, _) = Engine::open(parts, repo, EngineOptions::new(sm))
                .await
                .unwrap();
            engine
                .initialize(Engine::standalone_members())
                .await
                .unwrap();
            engine
                .ready(std::time::Duration::from_secs(30))
                .await
                .unwrap();
            for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
                let edits = chunk
                    .iter()
                    .map(|&i| Edit::Put {
                        path: path(flat, i),
                        node: file(i as u64, 1),
                    })
                    .collect();
                engine
                    .write(Batch {
                        edits,
                        ..Batch::default()
                    })
                    .await
                    .unwrap();
            }
            let t = Instant::now();
            engine.seal().await.unwrap();
            let first = t.elapsed().as_secs_f64() * 1e3;
            let mut times = Vec::new();
            for k in 0..30 {
                let edits = vec![Edit::Put {
                    path: path(flat, (k * 7919) % n),
                    node: file(1, 1000 + k as i64),
                }];
                engine
                    .write(Batch {
                        edits,
                        ..Batch::default()
                    })
                    .await
                    .unwrap();
                engine.seal().await.unwrap();
                times.push(engine.state_machine().stats().last_seal_ms);
            }
            times.sort_by(f64::total_cmp);
            let entries = engine.status().unwrap().catalog.entries;
            let layout = if flat { "flat" } else { "nested" };
            println!(
                "{layout},{n},{first:.1},{:.2},{:.2},{entries}",
                times[15], times[27]
            );
            engine.shutdown().await.unwrap();
        });
    }
}
