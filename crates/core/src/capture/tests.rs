//! Capture against in-memory twins: a [`MemFs`] for the disk and a map for the live tree and the
//! log, so a test can change the disk between (or during) two steps of the capturer.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;
use crate::id::{Kind, ObjectId};
use crate::repo::InitOptions;
use crate::source::MemFs;
use crate::store::Store;

#[derive(Default)]
struct MemStore(Mutex<BTreeMap<(u8, ObjectId), Vec<u8>>>);

impl Store for MemStore {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        self.0
            .lock()
            .expect("store lock")
            .insert((kind as u8, *id), bytes.to_vec());
        Ok(())
    }
    fn get(&self, kind: Kind, id: &ObjectId, _: Option<std::ops::Range<u64>>) -> Result<Vec<u8>> {
        self.0
            .lock()
            .expect("store lock")
            .get(&(kind as u8, *id))
            .cloned()
            .ok_or(Error::NotFound {
                kind,
                id: id.to_hex(),
            })
    }
    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        Ok(self
            .0
            .lock()
            .expect("store lock")
            .iter()
            .filter(|((k, _), _)| *k == kind as u8)
            .map(|((_, id), v)| (*id, v.len() as u64))
            .collect())
    }
    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        self.0
            .lock()
            .expect("store lock")
            .remove(&(kind as u8, *id));
        Ok(())
    }
    fn location(&self) -> String {
        "mem".into()
    }
}

/// The live tree and the log in one: batches apply as the state machine applies them (a put
/// whose chunks were never sent, or a move from a path it lacks, comes back as a rescan).
#[derive(Default)]
struct Model {
    nodes: RefCell<BTreeMap<Vec<u8>, Node>>,
    blobs: RefCell<HashSet<BlobId>>,
    batches: RefCell<usize>,
}

fn below(root: &[u8], path: &[u8]) -> bool {
    path == root
        || root.is_empty()
        || (path.starts_with(root) && path.get(root.len()) == Some(&b'/'))
}

impl Model {
    fn take_subtree(&self, root: &[u8]) -> Vec<(Vec<u8>, Node)> {
        let mut nodes = self.nodes.borrow_mut();
        let keys: Vec<Vec<u8>> = nodes.keys().filter(|k| below(root, k)).cloned().collect();
        keys.into_iter()
            .map(|k| {
                let n = nodes.remove(&k).expect("listed");
                (k, n)
            })
            .collect()
    }
}

impl LiveTree for Model {
    fn node(&self, path: &[u8]) -> Result<Option<Node>> {
        Ok(self.nodes.borrow().get(path).cloned())
    }
    fn children(&self, path: &[u8]) -> Result<Vec<Node>> {
        let nodes = self.nodes.borrow();
        let mut out = Vec::new();
        for (k, n) in nodes.iter() {
            let parent = match k.iter().rposition(|b| *b == b'/') {
                Some(i) => &k[..i],
                None if k.is_empty() => continue,
                None => &[][..],
            };
            if parent == path {
                let name = &k[k.len() - (k.len() - parent.len()).min(k.len())..];
                let name = name.strip_prefix(b"/").unwrap_or(name);
                let mut n = n.clone();
                n.set_name(OsStr::from_bytes(name));
                out.push(n);
            }
        }
        out.sort_by_key(Node::name_bytes);
        Ok(out)
    }
}

impl Sink for &Model {
    fn write(&mut self, batch: Batch) -> Result<Vec<Vec<u8>>> {
        *self.batches.borrow_mut() += 1;
        self.blobs
            .borrow_mut()
            .extend(batch.blobs.iter().map(|b| b.id));
        let mut rescan = Vec::new();
        for edit in batch.edits {
            match edit {
                Edit::Put { path, node } => {
                    if !node.content.iter().all(|c| self.blobs.borrow().contains(c)) {
                        rescan.push(path);
                        continue;
                    }
                    let keep_children = node.kind() == NodeType::Dir
                        && self
                            .nodes
                            .borrow()
                            .get(&path)
                            .is_some_and(|o| o.kind() == NodeType::Dir);
                    if !keep_children {
                        self.take_subtree(&path);
                    }
                    self.nodes.borrow_mut().insert(path, node);
                }
                Edit::Delete { path } => {
                    self.take_subtree(&path);
                }
                Edit::Move { from, to } => {
                    if !self.nodes.borrow().contains_key(&from) {
                        rescan.push(to);
                        continue;
                    }
                    let moving = self.take_subtree(&from);
                    self.take_subtree(&to);
                    let mut nodes = self.nodes.borrow_mut();
                    for (k, n) in moving {
                        nodes.insert([&to[..], &k[from.len()..]].concat(), n);
                    }
                }
            }
        }
        Ok(rescan)
    }
}

const ROOT: &str = "/w";

/// A capturer over a fresh repository and an empty `/w` in a [`MemFs`].
struct Twin {
    fs: MemFs,
    model: Model,
    cap: Capturer,
    crypto: Crypto,
    chunker: Chunker,
}

