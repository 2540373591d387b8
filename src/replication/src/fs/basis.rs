//! What the secondary holds during a catch-up: its manifest at the start of the stream, kept up to
//! date with the namespace changes the primary sends meanwhile (renames and removals move or drop
//! whole stale subtrees there). The walk reads it when it lists a directory: which names to
//! remove on the secondary, which directories and files to keep and compare instead of sending
//! them again. Pure: no I/O, no locks (the caller holds the order lock).

use std::collections::BTreeMap;

use crate::manifest::{Entry, Kind};
use crate::op::{Op, RelPath};

pub(super) struct Model {
    entries: BTreeMap<Vec<u8>, Entry>,
    /// False for `second --fullsync`: every name is removed and sent again.
    pub reuse: bool,
}

/// The keys of `p`'s subtree (without `p`) lie in `[p/, p0)`: '0' follows '/' in byte order.
fn subtree_bounds(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = p.to_vec();
    lo.push(b'/');
    let mut hi = p.to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

impl Model {
    pub fn new(entries: BTreeMap<RelPath, Entry>, reuse: bool) -> Model {
        Model { entries: entries.into_iter().map(|(k, v)| (k.0, v)).collect(), reuse }
    }

    pub fn get(&self, p: &[u8]) -> Option<&Entry> {
        self.entries.get(p)
    }

    /// The direct children of the directory `dir` ("" is the root): (name, entry).
    pub fn children(&self, dir: &[u8]) -> Vec<(Vec<u8>, Entry)> {
        let direct = |rest: &[u8]| !rest.is_empty() && !rest.contains(&b'/');
        if dir.is_empty() {
            return self.entries.iter().filter(|(k, _)| direct(k)).map(|(k, e)| (k.clone(), e.clone())).collect();
        }
        let (lo, hi) = subtree_bounds(dir);
        self.entries
            .range(lo.clone()..hi)
            .filter(|(k, _)| direct(&k[lo.len()..]))
            .map(|(k, e)| (k[lo.len()..].to_vec(), e.clone()))
            .collect()
    }

    /// The entries of `dir` become `entries` (paths relative to the tree, direct children of
    /// `dir`): a directory listed by name only, now listed whole. A child not among them goes,
    /// with what was below it.
    pub fn replace_children(&mut self, dir: &[u8], entries: BTreeMap<RelPath, Entry>) {
        let gone: Vec<Vec<u8>> = self
            .children(dir)
            .into_iter()
            .map(|(name, _)| if dir.is_empty() { name } else { [dir, b"/", &name].concat() })
            .filter(|p| !entries.contains_key(&RelPath(p.clone())))
            .collect();
        for p in gone {
            self.remove(&p);
        }
        for (p, e) in entries {
            self.entries.insert(p.0, e);
        }
    }

    /// Drops `p` and everything below it.
    pub fn remove(&mut self, p: &[u8]) {
        self.entries.remove(p);
        let (lo, hi) = subtree_bounds(p);
        let below: Vec<Vec<u8>> = self.entries.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in below {
            self.entries.remove(&k);
        }
    }

    /// Takes `p` and its subtree out, with paths relative to `p` ("" for `p` itself).
    fn take(&mut self, p: &[u8]) -> Vec<(Vec<u8>, Entry)> {
        let mut out = Vec::new();
        if let Some(e) = self.entries.remove(p) {
            out.push((Vec::new(), e));
        }
        let (lo, hi) = subtree_bounds(p);
        let below: Vec<Vec<u8>> = self.entries.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in below {
            let e = self.entries.remove(&k).expect("listed");
            out.push((k[p.len()..].to_vec(), e));
        }
        out
    }

    fn put(&mut self, at: &[u8], items: Vec<(Vec<u8>, Entry)>) {
        for (rest, e) in items {
            let mut k = at.to_vec();
            k.extend_from_slice(&rest);
            self.entries.insert(k, e);
        }
    }

    /// Follows an op sent to the secondary: what it does to the names there.
    pub fn applied(&mut self, op: &Op) {
        match op {
            Op::Unlink { path } | Op::Rmdir { path } => self.remove(&path.0),
            Op::Rename { from, to, flags } => {
                let exchange = flags & libc::RENAME_EXCHANGE != 0;
                let a = self.take(&from.0);
                let b = self.take(&to.0);
                self.put(&to.0, a);
                if exchange {
                    self.put(&from.0, b);
                }
            }
            _ => {}
        }
    }

    /// Whether the secondary's entry `e` may stay in place for the local object of type
    /// `fmt` (`st_mode & S_IFMT`) with `nlink` links: a directory for a directory, a single-link
    /// regular file for one. Anything else is removed and sent again.
    pub fn keeps(&self, e: &Entry, fmt: u32, nlink: libc::nlink_t) -> bool {
        self.reuse
            && match (e.kind, fmt) {
                (Kind::Dir, libc::S_IFDIR) => true,
                (Kind::File, libc::S_IFREG) => nlink == 1 && e.link_group.is_none(),
                _ => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind) -> Entry {
        Entry { mode: 0o644, ..Entry::bare(kind) }
    }

    fn model(paths: &[(&str, Kind)]) -> Model {
        let m = paths.iter().map(|(p, k)| (RelPath(p.as_bytes().to_vec()), entry(*k))).collect();
        Model::new(m, true)
    }

    fn keys(m: &Model) -> Vec<String> {
        m.entries.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }

    fn names(v: Vec<(Vec<u8>, Entry)>) -> Vec<String> {
        v.into_iter().map(|(k, _)| String::from_utf8_lossy(&k).into_owned()).collect()
    }

    fn rel(s: &str) -> RelPath {
        RelPath(s.as_bytes().to_vec())
    }

    #[test]
    fn children_are_direct_only_and_prefixes_do_not_leak() {
        let m = model(&[
            ("", Kind::Dir),
            ("a", Kind::Dir),
            ("a/x", Kind::File),
            ("a/d", Kind::Dir),
            ("a/d/y", Kind::File),
            ("a-b", Kind::File),
            ("a0", Kind::File),
            ("b", Kind::File),
        ]);
        assert_eq!(names(m.children(b"")), ["a", "a-b", "a0", "b"]);
        assert_eq!(names(m.children(b"a")), ["d", "x"]);
        assert_eq!(names(m.children(b"a/d")), ["y"]);
        assert!(m.children(b"b").is_empty());
    }

    #[test]
    fn removals_and_renames_move_whole_subtrees() {
        let mut m = model(&[
            ("", Kind::Dir),
            ("a", Kind::Dir),
            ("a/x", Kind::File),
            ("a/d", Kind::Dir),
            ("a/d/y", Kind::File),
            ("ab", Kind::File),
            ("c", Kind::Dir),
            ("c/z", Kind::File),
        ]);
        m.applied(&Op::Rename { from: rel("a"), to: rel("c"), flags: 0 });
        assert_eq!(keys(&m), ["", "ab", "c", "c/d", "c/d/y", "c/x"]);
        m.applied(&Op::Rename { from: rel("ab"), to: rel("c/d"), flags: libc::RENAME_EXCHANGE });
        assert_eq!(keys(&m), ["", "ab", "ab/y", "c", "c/d", "c/x"]);
        m.applied(&Op::Rmdir { path: rel("ab") });
        assert_eq!(keys(&m), ["", "c", "c/d", "c/x"]);
        m.applied(&Op::Unlink { path: rel("c/x") });
        m.applied(&Op::Write { fh: 1, offset: 0, data: vec![1] });
        assert_eq!(keys(&m), ["", "c", "c/d"]);
    }

    #[test]
    fn only_same_kind_single_link_objects_are_kept() {
        let mut m = model(&[("f", Kind::File), ("d", Kind::Dir), ("s", Kind::Symlink)]);
        let f = m.get(b"f").unwrap().clone();
        let d = m.get(b"d").unwrap().clone();
        let s = m.get(b"s").unwrap().clone();
        assert!(m.keeps(&f, libc::S_IFREG, 1));
        assert!(!m.keeps(&f, libc::S_IFREG, 2));
        assert!(!m.keeps(&f, libc::S_IFDIR, 1));
        assert!(m.keeps(&d, libc::S_IFDIR, 2));
        assert!(!m.keeps(&d, libc::S_IFREG, 1));
        assert!(!m.keeps(&s, libc::S_IFLNK, 1));
        let mut linked = f.clone();
        linked.link_group = Some(rel("g"));
        assert!(!m.keeps(&linked, libc::S_IFREG, 1));
        m.reuse = false;
        assert!(!m.keeps(&f, libc::S_IFREG, 1));
    }
}
