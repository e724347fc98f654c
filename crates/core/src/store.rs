//! The storage boundary: every repository byte goes through a [`Store`]. Implementations live
//! in `tidemark-store` (local directory) and `tidemark-testkit` (memory, fault injection); wrappers
//! add behaviour (counting, failing) without flags inside adapters.

use std::ops::Range;

use crate::error::Result;
use crate::id::{Kind, ObjectId};

/// Where a repository's objects live: a directory, S3, a peer, memory.
///
/// Blocking by design; the daemon calls it from worker threads.
pub trait Store: Send + Sync + 'static {
    /// Stores `bytes` atomically: afterwards the object is wholly there or not at all, and it is
    /// durable when this returns. Same id, same bytes: a second put of an existing id may be a no-op.
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()>;
    /// Stores `bytes` only if no object of that id exists: `Ok(false)` when one did (and is left
    /// as it was). Stores that can do this atomically (a link on a filesystem, a conditional PUT on
    /// S3) override it; this default checks first, so two racing callers may both succeed.
    fn put_new(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        match self.get(kind, id, Some(0..0)) {
            Ok(_) => Ok(false),
            Err(crate::Error::NotFound { .. }) => self.put(kind, id, bytes).map(|()| true),
            Err(e) => Err(e),
        }
    }
    /// Reads an object, or the byte `range` of it. A missing object is `Error::NotFound`.
    fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>>;
    /// Lists the objects of a kind with their sizes, in no particular order.
    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>>;
    /// Lists the ids of a kind's objects; stores where sizes cost extra (a `stat` per file)
    /// override it.
    fn list_ids(&self, kind: Kind) -> Result<Vec<ObjectId>> {
        Ok(self.list(kind)?.into_iter().map(|(id, _)| id).collect())
    }
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()>;
    /// A human-readable location for messages (`/srv/repo`, `s3:…`).
    fn location(&self) -> String;
    /// Whether each request costs a network round trip (an object store): walks that read one
    /// object after another then read ahead, trading memory for latency.
    fn is_remote(&self) -> bool {
        false
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn put(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        (**self).put(kind, id, bytes)
    }
    fn put_new(&self, kind: Kind, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        (**self).put_new(kind, id, bytes)
    }
    fn get(&self, kind: Kind, id: &ObjectId, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        (**self).get(kind, id, range)
    }
    fn list(&self, kind: Kind) -> Result<Vec<(ObjectId, u64)>> {
        (**self).list(kind)
    }
    fn list_ids(&self, kind: Kind) -> Result<Vec<ObjectId>> {
        (**self).list_ids(kind)
    }
    fn delete(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        (**self).delete(kind, id)
    }
    fn location(&self) -> String {
        (**self).location()
    }
    fn is_remote(&self) -> bool {
        (**self).is_remote()
    }
}

/// The fixed id of the config object.
pub const CONFIG_ID: ObjectId = ObjectId([0; 32]);
