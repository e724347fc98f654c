//! Deletion records as a writer sees them (`docs/format.md` §19): packs prune condemned stop
//! being reused, and a long-running writer revalidates the records it had not read yet.

use std::collections::HashMap;

use super::Repository;
use crate::error::Result;
use crate::id::{ObjectId, PackId};
use crate::lifecycle;

/// Deletion records a long-running writer has not revalidated yet
/// ([`Repository::unrevalidated`]).
#[derive(Debug, Clone, Default)]
pub struct Revalidation {
    /// The records, by object id.
    pub records: Vec<ObjectId>,
    /// The packs they condemn, with the time of their record.
    pub packs: Vec<(PackId, chrono::DateTime<chrono::Utc>)>,
    /// Every record present when they were read.
    pub present: Vec<ObjectId>,
    /// This writer's clock just before they were read (the session's `view`, for older prunes).
    pub view: chrono::DateTime<chrono::Utc>,
}

impl Repository {
    /// Takes in packs condemned by a deletion record read after [`Repository::load_index`]: their
    /// blobs are no longer reused (a long-running writer calls this, then copies what it still
    /// needs).
    pub fn condemn_packs(&self, packs: &[(PackId, chrono::DateTime<chrono::Utc>)]) {
        self.index.condemn(packs);
    }

    /// Packs condemned by prune, with the time of their deletion record.
    pub fn condemned(&self) -> HashMap<PackId, chrono::DateTime<chrono::Utc>> {
        self.index.condemned()
    }

    /// Reads the deletion records and returns those this writer has not revalidated yet (a
    /// long-running writer calls this every few minutes). Hand [`Revalidation::packs`] to the
    /// code that stops reusing them and copies out what is still needed, then, only once that is
    /// stored and indexed, to [`Repository::mark_revalidated`].
    pub fn unrevalidated(&self) -> Result<Revalidation> {
        let view = self.clock.now();
        let mut out = Revalidation {
            view,
            ..Revalidation::default()
        };
        for (id, r) in lifecycle::deletions(&*self.store, &self.crypto)? {
            out.present.push(id);
            if self.index.is_revalidated(&id) {
                continue;
            }
            let t = r.time_at();
            out.packs.extend(r.packs.into_iter().map(|p| (p, t)));
            out.records.push(id);
        }
        Ok(out)
    }

    /// Declares the records of `r` revalidated: call only after every blob this writer still
    /// uses from their packs is copied into packs that are stored and indexed. Renews the
    /// session with them as seen, which lets prune delete those packs.
    pub fn mark_revalidated(&self, r: &Revalidation) -> Result<()> {
        self.condemn_packs(&r.packs);
        // Records swept meanwhile need not be listed any more.
        let seen = self.index.revalidate(&r.records, &r.present);
        match &self.session {
            Some(s) => s.set_seen(&seen, r.view),
            None => Ok(()),
        }
    }
}
