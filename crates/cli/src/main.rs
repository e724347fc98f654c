//! The `tidemark` binary: parse flags, call one command, map the outcome to an exit code.

mod args;
mod cmd;
mod open;
mod output;
mod parse;
mod progress;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;

/// How a command ended, beyond plain success.
pub enum Outcome {
    /// Everything worked.
    Ok,
    /// Finished, but some files could not be read or written (exit 3).
    Partial,
    /// Verification found damage (exit 1).
    Damaged,
}

/// glibc's malloc gives each thread its own arena and keeps what is freed there; with a walker,
/// prefetchers, readers, sealers and an uploader that is ~9 arenas, and a first backup of the
/// shared dataset peaked at 146–156 MB instead of 115–121 MB with two arenas. The limit can only
/// be set before the process starts (`mallopt` would need `unsafe`), so the binary re-executes
/// itself once with `MALLOC_ARENA_MAX=2` unless the variable is already set. If that fails it
/// simply carries on.
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    // `exec` returns only on failure.
    let _ = cmd.args(args).env("MALLOC_ARENA_MAX", "2").exec();
}

/// What is logged when `TIDEMARK_LOG` is unset: warnings and errors; from openraft only errors,
/// as it warns at each start of a single-node group about a message it rightly ignores.
const DEFAULT_LOG: &str = "warn,openraft=error";

/// Sends `tracing` events (the daemon's and the engine's warnings, openraft's messages) to
/// stderr, filtered by `TIDEMARK_LOG` (`RUST_LOG` syntax: `debug`, `tidemark_daemon=info,warn`;
/// default [`DEFAULT_LOG`]), coloured only when stderr is a terminal. A filter that does not
/// parse is named and the default used.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("TIDEMARK_LOG").unwrap_or_default();
    let filter = if spec.trim().is_empty() {
        EnvFilter::new(DEFAULT_LOG)
    } else {
        EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("tidemark: ignoring TIDEMARK_LOG={spec:?} ({e}); logging warnings");
            EnvFilter::new(DEFAULT_LOG)
        })
    };
    // Fails only if a subscriber is already set, which nothing else in the binary does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    init_logging();
    let cli = args::Cli::parse();
    // SIGINT and SIGTERM: commands in core watch `cancel`; the daemon hears its shutdown signal.
    let cancel = Arc::new(AtomicBool::new(false));
    let (trigger, _) = tidemark_daemon::shutdown::channel();
    let (c, t) = (Arc::clone(&cancel), trigger.clone());
    let _ = ctrlc::set_handler(move || {
        t.trigger();
        if c.swap(true, Ordering::SeqCst) {
            eprintln!("interrupted twice, exiting now");
            std::process::exit(130);
        }
        eprintln!("interrupting: finishing what is in flight (Ctrl-C again to quit now)");
    });
    match cmd::run(&cli, &cancel, &trigger) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Partial) => ExitCode::from(3),
        Ok(Outcome::Damaged) => ExitCode::from(1),
        Err(e) => {
            // `tidemark ls latest | head`: once the reader is gone, stop quietly, as coreutils
            // do when SIGPIPE kills them (status 141 = 128 + SIGPIPE). Rust ignores SIGPIPE, so
            // the write fails and the error comes up here.
            if output::is_broken_pipe(&e) {
                return ExitCode::from(141);
            }
            if matches!(
                e.downcast_ref::<tidemark_core::Error>(),
                Some(tidemark_core::Error::Interrupted)
            ) {
                eprintln!("tidemark: interrupted");
                return ExitCode::from(130);
            }
            eprintln!("tidemark: {e:#}");
            ExitCode::FAILURE
        }
    }
}
