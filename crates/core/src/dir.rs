//! Directories that survive a crash. A directory entry, like a file's, is durable only once its
//! parent directory is fsynced: without that, a crash after `mkdir` can take the new directory,
//! and every file already written and fsynced inside it, away. [`create_all`] creates what is
//! missing of a path and fsyncs each new directory into its parent; [`sync`] fsyncs one directory.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates `path` and whichever of its parents are missing, each with `mode` (less the umask),
/// and fsyncs the parent of each directory it creates, top down, so that a crash cannot lose one.
/// A directory that already exists keeps its mode. A directory that another process creates at
/// the same moment counts as created here: its parent is fsynced too, as that process may not
/// have done it yet.
pub fn create_all(path: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    loop {
        match p.metadata() {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", p.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(e),
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            // A relative path whose first component is missing: its parent is the working
            // directory.
            _ => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        sync(parent_of(dir))?;
    }
    Ok(())
}

/// fsyncs the directory `path`: the creations, renames and removals of its entries become durable.
pub fn sync(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// `path`'s parent directory, `.` for a relative path of one component.
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        p.metadata().unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_missing_parents_with_the_mode_and_keeps_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let existing = tmp.path().join("home");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let leaf = existing.join("a/b/c");
        create_all(&leaf, 0o700).unwrap();
        for p in [existing.join("a"), existing.join("a/b"), leaf.clone()] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
        assert_eq!(mode(&existing), 0o755, "an existing parent keeps its mode");
        // Again: nothing to do, no error.
        create_all(&leaf, 0o700).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error_that_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = create_all(&file.join("x"), 0o700).unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("not a directory"),
            "{err}"
        );
    }
}
