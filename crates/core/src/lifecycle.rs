//! Leases and deletion records (`docs/format.md` §19): how `prune` deletes while others write.
//!
//! ```text
//! writer:  Session::start ─▶ load deletions + index ─▶ … write … ─▶ snapshot ─▶ Session::end
//!             (renewed every 5 min by a thread; stores nothing once 10 min pass without renewal)
//! prune:   sessions ─▶ deletions, index ─▶ snapshots (mark) ─▶ sweep old records ─▶ condemn
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{ObjectId, PackId};
use crate::store::{Kind, Store};

/// How often a writer renews its session.
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
/// A writer whose last renewal is older than this stores nothing more.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// A session not renewed for this long is dead to `prune` (twice the lease: clock skew).
pub const DEAD_AFTER: Duration = Duration::from_secs(30 * 60);

/// `STALE_AFTER`, or the seconds in `TIDEMARK_STALE_AFTER` (a test knob: tests pause writers
/// past a lease of seconds instead of minutes). [`renew_every`] and [`dead_after`] keep their
/// ratios to it (1/2 and 3).
pub fn stale_after() -> Duration {
    std::env::var("TIDEMARK_STALE_AFTER")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(STALE_AFTER, Duration::from_secs_f64)
}

/// How often a writer renews: [`RENEW_EVERY`], or half of the `TIDEMARK_STALE_AFTER` test knob.
pub fn renew_every() -> Duration {
    RENEW_EVERY.min(stale_after() / 2)
}

/// When a session is dead to `prune`: [`DEAD_AFTER`], or three times the test knob.
pub fn dead_after() -> Duration {
    DEAD_AFTER.min(stale_after() * 3)
}

fn now_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Encrypts the JSON of `v` in `domain`; returns the storage id and bytes.
pub(crate) fn seal_json<T: Serialize>(
    crypto: &Crypto,
    domain: Domain,
    v: &T,
) -> (ObjectId, Vec<u8>) {
    let bytes = crypto.seal(domain, &serde_json::to_vec(v).expect("records serialize"));
    (ObjectId::of(&bytes), bytes)
}

/// Checks stored bytes against their id, decrypts them and parses the JSON.
pub(crate) fn open_json<T: DeserializeOwned>(
    crypto: &Crypto,
    domain: Domain,
    kind: Kind,
    id: &ObjectId,
    bytes: &[u8],
) -> Result<T> {
    if ObjectId::of(bytes) != *id {
        return Err(Error::corrupt(
            kind,
            id,
            "content does not match its name (BLAKE3 mismatch)",
        ));
    }
    let plain = crypto.open(domain, bytes, kind, id)?;
    serde_json::from_slice(&plain)
        .map_err(|e| Error::corrupt(kind, id, format!("not a {kind}: {e}")))
}

/// Lists and opens every object of `kind`; objects deleted between list and get are skipped.
pub(crate) fn load_all<T: DeserializeOwned>(
    store: &dyn Store,
    crypto: &Crypto,
    kind: Kind,
    domain: Domain,
) -> Result<Vec<(ObjectId, T)>> {
    let mut out = Vec::new();
    for (id, _) in store.list(kind)? {
        let bytes = match store.get(kind, &id, None) {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        out.push((id, open_json(crypto, domain, kind, &id, &bytes)?));
    }
    Ok(out)
}

/// What a session object says (`docs/format.md` §19).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Format version (1).
    pub version: u32,
    /// Random per writer; renewals keep it.
    pub writer: String,
    /// `backup`, `watch`, `prune`, `copy` …
    pub command: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the writer started (RFC 3339).
    pub started: String,
    /// The last renewal.
    pub refreshed: String,
    /// From when on the writer knows every deletion record made before.
    pub view: String,
}

impl SessionInfo {
    /// `refreshed` as a time (the epoch if it does not parse: such a session looks dead).
    pub fn refreshed_at(&self) -> DateTime<Utc> {
        parse_time(&self.refreshed)
    }

    /// `view` as a time (the epoch if it does not parse: it then blocks every sweep).
    pub fn view_at(&self) -> DateTime<Utc> {
        parse_time(&self.view)
    }

    /// Whether `prune` must still reckon with this writer at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(self.refreshed_at())
            .to_std()
            .map_or(true, |age| age <= dead_after())
    }
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc))
}

