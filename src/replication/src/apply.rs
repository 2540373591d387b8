//! The secondary's applier: applies replicated operations, in order, to the replica directory.
//!
//! Everything is done relative to a directory fd of the replica root, with the `*at` syscalls
//! (rustix). Paths from the wire are untrusted: they are validated (relative, no `.`/`..`, no empty
//! component, no NUL) and resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, so no component, not even a symlink planted in the replica, can lead
//! outside the root. The final component is never followed either: by-path calls use
//! `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`, and the calls that have no such flag (chmod, xattrs) go
//! through `/proc/self/fd/<dir fd>/<name>` with the `l*` variants or after checking the type on an
//! `O_PATH` fd. Paths on the primary come from the FUSE layer, which hands over names within real
//! directories, so a legitimate stream never needs to traverse a symlink.
//!
//! Durability: after `Op::Fsync` returns Ok, every operation applied before it is durable, not only
//! the file named (the stream acknowledges Durable cumulatively). The applier tracks what is dirty
//! since the last sync and fsyncs exactly that: the open handles with unsynced data, the files
//! closed with unsynced data (kept open until the sync), the entries whose metadata changed and the
//! directories whose entries changed (files before directories). Only when that set grows past
//! `MAX_DIRTY`, or names something it cannot fsync by name (a symlink, a device, a name renamed
//! away since), or for `Fsync` without a handle, does it call syncfs: on a disk shared with other
//! work, syncfs flushes everything dirty there, which can take seconds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::fs::{FallocateFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

use crate::op::{Handle, Op, RelPath, TimeSet};

