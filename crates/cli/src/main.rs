//! The `tidemark` binary: parse flags, call one command, map the outcome to an exit code.

mod args;
mod commands;
mod open;
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

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&cancel);
    let _ = ctrlc::set_handler(move || {
        if c.swap(true, Ordering::SeqCst) {
            eprintln!("interrupted twice, exiting now");
            std::process::exit(130);
        }
        eprintln!("interrupting: finishing uploads so the next backup can reuse them (Ctrl-C again to quit now)");
    });
    match commands::run(&cli, &cancel) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Partial) => ExitCode::from(3),
        Ok(Outcome::Damaged) => ExitCode::from(1),
        Err(e) => {
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