fn rel(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn abs(s: &str) -> PathBuf {
    Path::new(ROOT).join(s)
}

impl Twin {
    fn new() -> Self {
        let fs = MemFs::new();
        fs.change(|t| t.mkdir(ROOT)).expect("mkdir /w");
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let repo = Repository::init(store, &InitOptions::default()).expect("init repository");
        let (crypto, chunker) = (repo.crypto().clone(), repo.chunker().clone());
        let cap = Capturer::with_fs(
            PathBuf::from(ROOT),
            repo,
            Excludes::new(&["*.excluded".into()]).expect("patterns"),
            CaptureOptions::default(),
            Arc::new(fs.clone()),
        );
        Twin {
            fs,
            model: Model::default(),
            cap,
            crypto,
            chunker,
        }
    }

    /// Handles one change (one step of the capturer).
    fn handle(&mut self, change: &Change) {
        let model = &self.model;
        self.cap
            .handle(change, model, &mut &*model)
            .expect("handle");
    }

    /// Ends a round, then feeds back what capture asked for (as the daemon does, through the
    /// coalescer: here at once) until nothing is left.
    fn finish(&mut self) {
        for _ in 0..10 {
            let model = &self.model;
            self.cap.finish_round(model, &mut &*model).expect("finish");
            let (followups, deferred) = self.cap.take_followups();
            if followups.is_empty() && deferred.is_empty() {
                return;
            }
            for c in followups {
                self.handle(&c);
            }
            for p in deferred {
                self.handle(&Change::Read(p));
            }
        }
        panic!("capture kept asking for more");
    }

    /// One round: these changes, in order, then the end of the round.
    fn round(&mut self, changes: &[Change]) {
        for c in changes {
            self.handle(c);
        }
        self.finish();
    }

    fn chunk_ids(&self, data: &[u8]) -> Vec<BlobId> {
        let mut buf = self.chunker.buffer();
        let mut ids = Vec::new();
        self.chunker
            .stream(&mut &data[..], &mut buf, |c| {
                ids.push(self.crypto.blob_id(c));
                Ok(())
            })
            .expect("chunking memory");
        ids
    }

    /// The live tree equals the disk below `/w`: the same paths, and for each the node capture
    /// would record from scratch (metadata, extended attributes, symlink target, and for a file
    /// the chunk ids of its bytes). Excluded paths are left out.
    fn assert_matches_disk(&self) {
        let mut want = BTreeMap::new();
        for (p, (mut node, data)) in self.fs.snapshot(Path::new(ROOT)) {
            if p.to_string_lossy().ends_with(".excluded") {
                continue;
            }
            node.content = self.chunk_ids(&data);
            want.insert(p.to_string_lossy().into_owned(), node);
        }
        let got: BTreeMap<String, Node> = self
            .model
            .nodes
            .borrow()
            .iter()
            .map(|(k, n)| {
                let n = Node {
                    name: None,
                    name_hex: None,
                    subtree: None,
                    ..n.clone()
                };
                (String::from_utf8_lossy(k).into_owned(), n)
            })
            .collect();
        let (want_paths, got_paths): (Vec<_>, Vec<_>) =
            (want.keys().collect(), got.keys().collect());
        assert_eq!(
            got_paths, want_paths,
            "the live tree's paths differ from the disk's"
        );
        for (p, w) in &want {
            assert_eq!(
                &got[p], w,
                "the live tree's node for {p:?} differs from the disk's"
            );
        }
    }
}

fn read(s: &str) -> Change {
    Change::Read(rel(s))
}

fn rescan(s: &str) -> Change {
    Change::Rescan(rel(s))
}

fn remove(s: &str) -> Change {
    Change::Remove(rel(s))
}

fn move_(from: &str, to: &str) -> Change {
    Change::Move {
        from: rel(from),
        to: rel(to),
    }
}

/// `/w/clients/client0/~dmtmp/{PM/{T1.XLS, EVENTS.DOC}, ACCESS/INV.PRN}`, captured.
fn office() -> Twin {
    let mut t = Twin::new();
    t.fs.change(|f| {
        for d in [
            "clients",
            "clients/client0",
            "clients/client0/~dmtmp",
            "clients/client0/~dmtmp/PM",
            "clients/client0/~dmtmp/ACCESS",
        ] {
            f.mkdir(abs(d))?;
        }
        f.write(abs("clients/client0/~dmtmp/PM/T1.XLS"), b"t1 version 1")?;
        f.write(abs("clients/client0/~dmtmp/PM/EVENTS.DOC"), b"events")?;
        f.write(abs("clients/client0/~dmtmp/ACCESS/INV.PRN"), b"inventory")
    })
    .expect("build the tree");
    t.round(&[rescan("")]);
    t.assert_matches_disk();
    t
}

#[test]
fn a_first_rescan_records_the_tree_and_a_second_reads_nothing() {
    let mut t = office();
    t.fs.change(|f| {
        f.symlink(abs("clients/link"), "client0")?;
        f.write(abs("clients/skip.excluded"), b"not captured")?;
        f.set_xattr(
            abs("clients/client0/~dmtmp/PM/EVENTS.DOC"),
            "user.tag",
            b"x",
        )
    })
    .expect("change the tree");
    t.round(&[rescan("")]);
    t.assert_matches_disk();
    let read_before = t.cap.stats.files_read;
    let edits_before = t.cap.stats.edits;
    t.round(&[rescan("")]);
    t.assert_matches_disk();
    assert_eq!(
        t.cap.stats.files_read, read_before,
        "unchanged files are read again"
    );
    assert_eq!(
        t.cap.stats.edits, edits_before,
        "an unchanged tree gives edits"
    );
}

#[test]
fn writes_creates_removes_and_moves_in_order() {
    let mut t = office();
    t.fs.change(|f| {
        f.write(abs("clients/client0/~dmtmp/PM/T1.XLS"), b"t1 version 2")?;
        f.write(abs("clients/new.txt"), b"new")?;
        f.remove(abs("clients/client0/~dmtmp/ACCESS/INV.PRN"))
    })
    .expect("change the tree");
    t.round(&[
        remove("clients/client0/~dmtmp/ACCESS/INV.PRN"),
        read("clients/client0/~dmtmp/PM/T1.XLS"),
        read("clients/new.txt"),
    ]);
    t.assert_matches_disk();
    let read_before = t.cap.stats.files_read;
    t.fs.change(|f| f.rename(abs("clients/client0"), abs("moved")))
        .expect("move");
    t.round(&[move_("clients/client0", "moved")]);
    t.assert_matches_disk();
    assert_eq!(
        t.cap.stats.files_read, read_before,
        "a directory move reads its files again"
    );
}

#[test]
fn a_directory_created_with_files_is_scanned_whole() {
    let mut t = office();
    t.fs.change(|f| {
        f.mkdir(abs("fresh"))?;
        f.mkdir(abs("fresh/sub"))?;
        f.write(abs("fresh/sub/a"), b"a")
    })
    .expect("change the tree");
    t.round(&[rescan("fresh")]);
    t.assert_matches_disk();
}

/// Issue 15: changes queued under `clients/client0` (a file modified, a temp file created and
/// deleted in `PM`, so `PM`'s mtime moved, and `PM`'s own metadata) are handled after the
/// directory moved on disk; the move itself is handled only in the next round.
#[test]
fn issue_15_changes_queued_under_a_directory_that_moved() {
    let mut t = office();
    let pm = "clients/client0/~dmtmp/PM";
    t.fs.change(|f| {
        f.write(abs(&format!("{pm}/T1.XLS")), b"t1 version 2")?;
        f.write(abs(&format!("{pm}/~tmp1.TMP")), b"scratch")?;
        f.set_xattr(abs(pm), "user.x", b"1")
    })
    .expect("change the tree");
    // Step 1 sees the disk before the move.
    t.handle(&read(pm));
    // Between two steps: the temp file goes, then the client's directory moves.
    t.fs.change(|f| {
        f.remove(abs(&format!("{pm}/~tmp1.TMP")))?;
        f.rename(abs("clients/client0"), abs("client0-moved"))
    })
    .expect("move");
    t.handle(&read(&format!("{pm}/T1.XLS")));
    t.handle(&read(&format!("{pm}/~tmp1.TMP")));
    t.finish();
    // The next round brings the events of the removal and of the move.
    t.round(&[
        remove(&format!("{pm}/~tmp1.TMP")),
        move_("clients/client0", "client0-moved"),
    ]);
    t.assert_matches_disk();
}

/// Issue 15, the same race in the middle of a rescan: the directory moves after its listing was
/// read and before its children are, and the move of an ancestor arrives later.
#[test]
fn issue_15_a_directory_moves_while_it_is_rescanned() {
    let mut t = office();
    let pm = "clients/client0/~dmtmp/PM";
    t.fs.change(|f| f.write(abs(&format!("{pm}/EVENTS.DOC")), b"events, longer"))
        .expect("write");
    t.fs.trap(abs(&format!("{pm}/EVENTS.DOC")), |f| {
        f.rename(abs("clients"), abs("elsewhere")).expect("move");
    });
    t.round(&[rescan("clients")]);
    t.round(&[move_("clients", "elsewhere")]);
    t.assert_matches_disk();
}

/// A path that vanished with no event to explain it (its removal was never reported) is
/// deleted once the grace has passed, so nothing is left behind for ever.
#[test]
fn a_vanished_path_no_event_explains_is_deleted_after_the_grace() {
    let mut t = office();
    t.cap.opts.vanish_grace = std::time::Duration::ZERO;
    let inv = "clients/client0/~dmtmp/ACCESS/INV.PRN";
    t.fs.change(|f| f.remove(abs(inv))).expect("remove");
    t.round(&[read(inv)]);
    assert!(
        t.model.nodes.borrow().contains_key(inv.as_bytes()),
        "deleted at once"
    );
    assert_eq!(t.cap.unresolved(), 1);
    t.round(&[]);
    t.round(&[]);
    assert_eq!(t.cap.unresolved(), 0);
    t.assert_matches_disk();
}