/// Resolution rules for every path from the wire.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot open replica root {root}: {source}")]
    Root { root: PathBuf, source: io::Error },
    #[error("{op}: invalid path {path:?}: {reason}")]
    InvalidPath { op: &'static str, path: String, reason: &'static str },
    #[error("{op}: unknown handle {fh}")]
    UnknownHandle { op: &'static str, fh: Handle },
    #[error("{op}: handle {fh} is already open")]
    HandleInUse { op: &'static str, fh: Handle },
    #[error("{op} {what}: {source}")]
    Os { op: &'static str, what: String, source: io::Error },
}

impl ApplyError {
    /// The OS error, if the failure came from a syscall.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            ApplyError::Os { source, .. } | ApplyError::Root { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Short name of an operation, for errors and logs.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Open { .. } => "open",
        Op::Create { .. } => "create",
        Op::Close { .. } => "close",
        Op::Write { .. } => "write",
        Op::Truncate { .. } => "truncate",
        Op::TruncatePath { .. } => "truncate-path",
        Op::Fallocate { .. } => "fallocate",
        Op::Fsync { .. } => "fsync",
        Op::Mknod { .. } => "mknod",
        Op::Mkdir { .. } => "mkdir",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Symlink { .. } => "symlink",
        Op::Link { .. } => "link",
        Op::Rename { .. } => "rename",
        Op::Chmod { .. } => "chmod",
        Op::Chown { .. } => "chown",
        Op::SetTimes { .. } => "set-times",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
    }
}

/// Removes the directory `name` of `dir` with everything below it, never following a symlink.
fn remove_tree_in(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(), Errno> {
    let fd =
        rfs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(&fd)? {
        let entry = entry?;
        if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
            names.push((entry.file_name().to_owned(), entry.file_type() == FileType::Directory));
        }
    }
    for (child, is_dir) in names {
        match rfs::unlinkat(&fd, &child, if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() }) {
            Ok(()) => {}
            Err(Errno::NOTEMPTY) if is_dir => remove_tree_in(fd.as_fd(), &child)?,
            // d_type unknown on this file system, or the type was a guess.
            Err(Errno::ISDIR) => remove_tree_in(fd.as_fd(), &child)?,
            Err(e) => return Err(e),
        }
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// The root's child directories that are on another file system than the root, one per file
/// system (several directories of one module are often on the same one).
fn child_mounts(root: &OwnedFd) -> Result<Vec<OwnedFd>, Errno> {
    let root_dev = rfs::fstat(root)?.st_dev;
    let mut seen = HashSet::from([root_dev]);
    let mut out = Vec::new();
    let dup = rfs::openat(root, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for entry in rfs::Dir::read_from(&dup)? {
        let entry = entry?;
        if entry.file_type() != FileType::Directory || matches!(entry.file_name().to_bytes(), b"." | b"..") {
            continue;
        }
        let fd = rfs::openat(
            root,
            entry.file_name(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if seen.insert(rfs::fstat(&fd)?.st_dev) {
            out.push(fd);
        }
    }
    Ok(out)
}

/// Displays a wire path (bytes) readably.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Checks a path from the wire: relative, components neither empty nor `.` nor `..`, no NUL.
/// The empty path names the root itself.
pub fn validate(path: &RelPath) -> Result<(), &'static str> {
    let p = &path.0;
    if p.is_empty() {
        return Ok(());
    }
    if p.contains(&0) {
        return Err("contains a NUL byte");
    }
    if p[0] == b'/' {
        return Err("is absolute");
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" => return Err("has an empty component"),
            b"." => return Err("has a `.` component"),
            b".." => return Err("has a `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// Entries (paths and closed files) tracked one by one before a sync falls back to syncfs.
const MAX_DIRTY: usize = 1024;

/// What is not yet durable since the last sync.
#[derive(Default)]
struct Dirty {
    /// Open handles with unsynced data.
    handles: HashSet<Handle>,
    /// Files closed with unsynced data, kept open until the sync.
    closed: Vec<File>,
    /// Entries whose inode changed (metadata; for directories, their entries), by path.
    paths: BTreeSet<Vec<u8>>,
    /// Too much to sync one by one, or a whole-replica sync was asked: syncfs.
    other: bool,
}

impl Dirty {
    fn touch(&mut self, path: &[u8]) {
        if self.other {
            return;
        }
        self.paths.insert(path.to_vec());
        if self.paths.len() + self.closed.len() > MAX_DIRTY {
            self.overflow();
        }
    }

    fn touch_parent(&mut self, path: &[u8]) {
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => b"",
        };
        self.touch(parent);
    }

    fn closed_dirty(&mut self, f: File) {
        if self.other {
            return;
        }
        self.closed.push(f);
        if self.paths.len() + self.closed.len() > MAX_DIRTY {
            self.overflow();
        }
    }

    fn overflow(&mut self) {
        self.other = true;
        self.paths.clear();
        self.closed.clear();
    }
}

/// Where a Ready secondary's activity log is installed (and removed) while its applier runs.
pub type ActivitySlot = std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<crate::activity::ActivityLog>>>>;

pub struct Applier {
    /// A Ready secondary's activity log: the zones it applies are recorded before they are
    /// written (its page cache acknowledges them: a power loss may lose them).
    activity: Option<ActivitySlot>,
    root: OwnedFd,
    root_path: PathBuf,
    /// Other file systems mounted on the root's children (a module with several directories:
    /// the root holds a bind mount of each), which a whole-replica sync must reach too.
    mounts: Vec<OwnedFd>,
    /// Syncs that fell back to syncfs (for tests and diagnostics).
    whole_syncs: u64,
    files: HashMap<Handle, File>,
    dirty: Dirty,
}

/// The directory holding a path's final component, and that component (`"."` for the root).
struct Located {
    dir: Option<OwnedFd>,
    name: CString,
}

impl Applier {
    /// Opens the replica root (which must exist and be a directory).
    pub fn open(root: &Path) -> Result<Applier, ApplyError> {
        // Not O_PATH: syncfs needs a real fd.
        let err = |e: Errno| ApplyError::Root { root: root.to_owned(), source: e.into() };
        let fd = rfs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(err)?;
        let mounts = child_mounts(&fd).map_err(err)?;
        Ok(Applier {
            activity: None,
            root: fd,
            root_path: root.to_owned(),
            mounts,
            whole_syncs: 0,
            files: HashMap::new(),
            dirty: Dirty::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// How many syncs had to sync the whole replica (syncfs) rather than what changed.
    pub fn whole_syncs(&self) -> u64 {
        self.whole_syncs
    }

    /// Number of handles open on behalf of the primary.
    pub fn open_handles(&self) -> usize {
        self.files.len()
    }

    /// True if nothing was changed since the last sync.
    pub fn is_clean(&self) -> bool {
        self.dirty.handles.is_empty()
            && !self.dirty.other
            && self.dirty.paths.is_empty()
            && self.dirty.closed.is_empty()
    }

    /// Closes every handle (the stream ended: the next stream opens its own).
    pub fn close_all(&mut self) {
        for fh in std::mem::take(&mut self.dirty.handles) {
            if let Some(f) = self.files.remove(&fh) {
                self.dirty.closed_dirty(f);
            }
        }
        self.files.clear();
    }

    /// Makes everything applied so far durable.
    pub fn sync(&mut self) -> Result<(), ApplyError> {
        self.sync_with(None)
    }

    fn sync_with(&mut self, datasync_fh: Option<Handle>) -> Result<(), ApplyError> {
        let err = |what: String| move |e: Errno| ApplyError::Os { op: "fsync", what, source: e.into() };
        let mut whole = self.dirty.other;
        if !whole {
            for fh in &self.dirty.handles {
                let f = &self.files[fh];
                if Some(*fh) == datasync_fh {
                    rfs::fdatasync(f).map_err(err(format!("handle {fh}")))?;
                } else {
                    rfs::fsync(f).map_err(err(format!("handle {fh}")))?;
                }
            }
            for f in &self.dirty.closed {
                rfs::fsync(f).map_err(err("a closed file".into()))?;
            }
            // Deepest first: an entry's inode before the directory that names it.
            let mut paths: Vec<&Vec<u8>> = self.dirty.paths.iter().collect();
            paths.sort_by_key(|p| {
                std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count() + usize::from(!p.is_empty()))
            });
            for p in paths {
                if !self.fsync_path(p) {
                    whole = true;
                    break;
                }
            }
        }
        if whole {
            self.whole_syncs += 1;
            rfs::syncfs(&self.root).map_err(err(format!("syncfs of {}", self.root_path.display())))?;
            for m in &self.mounts {
                rfs::syncfs(m).map_err(err(format!("syncfs of a directory under {}", self.root_path.display())))?;
            }
        }
        self.dirty = Dirty::default();
        Ok(())
    }

    /// fsyncs the regular file or directory at `path`; false when that is not possible by name
    /// (gone or renamed since, a symlink, a device or fifo that must not be opened, an error):
    /// the caller then syncs the whole replica.
    fn fsync_path(&self, path: &[u8]) -> bool {
        let rel = RelPath(path.to_vec());
        let Ok(probe) = self.open_beneath(&rel, OFlags::PATH, 0) else { return false };
        let kind = match rfs::fstat(&probe) {
            Ok(st) => FileType::from_raw_mode(st.st_mode),
            Err(_) => return false,
        };
        let flags = match kind {
            FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
            FileType::RegularFile => OFlags::RDONLY | OFlags::NONBLOCK,
            _ => return false,
        };
        match self.open_beneath(&rel, flags, 0) {
            Ok(fd) => rfs::fsync(&fd).is_ok(),
            Err(_) => false,
        }
    }

    fn file(&self, op: &'static str, fh: Handle) -> Result<&File, ApplyError> {
        self.files.get(&fh).ok_or(ApplyError::UnknownHandle { op, fh })
    }

    /// Validates `path` and opens the directory that holds its final component.
    fn locate(&self, op: &'static str, path: &RelPath) -> Result<Located, ApplyError> {
        validate(path).map_err(|reason| ApplyError::InvalidPath { op, path: show(&path.0), reason })?;
        let p = &path.0;
        if p.is_empty() {
            return Ok(Located { dir: None, name: c".".to_owned() });
        }
        let (parent, name) = match p.iter().rposition(|&b| b == b'/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (&p[..0], &p[..]),
        };
        let name = CString::new(name).expect("validated: no NUL");
        if parent.is_empty() {
            return Ok(Located { dir: None, name });
        }
        let parent_c = CString::new(parent).expect("validated: no NUL");
        let dir = rfs::openat2(
            &self.root,
            &parent_c,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| ApplyError::Os { op, what: format!("parent of {}", show(p)), source: e.into() })?;
        Ok(Located { dir: Some(dir), name })
    }

    fn dir<'a>(&'a self, l: &'a Located) -> BorrowedFd<'a> {
        l.dir.as_ref().map(|d| d.as_fd()).unwrap_or(self.root.as_fd())
    }

    /// `/proc/self/fd/<dir>/<name>`: a path whose directory part is pinned to a resolved fd, for
    /// the calls that exist only by path (xattrs).
    fn proc_path(&self, l: &Located) -> CString {
        let fd = self.dir(l).as_raw_fd();
        let mut v = format!("/proc/self/fd/{fd}/").into_bytes();
        v.extend_from_slice(l.name.as_bytes());
        CString::new(v).expect("no NUL")
    }

    /// Opens a file under the root with `flags` (never following a symlink).
    fn open_beneath(&self, path: &RelPath, flags: OFlags, mode: u32) -> Result<OwnedFd, Errno> {
        let c = if path.0.is_empty() { c".".to_owned() } else { CString::new(path.0.clone()).expect("validated") };
        rfs::openat2(&self.root, &c, flags | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::from_raw_mode(mode), RESOLVE)
    }

    /// Records the zones applied from now on in the activity log `slot` holds (when it holds one).
    pub fn set_activity(&mut self, slot: ActivitySlot) {
        self.activity = Some(slot);
    }

    /// The activity log, if one is installed.
    fn activity_log(&self) -> Option<std::sync::Arc<crate::activity::ActivityLog>> {
        self.activity.as_ref().and_then(|s| s.read().ok().and_then(|a| a.clone()))
    }

    /// Activity log hook, before a change of the file `f`: `Some((offset, len))` a write, `None`
    /// all of it (a truncation, a fallocate).
    fn log_activity(&self, f: BorrowedFd<'_>, range: Option<(u64, u64)>) {
        let Some(al) = self.activity_log() else { return };
        let Ok(st) = rfs::fstat(f) else { return };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return;
        }
        match range {
            Some((offset, len)) => al.before_write(f, (st.st_dev, st.st_ino), offset, len),
            None => al.before_whole_change(Some(f), (st.st_dev, st.st_ino)),
        }
    }

    /// Applies one operation. Every failure is an error for the stream, with the operation, the
    /// path or handle, and the OS error.
    pub fn apply(&mut self, op: &Op) -> Result<(), ApplyError> {
        let name = op_name(op);
        let check =
            |p: &RelPath| validate(p).map_err(|reason| ApplyError::InvalidPath { op: name, path: show(&p.0), reason });
        match op {
            Op::Open { fh, path, flags } => {
                check(path)?;
                if self.files.contains_key(fh) {
                    return Err(ApplyError::HandleInUse { op: name, fh: *fh });
                }
                // Writes carry their offset, so O_APPEND is dropped: pwrite must land where the
                // primary wrote. O_TRUNC is kept: opening truncated the file on the primary.
                let trunc = if flags & (OFlags::TRUNC.bits() as i32) != 0 { OFlags::TRUNC } else { OFlags::empty() };
                let fd = match self.open_beneath(path, OFlags::RDWR | trunc, 0) {
                    // A directory opened for fsyncdir.
                    Err(Errno::ISDIR) => self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, 0),
                    r => r,
                }
                .map_err(oe(name, || show(&path.0)))?;
                if !trunc.is_empty() {
                    self.dirty.handles.insert(*fh);
                }
                self.files.insert(*fh, File::from(fd));
            }
            Op::Create { fh, path, flags, mode, uid, gid } => {
                check(path)?;
                if self.files.contains_key(fh) {
                    return Err(ApplyError::HandleInUse { op: name, fh: *fh });
                }
                let excl = flags & (OFlags::EXCL.bits() as i32) != 0;
                let trunc = if flags & (OFlags::TRUNC.bits() as i32) != 0 { OFlags::TRUNC } else { OFlags::empty() };
                // Try exclusive first so we know whether we created it: only a new file takes the
                // primary's mode and owner (O_CREAT on an existing file changes neither).
                let fd = match self.open_beneath(path, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, *mode) {
                    Ok(fd) => {
                        rfs::fchown(&fd, Some(uid_of(*uid)), Some(gid_of(*gid))).map_err(oe(name, || show(&path.0)))?;
                        // After chown (which clears set-id bits), and to escape our umask.
                        rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(oe(name, || show(&path.0)))?;
                        fd
                    }
                    Err(Errno::EXIST) if !excl => {
                        self.open_beneath(path, OFlags::RDWR | trunc, 0).map_err(oe(name, || show(&path.0)))?
                    }
                    Err(e) => return Err(oe(name, || show(&path.0))(e)),
                };
                self.dirty.touch_parent(&path.0);
                self.dirty.handles.insert(*fh);
                self.files.insert(*fh, File::from(fd));
            }
            Op::Close { fh } => {
                let f = self.files.remove(fh).ok_or(ApplyError::UnknownHandle { op: name, fh: *fh })?;
                // Its unsynced data stays reachable: the file is kept open until the next sync.
                if self.dirty.handles.remove(fh) {
                    self.dirty.closed_dirty(f);
                }
            }
            Op::Write { fh, offset, data } => {
                let f = self.file(name, *fh)?;
                self.log_activity(f.as_fd(), Some((*offset, data.len() as u64)));
                f.write_all_at(data, *offset).map_err(|source| ApplyError::Os {
                    op: name,
                    what: format!("handle {fh} at {offset} ({} bytes)", data.len()),
                    source,
                })?;
                self.dirty.handles.insert(*fh);
            }
            Op::Truncate { fh, size } => {
                let f = self.file(name, *fh)?;
                self.log_activity(f.as_fd(), None);
                rfs::ftruncate(f, *size).map_err(oe(name, || format!("handle {fh} to {size}")))?;
                self.dirty.handles.insert(*fh);
            }
            Op::TruncatePath { path, size } => {
                check(path)?;
                let fd = self.open_beneath(path, OFlags::WRONLY, 0).map_err(oe(name, || show(&path.0)))?;
                self.log_activity(fd.as_fd(), None);
                rfs::ftruncate(&fd, *size).map_err(oe(name, || format!("{} to {size}", show(&path.0))))?;
                self.dirty.touch(&path.0);
            }
            Op::Fallocate { fh, mode, offset, len } => {
                let f = self.file(name, *fh)?;
                self.log_activity(f.as_fd(), None);
                rfs::fallocate(f, FallocateFlags::from_bits_retain(*mode as u32), *offset, *len)
                    .map_err(oe(name, || format!("handle {fh} mode {mode:#x} at {offset} len {len}")))?;
                self.dirty.handles.insert(*fh);
            }
            Op::Fsync { fh, datasync } => {
                if let Some(fh) = fh {
                    self.file(name, *fh)?;
                }
                if fh.is_none() {
                    self.dirty.other = true;
                } else if let Some(fh) = fh {
                    // The handle itself may be clean (its writes were synced with another):
                    // the primary asked for it, so it is synced anyway.
                    self.dirty.handles.insert(*fh);
                }
                self.sync_with(if *datasync { *fh } else { None })?;
            }
            Op::Mknod { path, mode, rdev, uid, gid } => {
                let l = self.locate(name, path)?;
                let ft = FileType::from_raw_mode(*mode);
                rfs::mknodat(self.dir(&l), &l.name, ft, Mode::from_raw_mode(mode & 0o7777), *rdev)
                    .map_err(oe(name, || show(&path.0)))?;
                self.own_and_mode(name, &l, path, *uid, *gid, Some(*mode))?;
                self.dirty.touch_parent(&path.0);
            }
            Op::Mkdir { path, mode, uid, gid } => {
                let l = self.locate(name, path)?;
                rfs::mkdirat(self.dir(&l), &l.name, Mode::from_raw_mode(mode & 0o7777))
                    .map_err(oe(name, || show(&path.0)))?;
                self.own_and_mode(name, &l, path, *uid, *gid, Some(*mode))?;
                self.dirty.touch(&path.0);
                self.dirty.touch_parent(&path.0);
            }
            Op::Unlink { path } => {
                let l = self.locate(name, path)?;
                rfs::unlinkat(self.dir(&l), &l.name, AtFlags::empty()).map_err(oe(name, || show(&path.0)))?;
                self.dirty.touch_parent(&path.0);
            }
            Op::Rmdir { path } => {
                let l = self.locate(name, path)?;
                // Empty on the primary; here it may still hold a stale tree from before a
                // catch-up (the primary's copy wins). In sync, both copies are identical.
                let r = match rfs::unlinkat(self.dir(&l), &l.name, AtFlags::REMOVEDIR) {
                    Err(Errno::NOTEMPTY) => remove_tree_in(self.dir(&l), &l.name),
                    r => r,
                };
                r.map_err(oe(name, || show(&path.0)))?;
                self.dirty.touch_parent(&path.0);
            }
            Op::Symlink { path, target, uid, gid } => {
                let l = self.locate(name, path)?;
                let t = CString::new(target.clone()).map_err(|_| ApplyError::InvalidPath {
                    op: name,
                    path: show(target),
                    reason: "symlink target contains a NUL byte",
                })?;
                // The target is stored, never resolved by us: it may point anywhere.
                rfs::symlinkat(&t, self.dir(&l), &l.name).map_err(oe(name, || show(&path.0)))?;
                self.own_and_mode(name, &l, path, *uid, *gid, None)?;
                self.dirty.touch_parent(&path.0);
            }
            Op::Link { from, to } => {
                let a = self.locate(name, from)?;
                let b = self.locate(name, to)?;
                // No AT_SYMLINK_FOLLOW: a symlink is linked itself, as link(2) does on Linux.
                rfs::linkat(self.dir(&a), &a.name, self.dir(&b), &b.name, AtFlags::empty())
                    .map_err(oe(name, || format!("{} -> {}", show(&from.0), show(&to.0))))?;
                // The new name, and the inode's link count (through a name it still has).
                self.dirty.touch_parent(&to.0);
                self.dirty.touch(&to.0);
            }
            Op::Rename { from, to, flags } => {
                let a = self.locate(name, from)?;
                let b = self.locate(name, to)?;
                let rename = || {
                    rfs::renameat_with(
                        self.dir(&a),
                        &a.name,
                        self.dir(&b),
                        &b.name,
                        RenameFlags::from_bits_retain(*flags),
                    )
                };
                // Over a directory that is empty on the primary but still holds a stale tree
                // here (a catch-up in progress): that tree goes, as the primary's did.
                let r = match rename() {
                    Err(Errno::NOTEMPTY | Errno::EXIST) if *flags == 0 => {
                        remove_tree_in(self.dir(&b), &b.name).and_then(|_| rename())
                    }
                    r => r,
                };
                r.map_err(oe(name, || format!("{} -> {} (flags {flags:#x})", show(&from.0), show(&to.0))))?;
                self.dirty.touch_parent(&from.0);
                self.dirty.touch_parent(&to.0);
                // A directory moved to another parent changes its own `..`.
                self.dirty.touch(&to.0);
                if *flags & RenameFlags::EXCHANGE.bits() != 0 {
                    self.dirty.touch(&from.0);
                }
            }
            Op::Chmod { path, mode } => {
                check(path)?;
                self.chmod(name, path, *mode)?;
                self.dirty.touch(&path.0);
            }
            Op::Chown { path, uid, gid } => {
                let l = self.locate(name, path)?;
                rfs::chownat(self.dir(&l), &l.name, uid.map(uid_of), gid.map(gid_of), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(oe(name, || show(&path.0)))?;
                self.dirty.touch(&path.0);
            }
            Op::SetTimes { path, atime, mtime } => {
                let l = self.locate(name, path)?;
                let t = Timestamps { last_access: timespec(atime), last_modification: timespec(mtime) };
                rfs::utimensat(self.dir(&l), &l.name, &t, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(oe(name, || show(&path.0)))?;
                self.dirty.touch(&path.0);
            }
            Op::SetXattr { path, name: xname, value, flags } => {
                let l = self.locate(name, path)?;
                let n = xattr_name(name, xname)?;
                rfs::lsetxattr(self.proc_path(&l), &n, value, XattrFlags::from_bits_retain(*flags as u32))
                    .map_err(oe(name, || format!("{} {}", show(&path.0), show(xname))))?;
                self.dirty.touch(&path.0);
            }
            Op::RemoveXattr { path, name: xname } => {
                let l = self.locate(name, path)?;
                let n = xattr_name(name, xname)?;
                rfs::lremovexattr(self.proc_path(&l), &n)
                    .map_err(oe(name, || format!("{} {}", show(&path.0), show(xname))))?;
                self.dirty.touch(&path.0);
            }
        }
        Ok(())
    }

    /// Sets owner then mode of a just-created entry (mode after owner: chown clears set-id bits;
    /// and mkdirat/mknodat applied our umask). Symlinks have no mode.
    fn own_and_mode(
        &self,
        op: &'static str,
        l: &Located,
        path: &RelPath,
        uid: u32,
        gid: u32,
        mode: Option<u32>,
    ) -> Result<(), ApplyError> {
        let os = |e: Errno| ApplyError::Os { op, what: show(&path.0), source: e.into() };
        rfs::chownat(self.dir(l), &l.name, Some(uid_of(uid)), Some(gid_of(gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(os)?;
        if let Some(mode) = mode {
            self.chmod(op, path, mode)?;
        }
        Ok(())
    }

    /// chmod without following a final symlink: Linux has no lchmod, so the entry is opened with
    /// O_PATH|O_NOFOLLOW, and chmod goes through its /proc/self/fd magic link only if it is not a
    /// symlink (a symlink's mode is meaningless: nothing to do).
    fn chmod(&self, op: &'static str, path: &RelPath, mode: u32) -> Result<(), ApplyError> {
        let os = |e: Errno| ApplyError::Os { op, what: show(&path.0), source: e.into() };
        let fd = self.open_beneath(path, OFlags::PATH, 0).map_err(os)?;
        let st = rfs::fstat(&fd).map_err(os)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Ok(());
        }
        let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rfs::chmod(p.as_str(), Mode::from_raw_mode(mode & 0o7777)).map_err(os)
    }
}

/// Maps an OS error to `ApplyError::Os`, describing the target lazily (only on failure).
fn oe<F: FnOnce() -> String>(op: &'static str, what: F) -> impl FnOnce(Errno) -> ApplyError {
    move |e| ApplyError::Os { op, what: what(), source: e.into() }
}

fn uid_of(u: u32) -> rfs::Uid {
    rfs::Uid::from_raw(u)
}

fn gid_of(g: u32) -> rfs::Gid {
    rfs::Gid::from_raw(g)
}

fn timespec(t: &TimeSet) -> Timespec {
    match *t {
        TimeSet::Omit => Timespec { tv_sec: 0, tv_nsec: rfs::UTIME_OMIT },
        TimeSet::At { sec, nsec } => Timespec { tv_sec: sec, tv_nsec: nsec as _ },
    }
}

fn xattr_name(op: &'static str, n: &[u8]) -> Result<CString, ApplyError> {
    if n.is_empty() {
        return Err(ApplyError::InvalidPath { op, path: String::new(), reason: "empty xattr name" });
    }
    CString::new(n.to_vec()).map_err(|_| ApplyError::InvalidPath {
        op,
        path: show(n),
        reason: "xattr name contains a NUL byte",
    })
}
