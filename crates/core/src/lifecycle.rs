//! Leases and deletion records (`docs/format.md` §19): how `prune` deletes while others write.
//!
//! ```text
//! writer:  Session::start ─▶ load deletions + index ─▶ Session::set_seen ─▶ … write …
//!             ─▶ snapshot ─▶ Session::end
//!             (renewed every 5 min by a thread; once 10 min pass without a renewal, by a clock
//!              that counts suspend, it renews and stores nothing more)
//! prune:   sessions ─▶ deletions ─▶ liveness (sightings) ─▶ index ─▶ snapshots (mark)
//!             ─▶ sweep records every live writer has seen, by id ─▶ condemn
//! ```
//! No safety decision compares a writer's wall clock with anything: a writer measures its own
//! lease with [`LeaseClock::since_boot`], and prune judges sessions by what they list as seen and
//! by how long prune itself has seen them unchanged ([`Liveness`]).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Domain};
use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId, PackId};
use crate::store::Store;

/// How often a writer renews its session.
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
/// A writer whose last renewal is older than this stores nothing more.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// A session not renewed for this long is dead to `prune` (twice the lease: clock skew).
pub const DEAD_AFTER: Duration = Duration::from_secs(30 * 60);

/// The lease every writer takes and every judge of writers assumes (`docs/format.md` §19): a
/// writer stores nothing once its last renewal is older than [`Lease::stale_after`]; it renews
/// every [`Lease::renew_every`]; prune finds it dead after [`Lease::dead_after`].
///
/// The default is [`STALE_AFTER`]. A shorter one is for tests that pause writers past a lease
/// of seconds instead of minutes; the renewal period and the dead time keep their ratios to it
/// (1/2 and 3). A [`Repository`](crate::repo::Repository) carries
/// one ([`Repository::set_lease`](crate::repo::Repository::set_lease)): its sessions, its lease
/// checks and its prunes read it. Nothing records it in the repository, so every process that
/// writes to or prunes one repository must use the same lease: a prune with a shorter one than a
/// writer's would judge that writer dead while it may still store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    stale_after: Duration,
}

impl Lease {
    /// The lease of [`STALE_AFTER`], renewed every [`RENEW_EVERY`], dead after [`DEAD_AFTER`].
    pub const DEFAULT: Lease = Lease {
        stale_after: STALE_AFTER,
    };

    /// A lease of `stale_after`: more than zero and at most [`STALE_AFTER`] (a longer lease
    /// would outlive [`DEAD_AFTER`], and prune would delete under a writer that still stores).
    pub fn new(stale_after: Duration) -> Result<Self> {
        if stale_after.is_zero() {
            return Err(Error::Invalid("a lease must be longer than zero".into()));
        }
        if stale_after > STALE_AFTER {
            return Err(Error::Invalid(format!(
                "a lease of {}s is longer than the default {}s: a lease can only be shortened \
                 (prune finds a writer dead after at most {}s)",
                stale_after.as_secs_f64(),
                STALE_AFTER.as_secs(),
                DEAD_AFTER.as_secs()
            )));
        }
        Ok(Lease { stale_after })
    }

    /// A writer whose last renewal is older than this stores nothing more.
    pub fn stale_after(self) -> Duration {
        self.stale_after
    }

    /// How often a writer renews: [`RENEW_EVERY`], or half the lease if that is shorter.
    pub fn renew_every(self) -> Duration {
        RENEW_EVERY.min(self.stale_after / 2)
    }

    /// When a session is dead to prune: [`DEAD_AFTER`], or three times the lease if that is
    /// shorter.
    pub fn dead_after(self) -> Duration {
        DEAD_AFTER.min(self.stale_after * 3)
    }
}

impl Default for Lease {
    fn default() -> Self {
        Lease::DEFAULT
    }
}

