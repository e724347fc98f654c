//! Trees: reading (paged trees included), encoding a listing into its blobs, and walks over
//! every tree a set of roots reaches (parallel on an object store).

use std::collections::{HashMap, HashSet};

use super::index::Index;
use super::Repository;
use crate::error::{Error, Result};
use crate::id::{BlobId, Kind};
use crate::snapshot::{paginate, Node, PageRef, Tree, PAGED_OVER};

/// Tree reads in flight when a walk over an object store reads ahead.
pub const REMOTE_TREE_READS: usize = 16;

impl Repository {
    /// Reads and parses a tree.
    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        Self::load_tree_with(id, &|b| self.read_blob(b))
    }

    /// Reads and parses a tree located through `index`; a paged tree's pages are read too and
    /// their nodes concatenated (`docs/format.md` §8.1).
    pub fn load_tree_in(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        Self::load_tree_with(id, &|b| self.read_blob_in(index, b))
    }

    /// Reads and parses a tree, each blob read by `read`.
    fn load_tree_with(id: &BlobId, read: &dyn Fn(&BlobId) -> Result<Vec<u8>>) -> Result<Tree> {
        let bytes = read(id)?;
        let mut tree = Tree::decode(&bytes).map_err(|r| Error::corrupt(Kind::Tree, id, r))?;
        if tree.is_paged() {
            for p in &tree.pages {
                let bytes = read(&p.tree)?;
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
