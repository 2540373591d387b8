//! Exclusion patterns (`exclude` of a `[[replication.dir]]` in module.toml).
//!
//! Semantics, close to `.gitignore` so that operators guess right:
//! - a pattern is matched against the path relative to the replicated directory, `/`-separated;
//! - a pattern without `/` (`*.tmp`, `core`) matches a file *name* at any depth;
//! - a pattern with `/` (`cache/**`, `db/*.log`) is anchored at the replicated directory;
//! - `*`, `?` and `[...]` never match `/`; `**` matches any number of components;
//! - a path is excluded if it *or any of its ancestors* matches: excluding a directory excludes
//!   everything below it. `cache/**` excludes what is inside `cache` but keeps the (empty)
//!   directory itself replicated; `cache` excludes both.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

/// A pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("exclusion pattern {pattern:?}: {source}")]
pub struct PatternError {
    pub pattern: String,
    #[source]
    pub source: globset::Error,
}

#[derive(Debug, Clone)]
pub struct Exclusions {
    /// Patterns without '/', tried on each component's name.
    names: GlobSet,
    /// Patterns with '/', tried on each ancestor path.
    paths: GlobSet,
    empty: bool,
}

impl Exclusions {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Exclusions, PatternError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            let glob = GlobBuilder::new(p.trim_end_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| PatternError { pattern: p.to_string(), source })?;
            if p.trim_end_matches('/').contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build =
            |b: GlobSetBuilder| b.build().map_err(|source| PatternError { pattern: patterns_text(patterns), source });
        Ok(Exclusions { names: build(names)?, paths: build(paths)?, empty: patterns.is_empty() })
    }

    /// No pattern at all: nothing is excluded.
    pub fn none() -> Exclusions {
        Exclusions::new::<&str>(&[]).expect("the empty set compiles")
    }

    /// Whether the relative path `rel` (no leading '/') is excluded. The root never is.
    pub fn is_excluded(&self, rel: &[u8]) -> bool {
        if self.empty || rel.is_empty() {
            return false;
        }
        let mut start = 0;
        loop {
            let end = rel[start..].iter().position(|b| *b == b'/').map(|i| start + i).unwrap_or(rel.len());
            let name = &rel[start..end];
            if !name.is_empty() {
                if !self.names.is_empty() && self.names.is_match_candidate(&Candidate::new(OsStr::from_bytes(name))) {
                    return true;
                }
                if !self.paths.is_empty()
                    && self.paths.is_match_candidate(&Candidate::new(OsStr::from_bytes(&rel[..end])))
                {
                    return true;
                }
            }
            if end >= rel.len() {
                return false;
            }
            start = end + 1;
        }
    }
}

fn patterns_text<S: AsRef<str>>(patterns: &[S]) -> String {
    patterns.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantics() {
        let e = Exclusions::new(&["*.tmp", "cache/**", "logs", "db/*.log"]).unwrap();
        assert!(e.is_excluded(b"x.tmp"));
        assert!(e.is_excluded(b"a/b/x.tmp"));
        assert!(e.is_excluded(b"d.tmp/inside"));
        assert!(!e.is_excluded(b"x.tmpl"));
        assert!(!e.is_excluded(b"cache"));
        assert!(e.is_excluded(b"cache/a"));
        assert!(e.is_excluded(b"cache/a/b"));
        assert!(!e.is_excluded(b"sub/cache/a"));
        assert!(e.is_excluded(b"logs"));
        assert!(e.is_excluded(b"a/logs/x"));
        assert!(e.is_excluded(b"db/x.log"));
        assert!(!e.is_excluded(b"db/sub/x.log"));
        assert!(!e.is_excluded(b""));
        assert!(!Exclusions::none().is_excluded(b"x.tmp"));
        assert!(Exclusions::new(&["[a"]).is_err());
    }
}