/// The clocks a lease needs ([`Clock`] under the name leases used first).
pub use crate::clock::Clock as LeaseClock;
pub use crate::clock::{Clock, ManualClock, SystemClock};

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
    /// From when on the writer knows every deletion record made before, by its own clock.
    /// Written for older prunes; this version decides by `seen`.
    pub view: String,
    /// The deletion records (object ids, hex) whose packs this writer no longer reuses and no
    /// longer needs (it copied out what it still uses). Prune deletes a condemned pack only once
    /// every live writer lists its record here. Absent in sessions of older versions: they then
    /// block every sweep while they live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
}

impl SessionInfo {
    /// `refreshed` as a time (the epoch if it does not parse: such a session looks dead).
    pub fn refreshed_at(&self) -> DateTime<Utc> {
        parse_time(&self.refreshed)
    }

    /// Whether this writer has seen deletion record `record`.
    pub fn has_seen(&self, record: &ObjectId) -> bool {
        let hex = record.to_hex();
        self.seen.contains(&hex)
    }
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc))
}

/// Every session object in the repository (several per writer after a crash during renewal).
pub fn sessions(store: &dyn Store, crypto: &Crypto) -> Result<Vec<(ObjectId, SessionInfo)>> {
    load_all(store, crypto, Kind::Session, Domain::Session)
}

struct Shared {
    store: Arc<dyn Store>,
    crypto: Crypto,
    clock: Arc<dyn LeaseClock>,
    /// How long a renewal holds, by `clock.since_boot()`.
    lease: Lease,
    /// The current object and what it says. Held only to read or replace them, never across a
    /// put: a slow store must not block [`Session::check`] (every write checks the lease).
    current: Mutex<(ObjectId, SessionInfo)>,
    /// Held for a whole renewal (or a change of what the session says, then its renewal), so
    /// that renewals do not overtake one another.
    renewing: Mutex<()>,
    /// By `clock.since_boot()`: when the put of the last successful renewal (or the start) began.
    last_ok: Mutex<Duration>,
    /// Set once the lease lapsed: the session is never renewed again.
    lapsed: Mutex<Option<Duration>>,
    stop: (Mutex<bool>, Condvar),
}

impl Shared {
    fn renew(&self) -> Result<()> {
        let _one = self.renewing.lock().expect("session lock");
        self.renew_locked()
    }

    /// Renews; the caller holds `renewing`.
    fn renew_locked(&self) -> Result<()> {
        // A writer stopped past its lease may have been judged dead and had packs deleted under
        // it: it must not revive its session, so the gap is measured before storing, and again
        // after (the put itself may have hung until after a prune listed the sessions).
        let began = self.clock.since_boot();
        let (old, mut info) = self.current.lock().expect("session lock").clone();
        self.fresh(&info.command, began)?;
        info.refreshed = now_text(self.clock.wall());
        let (id, bytes) = seal_json(&self.crypto, Domain::Session, &info);
        self.store.put(Kind::Session, &id, &bytes)?;
        if let Err(e) = self.fresh(&info.command, self.clock.since_boot()) {
            // Not a renewal after all: nothing may count on it.
            let _ = self.store.delete(Kind::Session, &id);
            return Err(e);
        }
        *self.last_ok.lock().expect("session lock") = began;
        *self.current.lock().expect("session lock") = (id, info);
        if old != id {
            self.store.delete(Kind::Session, &old)?;
        }
        Ok(())
    }

    /// Fails, for good, when the last renewal is older than the lease at `at`.
    fn fresh(&self, command: &str, at: Duration) -> Result<()> {
        let mut lapsed = self.lapsed.lock().expect("session lock");
        let gap = at.saturating_sub(*self.last_ok.lock().expect("session lock"));
        let limit = self.lease.stale_after();
        if lapsed.is_none() && gap > limit {
            *lapsed = Some(gap);
        }
        match *lapsed {
            None => Ok(()),
            Some(gap) => Err(lapsed_error(command, gap, limit)),
        }
    }
}

fn lapsed_error(command: &str, gap: Duration, limit: Duration) -> Error {
    Error::Invalid(format!(
        "this {command} was paused too long (its session was last renewed {}s before it \
         noticed, limit {}s); prune may have run: start again",
        gap.as_secs(),
        limit.as_secs()
    ))
}

