//! Keys: unlocking the master key, key files (list, add, remove), and the config upgrade a
//! writer makes (`docs/format.md` §3, §4).

use super::{Config, Repository, CONFIG_VERSION};
use crate::crypto::{KdfParams, KeyFile, MasterKey, EMPTY_PASSWORD};
use crate::error::{Error, Result};
use crate::id::{Kind, ObjectId};
use crate::store::{Store, CONFIG_ID};

impl Repository {
    /// The master key of the repository in `store`, unlocked with `password` (to create
    /// another repository with the same keys: `init --from-repo`).
    pub fn master_key(store: &dyn Store, password: &[u8]) -> Result<MasterKey> {
        Self::unlock(store, password).map(|(_, m)| m)
    }

    pub(super) fn unlock(store: &dyn Store, password: &[u8]) -> Result<(ObjectId, MasterKey)> {
        if password.is_empty() {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        let keys = store.list(Kind::Key)?;
        if keys.is_empty() {
            return Err(Error::corrupt(
                Kind::Key,
                "-",
                "the repository is encrypted but has no key files",
            ));
        }
        let mut damaged = None;
        for (id, _) in keys {
            let parsed = store
                .get(Kind::Key, &id, None)
                .and_then(|b| KeyFile::decode(&b, &id));
            match parsed.and_then(|kf| kf.open(password, &id)) {
                Ok(Some(master)) => return Ok((id, master)),
                Ok(None) => {}
                Err(e) => damaged = Some(e),
            }
        }
        Err(damaged.unwrap_or(Error::WrongPassword))
    }

    /// Stores this repository's config as version 2 with its MAC, if it is an encrypted
    /// version-1 one; returns the stored config. Rewriting is safe against a racing writer: both
    /// store the same bytes (the MAC is deterministic).
    pub(super) fn upgrade_config(&self) -> Result<Option<Config>> {
        if self.config.version >= CONFIG_VERSION || !self.crypto.is_encrypted() {
            return Ok(None);
        }
        let sealed = self.config.seal(&self.crypto);
        self.store.put(Kind::Config, &CONFIG_ID, &sealed.encode())?;
        Ok(Some(sealed))
    }

    /// Key files with their ids.
    pub fn keys(&self) -> Result<Vec<(ObjectId, KeyFile)>> {
        let mut out = Vec::new();
        for (id, _) in self.store.list(Kind::Key)? {
            let bytes = self.store.get(Kind::Key, &id, None)?;
            out.push((id, KeyFile::decode(&bytes, &id)?));
        }
        Ok(out)
    }

    /// Adds a password: a new key file wrapping the same master key.
    pub fn add_key(
        &self,
        password: &[u8],
        kdf: KdfParams,
        hostname: &str,
        username: &str,
        current_password: &[u8],
    ) -> Result<ObjectId> {
        if !self.crypto.is_encrypted() {
            return Err(Error::Invalid(
                "this repository is not encrypted; it has no keys".into(),
            ));
        }
        if password.is_empty() {
            return Err(Error::Invalid(EMPTY_PASSWORD.into()));
        }
        let (_, master) = Self::unlock(&*self.store, current_password)?;
        // The new key refuses a version-1 config (`docs/format.md` §4), so the config is
        // authenticated before the key is written.
        self.upgrade_config()?;
        let kf = KeyFile::create(&master, password, kdf, hostname, username)?;
        let bytes = serde_json::to_vec_pretty(&kf).expect("key files serialize");
        let id = ObjectId::of(&bytes);
        self.store.put(Kind::Key, &id, &bytes)?;
        Ok(id)
    }

    /// Removes a key file by id prefix; refuses the key in use and the last key.
    pub fn remove_key(&self, prefix: &str) -> Result<ObjectId> {
        let keys: Vec<ObjectId> = self
            .store
            .list(Kind::Key)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let matching: Vec<&ObjectId> = keys
            .iter()
            .filter(|id| id.to_hex().starts_with(&prefix.to_ascii_lowercase()))
            .collect();
        let id = match matching.as_slice() {
            [id] => **id,
            [] => return Err(Error::Invalid(format!("no key with id prefix {prefix}"))),
            _ => return Err(Error::Invalid(format!("key prefix {prefix} is ambiguous"))),
        };
        if Some(id) == self.key_id {
            return Err(Error::Invalid(
                "refusing to remove the key this command was unlocked with; use another password"
                    .into(),
            ));
        }
        if keys.len() <= 1 {
            return Err(Error::Invalid("refusing to remove the last key".into()));
        }
        self.store.delete(Kind::Key, &id)?;
        Ok(id)
    }
}
