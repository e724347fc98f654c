//! The command line: global flags and the list of commands; each command's own flags live in
//! its module under `cmd/`, value parsers in `parse`. Plain data, no I/O.

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
    /// Shortens the lease of this process's session, and the lease it judges other writers by
    /// (`docs/format.md` §19), from 10 minutes to DURATION: tests pause writers past a lease of
    /// seconds. Hidden, and named so, because it is not a tuning knob: nothing records it in the
    /// repository, and a prune given a shorter lease than a running writer's would find that
    /// writer dead while it still stores, and delete packs it uses.
    #[arg(long, global = true, hide = true, value_name = "DURATION", value_parser = crate::parse::lease)]
    pub lease_for_testing: Option<tidemark_core::lifecycle::Lease>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(crate::cmd::init::InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(crate::cmd::backup::BackupArgs),
    /// List snapshots, oldest first.
    Snapshots(crate::cmd::snapshots::SnapshotsArgs),
    /// List the entries of a snapshot.
    Ls(crate::cmd::ls::LsArgs),
    /// Show what changed between two snapshots.
    Diff(crate::cmd::diff::DiffArgs),
    /// Restore a snapshot into a directory.
    Restore(crate::cmd::restore::RestoreArgs),
    /// Verify the repository's structure, and with --read-data every byte.
    Check(crate::cmd::check::CheckArgs),
    /// Repair a damaged repository: `repair index` rebuilds the index from the packs.
    Repair(crate::cmd::repair::RepairArgs),
    /// Print a repository object: config, key ID, snapshot ID, index ID, pack ID, tree ID, blob ID.
    Cat(crate::cmd::cat::CatArgs),
    /// Repository statistics, or the size of one snapshot.
    Stats(crate::cmd::stats::StatsArgs),
    /// Manage passwords (key files).
    Key(crate::cmd::key::KeyArgs),
    /// Forget snapshots by a retention policy (or by id): deletes the snapshot objects.
    ///
    /// Without --keep-* flags the repository's policy applies (`tidemark policy show`), or the
    /// built-in one for half-second snapshots. Snapshots are judged per host and paths.
    /// The data they alone used stays until `prune`.
    Forget(crate::cmd::forget::ForgetArgs),
    /// Copy snapshots from another repository, sending only the data this one lacks.
    ///
    /// Between repositories that share keys (made with `init --from-repo`) blobs move as they
    /// are; otherwise every blob is decrypted, re-keyed and re-encrypted.
    Copy(crate::cmd::copy::CopyArgs),
    /// Free the data no snapshot uses, while backups and watchers keep running (no lock).
    ///
    /// Unused and sparse packs are condemned now and deleted by a later prune, once they are
    /// older than --keep-condemned and every running writer has seen that.
    Prune(crate::cmd::prune::PruneArgs),
    /// Show, set or reset the repository's default retention policy.
    Policy(crate::cmd::policy::PolicyArgs),
    /// Watch a directory: capture every change into the log and seal a snapshot every 500 ms.
    ///
    /// Runs in the foreground until SIGINT or SIGTERM, then captures what is pending, seals a
    /// last snapshot and exits 0. After a crash or power loss, the next start (or `recover`)
    /// seals everything that reached the log first.
    Watch(crate::cmd::watch::WatchArgs),
    /// Seal a watched directory's log into a snapshot without watching (e.g. the source is gone).
    Recover(crate::cmd::recover::RecoverArgs),
    /// Show a watched directory's engine: revisions, log, last seal, capture lag.
    Status(crate::cmd::status::StatusArgs),
    /// Mount the repository read-only (FUSE): snapshots/<time>/, ids/<id>/, latest.
    ///
    /// Serves until SIGINT or SIGTERM, then unmounts and exits 0; `fusermount3 -u MOUNTPOINT`
    /// (or `umount` as root) unmounts it from elsewhere. New snapshots appear within --refresh.
    Mount(crate::cmd::mount::MountArgs),
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

    /// `--lease-for-testing` is global (it goes to every command, before or after its name) and
    /// hidden from --help.
    #[test]
    fn the_lease_flag_is_global_and_hidden() {
        use clap::{CommandFactory, Parser};
        let two =
            Some(tidemark_core::lifecycle::Lease::new(std::time::Duration::from_secs(2)).unwrap());
        for args in [
            &["tidemark", "--lease-for-testing", "2s", "prune"][..],
            &["tidemark", "backup", "--lease-for-testing", "2", "/src"][..],
        ] {
            assert_eq!(
                Cli::try_parse_from(args).unwrap().global.lease_for_testing,
                two,
                "{args:?}"
            );
        }
        assert!(Cli::try_parse_from(["tidemark", "--lease-for-testing", "1h", "prune"]).is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("--cache-dir") && !help.contains("lease"),
            "{help}"
        );
    }
}