/// A writer's lease, renewed by a background thread until [`Session::end`] (or drop).
pub struct Session {
    shared: Arc<Shared>,
    /// The renewing thread, until the session ends.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    /// Stores a new session under the default [`Lease`] (its `view` is now, so call this before
    /// reading deletion records and the index) and starts renewing it.
    /// [`Repository::begin_session`](crate::repo::Repository::begin_session) starts one under
    /// the repository's lease and clock.
    pub fn start(
        store: Arc<dyn Store>,
        crypto: &Crypto,
        command: &str,
        host: &str,
    ) -> Result<Self> {
        Self::start_every(store, crypto, command, host, Lease::DEFAULT.renew_every())
    }

    /// Like [`Session::start`] with another renewal period (tests).
    pub fn start_every(
        store: Arc<dyn Store>,
        crypto: &Crypto,
        command: &str,
        host: &str,
        every: Duration,
    ) -> Result<Self> {
        Self::start_with(
            store,
            crypto,
            command,
            host,
            Lease::DEFAULT,
            every,
            Arc::new(SystemClock),
        )
    }

    /// Like [`Session::start_every`] with another lease and clock (the repository's; tests: a
    /// skewed or paused writer). The renewing thread waits `every` between renewals.
    pub fn start_with(
        store: Arc<dyn Store>,
        crypto: &Crypto,
        command: &str,
        host: &str,
        lease: Lease,
        every: Duration,
        clock: Arc<dyn LeaseClock>,
    ) -> Result<Self> {
        let mut writer = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut writer);
        let began = clock.since_boot();
        let now = now_text(clock.wall());
        let info = SessionInfo {
            version: 1,
            writer: hex::encode(writer),
            command: command.to_owned(),
            host: host.to_owned(),
            pid: std::process::id(),
            started: now.clone(),
            refreshed: now.clone(),
            view: now,
            seen: Vec::new(),
        };
        let (id, bytes) = seal_json(crypto, Domain::Session, &info);
        store.put(Kind::Session, &id, &bytes)?;
        let shared = Arc::new(Shared {
            store,
            crypto: crypto.clone(),
            clock,
            lease,
            current: Mutex::new((id, info)),
            renewing: Mutex::new(()),
            last_ok: Mutex::new(began),
            lapsed: Mutex::new(None),
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
                // A failed renewal is retried next period; `check` fails once it is too old, and
                // so does every renewal once the lease lapsed (a stopped process woke up).
                let _ = s.renew();
            })
            .map_err(|e| Error::Invalid(format!("starting the session thread: {e}")))?;
        Ok(Session {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The id of the session's current object.
    pub fn id(&self) -> ObjectId {
        self.shared.current.lock().expect("session lock").0
    }

    /// What the session says now.
    pub fn info(&self) -> SessionInfo {
        self.shared.current.lock().expect("session lock").1.clone()
    }

    /// Fails when the lease may have expired: nothing may be stored any more. Once it failed it
    /// always fails (the writer was stopped or asleep past its lease: prune may have judged it
    /// dead and deleted packs it reuses).
    pub fn check(&self) -> Result<()> {
        let at = self.shared.clock.since_boot();
        let command = self
            .shared
            .current
            .lock()
            .expect("session lock")
            .1
            .command
            .clone();
        self.shared.fresh(&command, at)
    }

    /// Renews now.
    pub fn renew(&self) -> Result<()> {
        self.shared.renew()
    }

    /// Declares that this writer has seen deletion records `records` (it no longer reuses their
    /// packs, and has copied out of them what it still needs), read from `view` on by its clock;
    /// renews, so that prune learns it.
    pub fn set_seen(&self, records: &[ObjectId], view: DateTime<Utc>) -> Result<()> {
        let _one = self.shared.renewing.lock().expect("session lock");
        {
            let mut cur = self.shared.current.lock().expect("session lock");
            let mut seen: Vec<String> = records.iter().map(ObjectId::to_hex).collect();
            seen.sort();
            seen.dedup();
            cur.1.seen = seen;
            cur.1.view = now_text(view);
        }
        self.shared.renew_locked()
    }

    /// Stops the renewing thread; `true` if it was running (the session had not ended).
    fn stop_thread(&self) -> bool {
        let Some(t) = self.thread.lock().expect("session lock").take() else {
            return false;
        };
        let (lock, cv) = &self.shared.stop;
        *lock.lock().expect("session lock") = true;
        cv.notify_all();
        let _ = t.join();
        true
    }

    /// Stops renewing and deletes the session object. Ending it again does nothing.
    pub fn end(&self) -> Result<()> {
        if !self.stop_thread() {
            return Ok(());
        }
        let id = self.shared.current.lock().expect("session lock").0;
        self.shared.store.delete(Kind::Session, &id)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.stop_thread() {
            let id = self.shared.current.lock().expect("session lock").0;
            let _ = self.shared.store.delete(Kind::Session, &id);
        }
    }
}

/// A deletion record: packs condemned by `prune` at `time`, and session objects it sighted then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRecord {
    /// Format version (1).
    pub version: u32,
    /// When the packs were condemned, or the sessions sighted (RFC 3339, by prune's clock).
    pub time: String,
    /// The condemned packs.
    pub packs: Vec<PackId>,
    /// Session objects prune listed before `time` that no earlier record names. One still in
    /// the repository, unchanged, [`Lease::dead_after`] after `time` (by the clock of a later prune)
    /// belongs to a writer that has stored nothing for that long: it is dead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<ObjectId>,
}

impl DeletionRecord {
    /// A record of `packs` condemned now.
    pub fn now(packs: Vec<PackId>) -> Self {
        Self::at(Utc::now(), packs, Vec::new())
    }

