//! A real S3 server for tests: `s3s-fs` (it keeps objects as files in a temporary directory),
//! started on a free port of 127.0.0.1 and killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "tidemark-test";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "tidemark-test-secret";

/// A running `s3s-fs`.
pub struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
}

impl S3Server {
    /// Starts `s3s-fs` (from `PATH` or `~/.cargo/bin`). Without it, returns `None` after printing
    /// that the test is skipped, unless `TIDEMARK_REQUIRE_S3` is set (the test script sets it,
    /// having installed the server): then a missing server fails the test.
    pub fn start() -> Option<S3Server> {
        let Some(bin) = find_binary() else {
            assert!(
                std::env::var_os("TIDEMARK_REQUIRE_S3").is_none(),
                "TIDEMARK_REQUIRE_S3 is set but s3s-fs is not installed \
                 (cargo install s3s-fs --version 0.14.1 --features binary)"
            );
            eprintln!("skipped: s3s-fs is not installed (scripts/test.sh installs it)");
            return None;
        };
        let root = tempfile::tempdir().expect("temp dir for s3s-fs");
        // A free port: bind, read it, release it. Another process could take it in between; the
        // readiness wait below then fails clearly rather than talking to a stranger for long.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let server = S3Server { child, root, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (a directory under the server's root) and returns the repository location
    /// `s3:http://127.0.0.1:PORT/BUCKET/PREFIX`.
    pub fn repo(&self, bucket: &str, prefix: &str) -> String {
        std::fs::create_dir_all(self.root.path().join(bucket)).expect("bucket directory");
        format!("s3:{}/{bucket}/{prefix}", self.endpoint())
    }

    /// The environment a `tidemark` process needs to reach the server.
    pub fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}
