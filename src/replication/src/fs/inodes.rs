//! The FUSE inode table: FUSE node ids ↔ underlying files ↔ the names we know them by.
//!
//! Every replicated operation names files by their path relative to the replicated directory, so
//! each node records its names as (parent node, file name) pairs and a path is rebuilt by walking
//! parents. A rename therefore moves one entry and every descendant follows for free.
//!
//! Nodes are keyed by the underlying (st_dev, st_ino), so the hard links of one file share one
//! FUSE node (the kernel then sees one inode with one size and one cache, as it should). A node
//! can have several known names (hard links we have looked up) or none (unlinked but still open
//! or still remembered by the kernel). Node ids come from a counter and are never reused, so the
//! generation number can stay 0.
//!
//! Lifetime: a node lives while the kernel holds lookups on it (FUSE `forget` drops them) or while
//! one of our recorded names has it as parent (so that a path through it stays resolvable). A
//! node that lost its last name leaves the (dev, ino) index: the underlying file system may reuse
//! that inode number for a new file, which must get a fresh node.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

pub const ROOT: u64 = 1;

pub type Key = (u64, u64);

#[derive(Debug)]
struct Node {
    key: Key,
    /// Known names, first one used for paths.
    names: Vec<(u64, OsString)>,
    /// The kernel's lookup count.
    lookups: u64,
    /// How many recorded names use this node as their parent.
    children: u64,
    /// The S_IFMT bits: a key reused for a file of another type is another file.
    kind: u32,
}

#[derive(Debug)]
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    by_name: HashMap<(u64, OsString), u64>,
    next: u64,
}

