//! A store that fails like a full disk for a while, then works again.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tidemark_core::id::{Kind, ObjectId};
use tidemark_core::store::Store;
use tidemark_core::{Error, Result};

/// Wraps a store: after `budget` successful writes (puts and deletes) every write fails with
/// ENOSPC, as a full repository disk does, until [`FlakyStore::heal`]. Reads keep working.
/// Unlike [`crate::CrashStore`], the process is meant to go on and see the store recover.
pub struct FlakyStore<S> {
    inner: S,
    budget: AtomicUsize,
    failing: AtomicBool,
    /// Writes that went through.
    pub writes: AtomicUsize,
    /// Writes refused.
    pub refused: AtomicUsize,
}

impl<S: Store> FlakyStore<S> {
    /// Allows `budget` writes, then fails until healed. `usize::MAX` never fails.
    pub fn new(inner: S, budget: usize) -> Self {
        FlakyStore {
            inner,
            budget: AtomicUsize::new(budget),
            failing: AtomicBool::new(false),
            writes: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    /// Every write succeeds from now on.
    pub fn heal(&self) {
        self.budget.store(usize::MAX, Ordering::SeqCst);
        self.failing.store(false, Ordering::SeqCst);
    }

    /// Every write fails from now on, until healed.
    pub fn fail_now(&self) {
        self.fail_after(0);
    }

    /// Allows `writes` more writes, then fails until healed.
    pub fn fail_after(&self, writes: usize) {
        self.budget.store(writes, Ordering::SeqCst);
    }

    /// Whether the store refuses writes now.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn admit(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        let ok = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                if b == usize::MAX {
                    Some(b)
                } else {
                    b.checked_sub(1)
                }
            })
            .is_ok();
        if ok {
            self.writes.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        self.failing.store(true, Ordering::SeqCst);
        self.refused.fetch_add(1, Ordering::SeqCst);
        Err(Error::io(
            "writing",
            format!("{}/{}", kind.dir_name(), id.to_hex()),
            std::io::Error::from_raw_os_error(28), // ENOSPC
        ))
    }
}

impl<S: Store> Store for FlakyStore<S> {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        self.admit(kind, id)?;
        self.inner.put(kind, id, bytes)
    }
    fn put_new(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        self.admit(kind, id)?;
        self.inner.put_new(kind, id, bytes)
    }
    fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        self.inner.get(kind, id, range)
    }
    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        self.admit(kind, id)?;
        self.inner.delete(kind, id)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}