    /// A record made at `time` (prune's clock).
    pub fn at(time: DateTime<Utc>, packs: Vec<PackId>, sessions: Vec<ObjectId>) -> Self {
        DeletionRecord {
            version: 1,
            time: now_text(time),
            packs,
            sessions,
        }
    }

    /// `time` as a time (now if it does not parse, so it is swept as late as possible).
    pub fn time_at(&self) -> DateTime<Utc> {
        self.time_or(Utc::now())
    }

    /// `time` as a time, or `now` if it does not parse.
    pub fn time_or(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&self.time).map_or(now, |t| t.with_timezone(&Utc))
    }

    /// Stores the record.
    pub fn store(&self, store: &dyn Store, crypto: &Crypto) -> Result<ObjectId> {
        let (id, bytes) = seal_json(crypto, Domain::Deletion, self);
        store.put(Kind::Deletion, &id, &bytes)?;
        Ok(id)
    }
}

/// Which writers `prune` (or `repair index`) must reckon with, judged by its own clock alone
/// (`docs/format.md` §19): a writer's object is dead once a record sighted it more than
/// [`Lease::dead_after`] ago by the judge's clock and it is still there, i.e. it was not renewed.
#[derive(Debug, Default)]
pub struct Liveness {
    /// The newest object of each live writer, by its `refreshed` (one writer's clock).
    pub live: Vec<(ObjectId, SessionInfo)>,
    /// Objects of dead writers: they may be deleted.
    pub dead: Vec<ObjectId>,
    /// Objects no record sights yet: the judge stores a record sighting them.
    pub unsighted: Vec<ObjectId>,
}

