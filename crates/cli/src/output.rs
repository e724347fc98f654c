//! Standard output that reports failure instead of panicking. `println!` panics when the reader
//! has gone (`tidemark ls latest | head -1`); [`outln!`] returns the `io::Error`, commands pass it
//! up with `?`, and `main` turns a `BrokenPipe` into a quiet exit 141, as a process killed by
//! SIGPIPE shows.

use std::io::Write as _;

/// Like `println!`, but returns `io::Result<()>`.
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes one line to stdout (line-buffered, so it leaves at once, as with `println!`).
pub fn line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// Whether `e` (or anything in its chain) is a write into a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
