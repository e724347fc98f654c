//! [`S3Store`]: a repository under a prefix of an S3-compatible bucket, through `object_store`.
//!
//! Object keys are the local layout's paths under the prefix (`docs/format.md` §1 and §20). The
//! `Store` trait is synchronous; the store owns a small tokio runtime and each call waits for its
//! request there, so it can be called from plain threads and from inside other runtimes alike.
//! Retries with exponential backoff are object_store's (10 tries within 3 minutes); objects larger
//! than [`MULTIPART_OVER`] go up in parts, several in flight.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as KeyPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::store::{Store, CONFIG_ID};
use tidemark_core::{Error, Result};

/// Objects above this size are uploaded in parts.
pub const MULTIPART_OVER: usize = 16 << 20;
/// The size of one part of a multipart upload (S3 wants at least 5 MiB except for the last).
const PART_SIZE: usize = 8 << 20;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Where an `s3:` repository lives, parsed from `s3:[http[s]://]HOST[:PORT]/BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parses a repository location that starts with `s3:`; `None` when it does not.
    pub fn parse(location: &str) -> Option<Result<S3Location>> {
        let rest = location.strip_prefix("s3:")?;
        let bad = |why: &str| {
            Error::Invalid(format!(
                "bad S3 repository {location:?}: {why} (expected s3:[http[s]://]HOST[:PORT]/BUCKET[/PREFIX])"
            ))
        };
        let (scheme, rest) = if let Some(r) = rest.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = rest.strip_prefix("http://") {
            ("http", r)
        } else {
            ("https", rest)
        };
        let mut parts = rest.trim_matches('/').splitn(3, '/');
        let host = parts.next().unwrap_or_default();
        let bucket = parts.next().unwrap_or_default();
        let prefix = parts.next().unwrap_or_default().trim_matches('/');
        Some(if host.is_empty() {
            Err(bad("no host"))
        } else if bucket.is_empty() {
            Err(bad("no bucket"))
        } else if prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
            && !prefix.is_empty()
        {
            Err(bad("empty, `.` or `..` segment in the prefix"))
        } else {
            Ok(S3Location {
                endpoint: format!("{scheme}://{host}"),
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        })
    }
}

/// A repository in an S3-compatible bucket.
pub struct S3Store {
    s3: Arc<AmazonS3>,
    location: S3Location,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Connects to the bucket of `location` with credentials from the usual AWS environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`, defaulting to `us-east-1`). Requests are path-style
    /// (`ENDPOINT/BUCKET/KEY`), which every S3-compatible server accepts.
    pub fn open(location: S3Location) -> Result<Self> {
        Self::connect(location, None)
    }

    /// As [`S3Store::open`], with the access key and secret given rather than from the
    /// environment (tests, which cannot safely change the environment of a threaded process).
    pub fn open_with_keys(location: S3Location, access_key: &str, secret: &str) -> Result<Self> {
        Self::connect(location, Some((access_key, secret)))
    }

    fn connect(location: S3Location, keys: Option<(&str, &str)>) -> Result<Self> {
        let mut builder = AmazonS3Builder::from_env()
            .with_endpoint(&location.endpoint)
            .with_bucket_name(&location.bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 10,
                retry_timeout: Duration::from_secs(180),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(location.endpoint.starts_with("http://"))
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            );
        if let Some((key, secret)) = keys {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let s3 = builder.build().map_err(|e| Error::NoRepository {
            location: display(&location),
            reason: format!("cannot set up the S3 client: {e}"),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tidemark-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client runtime", "", e))?;
        Ok(S3Store {
            s3: Arc::new(s3),
            location,
            runtime,
        })
    }

    /// Runs a request on the store's runtime and waits for it. Works from any thread, including a
    /// worker of another runtime (the request itself never runs on the caller's runtime).
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the S3 runtime dropped a request")
    }

    fn dir(&self, kind: Kind) -> KeyPath {
        let mut p = self.location.prefix.clone();
        let d = kind.dir_name();
        if !d.is_empty() {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(d);
        }
        KeyPath::from(p)
    }

    fn key(&self, kind: Kind, id: &ObjectId) -> KeyPath {
        let mut p = self.location.prefix.clone();
        if !p.is_empty() {
            p.push('/');
        }
        match kind {
            Kind::Config => p.push_str("config"),
            Kind::Pack | Kind::Blob | Kind::Tree => {
                let hex = id.to_hex();
                p.push_str("data/");
                p.push_str(&hex[..2]);
                p.push('/');
                p.push_str(&hex);
            }
            _ => {
                p.push_str(kind.dir_name());
                p.push('/');
                p.push_str(&id.to_hex());
            }
        }
        KeyPath::from(p)
    }

    /// `s3:ENDPOINT/BUCKET/KEY`, for messages.
    fn url(&self, key: &KeyPath) -> String {
        format!(
            "s3:{}/{}/{key}",
            self.location.endpoint, self.location.bucket
        )
    }

    fn error(&self, op: &'static str, kind: Kind, id: &ObjectId, e: object_store::Error) -> Error {
        let name = if kind == Kind::Config {
            "config".to_string()
        } else {
            id.to_hex()
        };
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound { kind, id: name },
            e => Error::io(
                op,
                self.url(&self.key(kind, id)),
                std::io::Error::other(chain(&e)),
            ),
        }
    }

    fn put_mode(&self, kind: Kind, id: &ObjectId, bytes: &[u8], mode: PutMode) -> Result<bool> {
        let key = self.key(kind, id);
        let s3 = self.s3.clone();
        let data = bytes::Bytes::copy_from_slice(bytes);
        let multipart = bytes.len() > MULTIPART_OVER && mode == PutMode::Overwrite;
        let res = self.run(async move {
            if !multipart {
                let opts = PutOptions {
                    mode,
                    ..Default::default()
                };
                return s3
                    .put_opts(&key, PutPayload::from(data), opts)
                    .await
                    .map(|_| ());
            }
            let upload = s3.put_multipart(&key).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut off = 0;
            while off < data.len() {
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = w.abort().await; // leave no half-uploaded parts behind
                    return Err(e);
                }
                let end = (off + PART_SIZE).min(data.len());
                w.put(data.slice(off..end));
                off = end;
            }
            // On error, finish aborts the upload itself.
            w.finish().await.map(|_| ())
        });
        match res {
            Ok(()) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(self.error("writing", kind, id, e)),
        }
    }
}

