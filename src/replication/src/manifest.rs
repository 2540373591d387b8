//! Manifests: what a replicated directory holds, down to a blake3 hash per block, so two copies can
//! be compared precisely (`tandem verify`) and a resync after an unknown divergence can send only
//! the blocks whose hashes differ.
//!
//! The walk never follows a symlink: directories are opened relative to their parent's fd with
//! `O_NOFOLLOW | O_DIRECTORY`, entries are `lstat`ed, and xattrs are read with the `l*` calls. Each
//! regular file is hashed per `BLOCK_SIZE` block and as a whole; a block that is entirely a hole
//! (found with `SEEK_DATA`) is not read: its hash is the hash of zeros, which is what reading it
//! would give, so a sparse copy and a dense copy of the same bytes have the same manifest (the
//! allocated size tells them apart, and `diff` compares it only on request).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, SeekFrom};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::op::RelPath;

/// Hashing granularity (and the unit of a block-hash resync).
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Largest xattr value Linux allows (XATTR_SIZE_MAX), and largest name list (XATTR_LIST_MAX).
const XATTR_MAX: usize = 65536;

pub type Hash = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

/// One entry of the tree (the root itself is the entry with the empty path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Permission and set-id bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `st_size` (for a symlink: the target's length).
    pub size: u64,
    pub mtime: Time,
    /// Device number of a character or block device.
    pub rdev: u64,
    /// Bytes allocated on disk (`st_blocks * 512`): differs between a sparse and a dense copy.
    pub allocated: u64,
    pub symlink_target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For an inode with several names in the tree: the first of those names (in byte order), the
    /// same on every name of the group. `None` for a single name.
    pub link_group: Option<RelPath>,
    /// Regular files: blake3 of each `BLOCK_SIZE` block (the last may be shorter).
    pub blocks: Vec<Hash>,
    /// Regular files: blake3 of the whole content.
    pub hash: Option<Hash>,
    /// What this copy's activity log says may differ from the peer's (a listing after a crash
    /// as primary: [`build_listing`]).
    #[serde(default)]
    pub suspect: Option<Suspect>,
    /// Only the name and the kind are known (a names listing, [`build_names`]): the rest of the
    /// entry is zero.
    #[serde(default)]
    pub bare: bool,
}

impl Entry {
    /// An entry of `kind` with nothing else set (root-owned, mode 0, empty, time 0): for tests and
    /// for building expectations.
    pub fn bare(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Time { sec: 0, nsec: 0 },
            rdev: 0,
            allocated: 0,
            symlink_target: None,
            xattrs: BTreeMap::new(),
            link_group: None,
            blocks: Vec::new(),
            hash: None,
            suspect: None,
            bare: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub block_size: u64,
    pub entries: BTreeMap<RelPath, Entry>,
    /// A catch-up's listing by a node back from a crash as primary: its activity log was found
    /// sound, and the files it names carry `Entry::suspect` (see activity.rs).
    #[serde(default)]
    pub activity_log: bool,
}

/// A file this copy may hold differently from the peer's (its activity log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Suspect {
    Whole,
    /// Byte ranges (zone-aligned).
    Ranges(Vec<(u64, u64)>),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest of {root}: {what}: {source}")]
    Io { root: PathBuf, what: String, source: io::Error },
}

/// Builds the manifest of the tree at `root`.
pub fn build(root: &Path) -> Result<Manifest, ManifestError> {
    build_with(root, None)
}

/// Stats every entry of the tree under `root` and keeps nothing: it brings the directories and
/// inodes into the cache, so that a listing asked for a moment later (a catch-up's `List`) does
/// not wait on the disk entry by entry. Errors are ignored: the listing reports its own.
pub fn prewarm(root: &Path) {
    prewarm_with(root, true)
}

