//! A writer's session (`docs/format.md` §19): its lease, begun and ended through the handle.
//! The session is its own value ([`Session`], shared by `Arc`): a handle cloned after
//! [`Repository::begin_session`] writes under the same lease.

use std::sync::Arc;

use super::Repository;
use crate::error::Result;
use crate::lifecycle::Session;

impl Repository {
    /// Starts this writer's session (`docs/format.md` §19) under the handle's lease and clock;
    /// call before [`Repository::load_index`], so that the session's view covers the deletion
    /// records it reads.
    ///
    /// A version-1 config of an encrypted repository is upgraded to version 2 (authenticated)
    /// first: a writer holds the key (`docs/format.md` §3).
    pub fn begin_session(&mut self, command: &str, host: &str) -> Result<()> {
        if let Some(upgraded) = self.upgrade_config()? {
            self.config = Arc::new(upgraded);
        }
        self.session = Some(Arc::new(Session::start_with(
            Arc::clone(&self.store),
            &self.crypto,
            command,
            host,
            self.lease,
            self.lease.renew_every(),
            Arc::clone(&self.clock),
        )?));
        Ok(())
    }

    /// Ends this writer's session (after its last object is stored), for every handle that
    /// shares it.
    pub fn end_session(&mut self) -> Result<()> {
        match self.session.take() {
            Some(s) => s.end(),
            None => Ok(()),
        }
    }

    /// This writer's session, if it has one.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_deref()
    }

    /// Fails if this writer's lease may have expired (it must store nothing more).
    pub(super) fn check_lease(&self) -> Result<()> {
        self.session().map_or(Ok(()), Session::check)
    }
}