/// Every session object in the repository, newest renewal per writer first in no order.
pub fn sessions(store: &dyn Store, crypto: &Crypto) -> Result<Vec<(ObjectId, SessionInfo)>> {
    load_all(store, crypto, Kind::Session, Domain::Session)
}

struct Shared {
    store: Arc<dyn Store>,
    crypto: Crypto,
    /// The current object and what it says.
    current: Mutex<(ObjectId, SessionInfo)>,
    /// When the last renewal (or the start) was stored.
    last_ok: Mutex<Instant>,
    stop: (Mutex<bool>, Condvar),
}

impl Shared {
    fn renew(&self) -> Result<()> {
        let mut cur = self.current.lock().expect("session lock");
        let mut info = cur.1.clone();
        info.refreshed = now_text(Utc::now());
        let (id, bytes) = seal_json(&self.crypto, Domain::Session, &info);
        self.store.put(Kind::Session, &id, &bytes)?;
        *self.last_ok.lock().expect("session lock") = Instant::now();
        let old = std::mem::replace(&mut *cur, (id, info)).0;
        if old != id {
            self.store.delete(Kind::Session, &old)?;
        }
        Ok(())
    }
}

/// A writer's lease, renewed by a background thread until [`Session::end`] (or drop).
pub struct Session {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    /// Stores a new session (its `view` is now, so call this before reading deletion records
    /// and the index) and starts renewing it.
    pub fn start(
        store: Arc<dyn Store>,
        crypto: &Crypto,
        command: &str,
        host: &str,
    ) -> Result<Self> {
        Self::start_every(store, crypto, command, host, renew_every())
    }

    /// Like [`Session::start`] with another renewal period (tests).
    pub fn start_every(
        store: Arc<dyn Store>,
        crypto: &Crypto,
        command: &str,
        host: &str,
        every: Duration,
    ) -> Result<Self> {
        let mut writer = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut writer);
        let now = now_text(Utc::now());
        let info = SessionInfo {
            version: 1,
            writer: hex::encode(writer),
            command: command.to_owned(),
            host: host.to_owned(),
            pid: std::process::id(),
            started: now.clone(),
            refreshed: now.clone(),
            view: now,
        };
        let (id, bytes) = seal_json(crypto, Domain::Session, &info);
        store.put(Kind::Session, &id, &bytes)?;
        let shared = Arc::new(Shared {
            store,
            crypto: crypto.clone(),
            current: Mutex::new((id, info)),
            last_ok: Mutex::new(Instant::now()),
            stop: (Mutex::new(false), Condvar::new()),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tidemark-session".into())
            .spawn(move || loop {
                let (lock, cv) = &s.stop;
                let stopped = lock.lock().expect("session lock");
                let (stopped, _) = cv
                    .wait_timeout_while(stopped, every, |stop| !*stop)
                    .expect("session lock");
                if *stopped {
                    return;
                }
                drop(stopped);
                // A failed renewal is retried next period; `check` fails once it is too old.
                let _ = s.renew();
            })
            .map_err(|e| Error::Invalid(format!("starting the session thread: {e}")))?;
        Ok(Session {
            shared,
            thread: Some(thread),
        })
    }

    /// What the session says now.
    pub fn info(&self) -> SessionInfo {
        self.shared.current.lock().expect("session lock").1.clone()
    }

    /// Fails when the lease may have expired: nothing may be stored any more.
    pub fn check(&self) -> Result<()> {
        let age = self.shared.last_ok.lock().expect("session lock").elapsed();
        if age > stale_after() {
            return Err(Error::Invalid(format!(
                "this writer's session was last renewed {}s ago (limit {}s): a prune may have \
                 deleted data it reuses, so it stops; run it again",
                age.as_secs(),
                stale_after().as_secs()
            )));
        }
        Ok(())
    }

    /// Renews now.
    pub fn renew(&self) -> Result<()> {
        self.shared.renew()
    }

    /// Declares that from `view` on this writer knows every deletion record made before (it
    /// has stopped reusing, and copied what it needs out of, the packs they condemn); renews.
    pub fn set_view(&self, view: DateTime<Utc>) -> Result<()> {
        self.shared.current.lock().expect("session lock").1.view = now_text(view);
        self.shared.renew()
    }

    fn stop_thread(&mut self) {
        let (lock, cv) = &self.shared.stop;
        *lock.lock().expect("session lock") = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops renewing and deletes the session object.
    pub fn end(mut self) -> Result<()> {
        self.stop_thread();
        let id = self.shared.current.lock().expect("session lock").0;
        self.shared.store.delete(Kind::Session, &id)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_thread();
            let id = self.shared.current.lock().expect("session lock").0;
            let _ = self.shared.store.delete(Kind::Session, &id);
        }
    }
}

/// A deletion record: packs condemned by `prune` at `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRecord {
    /// Format version (1).
    pub version: u32,
    /// When the packs were condemned (RFC 3339).
    pub time: String,
    /// The condemned packs.
    pub packs: Vec<PackId>,
}

