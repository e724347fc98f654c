//! Exclude patterns: which paths of the source never become nodes.

use std::path::Path;

use globset::{GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Exclude patterns, restic style: a pattern without `/` matches an entry's name anywhere; one
/// with `/` matches the absolute path (a relative one may start anywhere). `*` stays within a
/// component, `**` crosses them.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
}

impl Excludes {
    /// Compiles patterns; empty lines and `#` comments are ignored.
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n, mut p) = (0, 0);
        for pat in patterns
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty() && !s.starts_with('#'))
        {
            let pat = pat.trim_end_matches('/');
            let build = |g: &str| {
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| Error::Invalid(format!("bad exclude pattern {pat:?}: {e}")))
            };
            if pat.contains('/') {
                let full = if pat.starts_with('/') {
                    pat.to_owned()
                } else {
                    format!("**/{pat}")
                };
                paths.add(build(&full)?);
                paths.add(build(&format!("{full}/**"))?);
                p += 1;
            } else {
                names.add(build(pat)?);
                n += 1;
            }
        }
        Ok(Excludes {
            names: (n > 0)
                .then(|| names.build())
                .transpose()
                .map_err(|e| Error::Invalid(e.to_string()))?,
            paths: (p > 0)
                .then(|| paths.build())
                .transpose()
                .map_err(|e| Error::Invalid(e.to_string()))?,
        })
    }

    /// Whether `path` (absolute) is excluded.
    pub fn matches(&self, path: &Path) -> bool {
        if let (Some(set), Some(name)) = (&self.names, path.file_name()) {
            if set.is_match(Path::new(name)) {
                return true;
            }
        }
        self.paths.as_ref().is_some_and(|set| set.is_match(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_semantics() {
        let e = Excludes::new(&[
            "*.tmp".into(),
            "cache/".into(),
            "/abs/skip".into(),
            "# comment".into(),
        ])
        .unwrap();
        assert!(e.matches(Path::new("/x/y/a.tmp")));
        assert!(!e.matches(Path::new("/x/y/a.tmpx")));
        assert!(e.matches(Path::new("/x/cache")));
        assert!(e.matches(Path::new("/abs/skip")));
        assert!(!e.matches(Path::new("/other/abs/skip")));
        assert!(!Excludes::default().matches(Path::new("/a")));
    }
}
