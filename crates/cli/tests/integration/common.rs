//! Shared helpers: running the binary, building trees with every entry kind, comparing trees.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tidemark"))
}

/// A repository in a temp dir with a cheap KDF, and helpers to run commands on it.
pub struct Repo {
    pub dir: tempfile::TempDir,
    /// A directory, or an `s3:` location.
    pub path: PathBuf,
    /// Environment every command gets (S3 credentials).
    pub env: Vec<(&'static str, &'static str)>,
}

impl Repo {
    pub fn init() -> Self {
        Self::init_with(&[], &[])
    }

    /// Like [`Repo::init`] with more `init` flags and environment variables.
    pub fn init_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let r = Repo {
            dir,
            path,
            env: Vec::new(),
        };
        r.init_here(args, env);
        r
    }

    /// A repository under `prefix` of a bucket of a running S3 server, with more `init` flags.
    pub fn init_s3(server: &tidemark_testkit::S3Server, prefix: &str, args: &[&str]) -> Self {
        let r = Repo {
            dir: tempfile::tempdir().unwrap(),
            path: PathBuf::from(server.repo("tidemark", prefix)),
            env: server.env().to_vec(),
        };
        r.init_here(args, &[]);
        r
    }

    /// Runs `init` for `self.path` (a [`Repo`] built by hand, somewhere else).
    pub fn init_here(&self, args: &[&str], env: &[(&str, &str)]) {
        let r = self;
        let out = r
            .cmd()
            .envs(env.iter().copied())
            .args(["init", "--kdf-memory-kib", "1024", "--kdf-time", "1"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TIDEMARK_PASSWORD", "test password")
            .envs(self.env.iter().copied())
            .arg("--repo")
            .arg(&self.path);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tidemark {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Builds a tree with every entry kind the issue names.
pub fn every_kind_tree(root: &Path) {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("dir/small.txt"), b"hello tidemark\n").unwrap();
    std::fs::write(root.join("empty-file"), b"").unwrap();
    std::fs::write(
        root.join("dir/sub/big.bin"),
        tidemark_testkit::seeded_bytes(5 << 20, 1),
    )
    .unwrap();
    // Same content twice: dedup.
    std::fs::write(
        root.join("dir/sub/deeper/copy.bin"),
        tidemark_testkit::seeded_bytes(5 << 20, 1),
    )
    .unwrap();
    std::fs::write(root.join("name with spaces & ü"), b"unicode").unwrap();
    let weird = OsString::from(std::ffi::OsStr::from_bytes_compat(b"bad-utf8-\xff"));
    std::fs::write(root.join(weird), b"non-utf8 name").unwrap();
    symlink("dir/small.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    std::fs::hard_link(root.join("dir/small.txt"), root.join("hardlink-to-small")).unwrap();
    // Sparse: 32 MiB with a few bytes in the middle.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("sparse.img"))
        .unwrap();
    f.set_len(32 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data in the middle", 16 << 20).unwrap();
    drop(f);
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("dir/small.txt"),
        std::fs::Permissions::from_mode(0o4751),
    )
    .unwrap();
    std::fs::write(root.join("private"), b"secret").unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = xattr::set(root.join("dir/small.txt"), "user.comment", b"kept");
    if is_root() {
        nix::sys::stat::mknod(
            &root.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::os::unix::fs::lchown(root.join("private"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(1234), Some(5678)).unwrap();
    }
    // Nanosecond times.
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 123_456_789);
    let a = filetime::FileTime::from_unix_time(1_600_000_000, 987_654_321);
    filetime::set_file_times(root.join("dir/sub/big.bin"), a, t).unwrap();
    filetime::set_symlink_file_times(root.join("link-rel"), a, t).unwrap();
    filetime::set_file_times(root.join("empty-dir"), a, t).unwrap();
}

/// `OsStr` from raw bytes without the std extension trait at every call site.
pub trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Everything a restore must reproduce about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    atime: Option<(i64, i64)>,
    content: Option<[u8; 32]>,
    target: Option<PathBuf>,
    rdev: u64,
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// Index of the first path with the same inode (hardlink groups).
    link_group: Option<PathBuf>,
    sparse: bool,
}

/// Walks `root` and describes every entry by its path relative to `root`. All metadata is
/// taken before any content is read, so reading (which may update atime) cannot skew it.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut metas = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            metas.push((p, m));
        }
    }
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for (p, m) in metas {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let content = ft
            .is_file()
            .then(|| *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes());
        let link_group = (ft.is_file() && m.nlink() > 1).then(|| {
            inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let mut xattrs: Vec<_> = if ft.is_symlink() {
            vec![]
        } else {
            xattr::list(&p)
                .map(|l| {
                    l.map(|n| (n.clone(), xattr::get(&p, &n).unwrap().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default()
        };
        xattrs.sort();
        out.insert(
            rel,
            Entry {
                kind: kind.into(),
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.size() } else { 0 },
                mtime: (m.mtime(), m.mtime_nsec()),
                atime: (ft.is_file() || ft.is_symlink()).then(|| (m.atime(), m.atime_nsec())),
                content,
                target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                xattrs,
                link_group,
                sparse: ft.is_file() && m.blocks() * 512 < m.size(),
            },
        );
    }
    out
}

/// Asserts two trees are equal entry by entry, naming the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = describe(expected);
    let b = describe(actual);
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "the restored tree has different paths");
    for (k, ea) in &a {
        assert_eq!(Some(ea), b.get(k), "entry {} differs", k.display());
    }
}

/// The restored copy of an absolute source path under a target directory.
pub fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

/// The first difference between two trees, ignoring atimes (a live source's atimes move when
/// the test itself reads it), or `None` when they are equal.
pub fn tree_difference_except_atime(expected: &Path, actual: &Path) -> Option<String> {
    let strip = |m: BTreeMap<PathBuf, Entry>| -> BTreeMap<PathBuf, Entry> {
        m.into_iter()
            .map(|(k, mut e)| {
                e.atime = None;
                (k, e)
            })
            .collect()
    };
    let a = strip(describe(expected));
    let b = strip(describe(actual));
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    if ka != kb {
        return Some(format!(
            "paths differ:\n  expected {ka:?}\n  actual   {kb:?}"
        ));
    }
    a.iter().find(|(k, e)| b.get(*k) != Some(e)).map(|(k, e)| {
        format!(
            "{} differs:\n  expected {e:?}\n  actual   {:?}",
            k.display(),
            b.get(k)
        )
    })
}