/// As [`prewarm`]; `stat: false` reads the directories only.
pub fn prewarm_with(root: &Path, stat: bool) {
    let Ok(root_fd) = rfs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return;
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Paths, not descriptors, wait on the stack: a wide tree must not run out of descriptors.
    let mut stack: Vec<Vec<u8>> = vec![b".".to_vec()];
    while let Some(path) = stack.pop() {
        let Ok(c) = CString::new(path.clone()) else { continue };
        let Ok(dir) = rfs::openat(&root_fd, c.as_c_str(), dir_flags, Mode::empty()) else { continue };
        let Ok(mut d) = Dir::read_from(&dir) else { continue };
        while let Some(Ok(ent)) = d.read() {
            let n = ent.file_name();
            if n.to_bytes() == b"." || n.to_bytes() == b".." {
                continue;
            }
            if stat {
                let _ = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW);
            }
            if ent.file_type() == FileType::Directory {
                let mut sub = path.clone();
                sub.push(b'/');
                sub.extend_from_slice(n.to_bytes());
                stack.push(sub);
            }
        }
    }
}

/// As [`build`], with block hashes only for the regular files named in `hash` (None: all). The
/// others have no `blocks` and no `hash`: a catch-up trusting the zone log reads only what it
/// must on the secondary too.
pub fn build_with(root: &Path, hash: Option<&std::collections::HashSet<RelPath>>) -> Result<Manifest, ManifestError> {
    walk_tree(root, hash, None, None)
}

/// The walk behind [`build_with`] and [`build_listing`]: with `activity`, each regular file it
/// names (by st_dev, st_ino) gets its `suspect`, from the stat the walk takes anyway.
fn walk_tree(
    root: &Path,
    hash: Option<&std::collections::HashSet<RelPath>>,
    activity: Option<&HashMap<(u64, u64), crate::zonelog::Tracked>>,
    names: Option<&std::collections::HashSet<RelPath>>,
) -> Result<Manifest, ManifestError> {
    let err = |what: String| move |e: Errno| ManifestError::Io { root: root.to_owned(), what, source: e.into() };
    let root_fd = rfs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(err("open".into()))?;
    let partial = names.is_some();
    let mut w = Walker { root, entries: BTreeMap::new(), inodes: HashMap::new(), hash, activity, names, partial };
    let st = rfs::fstat(&root_fd).map_err(err("stat".into()))?;
    let root_entry = w.entry(root_fd.as_fd(), c".", &RelPath(Vec::new()), &st)?;
    w.entries.insert(RelPath(Vec::new()), root_entry);
    w.walk(root_fd, Vec::new())?;
    w.link_groups();
    Ok(Manifest { block_size: BLOCK_SIZE, entries: w.entries, activity_log: false })
}

/// A names listing, for a catch-up that trusts a zone log vouching for every namespace change
/// (zonelog.rs): the entries of the directories in `full`, the directories, the files in `hash`
/// (hashed) and whatever the directory does not type (`DT_UNKNOWN`) are listed whole; every other
/// entry is [`Entry::bare`]: its name and kind, from the directory alone, without a `stat`.
pub fn build_names(
    root: &Path,
    hash: &std::collections::HashSet<RelPath>,
    full: &std::collections::HashSet<RelPath>,
) -> Result<Manifest, ManifestError> {
    walk_tree(root, Some(hash), None, Some(full))
}

