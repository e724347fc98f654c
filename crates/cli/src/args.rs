//! Command-line flags, parsed into plain data (no I/O here).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// tidemark: deduplicated, encrypted backup (continuous capture comes with `watch`).
///
/// With no --repo, commands use the embedded default repository in your data directory
/// (created on first use, with a generated password file readable only by you).
///
/// Exit codes: 0 ok; 1 failed; 3 finished, but some files could not be read (backup) or
/// written (restore); 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Repository: a directory. Default: the embedded repository in the user's data directory.
    #[arg(short = 'r', long, env = "TIDEMARK_REPOSITORY", global = true)]
    pub repo: Option<PathBuf>,
    /// Read the repository password from this file (TIDEMARK_PASSWORD holds it directly).
    #[arg(short = 'p', long, env = "TIDEMARK_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Machine-readable output (JSON lines for backup progress).
    #[arg(long, global = true)]
    pub json: bool,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots,
    /// List the entries of a snapshot.
    Ls(LsArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// Verify the repository's structure, and with --read-data every byte.
    Check(CheckArgs),
    /// Print a repository object: config, key ID, snapshot ID, index ID, pack ID, tree ID, blob ID.
    Cat(CatArgs),
    /// Repository statistics, or the size of one snapshot.
    Stats(StatsArgs),
    /// Manage passwords (key files).
    Key(KeyArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Store data unencrypted (integrity is still checked). Only for trusted storage.
    #[arg(long)]
    pub insecure_no_encryption: bool,
    /// Chunker minimum size in bytes (fixed for the repository's life).
    #[arg(long, help_heading = "Advanced")]
    pub chunk_min: Option<u32>,
    /// Chunker average size in bytes.
    #[arg(long, help_heading = "Advanced")]
    pub chunk_avg: Option<u32>,
    /// Chunker maximum size in bytes.
    #[arg(long, help_heading = "Advanced")]
    pub chunk_max: Option<u32>,
    /// Target pack size in bytes.
    #[arg(long, help_heading = "Advanced")]
    pub pack_size: Option<u32>,
    /// zstd level, 0 = no compression.
    #[arg(long, help_heading = "Advanced")]
    pub compression: Option<i32>,
    /// Argon2id memory for the first key, in KiB (default 65536).
    #[arg(long, help_heading = "Advanced")]
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id passes for the first key (default 3).
    #[arg(long, help_heading = "Advanced")]
    pub kdf_time: Option<u32>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Exclude a pattern (name glob like `*.tmp`, or a path glob containing `/`); repeatable.
    #[arg(short, long)]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line; repeatable.
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Do not cross filesystem boundaries.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Snapshot to compare against (default: the latest with the same host and paths).
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent's metadata.
    #[arg(long)]
    pub force: bool,
    /// Tag the snapshot; repeatable.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Hostname to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id prefix or `latest`.
    pub snapshot: String,
    /// Only this path and below.
    pub path: Option<PathBuf>,
    /// Show type, mode, size and time.
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Older snapshot.
    pub first: String,
    /// Newer snapshot.
    pub second: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id prefix or `latest`.
    pub snapshot: String,
    /// Directory to restore into.
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only this path of the snapshot (and below); repeatable.
    #[arg(short, long)]
    pub include: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read, decrypt and authenticate every blob.
    #[arg(long)]
    pub read_data: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// config, key, snapshot, index, pack, tree or blob.
    pub kind: String,
    /// Object id (a prefix for snapshots; `latest` too).
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Report this snapshot's restore size instead of the repository totals.
    pub snapshot: Option<String>,
}

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