/// An error with its causes, `a: b: c`: object_store's own message often leaves out the cause
/// that says what to fix (a refused connection, a bad certificate).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cause = c.source();
    }
    s
}

fn display(l: &S3Location) -> String {
    if l.prefix.is_empty() {
        format!("s3:{}/{}", l.endpoint, l.bucket)
    } else {
        format!("s3:{}/{}/{}", l.endpoint, l.bucket, l.prefix)
    }
}

impl Store for S3Store {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        // Same id, same bytes: overwriting an existing object is harmless, and cheaper than
        // asking first. A put is durable when S3 answers it.
        self.put_mode(kind, id, bytes, PutMode::Overwrite)
            .map(|_| ())
    }

    fn put_new(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        self.put_mode(kind, id, bytes, PutMode::Create)
    }

    fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        let key = self.key(kind, id);
        let s3 = self.s3.clone();
        let res = self.run(async move {
            match range {
                None => s3.get(&key).await?.bytes().await,
                Some(r) if r.start >= r.end => {
                    // Still report a missing object as missing.
                    s3.head(&key).await.map(|_| bytes::Bytes::new())
                }
                Some(r) => match s3.get_range(&key, r.clone()).await {
                    // A range reaching past the end comes back cut at the end, as a file read.
                    Ok(b) => Ok(b),
                    Err(e @ object_store::Error::NotFound { .. }) => Err(e),
                    // Starting at or past the end is refused (416); that reads nothing.
                    Err(e) => match s3.head(&key).await {
                        Ok(meta) if r.start >= meta.size => Ok(bytes::Bytes::new()),
                        _ => Err(e),
                    },
                },
            }
        });
        res.map(|b| b.to_vec())
            .map_err(|e| self.error("reading", kind, id, e))
    }

    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        if kind == Kind::Config {
            let key = self.key(Kind::Config, &CONFIG_ID);
            let s3 = self.s3.clone();
            return match self.run(async move { s3.head(&key).await }) {
                Ok(meta) => Ok(vec![(CONFIG_ID, meta.size)]),
                Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(self.error("listing", kind, &CONFIG_ID, e)),
            };
        }
        let dir = self.dir(kind);
        let s3 = self.s3.clone();
        let res = self.run(async move {
            let mut out = Vec::new();
            let mut stream = s3.list(Some(&dir));
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                // Names that are not object ids (stray files) are not objects of the kind.
                if let Some(name) = meta.location.filename() {
                    if let Some(id) = ObjectId::from_hex(name) {
                        out.push((id, meta.size));
                    }
                }
            }
            Ok::<_, object_store::Error>(out)
        });
        res.map_err(|e| {
            Error::io(
                "listing",
                self.url(&self.dir(kind)),
                std::io::Error::other(chain(&e)),
            )
        })
    }

    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        let key = self.key(kind, id);
        let s3 = self.s3.clone();
        match self.run(async move { s3.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("deleting", kind, id, e)),
        }
    }

    fn location(&self) -> String {
        display(&self.location)
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = S3Location::parse("s3:http://127.0.0.1:9000/bkt/a/b/")
            .unwrap()
            .unwrap();
        assert_eq!(
            l,
            S3Location {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        let l = S3Location::parse("s3:s3.example.com/bkt").unwrap().unwrap();
        assert_eq!(l.endpoint, "https://s3.example.com");
        assert_eq!(l.prefix, "");
        assert!(S3Location::parse("/srv/repo").is_none());
        for bad in [
            "s3:",
            "s3:http://host",
            "s3:host/",
            "s3:host/b/x//y",
            "s3:host/b/../y",
        ] {
            let e = S3Location::parse(bad).unwrap().unwrap_err().to_string();
            assert!(e.contains("bad S3 repository"), "{bad}: {e}");
        }
    }

    #[test]
    fn s3_store_conformance() {
        let Some(server) = tidemark_testkit::S3Server::start() else {
            return;
        };
        let repo = server.repo("conformance", "a/repo");
        let location = S3Location::parse(&repo).unwrap().unwrap();
        let store = S3Store::open_with_keys(
            location,
            tidemark_testkit::s3::ACCESS_KEY,
            tidemark_testkit::s3::SECRET_KEY,
        )
        .unwrap();
        assert_eq!(store.location(), repo.trim_end_matches('/'));
        tidemark_testkit::store_suite(&store);
    }

    #[test]
    fn s3_errors_name_the_object() {
        let Some(server) = tidemark_testkit::S3Server::start() else {
            return;
        };
        // Wrong keys: the error says what was being done, on which object, and why.
        let location = S3Location::parse(&server.repo("auth", ""))
            .unwrap()
            .unwrap();
        let store = S3Store::open_with_keys(location, "nobody", "wrong").unwrap();
        let e = store
            .get(Kind::Index, &ObjectId([1; 32]), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reading") && e.contains("/auth/index/0101"),
            "{e}"
        );
    }
}