/// The entries of the directory `dir` (relative to `root`), listed whole without hashes, not
/// below: what a names catch-up asks for a directory changed after its listing. A directory that
/// is not there gives no entries.
pub fn build_dir(root: &Path, dir: &RelPath) -> Result<Manifest, ManifestError> {
    let err = |what: String| move |e: Errno| ManifestError::Io { root: root.to_owned(), what, source: e.into() };
    let root_fd = rfs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(err("open".into()))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = if dir.0.is_empty() {
        Ok(root_fd)
    } else {
        let c = CString::new(dir.0.clone()).map_err(|_| ManifestError::Io {
            root: root.to_owned(),
            what: "a path with a NUL byte".into(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        rfs::openat(&root_fd, c.as_c_str(), flags, Mode::empty())
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
            return Ok(Manifest { block_size: BLOCK_SIZE, entries: BTreeMap::new(), activity_log: false })
        }
        Err(e) => return Err(err(String::from_utf8_lossy(&dir.0).into_owned())(e)),
    };
    let none = std::collections::HashSet::new();
    let mut w = Walker {
        root,
        entries: BTreeMap::new(),
        inodes: HashMap::new(),
        hash: Some(&none),
        activity: None,
        names: None,
        partial: true,
    };
    w.list(fd, dir.0.clone(), false)?;
    w.link_groups();
    Ok(Manifest { block_size: BLOCK_SIZE, entries: w.entries, activity_log: false })
}

/// As [`build_with`], and with the files `log` (an activity log left by a crash) names, by path
/// (`Manifest::activity`). The log counts only if every directory it recorded is still the same
/// (st_dev, st_ino) at `root/<index>`: inode numbers mean nothing on another filesystem.
pub fn build_listing(
    root: &Path,
    hash: Option<&std::collections::HashSet<RelPath>>,
    log: Option<&crate::activity::Recorded>,
) -> Result<Manifest, ManifestError> {
    let Some(log) = log else { return build_with(root, hash) };
    let same_roots = !log.roots.is_empty()
        && log
            .roots
            .iter()
            .all(|(i, key)| rfs::stat(root.join(i.to_string())).is_ok_and(|st| (st.st_dev, st.st_ino) == *key));
    if !same_roots {
        tracing::warn!(root = %root.display(), "activity log not used: a replicated directory is not the one it recorded");
        return build_with(root, hash);
    }
    let mut m = walk_tree(root, hash, Some(&log.files), None)?;
    m.activity_log = true;
    Ok(m)
}

struct Walker<'a> {
    root: &'a Path,
    entries: BTreeMap<RelPath, Entry>,
    /// (dev, ino) of non-directories with st_nlink > 1 → their names in the tree.
    inodes: HashMap<(u64, u64), Vec<RelPath>>,
    /// The regular files to hash (None: all).
    hash: Option<&'a std::collections::HashSet<RelPath>>,
    /// An activity log's files, to mark as suspect.
    activity: Option<&'a HashMap<(u64, u64), crate::zonelog::Tracked>>,
    /// A names listing ([`build_names`]): the directories whose entries are listed whole.
    names: Option<&'a std::collections::HashSet<RelPath>>,
    /// A listing of part of the tree ([`build_names`], [`build_dir`]): see `link_groups`.
    partial: bool,
}

impl Walker<'_> {
    fn err<'a>(&'a self, what: impl Fn() -> String + 'a) -> impl FnOnce(Errno) -> ManifestError + 'a {
        move |e| ManifestError::Io { root: self.root.to_owned(), what: what(), source: e.into() }
    }

    /// Hard-link groups: every name of an inode with several links names the group by its first
    /// name seen (BTreeSet order, the same on both copies). In a partial listing (`names`), an
    /// inode with several links seen under one name only (its others in a directory listed by
    /// name only) is a group of its own: a catch-up must not keep it as a single-link file.
    fn link_groups(&mut self) {
        let partial = self.partial;
        for mut names in std::mem::take(&mut self.inodes).into_values() {
            if names.len() < 2 && !partial {
                continue;
            }
            names.sort();
            let first = names[0].clone();
            for n in names {
                if let Some(e) = self.entries.get_mut(&n) {
                    e.link_group = Some(first.clone());
                }
            }
        }
    }

    fn walk(&mut self, dir: OwnedFd, prefix: Vec<u8>) -> Result<(), ManifestError> {
        self.list(dir, prefix, true)
    }

    /// Lists the entries of `dir` (at `prefix`), and below if `deep`.
    fn list(&mut self, dir: OwnedFd, prefix: Vec<u8>, deep: bool) -> Result<(), ManifestError> {
        let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        let mut names = Vec::new();
        {
            let mut d = Dir::read_from(&dir).map_err(self.err(|| format!("read directory {:?}", show(&prefix))))?;
            while let Some(ent) = d.read() {
                let ent = ent.map_err(self.err(|| format!("read directory {:?}", show(&prefix))))?;
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push((ent.file_name().to_owned(), ent.file_type()));
                }
            }
        }
        // A names listing: the entries of a directory not in `full` are bare, unless typed as
        // directories (or not typed), or to be hashed.
        let bare_here = self.names.is_some_and(|full| !full.contains(&RelPath(prefix.clone())));
        for (name, dtype) in names {
            let mut rel = prefix.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.to_bytes());
            let rel = RelPath(rel);
            let bare_kind = match dtype {
                FileType::RegularFile => Some(Kind::File),
                FileType::Symlink => Some(Kind::Symlink),
                FileType::Fifo => Some(Kind::Fifo),
                FileType::Socket => Some(Kind::Socket),
                FileType::CharacterDevice => Some(Kind::CharDev),
                FileType::BlockDevice => Some(Kind::BlockDev),
                FileType::Directory | FileType::Unknown => None,
            };
            if let Some(kind) = bare_kind.filter(|_| bare_here && self.hash.is_none_or(|h| !h.contains(&rel))) {
                self.entries.insert(rel, Entry { bare: true, ..Entry::bare(kind) });
                continue;
            }
            let st = rfs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(self.err(|| show(&rel.0)))?;
            let mut entry = self.entry(dir.as_fd(), &name, &rel, &st)?;
            if entry.kind == Kind::File {
                entry.suspect = match self.activity.and_then(|a| a.get(&(st.st_dev, st.st_ino))) {
                    Some(crate::zonelog::Tracked::Whole) => Some(Suspect::Whole),
                    Some(crate::zonelog::Tracked::Ranges(r)) => Some(Suspect::Ranges(r.clone())),
                    _ => None,
                };
            }
            let is_dir = entry.kind == Kind::Dir;
            if !is_dir && st.st_nlink > 1 {
                self.inodes.entry((st.st_dev, st.st_ino)).or_default().push(rel.clone());
            }
            self.entries.insert(rel.clone(), entry);
            if is_dir && deep {
                let sub = rfs::openat(
                    &dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.err(|| show(&rel.0)))?;
                self.walk(sub, rel.0)?;
            }
        }
        Ok(())
    }

    fn entry(&self, dir: BorrowedFd<'_>, name: &CStr, rel: &RelPath, st: &rfs::Stat) -> Result<Entry, ManifestError> {
        let show = || String::from_utf8_lossy(&rel.0).into_owned();
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDev,
            FileType::BlockDevice => Kind::BlockDev,
            FileType::Unknown => Kind::File,
        };
        let symlink_target = if kind == Kind::Symlink {
            Some(rfs::readlinkat(dir, name, Vec::new()).map_err(self.err(show))?.into_bytes())
        } else {
            None
        };
        let (blocks, hash) = if kind == Kind::File && self.hash.is_none_or(|h| h.contains(rel)) {
            let fd = rfs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map_err(self.err(show))?;
            let (b, h) = hash_file(fd, st.st_size as u64).map_err(|e| ManifestError::Io {
                root: self.root.to_owned(),
                what: show(),
                source: e,
            })?;
            (b, Some(h))
        } else {
            (Vec::new(), None)
        };
        Ok(Entry {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: Time { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 },
            rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) { st.st_rdev } else { 0 },
            allocated: st.st_blocks as u64 * 512,
            symlink_target,
            xattrs: read_xattrs(dir, name).map_err(self.err(show))?,
            link_group: None,
            blocks,
            hash,
            suspect: None,
            bare: false,
        })
    }
}

