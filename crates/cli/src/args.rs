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
    /// Repository: a directory, or s3:[http[s]://]HOST[:PORT]/BUCKET[/PREFIX] (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Default: the embedded repository in the user's
    /// data directory.
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
    /// Do not use the local snapshot cache: read every snapshot from the repository.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Directory of the local snapshot cache (default: $XDG_CACHE_HOME/tidemark, ~/.cache/tidemark).
    #[arg(long, env = "TIDEMARK_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots, oldest first.
    Snapshots(SnapshotsArgs),
    /// List the entries of a snapshot.
    Ls(LsArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// Verify the repository's structure, and with --read-data every byte.
    Check(CheckArgs),
    /// Repair a damaged repository: `repair index` rebuilds the index from the packs.
    Repair(RepairArgs),
    /// Print a repository object: config, key ID, snapshot ID, index ID, pack ID, tree ID, blob ID.
    Cat(CatArgs),
    /// Repository statistics, or the size of one snapshot.
    Stats(StatsArgs),
    /// Manage passwords (key files).
    Key(KeyArgs),
    /// Forget snapshots by a retention policy (or by id): deletes the snapshot objects.
    ///
    /// Without --keep-* flags the repository's policy applies (`tidemark policy show`), or the
    /// built-in one for half-second snapshots. Snapshots are judged per host and paths.
    /// The data they alone used stays until `prune`.
    Forget(crate::forget::ForgetArgs),
    /// Copy snapshots from another repository, sending only the data this one lacks.
    ///
    /// Between repositories that share keys (made with `init --from-repo`) blobs move as they
    /// are; otherwise every blob is decrypted, re-keyed and re-encrypted.
    Copy(crate::copy::CopyArgs),
    /// Free the data no snapshot uses, while backups and watchers keep running (no lock).
    ///
    /// Unused and sparse packs are condemned now and deleted by a later prune, once they are
    /// older than --keep-condemned and every running writer has seen that.
    Prune(crate::forget::PruneArgs),
    /// Show, set or reset the repository's default retention policy.
    Policy(crate::forget::PolicyArgs),
    /// Watch a directory: capture every change into the log and seal a snapshot every 500 ms.
    ///
    /// Runs in the foreground until SIGINT or SIGTERM, then captures what is pending, seals a
    /// last snapshot and exits 0. After a crash or power loss, the next start (or `recover`)
    /// seals everything that reached the log first.
    Watch(crate::watch::WatchArgs),
    /// Seal a watched directory's log into a snapshot without watching (e.g. the source is gone).
    Recover(crate::watch::RecoverArgs),
    /// Show a watched directory's engine: revisions, log, last seal, capture lag.
    Status(crate::watch::StatusArgs),
    /// Mount the repository read-only (FUSE): snapshots/<time>/, ids/<id>/, latest.
    ///
    /// Serves until SIGINT or SIGTERM, then unmounts and exits 0; `fusermount3 -u MOUNTPOINT`
    /// (or `umount` as root) unmounts it from elsewhere. New snapshots appear within --refresh.
    Mount(crate::mount::MountArgs),
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
    /// Share the keys and chunker settings of this repository, so `copy` between the two moves
    /// data as it is and dedups across both.
    #[command(flatten)]
    pub from: crate::copy::FromArgs,
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
    /// Record this time (RFC 3339) as the snapshot's instead of now, e.g. when importing history.
    #[arg(long, value_name = "TIME")]
    pub time: Option<chrono::DateTime<chrono::FixedOffset>>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only the newest N snapshots.
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
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
    /// Snapshot id prefix or `latest` (not with --at or --revision).
    #[arg(required_unless_present_any = ["at", "revision"], conflicts_with_all = ["at", "revision"])]
    pub snapshot: Option<String>,
    /// Restore the newest snapshot taken at or before TIME: RFC 3339 (`2026-11-23T20:15:00+01:00`),
    /// a local date and time (`2026-11-23 20:15:00`, `2026-11-23 20:15`, `2026-11-23` = its
    /// midnight), or a time ago (`-10m`, `-2h`, `-1d`; units s, m, h, d, w).
    #[arg(
        long,
        value_name = "TIME",
        value_parser = crate::parse::time,
        allow_hyphen_values = true,
        conflicts_with = "revision"
    )]
    pub at: Option<crate::parse::TimeSpec>,
    /// Restore the snapshot with the greatest revision (log index) at or below R.
    #[arg(long, value_name = "R")]
    pub revision: Option<u64>,
    /// With `latest`, --at or --revision: only snapshots of this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// With `latest`, --at or --revision: only snapshots whose paths include PATH; repeatable.
    #[arg(long, value_name = "PATH")]
    pub path: Vec<PathBuf>,
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
    /// Read only a part of the packs: N/M (part N of M, by pack id; runs 1/M … M/M together read
    /// everything once), P% (a random P percent of the packs) or SIZE (random packs up to e.g.
    /// 500MiB). Implies --read-data.
    #[arg(long, value_name = "N/M|P%|SIZE", value_parser = crate::parse::data_subset)]
    pub read_data_subset: Option<tidemark_core::check::DataSubset>,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairCommand,
}

#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers, replacing every index file (for lost or damaged
    /// index files). Safe while backups and watchers run.
    Index {
        /// Read the headers and report, but write and delete nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_selection_flags() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["tidemark", "restore", "--target", "/t"].iter().chain(args))
        };
        assert!(parse(&["latest"]).is_ok());
        assert!(parse(&["--at", "-1h"]).is_ok());
        assert!(parse(&["--at", "-0s", "--revision", "1"]).is_err());
        assert!(parse(&["--revision", "7"]).is_ok());
        assert!(parse(&[]).is_err(), "one of SNAP, --at, --revision");
        assert!(parse(&["latest", "--at", "-1h"]).is_err());
        assert!(parse(&["abc", "--revision", "7"]).is_err());
        assert!(parse(&["--at", "-1h", "--revision", "7"]).is_err());
        assert!(parse(&["--at", "soon"]).is_err());
    }
}