impl Liveness {
    /// Judges `sessions` by the sightings in `records`, at `now` by the judge's clock, under
    /// `lease` (the judge's repository's).
    pub fn judge(
        sessions: Vec<(ObjectId, SessionInfo)>,
        records: &[(ObjectId, DeletionRecord)],
        now: DateTime<Utc>,
        lease: Lease,
    ) -> Self {
        let mut sighted: HashMap<ObjectId, DateTime<Utc>> = HashMap::new();
        for (_, r) in records {
            let t = r.time_or(now);
            for s in &r.sessions {
                let e = sighted.entry(*s).or_insert(t);
                *e = (*e).min(t);
            }
        }
        let is_dead = |id: &ObjectId| {
            sighted.get(id).is_some_and(|t| {
                now.signed_duration_since(*t)
                    .to_std()
                    .is_ok_and(|age| age > lease.dead_after())
            })
        };
        let mut out = Liveness::default();
        let mut writers: HashMap<String, Vec<(ObjectId, SessionInfo)>> = HashMap::new();
        for (id, info) in sessions {
            if !sighted.contains_key(&id) {
                out.unsighted.push(id);
            }
            writers
                .entry(info.writer.clone())
                .or_default()
                .push((id, info));
        }
        for (_, mut objects) in writers {
            if objects.iter().all(|(id, _)| is_dead(id)) {
                out.dead.extend(objects.into_iter().map(|(id, _)| id));
            } else {
                objects.sort_by_key(|(_, s)| s.refreshed_at());
                out.live
                    .push(objects.pop().expect("a writer has an object"));
            }
        }
        out.live.sort_by_key(|a| a.0 .0);
        out.dead.sort_by_key(|id| id.0);
        out.unsighted.sort_by_key(|id| id.0);
        out
    }

    /// Stores a record sighting the unsighted objects, if there are any (not `own`'s).
    pub fn sight(
        &self,
        store: &dyn Store,
        crypto: &Crypto,
        now: DateTime<Utc>,
        own: Option<&ObjectId>,
    ) -> Result<()> {
        let sessions: Vec<ObjectId> = self
            .unsighted
            .iter()
            .filter(|id| Some(*id) != own)
            .copied()
            .collect();
        if !sessions.is_empty() {
            DeletionRecord::at(now, Vec::new(), sessions).store(store, crypto)?;
        }
        Ok(())
    }

    /// A live writer other than `own` running one of `commands` (prune and `repair index`
    /// exclude each other: each stores its session, then lists the others).
    pub fn running(&self, commands: &[&str], own: Option<&str>) -> Option<&SessionInfo> {
        self.live
            .iter()
            .map(|(_, s)| s)
            .find(|s| commands.contains(&s.command.as_str()) && Some(s.writer.as_str()) != own)
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
        s.check().unwrap();
        s.end().unwrap();
        assert!(sessions(&*store, &crypto).unwrap().is_empty());
    }

    /// A writer stopped (or asleep) past its lease: the renewal that runs when it wakes refuses,
    /// so its session is not revived, and it stores nothing more.
    #[test]
    fn a_writer_paused_past_its_lease_never_renews_again() {
        let store: Arc<dyn Store> = Arc::new(Mem::default());
        let crypto = Crypto::plain([7; 32]);
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let s = Session::start_with(
            Arc::clone(&store),
            &crypto,
            "backup",
            "h",
            Lease::DEFAULT,
            Duration::from_secs(3600),
            clock.clone(),
        )
        .unwrap();
        clock.advance(Duration::from_secs(9 * 60));
        s.renew().unwrap();
        let renewed = sessions(&*store, &crypto).unwrap();
        clock.advance(STALE_AFTER + Duration::from_secs(1));
        let e = s.renew().unwrap_err().to_string();
        assert!(e.contains("paused too long"), "{e}");
        assert!(e.contains("start again"), "{e}");
        assert_eq!(
            sessions(&*store, &crypto).unwrap(),
            renewed,
            "the session was not revived"
        );
        assert!(s.check().is_err());
        // Even once the clock seems fresh again (a lapsed lease stays lapsed).
        *s.shared.last_ok.lock().unwrap() = clock.since_boot();
        assert!(s.check().is_err() && s.renew().is_err());
    }

    /// A store whose session puts, once `slow` is set, wait until `release` is set: an S3 put
    /// that hangs.
    #[derive(Default)]
    struct SlowSessionPuts {
        mem: Mem,
        slow: std::sync::atomic::AtomicBool,
        /// (a put is waiting, released)
        gate: (Mutex<(bool, bool)>, Condvar),
    }