impl DeletionRecord {
    /// A record of `packs` condemned now.
    pub fn now(packs: Vec<PackId>) -> Self {
        DeletionRecord {
            version: 1,
            time: now_text(Utc::now()),
            packs,
        }
    }

    /// `time` as a time (now if it does not parse, so it is swept as late as possible).
    pub fn time_at(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&self.time)
            .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc))
    }

    /// Stores the record.
    pub fn store(&self, store: &dyn Store, crypto: &Crypto) -> Result<ObjectId> {
        let (id, bytes) = seal_json(crypto, Domain::Deletion, self);
        store.put(Kind::Deletion, &id, &bytes)?;
        Ok(id)
    }
}

/// Every deletion record.
pub fn deletions(store: &dyn Store, crypto: &Crypto) -> Result<Vec<(ObjectId, DeletionRecord)>> {
    let out: Vec<(ObjectId, DeletionRecord)> =
        load_all(store, crypto, Kind::Deletion, Domain::Deletion)?;
    for (id, r) in &out {
        if r.version != 1 {
            return Err(Error::corrupt(
                Kind::Deletion,
                id,
                format!("unknown deletion record version {}", r.version),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem(Mutex<std::collections::BTreeMap<(u8, ObjectId), Vec<u8>>>);

    impl Store for Mem {
        fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
            self.0
                .lock()
                .unwrap()
                .insert((kind as u8, *id), bytes.to_vec());
            Ok(())
        }
        fn get(
            &self,
            kind: Kind,
            id: &ObjectId,
            _: Option<std::ops::Range<u64>>,
        ) -> Result<Vec<u8>> {
            self.0
                .lock()
                .unwrap()
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
                .unwrap()
                .iter()
                .filter(|((k, _), _)| *k == kind as u8)
                .map(|((_, id), v)| (*id, v.len() as u64))
                .collect())
        }
        fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
            self.0.lock().unwrap().remove(&(kind as u8, *id));
            Ok(())
        }
        fn location(&self) -> String {
            "mem".into()
        }
    }

    #[test]
    fn sessions_renew_replace_and_end() {
        let store: Arc<dyn Store> = Arc::new(Mem::default());
        let crypto = Crypto::plain([7; 32]);
        let s = Session::start_every(
            Arc::clone(&store),
            &crypto,
            "backup",
            "h",
            Duration::from_millis(20),
        )
        .unwrap();
        let first = s.info();
        std::thread::sleep(Duration::from_millis(120));
        let listed = sessions(&*store, &crypto).unwrap();
        assert_eq!(listed.len(), 1, "a renewal replaces the previous object");
        assert_eq!(listed[0].1.writer, first.writer);
        assert!(listed[0].1.refreshed > first.refreshed);
        assert!(listed[0].1.is_live(Utc::now()));
        s.check().unwrap();
        s.end().unwrap();
        assert!(sessions(&*store, &crypto).unwrap().is_empty());

        let old = SessionInfo {
            refreshed: "2020-01-01T00:00:00Z".into(),
            ..first
        };
        assert!(!old.is_live(Utc::now()));
    }

    #[test]
    fn deletion_records_round_trip() {
        let store = Mem::default();
        let crypto = Crypto::plain([7; 32]);
        let r = DeletionRecord::now(vec![ObjectId([1; 32])]);
        let id = r.store(&store, &crypto).unwrap();
        let all = deletions(&store, &crypto).unwrap();
        assert_eq!(all, vec![(id, r)]);
    }
}