/// The xattrs of `dir/name`, not following a final symlink.
fn read_xattrs(dir: BorrowedFd<'_>, name: &CStr) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Errno> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let path = CString::new(path).expect("no NUL");
    let mut list = vec![0u8; XATTR_MAX];
    let n = match rfs::llistxattr(&path, &mut list) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    let mut value = vec![0u8; XATTR_MAX];
    for xname in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let c = CString::new(xname).expect("split on NUL");
        match rfs::lgetxattr(&path, &c, &mut value) {
            Ok(len) => {
                out.insert(xname.to_vec(), value[..len].to_vec());
            }
            // Removed between list and get: not there.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Hashes a file per block and as a whole, skipping the reads of blocks that are wholly holes.
pub fn hash_file(fd: OwnedFd, size: u64) -> io::Result<(Vec<Hash>, Hash)> {
    let mut whole = blake3::Hasher::new();
    let mut blocks = Vec::with_capacity(size.div_ceil(BLOCK_SIZE) as usize);
    let zeros = vec![0u8; BLOCK_SIZE as usize];
    let zero_block = *blake3::hash(&zeros).as_bytes();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    // Offset of the next data at or after the current block (u64::MAX: none up to the end).
    let mut next_data = 0u64;
    let mut file = File::from(fd);
    let mut off = 0u64;
    while off < size {
        let len = BLOCK_SIZE.min(size - off);
        if next_data < off {
            next_data = match rfs::seek(&file, SeekFrom::Data(off)) {
                Ok(d) => d,
                Err(Errno::NXIO) => u64::MAX,
                // No SEEK_DATA on this file system: read everything.
                Err(_) => off,
            };
        }
        if next_data >= off + len {
            let z = &zeros[..len as usize];
            whole.update(z);
            blocks.push(if len == BLOCK_SIZE { zero_block } else { *blake3::hash(z).as_bytes() });
        } else {
            let b = &mut buf[..len as usize];
            rfs::seek(&file, SeekFrom::Start(off))?;
            file.read_exact(b)?;
            whole.update(b);
            blocks.push(*blake3::hash(b).as_bytes());
        }
        off += len;
    }
    Ok((blocks, *whole.finalize().as_bytes()))
}

/// Which side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    A,
    B,
}

/// What to compare beyond names, kinds, modes, owners, sizes, content, targets, xattrs and links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffOptions {
    /// mtime of regular files, symlinks and special files (set by the replicated SetTimes).
    pub file_mtime: bool,
    /// mtime of directories: it moves with every create or unlink, so two copies fed the same
    /// operations a few microseconds apart differ; off by default.
    pub dir_mtime: bool,
    /// Allocated size (sparse vs. dense copy of the same bytes); off by default.
    pub allocated: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions { file_mtime: true, dir_mtime: false, allocated: false }
    }
}