impl Inodes {
    pub fn new(root_key: Key) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node { key: root_key, names: Vec::new(), lookups: 1, children: 0, kind: libc::S_IFDIR });
        let mut by_key = HashMap::new();
        by_key.insert(root_key, ROOT);
        Inodes { nodes, by_key, by_name: HashMap::new(), next: ROOT + 1 }
    }

    /// The path of a node relative to the root (empty for the root), or None if it has no name
    /// any more (unlinked) or is unknown.
    pub fn path(&self, ino: u64) -> Option<Vec<u8>> {
        if ino == ROOT {
            return Some(Vec::new());
        }
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        // A cycle cannot happen (the kernel forbids moving a directory under itself), but a
        // bound keeps a corrupt table from hanging a request.
        for _ in 0..4096 {
            if cur == ROOT {
                let mut out = Vec::new();
                for (i, p) in parts.iter().rev().enumerate() {
                    if i > 0 {
                        out.push(b'/');
                    }
                    out.extend_from_slice(p.as_bytes());
                }
                return Some(out);
            }
            let node = self.nodes.get(&cur)?;
            let (parent, name) = node.names.first()?;
            parts.push(name);
            cur = *parent;
        }
        None
    }

    pub fn child_path(&self, parent: u64, name: &OsStr) -> Option<Vec<u8>> {
        let mut p = self.path(parent)?;
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        Some(p)
    }

    pub fn by_key(&self, key: Key) -> Option<u64> {
        self.by_key.get(&key).copied()
    }

    /// Records a successful lookup (or create, mkdir, link...) of `name` in `parent` that found
    /// the file `key` of type `kind`; returns its node id with one more kernel lookup.
    pub fn lookup(&mut self, parent: u64, name: &OsStr, key: Key, kind: u32) -> u64 {
        let kind = kind & libc::S_IFMT;
        let name_key = (parent, name.to_os_string());
        // The name may point to another file than we remembered (replaced underneath us).
        if let Some(old) = self.by_name.get(&name_key).copied() {
            if self.nodes.get(&old).map(|n| n.key != key || n.kind != kind).unwrap_or(true) {
                self.remove_name(parent, name);
            }
        }
        let ino = match self.by_key.get(&key).copied() {
            Some(ino) if self.nodes.get(&ino).map(|n| n.kind == kind).unwrap_or(false) => ino,
            _ => {
                let ino = self.next;
                self.next += 1;
                self.nodes.insert(ino, Node { key, names: Vec::new(), lookups: 0, children: 0, kind });
                self.by_key.insert(key, ino);
                ino
            }
        };
        if !self.by_name.contains_key(&name_key) {
            self.by_name.insert(name_key.clone(), ino);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.names.push(name_key);
            }
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children += 1;
            }
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
        ino
    }

    pub fn forget(&mut self, ino: u64, nlookup: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(nlookup);
        }
        self.maybe_drop(ino);
    }

    /// Forgets the name `name` in `parent` (unlink, rmdir, overwritten by a rename).
    pub fn remove_name(&mut self, parent: u64, name: &OsStr) {
        let name_key = (parent, name.to_os_string());
        let Some(ino) = self.by_name.remove(&name_key) else { return };
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.names.retain(|k| *k != name_key);
            if n.names.is_empty() && ino != ROOT {
                let key = n.key;
                if self.by_key.get(&key) == Some(&ino) {
                    self.by_key.remove(&key);
                }
            }
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.maybe_drop(parent);
        self.maybe_drop(ino);
    }

    /// Mirrors a successful rename in the table. With `exchange`, both names swap their files.
    pub fn rename(&mut self, p1: u64, n1: &OsStr, p2: u64, n2: &OsStr, exchange: bool) {
        let k1 = (p1, n1.to_os_string());
        let k2 = (p2, n2.to_os_string());
        if k1 == k2 {
            return;
        }
        let a = self.by_name.get(&k1).copied();
        let b = self.by_name.get(&k2).copied();
        if !exchange {
            // The overwritten target loses its name first.
            if b.is_some() {
                self.remove_name(p2, n2);
            }
            if let Some(a) = a {
                self.move_name(a, &k1, k2);
            }
            return;
        }
        // Exchange: detach both names, then attach them crosswise.
        if let Some(a) = a {
            self.by_name.remove(&k1);
            if let Some(n) = self.nodes.get_mut(&a) {
                n.names.retain(|k| *k != k1);
            }
        }
        if let Some(b) = b {
            self.by_name.remove(&k2);
            if let Some(n) = self.nodes.get_mut(&b) {
                n.names.retain(|k| *k != k2);
            }
        }
        // Children counts: names move between parents.
        if let Some(a) = a {
            self.attach(a, k2.clone());
            self.dec_children(p1);
        }
        if let Some(b) = b {
            self.attach(b, k1.clone());
            self.dec_children(p2);
        }
        for ino in [a, b].into_iter().flatten() {
            self.fix_key_index(ino);
        }
        self.maybe_drop(p1);
        self.maybe_drop(p2);
    }

    fn move_name(&mut self, ino: u64, from: &(u64, OsString), to: (u64, OsString)) {
        self.by_name.remove(from);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.names.retain(|k| k != from);
        }
        let old_parent = from.0;
        self.attach(ino, to);
        self.dec_children(old_parent);
        self.maybe_drop(old_parent);
    }

    fn attach(&mut self, ino: u64, name_key: (u64, OsString)) {
        let parent = name_key.0;
        self.by_name.insert(name_key.clone(), ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            // The newest name first: it is the one the application just used.
            n.names.insert(0, name_key);
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
    }

    fn dec_children(&mut self, parent: u64) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
    }

    fn fix_key_index(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get(&ino) {
            if n.names.is_empty() && self.by_key.get(&n.key) == Some(&ino) {
                let key = n.key;
                self.by_key.remove(&key);
            }
        }
    }

    fn maybe_drop(&mut self, ino: u64) {
        let mut stack = vec![ino];
        while let Some(ino) = stack.pop() {
            if ino == ROOT {
                continue;
            }
            let Some(n) = self.nodes.get(&ino) else { continue };
            if n.lookups > 0 || n.children > 0 {
                continue;
            }
            let Some(n) = self.nodes.remove(&ino) else { continue };
            if self.by_key.get(&n.key) == Some(&ino) {
                self.by_key.remove(&n.key);
            }
            for k in n.names {
                self.by_name.remove(&k);
                if let Some(p) = self.nodes.get_mut(&k.0) {
                    p.children = p.children.saturating_sub(1);
                }
                stack.push(k.0);
            }
        }
    }

    /// Number of live nodes (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn paths_follow_renames_of_parents() {
        let mut t = Inodes::new((1, 1));
        let d = t.lookup(ROOT, os("d"), (1, 2), libc::S_IFDIR);
        let f = t.lookup(d, os("f"), (1, 3), libc::S_IFREG);
        assert_eq!(t.path(f).unwrap(), b"d/f");
        let e = t.lookup(ROOT, os("e"), (1, 4), libc::S_IFDIR);
        t.rename(ROOT, os("d"), e, os("d2"), false);
        assert_eq!(t.path(f).unwrap(), b"e/d2/f");
        // The kernel forgets the directory but the file is still referenced: path still works.
        t.forget(d, 1);
        assert_eq!(t.path(f).unwrap(), b"e/d2/f");
        t.forget(f, 1);
        t.forget(e, 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn hard_links_share_a_node_and_unlink_keeps_the_other_name() {
        let mut t = Inodes::new((1, 1));
        let a = t.lookup(ROOT, os("a"), (1, 5), libc::S_IFREG);
        let b = t.lookup(ROOT, os("b"), (1, 5), libc::S_IFREG);
        assert_eq!(a, b);
        t.remove_name(ROOT, os("a"));
        assert_eq!(t.path(a).unwrap(), b"b");
        t.remove_name(ROOT, os("b"));
        assert_eq!(t.path(a), None);
        // The inode number is reused underneath for a new file: a fresh node.
        let c = t.lookup(ROOT, os("c"), (1, 5), libc::S_IFREG);
        assert_ne!(c, a);
    }

    #[test]
    fn exchange_swaps_names() {
        let mut t = Inodes::new((1, 1));
        let a = t.lookup(ROOT, os("a"), (1, 5), libc::S_IFREG);
        let d = t.lookup(ROOT, os("d"), (1, 6), libc::S_IFDIR);
        let b = t.lookup(d, os("b"), (1, 7), libc::S_IFDIR);
        t.rename(ROOT, os("a"), d, os("b"), true);
        assert_eq!(t.path(a).unwrap(), b"d/b");
        assert_eq!(t.path(b).unwrap(), b"a");
        t.rename(d, os("b"), ROOT, os("z"), false);
        assert_eq!(t.path(a).unwrap(), b"z");
        // Overwriting rename: the target loses its name.
        t.rename(ROOT, os("z"), ROOT, os("a"), false);
        assert_eq!(t.path(a).unwrap(), b"a");
        assert_eq!(t.path(b), None);
    }
}
