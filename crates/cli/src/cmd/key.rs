//! `tidemark key`: add, list and remove passwords (key files).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tidemark_core::crypto::KdfParams;

use crate::args::Global;
use crate::output::outln;
use crate::{open, Outcome};

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a password. The new one comes from --new-password-file, TIDEMARK_NEW_PASSWORD or a prompt.
    Add {
        /// File holding the new password.
        #[arg(long, env = "TIDEMARK_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// List key files.
    List,
    /// Remove a key file by id prefix (not the one in use, not the last).
    Remove {
        /// Key id prefix.
        id: String,
    },
}

pub fn run(g: &Global, cmd: &KeyCommand) -> Result<Outcome> {
    let repo = open::open(g)?;
    match cmd {
        KeyCommand::List => {
            let keys = repo.keys()?;
            if g.json {
                let v: Vec<_> = keys.iter().map(|(id, k)| json!({"id": id, "current": Some(*id) == repo.key_id(), "created": k.created, "hostname": k.hostname, "username": k.username})).collect();
                outln!("{}", serde_json::to_string(&v)?)?;
            } else {
                outln!(" {:<10} {:<12} {:<16} Created", "ID", "User", "Host")?;
                for (id, k) in keys {
                    let cur = if Some(id) == repo.key_id() { '*' } else { ' ' };
                    outln!(
                        "{cur}{:<10} {:<12} {:<16} {}",
                        id.short(),
                        k.username,
                        k.hostname,
                        k.created
                    )?;
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let current = current_password(g)?;
            let new = open::new_password(new_password_file.as_deref())?;
            let id = repo.add_key(
                &new,
                KdfParams::default(),
                &open::hostname(),
                &open::username(),
                &current,
            )?;
            if g.json {
                outln!("{}", json!({"added": id}))?;
            } else {
                outln!("saved new key {}", id.short())?;
            }
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(id)?;
            if g.json {
                outln!("{}", json!({"removed": removed}))?;
            } else {
                outln!("removed key {}", removed.short())?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// The password that opened the repository, read again (the core does not keep it).
fn current_password(g: &Global) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    if g.repo.is_none()
        && g.password_file.is_none()
        && std::env::var_os("TIDEMARK_PASSWORD").is_none()
    {
        let (_, pw_file) = open::default_location()?;
        let s = zeroize::Zeroizing::new(
            std::fs::read_to_string(&pw_file)
                .with_context(|| format!("reading {}", pw_file.display()))?,
        );
        return Ok(zeroize::Zeroizing::new(s.trim_end().as_bytes().to_vec()));
    }
    open::password(g, "enter current password: ")
}