/// One precise difference between two manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Difference {
    /// Present only on `side`.
    Only {
        path: RelPath,
        side: Side,
        kind: Kind,
    },
    Kind {
        path: RelPath,
        a: Kind,
        b: Kind,
    },
    Mode {
        path: RelPath,
        a: u32,
        b: u32,
    },
    Owner {
        path: RelPath,
        a: (u32, u32),
        b: (u32, u32),
    },
    Size {
        path: RelPath,
        a: u64,
        b: u64,
    },
    /// Content differs in these blocks (indices of `BLOCK_SIZE` blocks, ascending).
    Content {
        path: RelPath,
        blocks: Vec<u64>,
    },
    Mtime {
        path: RelPath,
        a: Time,
        b: Time,
    },
    SymlinkTarget {
        path: RelPath,
        a: Vec<u8>,
        b: Vec<u8>,
    },
    Rdev {
        path: RelPath,
        a: u64,
        b: u64,
    },
    /// An xattr missing on one side (`None`) or with another value.
    Xattr {
        path: RelPath,
        name: Vec<u8>,
        a: Option<Vec<u8>>,
        b: Option<Vec<u8>>,
    },
    /// Hard-link groups differ (`None`: a single name).
    HardLinks {
        path: RelPath,
        a: Option<RelPath>,
        b: Option<RelPath>,
    },
    Allocated {
        path: RelPath,
        a: u64,
        b: u64,
    },
}