    impl Store for SlowSessionPuts {
        fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
            if kind == Kind::Session && self.slow.load(std::sync::atomic::Ordering::SeqCst) {
                let (lock, cv) = &self.gate;
                let mut g = lock.lock().unwrap();
                g.0 = true;
                cv.notify_all();
                while !g.1 {
                    g = cv.wait(g).unwrap();
                }
            }
            self.mem.put(kind, id, bytes)
        }
        fn get(
            &self,
            kind: Kind,
            id: &ObjectId,
            range: Option<std::ops::Range<u64>>,
        ) -> Result<Vec<u8>> {
            self.mem.get(kind, id, range)
        }
        fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
            self.mem.list(kind)
        }
        fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
            self.mem.delete(kind, id)
        }
        fn location(&self) -> String {
            "slow".into()
        }
    }

    /// Issue 10: a renewal whose put hangs does not block the lease check every write makes
    /// (it used to hold the session's lock across the put).
    #[test]
    fn issue_10_a_hanging_renewal_does_not_block_lease_checks() {
        let store = Arc::new(SlowSessionPuts::default());
        let crypto = Crypto::plain([7; 32]);
        let s = Arc::new(
            Session::start_every(
                Arc::clone(&store) as Arc<dyn Store>,
                &crypto,
                "watch",
                "h",
                Duration::from_secs(3600),
            )
            .unwrap(),
        );
        store.slow.store(true, std::sync::atomic::Ordering::SeqCst);
        let renewing = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.renew())
        };
        {
            let (lock, cv) = &store.gate;
            let mut g = lock.lock().unwrap();
            while !g.0 {
                g = cv.wait(g).unwrap();
            }
        }
        // The renewal is inside its put now; a check must answer while it hangs.
        let (tx, rx) = std::sync::mpsc::channel();
        let checker = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let ok = s.check().is_ok();
                let _ = s.info();
                tx.send(ok).unwrap();
            })
        };
        let answered = rx.recv_timeout(Duration::from_secs(5));
        {
            let (lock, cv) = &store.gate;
            lock.lock().unwrap().1 = true;
            cv.notify_all();
        }
        renewing.join().unwrap().unwrap();
        checker.join().unwrap();
        assert_eq!(
            answered,
            Ok(true),
            "the lease check waited for a hanging renewal"
        );
    }

    fn info(writer: &str, refreshed: &str) -> SessionInfo {
        SessionInfo {
            version: 1,
            writer: writer.into(),
            command: "backup".into(),
            host: "h".into(),
            pid: 1,
            started: refreshed.into(),
            refreshed: refreshed.into(),
            view: refreshed.into(),
            seen: Vec::new(),
        }
    }

    /// Liveness never reads a writer's clock: a session whose times are a day off is live until
    /// a record sighted it `dead_after` earlier by the judge's clock; a writer with one renewed
    /// object is live.
    #[test]
    fn liveness_is_judged_by_sightings_on_the_judges_clock() {
        let now = Utc::now();
        let (a, b1, b2) = (ObjectId([1; 32]), ObjectId([2; 32]), ObjectId([3; 32]));
        let sessions = vec![
            (a, info("a", "2020-01-01T00:00:00Z")),
            (b1, info("b", "2020-01-01T00:00:00Z")),
            (b2, info("b", "2020-01-01T00:10:00Z")),
        ];
        let l = Liveness::judge(sessions.clone(), &[], now, Lease::DEFAULT);
        assert_eq!(
            l.live.len(),
            2,
            "unsighted sessions are live, whatever they say"
        );
        assert!(l.dead.is_empty());
        assert_eq!(l.unsighted, vec![a, b1, b2]);

        let minutes = |m: i64| now - chrono::Duration::minutes(m);
        let sighted =
            |t, ids: Vec<ObjectId>| (ObjectId([9; 32]), DeletionRecord::at(t, Vec::new(), ids));
        // Sighted 29 minutes ago: still live.
        let l = Liveness::judge(
            sessions.clone(),
            &[sighted(minutes(29), vec![a, b1])],
            now,
            Lease::DEFAULT,
        );
        assert_eq!(l.live.len(), 2);
        assert_eq!(l.unsighted, vec![b2]);
        // 31 minutes: `a` is dead; `b` renewed since (b2 is new), so it lives, newest first.
        let l = Liveness::judge(
            sessions,
            &[sighted(minutes(31), vec![a, b1])],
            now,
            Lease::DEFAULT,
        );
        assert_eq!(l.dead, vec![a]);
        assert_eq!(l.live.len(), 1);
        assert_eq!(l.live[0].0, b2);
    }

    /// The default lease is §19's (10, 5 and 30 minutes); a shorter one keeps the ratios, each
    /// capped at its default; a lease of zero or longer than the default is refused.
    #[test]
    fn a_lease_keeps_its_ratios_and_can_only_be_shortened() {
        let l = Lease::default();
        assert_eq!(
            (l.stale_after(), l.renew_every(), l.dead_after()),
            (STALE_AFTER, RENEW_EVERY, DEAD_AFTER)
        );
        let l = Lease::new(Duration::from_secs(2)).unwrap();
        assert_eq!(
            (l.stale_after(), l.renew_every(), l.dead_after()),
            (
                Duration::from_secs(2),
                Duration::from_secs(1),
                Duration::from_secs(6)
            )
        );
        // Nine minutes: half and three times it are both under their caps.
        let l = Lease::new(Duration::from_secs(9 * 60)).unwrap();
        assert_eq!(l.renew_every(), Duration::from_secs(270));
        assert_eq!(l.dead_after(), Duration::from_secs(27 * 60));
        assert_eq!(Lease::new(STALE_AFTER).unwrap(), Lease::DEFAULT);
        let e = Lease::new(STALE_AFTER + Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("can only be shortened"), "{e}");
        assert!(Lease::new(Duration::ZERO).is_err());
    }

    /// A session lapses by its own lease: a gap of 3 s ends one under a 2 s lease, not one under
    /// the default.
    #[test]
    fn a_session_lapses_by_its_lease() {
        let store: Arc<dyn Store> = Arc::new(Mem::default());
        let crypto = Crypto::plain([7; 32]);
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let start = |lease| {
            Session::start_with(
                Arc::clone(&store),
                &crypto,
                "backup",
                "h",
                lease,
                Duration::from_secs(3600),
                clock.clone(),
            )
            .unwrap()
        };
        let short = start(Lease::new(Duration::from_secs(2)).unwrap());
        let long = start(Lease::DEFAULT);
        clock.advance(Duration::from_secs(3));
        let e = short.check().unwrap_err().to_string();
        assert!(
            e.contains("paused too long") && e.contains("limit 2s"),
            "{e}"
        );
        assert!(short.renew().is_err());
        long.check().unwrap();
        long.renew().unwrap();
    }

    /// Prune finds a writer dead after three times a short lease, by the judge's clock.
    #[test]
    fn liveness_follows_the_judges_lease() {
        let now = Utc::now();
        let a = ObjectId([1; 32]);
        let sessions = vec![(a, info("a", "2020-01-01T00:00:00Z"))];
        let seconds = |s: i64| {
            let t = now - chrono::Duration::seconds(s);
            vec![(
                ObjectId([9; 32]),
                DeletionRecord::at(t, Vec::new(), vec![a]),
            )]
        };
        let short = Lease::new(Duration::from_secs(2)).unwrap();
        let l = Liveness::judge(sessions.clone(), &seconds(5), now, short);
        assert!(l.dead.is_empty(), "5 s < 6 s: live");
        let l = Liveness::judge(sessions.clone(), &seconds(7), now, short);
        assert_eq!(l.dead, vec![a]);
        let l = Liveness::judge(sessions, &seconds(7), now, Lease::DEFAULT);
        assert!(l.dead.is_empty(), "the default lease waits 30 minutes");
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