fn s(p: &[u8]) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// Ascending indices as ranges: `0-3, 7`.
fn ranges(v: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(", ")
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Only { path, side, kind } => {
                let other = if *side == Side::A { "B" } else { "A" };
                write!(f, "{}: {kind:?} missing on {other}", s(&path.0))
            }
            Difference::Kind { path, a, b } => write!(f, "{}: kind differs: {a:?} vs {b:?}", s(&path.0)),
            Difference::Mode { path, a, b } => write!(f, "{}: mode differs: {a:04o} vs {b:04o}", s(&path.0)),
            Difference::Owner { path, a, b } => {
                write!(f, "{}: owner differs: {}:{} vs {}:{}", s(&path.0), a.0, a.1, b.0, b.1)
            }
            Difference::Size { path, a, b } => write!(f, "{}: size differs: {a} vs {b}", s(&path.0)),
            Difference::Content { path, blocks } => {
                write!(f, "{}: content differs in blocks [{}] of {} KiB", s(&path.0), ranges(blocks), BLOCK_SIZE / 1024)
            }
            Difference::Mtime { path, a, b } => write!(f, "{}: mtime differs: {a} vs {b}", s(&path.0)),
            Difference::SymlinkTarget { path, a, b } => {
                write!(f, "{}: symlink target differs: {:?} vs {:?}", s(&path.0), s(a), s(b))
            }
            Difference::Rdev { path, a, b } => write!(f, "{}: device number differs: {a:#x} vs {b:#x}", s(&path.0)),
            Difference::Xattr { path, name, a, b } => {
                let v = |x: &Option<Vec<u8>>| match x {
                    None => "absent".to_string(),
                    Some(v) => format!("{} bytes", v.len()),
                };
                write!(f, "{}: xattr {} differs: {} vs {}", s(&path.0), s(name), v(a), v(b))
            }
            Difference::HardLinks { path, a, b } => {
                let v = |x: &Option<RelPath>| {
                    x.as_ref().map(|p| format!("linked with {}", s(&p.0))).unwrap_or("single name".into())
                };
                write!(f, "{}: hard links differ: {} vs {}", s(&path.0), v(a), v(b))
            }
            Difference::Allocated { path, a, b } => {
                write!(f, "{}: allocated size differs: {a} vs {b} (sparse vs dense)", s(&path.0))
            }
        }
    }
}

/// Compares two manifests with the default options.
pub fn diff(a: &Manifest, b: &Manifest) -> Vec<Difference> {
    diff_with(a, b, &DiffOptions::default())
}

/// Every difference between `a` and `b`, in path order. Under a directory present on one side
/// only, every entry is reported (a resync needs the whole list).
pub fn diff_with(a: &Manifest, b: &Manifest, o: &DiffOptions) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut ia = a.entries.iter().peekable();
    let mut ib = b.entries.iter().peekable();
    loop {
        match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some((pa, ea)), None) => {
                out.push(Difference::Only { path: (*pa).clone(), side: Side::A, kind: ea.kind });
                ia.next();
            }
            (None, Some((pb, eb))) => {
                out.push(Difference::Only { path: (*pb).clone(), side: Side::B, kind: eb.kind });
                ib.next();
            }
            (Some((pa, ea)), Some((pb, eb))) => match pa.cmp(pb) {
                std::cmp::Ordering::Less => {
                    out.push(Difference::Only { path: (*pa).clone(), side: Side::A, kind: ea.kind });
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(Difference::Only { path: (*pb).clone(), side: Side::B, kind: eb.kind });
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    entry_diff(pa, ea, eb, o, &mut out);
                    ia.next();
                    ib.next();
                }
            },
        }
    }
    out
}

fn entry_diff(path: &RelPath, a: &Entry, b: &Entry, o: &DiffOptions, out: &mut Vec<Difference>) {
    let p = || path.clone();
    if a.kind != b.kind {
        out.push(Difference::Kind { path: p(), a: a.kind, b: b.kind });
        return;
    }
    if a.mode != b.mode && a.kind != Kind::Symlink {
        out.push(Difference::Mode { path: p(), a: a.mode, b: b.mode });
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        out.push(Difference::Owner { path: p(), a: (a.uid, a.gid), b: (b.uid, b.gid) });
    }
    if a.kind == Kind::File {
        if a.size != b.size {
            out.push(Difference::Size { path: p(), a: a.size, b: b.size });
        }
        let n = a.blocks.len().max(b.blocks.len());
        let blocks: Vec<u64> = (0..n).filter(|&i| a.blocks.get(i) != b.blocks.get(i)).map(|i| i as u64).collect();
        if !blocks.is_empty() {
            out.push(Difference::Content { path: p(), blocks });
        } else if a.hash != b.hash {
            // Same block hashes but another whole hash cannot happen with the same block size;
            // report it rather than trust it.
            out.push(Difference::Content { path: p(), blocks: (0..n as u64).collect() });
        }
        if o.allocated && a.allocated != b.allocated {
            out.push(Difference::Allocated { path: p(), a: a.allocated, b: b.allocated });
        }
    }
    let mtime = if a.kind == Kind::Dir { o.dir_mtime } else { o.file_mtime };
    if mtime && a.mtime != b.mtime {
        out.push(Difference::Mtime { path: p(), a: a.mtime, b: b.mtime });
    }
    if a.symlink_target != b.symlink_target {
        out.push(Difference::SymlinkTarget {
            path: p(),
            a: a.symlink_target.clone().unwrap_or_default(),
            b: b.symlink_target.clone().unwrap_or_default(),
        });
    }
    if a.rdev != b.rdev {
        out.push(Difference::Rdev { path: p(), a: a.rdev, b: b.rdev });
    }
    let names: std::collections::BTreeSet<&Vec<u8>> = a.xattrs.keys().chain(b.xattrs.keys()).collect();
    for n in names {
        let (va, vb) = (a.xattrs.get(n), b.xattrs.get(n));
        if va != vb {
            out.push(Difference::Xattr { path: p(), name: n.clone(), a: va.cloned(), b: vb.cloned() });
        }
    }
    if a.link_group != b.link_group {
        out.push(Difference::HardLinks { path: p(), a: a.link_group.clone(), b: b.link_group.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Recorded;
    use crate::zonelog::Tracked;
    use std::os::unix::fs::MetadataExt;

    fn key(p: &Path) -> (u64, u64) {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_listing_names_what_the_activity_log_recorded_by_path() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("0");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in ["a", "b", "sub/c"] {
            std::fs::write(dir.join(f), b"data").unwrap();
        }
        let mut files = HashMap::new();
        files.insert(key(&dir.join("a")), Tracked::Ranges(vec![(0, 1 << 20)]));
        files.insert(key(&dir.join("sub/c")), Tracked::Whole);
        files.insert((1, 1), Tracked::Whole); // a file gone since: nothing to name
        let log = Recorded { roots: vec![(0, key(&dir))], files };
        let m = build_listing(d.path(), None, Some(&log)).unwrap();
        assert!(m.activity_log);
        let suspect = |p: &str| m.entries[&RelPath(p.as_bytes().to_vec())].suspect.clone();
        assert_eq!(suspect("0/a"), Some(Suspect::Ranges(vec![(0, 1 << 20)])));
        assert_eq!(suspect("0/sub/c"), Some(Suspect::Whole));
        assert_eq!(suspect("0/b"), None);
        assert_eq!(m.entries.values().filter(|e| e.suspect.is_some()).count(), 2);

        // The directory is not the one the log recorded (another filesystem, a renumbered
        // device): inode numbers mean nothing, the log is not used.
        let moved = Recorded { roots: vec![(0, (key(&dir).0, key(&dir).1 + 1))], files: log.files.clone() };
        let m = build_listing(d.path(), None, Some(&moved)).unwrap();
        assert!(!m.activity_log);
        assert!(m.entries.values().all(|e| e.suspect.is_none()));
        // No roots at all: not used either.
        let m = build_listing(d.path(), None, Some(&Recorded { roots: vec![], files: log.files })).unwrap();
        assert!(!m.activity_log);
    }
}
