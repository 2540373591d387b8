//! The FUSE request handlers: a passthrough to the underlying directory that emits each change.
//!
//! Every mutating request follows the same steps:
//! 1. take the *order lock*, apply the change locally (relative to the directory descriptor
//!    opened before the mount), build the [`Op`] from what was really done (modes, owners and
//!    times read back from the file system), submit it to the sink, release the lock;
//! 2. hand the reply to a completion thread that waits for the secondary's acknowledgement
//!    (`Written`, or `Durable` for fsync and O_SYNC/O_DSYNC/O_DIRECT writes) and then replies.
//!
//! The order lock makes "applied locally" and "submitted" one atomic step, so the secondary
//! applies changes in exactly the order they were applied here (two writes to the same range,
//! a write racing a truncate, a create racing a rename all land the same way on both copies).
//! It is held only for the local system call, never for a wait or an fsync.
//!
//! Read-only requests (lookup, getattr, read, readdir, readlink, xattr reads, statfs, access)
//! take no order lock and emit nothing.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::completion::Completions;
use super::exclude::Exclusions;
use super::inodes::{Inodes, Key};
use super::sync::{SyncState, QUIET};
use super::sys::{self, cpath, Errno, SysResult, XattrPath};
use super::{ChangeObserver, OpSink};
use crate::op::{AckLevel, Handle, Op, RelPath, TimeSet};

/// Largest write the kernel may send us (FUSE max_write).
pub const MAX_WRITE: u32 = 1 << 20;

/// Chunk size when a whole file is sent (rename from an excluded name).
pub(super) const COPY_CHUNK: usize = 1 << 20;

/// How an open file wants its writes made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    None,
    /// O_DSYNC or O_DIRECT: data durable before the write returns.
    Data,
    /// O_SYNC: data and metadata.
    Full,
}

/// A file opened by the application through the mount.
pub(super) struct OpenFile {
    fd: OwnedFd,
    ino: u64,
    writable: bool,
    sync: SyncMode,
    /// The secondary holds this handle open (an Open or Create was emitted, no Close yet).
    /// Changed only under the order lock.
    pub(super) replicated: AtomicBool,
    /// Something was written: the mtime is sent at close so both copies agree on it.
    wrote: AtomicBool,
}

/// What a request submitted last: the reply waits for it (the sink acknowledges in order, so
/// waiting for the last op covers the earlier ones of the same request).
pub(super) type Pending = Option<(Arc<dyn OpSink>, u64)>;

pub struct Inner {
    root: OwnedFd,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<sys::DirEntry>>>>,
    /// FUSE file handles and replicated handles share this counter: never reused in a stream.
    next_fh: AtomicU64,
    order: Mutex<()>,
    pub(super) sink: RwLock<Option<Arc<dyn OpSink>>>,
    /// What the secondary holds while a full sync runs (None: everything). See `sync.rs`.
    pub(super) sync: Mutex<Option<SyncState>>,
    pub(super) sync_generation: AtomicU64,
    observer: RwLock<Option<Arc<dyn ChangeObserver>>>,
    /// While no secondary is in sync: the durable log of the zones changed (zonelog.rs). Its
    /// hooks run under the order lock, before the change reaches the file.
    zone_log: RwLock<Option<Arc<crate::zonelog::ZoneLog>>>,
    /// While the secondary is in sync: the durable log of the zones being written (activity.rs),
    /// hooked like the zone log.
    activity: RwLock<Option<Arc<crate::activity::ActivityLog>>>,
    /// Bytes per second for the sync's own traffic (0: no limit).
    pub(super) resync_bandwidth: AtomicU64,
    exclusions: Exclusions,
    pub(super) completions: Completions,
    ttl: Duration,
}

fn fe(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e.0)
}

pub(super) fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

pub(super) fn ctime_of(st: &libc::stat) -> std::time::SystemTime {
    let d = std::time::Duration::new(st.st_ctime.max(0) as u64, st.st_ctime_nsec.clamp(0, 999_999_999) as u32);
    std::time::UNIX_EPOCH + d
}

pub(super) fn rel(p: &[u8]) -> RelPath {
    RelPath(p.to_vec())
}

pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn kind_of_dtype(t: u8) -> Option<FileType> {
    Some(match t {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_REG => FileType::RegularFile,
        _ => return None,
    })
}

fn to_attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks.max(0) as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn timespec_of(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 },
            Err(e) => {
                // Before 1970: a negative second count with a positive nanosecond part.
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                libc::timespec { tv_sec: sec, tv_nsec: nsec }
            }
        },
    }
}

pub(super) fn time_set(sec: i64, nsec: i64) -> TimeSet {
    TimeSet::At { sec, nsec: nsec.clamp(0, 999_999_999) as u32 }
}

/// The O_* flags to open the local descriptor with. O_APPEND is dropped because the kernel
/// already computed the offset of each write (and pwrite on an O_APPEND descriptor would ignore
/// it); the sync flags are dropped because durability is obtained with an explicit
/// fdatasync/fsync after the write, outside the order lock, so that one O_SYNC writer does not
/// stall every other writer; O_DIRECT is dropped because the kernel's buffers are not aligned.
fn local_open_flags(flags: i32) -> i32 {
    let drop = libc::O_APPEND
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_DIRECT
        | libc::O_PATH
        | libc::O_TMPFILE;
    (flags & !drop) | libc::O_NOFOLLOW
}

fn sync_mode(flags: i32) -> SyncMode {
    if flags & libc::O_SYNC == libc::O_SYNC {
        SyncMode::Full
    } else if flags & (libc::O_DSYNC | libc::O_DIRECT) != 0 {
        SyncMode::Data
    } else {
        SyncMode::None
    }
}

/// The flags recorded in an Open/Create op: the access mode and what changes content.
fn op_flags(flags: i32, keep: i32) -> i32 {
    flags & (libc::O_ACCMODE | keep)
}

impl Inner {
    pub fn new(
        root: OwnedFd,
        root_key: Key,
        exclusions: Exclusions,
        sink: Option<Arc<dyn OpSink>>,
        completions: Completions,
        ttl: Duration,
    ) -> Inner {
        Inner {
            root,
            inodes: Mutex::new(Inodes::new(root_key)),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            order: Mutex::new(()),
            sink: RwLock::new(sink),
            sync: Mutex::new(None),
            sync_generation: AtomicU64::new(0),
            observer: RwLock::new(None),
            zone_log: RwLock::new(None),
            activity: RwLock::new(None),
            resync_bandwidth: AtomicU64::new(0),
            exclusions,
            completions,
            ttl,
        }
    }

    pub fn set_sink(&self, sink: Option<Arc<dyn OpSink>>) {
        // Under the order lock: no op is half-way between "applied" and "submitted" while the
        // sink changes, so the new sink's stream starts at a clean point.
        let _g = self.order();
        if let Ok(mut s) = self.sink.write() {
            *s = sink.clone();
        }
        // A full sync in progress ends: without a sink there is nothing to sync, and a sink
        // attached this way has an up-to-date copy.
        *self.sync_state() = None;
        let Some(sink) = sink else { return };
        // Files the application opened before the stream existed keep being written through
        // their handles: the new stream starts by opening them on the secondary (without
        // truncation: its copy is already up to date when a sink is attached). A file that
        // lost its last name cannot be opened there; its further writes stay local.
        let files: Vec<(u64, Arc<OpenFile>)> = self.files().iter().map(|(h, f)| (*h, f.clone())).collect();
        for (fh, f) in files {
            if !f.replicated.load(Ordering::Relaxed) {
                continue;
            }
            match self.inodes().path(f.ino).filter(|p| !self.excluded(p)) {
                Some(p) => {
                    sink.submit(Op::Open { fh, path: rel(&p), flags: libc::O_WRONLY });
                }
                None => f.replicated.store(false, Ordering::Relaxed),
            }
        }
    }

    pub fn set_observer(&self, observer: Option<Arc<dyn ChangeObserver>>) {
        let _g = self.order();
        if let Ok(mut o) = self.observer.write() {
            *o = observer;
        }
    }

    pub fn has_sink(&self) -> bool {
        self.sink.read().map(|s| s.is_some()).unwrap_or(false)
    }

    pub fn open_files(&self) -> usize {
        self.files.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn known_inodes(&self) -> usize {
        self.inodes().len()
    }

    pub(super) fn order(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave our data half-updated in a way that
        // matters more than stopping service would, so poisoning is ignored.
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn files(&self) -> MutexGuard<'_, HashMap<u64, Arc<OpenFile>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn dirfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub(super) fn excluded(&self, p: &[u8]) -> bool {
        self.exclusions.is_excluded(p)
    }

    /// Hands an op to the change observer and the sink. Must be called under the order lock,
    /// right after the local change it describes.
    fn emit(&self, op: Op) -> Pending {
        // The hook for change tracking (ALONE): called for every replicated change, with or
        // without a secondary, in the order the changes were applied.
        // The full sync's own ops are not changes (see `sync.rs`).
        if !QUIET.with(|q| q.get()) {
            if let Some(obs) = self.observer.read().ok().and_then(|o| o.clone()) {
                obs.on_local_change(&op);
            }
        }
        let sink = self.sink.read().ok().and_then(|s| s.clone())?;
        if matches!(op, Op::Rename { .. } | Op::Rmdir { .. } | Op::Unlink { .. }) {
            // A catch-up's picture of the secondary's stale names follows what is sent.
            if let Some(m) = self.sync_state().as_mut().and_then(|s| s.basis.as_mut()) {
                m.applied(&op);
            }
        }
        let seq = sink.submit(op);
        Some((sink, seq))
    }

    pub fn set_zone_log(&self, log: Option<Arc<crate::zonelog::ZoneLog>>) {
        let _g = self.order();
        if let Ok(mut l) = self.zone_log.write() {
            *l = log;
        }
    }

    pub(super) fn zone_log(&self) -> Option<Arc<crate::zonelog::ZoneLog>> {
        self.zone_log.read().ok().and_then(|l| l.clone())
    }

    pub fn set_activity_log(&self, log: Option<Arc<crate::activity::ActivityLog>>) {
        let _g = self.order();
        if let Ok(mut l) = self.activity.write() {
            *l = log;
        }
    }

    fn activity(&self) -> Option<Arc<crate::activity::ActivityLog>> {
        self.activity.read().ok().and_then(|l| l.clone())
    }

    /// Activity log hook: before a truncation or fallocate of the regular file at `p` (or open
    /// as `fd`): all of it is active.
    fn activity_whole(&self, fd: Option<&OwnedFd>, p: Option<&[u8]>) {
        let Some(al) = self.activity() else { return };
        let st = match (fd, p) {
            (Some(fd), _) => sys::fstat(fd.as_fd()).ok(),
            (None, Some(p)) => self.stat_path(p).ok(),
            _ => None,
        };
        if let Some(st) = st.filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
            al.before_whole_change(fd.map(|f| f.as_fd()), key_of(&st));
        }
    }

    /// Zone log hook: before a change that may make the recorded zones of the regular file at
    /// `p` stand for other data (or, for a directory, before it moves).
    fn log_identity_change(&self, p: &[u8]) {
        let Some(log) = self.zone_log() else { return };
        if let Ok(st) = self.stat_path(p) {
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => log.before_identity_change(key_of(&st)),
                libc::S_IFDIR => log.before_dir_rename(),
                _ => {}
            }
        }
    }

    /// Namespace log hook (zone log and activity log): before an entry of the directory at `dir`
    /// is created, removed, renamed or linked, or an entry's attributes change.
    fn log_dir_change(&self, dir: &[u8]) {
        let (log, al) = (self.zone_log(), self.activity());
        if log.is_none() && al.is_none() {
            return;
        }
        match self.stat_path(dir) {
            Ok(st) => {
                if let Some(log) = log {
                    log.before_dir_change(key_of(&st));
                }
                if let Some(al) = al {
                    al.before_dir_change(key_of(&st));
                }
            }
            // Gone: the change fails as well.
            Err(Errno(libc::ENOENT | libc::ENOTDIR)) => {}
            // The change may proceed unrecorded: the zone log no longer vouches for anything.
            Err(_) => {
                if let Some(log) = log {
                    log.mark_lost();
                }
            }
        }
    }

    /// As [`Inner::log_dir_change`], for the directory holding `p` (the root for the root).
    fn log_parent_change(&self, p: &[u8]) {
        let parent = p.iter().rposition(|b| *b == b'/').map(|i| &p[..i]).unwrap_or(b"");
        self.log_dir_change(parent);
    }

    /// Zone log hook: before a write into the file open as `fd`.
    fn log_write(&self, fd: &OwnedFd, offset: u64, len: u64) {
        let (log, al) = (self.zone_log(), self.activity());
        if log.is_none() && al.is_none() {
            return;
        }
        if let Ok(st) = sys::fstat(fd.as_fd()) {
            if let Some(log) = log {
                log.before_write(key_of(&st), offset, len, ctime_of(&st));
            }
            if let Some(al) = al {
                al.before_write(fd.as_fd(), key_of(&st), offset, len);
            }
        }
    }

    /// Replies once `pending` is acknowledged at `level` (at once if nothing was submitted). A
    /// failed wait (peer gone, timeout) still replies normally: the change is done locally, and
    /// the sink is the one that tells the daemon to go ALONE.
    fn complete(&self, pending: Pending, level: AckLevel, reply: impl FnOnce() + Send + 'static) {
        match pending {
            None => reply(),
            Some((sink, seq)) => self.completions.run(Box::new(move || {
                if let Err(e) = sink.wait(seq, level) {
                    tracing::warn!(seq, ?level, error = %e, "replication acknowledgement failed; answering locally");
                }
                reply()
            })),
        }
    }

    pub(super) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn path_of(&self, ino: u64) -> SysResult<Vec<u8>> {
        self.inodes().path(ino).ok_or(Errno(libc::ENOENT))
    }

    fn child_of(&self, parent: u64, name: &OsStr) -> SysResult<Vec<u8>> {
        let n = name.as_bytes();
        if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') {
            return Err(Errno(libc::EINVAL));
        }
        self.inodes().child_path(parent, name).ok_or(Errno(libc::ENOENT))
    }

    pub(super) fn stat_path(&self, p: &[u8]) -> SysResult<libc::stat> {
        sys::fstatat(self.dirfd(), &cpath(p)?)
    }

    fn file(&self, fh: u64) -> SysResult<Arc<OpenFile>> {
        self.files().get(&fh).cloned().ok_or(Errno(libc::EBADF))
    }

    /// Any open descriptor on node `ino` (for files that lost their last name).
    fn any_file_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files().values().find(|f| f.ino == ino).cloned()
    }

    /// A replicated handle on node `ino`, preferring `fh` itself.
    fn replicated_handle_of(&self, ino: u64, fh: Option<u64>) -> Option<u64> {
        let files = self.files();
        if let Some(fh) = fh {
            if files.get(&fh).map(|f| f.replicated.load(Ordering::Relaxed)).unwrap_or(false) {
                return Some(fh);
            }
        }
        files.iter().find(|(_, f)| f.ino == ino && f.replicated.load(Ordering::Relaxed)).map(|(h, _)| *h)
    }

    fn lookup_entry(&self, parent: u64, name: &OsStr) -> SysResult<FileAttr> {
        let p = self.child_of(parent, name)?;
        let st = self.stat_path(&p)?;
        let ino = self.inodes().lookup(parent, name, key_of(&st), st.st_mode);
        Ok(to_attr(ino, &st))
    }

    /// Gives a newly created object the caller's owner (and the group of a set-group-ID parent,
    /// as the kernel would) and the exact requested mode (our own umask must not apply).
    fn own_new(&self, p: &CString, is_dir: bool, parent_st: &libc::stat, req: &Request, mode: u32) -> SysResult<()> {
        let sgid = parent_st.st_mode & libc::S_ISGID != 0;
        let gid = if sgid { parent_st.st_gid } else { req.gid() };
        sys::fchownat(self.dirfd(), p, req.uid(), gid)?;
        let mode = if is_dir && sgid { mode | libc::S_ISGID } else { mode };
        sys::fchmodat(self.dirfd(), p, mode & 0o7777)
    }

    // ----- full copy and removal of a subtree, for renames across the exclusion boundary -----

    /// Emits what makes the secondary hold the object now at `p` (and everything below it that
    /// is not excluded): used when it arrives under a replicated name from an excluded one.
    pub(super) fn emit_copy(&self, p: &[u8], links: &mut HashMap<Key, Vec<u8>>, last: &mut Pending) -> SysResult<()> {
        let st = self.stat_path(p)?;
        let c = cpath(p)?;
        let mode = st.st_mode & 0o7777;
        let times = |st: &libc::stat| Op::SetTimes {
            path: rel(p),
            atime: time_set(st.st_atime, st.st_atime_nsec),
            mtime: time_set(st.st_mtime, st.st_mtime_nsec),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                self.push(last, Op::Mkdir { path: rel(p), mode, uid: st.st_uid, gid: st.st_gid });
                // During a full sync: this directory is now sent whole, with all its entries.
                self.sync_mark_listed(key_of(&st));
                self.emit_xattrs(p, last);
                let fd = sys::openat(self.dirfd(), &c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
                for e in sys::read_dir(fd)? {
                    if e.name == b"." || e.name == b".." {
                        continue;
                    }
                    let child = join(p, &e.name);
                    if !self.excluded(&child) {
                        self.emit_copy(&child, links, last)?;
                    }
                }
                self.push(last, times(&st));
            }
            libc::S_IFREG => {
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&key_of(&st)) {
                        self.push(last, Op::Link { from: rel(first), to: rel(p) });
                        return Ok(());
                    }
                    links.insert(key_of(&st), p.to_vec());
                }
                let fh = self.new_fh();
                self.push(
                    last,
                    Op::Create {
                        fh,
                        path: rel(p),
                        flags: libc::O_WRONLY | libc::O_TRUNC,
                        mode,
                        uid: st.st_uid,
                        gid: st.st_gid,
                    },
                );
                let fd = sys::openat(self.dirfd(), &c, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
                self.emit_content(fh, &fd, st.st_size.max(0) as u64, last)?;
                self.push(last, Op::Truncate { fh, size: st.st_size.max(0) as u64 });
                self.push(last, Op::Close { fh });
                self.emit_xattrs(p, last);
                self.push(last, times(&st));
                self.open_app_handles(key_of(&st), p, last);
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(self.dirfd(), &c)?;
                self.push(last, Op::Symlink { path: rel(p), target, uid: st.st_uid, gid: st.st_gid });
                self.push(last, times(&st));
            }
            _ => {
                self.push(
                    last,
                    Op::Mknod {
                        path: rel(p),
                        mode: st.st_mode & (libc::S_IFMT | 0o7777),
                        rdev: st.st_rdev,
                        uid: st.st_uid,
                        gid: st.st_gid,
                    },
                );
                self.push(last, times(&st));
            }
        }
        Ok(())
    }

    /// [`Inner::emit_copy`], except that during a full sync a regular file the secondary already
    /// holds under another name (a hard link) gets a Link to it rather than a separate copy.
    fn emit_copy_or_link(&self, p: &[u8], links: &mut HashMap<Key, Vec<u8>>, last: &mut Pending) -> SysResult<()> {
        if self.syncing() {
            let st = self.stat_path(p)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1 {
                if let Some(other) = self.sync_sent_name(key_of(&st)).filter(|o| o != p) {
                    self.push(last, Op::Link { from: rel(&other), to: rel(p) });
                    self.sync_record_name(key_of(&st), p);
                    self.open_app_handles(key_of(&st), p, last);
                    return Ok(());
                }
                self.emit_copy(p, links, last)?;
                self.sync_record_name(key_of(&st), p);
                return Ok(());
            }
        }
        self.emit_copy(p, links, last)
    }

    /// Descriptors the application holds on the file `key` now write to a name the secondary
    /// holds (`p`): open them on the secondary too.
    pub(super) fn open_app_handles(&self, key: Key, p: &[u8], last: &mut Pending) {
        let Some(ino) = self.inodes().by_key(key) else { return };
        let files: Vec<(u64, Arc<OpenFile>)> =
            self.files().iter().filter(|(_, f)| f.ino == ino).map(|(h, f)| (*h, f.clone())).collect();
        for (h, f) in files {
            if f.writable && !f.replicated.load(Ordering::Relaxed) {
                self.push(last, Op::Open { fh: h, path: rel(p), flags: libc::O_WRONLY });
                f.replicated.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The data zones of a file (holes skipped with SEEK_DATA/SEEK_HOLE) as Write ops.
    fn emit_content(&self, fh: Handle, fd: &OwnedFd, size: u64, last: &mut Pending) -> SysResult<()> {
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut pos = 0;
        while let Some((off, n)) = self.next_chunk(fd, pos, size, &mut buf)? {
            self.push(last, Op::Write { fh, offset: off, data: buf[..n].to_vec() });
            pos = off + n as u64;
        }
        Ok(())
    }

    /// The next chunk of data at or after `pos` (holes skipped), at most `buf.len()` bytes and
    /// not past `size`: read into `buf`, returned as (offset, length). None at the end.
    pub(super) fn next_chunk(
        &self,
        fd: &OwnedFd,
        pos: u64,
        size: u64,
        buf: &mut [u8],
    ) -> SysResult<Option<(u64, usize)>> {
        if pos >= size {
            return Ok(None);
        }
        let data = match sys::lseek(fd.as_fd(), pos as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(Errno(libc::ENXIO)) => return Ok(None),
            // A file system without SEEK_DATA: send everything.
            Err(_) => pos,
        };
        let end = sys::lseek(fd.as_fd(), data as i64, libc::SEEK_HOLE).map(|h| h as u64).unwrap_or(size).min(size);
        if data >= end {
            return Ok(None);
        }
        let want = ((end - data) as usize).min(buf.len());
        let n = sys::pread_full(fd.as_fd(), &mut buf[..want], data)?;
        Ok(if n == 0 { None } else { Some((data, n)) })
    }

    pub(super) fn emit_xattrs(&self, p: &[u8], last: &mut Pending) {
        for (name, value) in self.xattrs_of(p) {
            self.push(last, Op::SetXattr { path: rel(p), name, value, flags: 0 });
        }
    }

    /// The xattrs of `p` (none if they cannot be read: it went away meanwhile).
    pub(super) fn xattrs_of(&self, p: &[u8]) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(x) = XattrPath::new(self.root.as_raw_fd(), p) else { return out };
        for name in x.names().unwrap_or_default() {
            let Ok(cname) = CString::new(name.clone()) else { continue };
            if let Ok(value) = x.get_all(&cname) {
                out.insert(name, value);
            }
        }
        out
    }

    /// Emits the removal, on the secondary, of what used to be at `old` and now lives locally at
    /// `cur` (it went under an excluded name). Excluded names below `old` were never sent.
    fn emit_remove(&self, old: &[u8], cur: &[u8], last: &mut Pending) -> SysResult<()> {
        let st = self.stat_path(cur)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // During a full sync, a directory not listed yet is empty on the secondary; one that
            // is listed stops being so (it left what the secondary holds).
            let listed = self.sync_is_listed(key_of(&st));
            self.sync_unlist(key_of(&st));
            let fd = sys::openat(self.dirfd(), &cpath(cur)?, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
            let entries = if listed { sys::read_dir(fd)? } else { Vec::new() };
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let child_old = join(old, &e.name);
                if !self.excluded(&child_old) {
                    self.emit_remove(&child_old, &join(cur, &e.name), last)?;
                }
            }
            self.push(last, Op::Rmdir { path: rel(old) });
        } else {
            self.push(last, Op::Unlink { path: rel(old) });
            // The rename already moved the name the sync recorded to `cur`.
            self.sync_forget_name(key_of(&st), cur);
            // Its open descriptors stop being replicated, unless another replicated name may
            // still reach the file (during a full sync: unless the secondary holds another name
            // of it, which the sync knows).
            let orphan = if self.syncing() {
                st.st_nlink <= 1 || self.sync_sent_name(key_of(&st)).is_none()
            } else {
                st.st_nlink <= 1
            };
            if orphan {
                if let Some(ino) = self.inodes().by_key(key_of(&st)) {
                    let files: Vec<(u64, Arc<OpenFile>)> =
                        self.files().iter().filter(|(_, f)| f.ino == ino).map(|(h, f)| (*h, f.clone())).collect();
                    for (h, f) in files {
                        if f.replicated.swap(false, Ordering::Relaxed) {
                            self.push(last, Op::Close { fh: h });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn push(&self, last: &mut Pending, op: Op) {
        if let Some(p) = self.emit(op) {
            *last = Some(p);
        }
    }

    // ----- the request implementations, returning errno on failure -----

    fn do_setattr(&self, ino: u64, fh: Option<u64>, a: SetAttr) -> SysResult<(FileAttr, Pending)> {
        let SetAttr { mode, uid, gid, size, atime, mtime } = a;
        let _g = self.order();
        let path = self.inodes().path(ino);
        let file = match fh {
            Some(h) => self.files().get(&h).cloned(),
            None if path.is_none() => self.any_file_of(ino),
            None => None,
        };
        if path.is_none() && file.is_none() {
            return Err(Errno(libc::ENOENT));
        }
        let cp = path.as_deref().map(cpath).transpose()?;
        if let Some(p) = path
            .as_deref()
            .filter(|_| mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some())
        {
            // Attributes the catch-up takes from the directory's listing.
            self.log_parent_change(p);
        }
        // Changes by path are replicated when the path is; a file without a name (unlinked
        // while open) only through its handles.
        let repl_path = path.as_deref().and_then(|p| self.secondary_name(p));
        let mut last: Pending = None;
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            match (&cp, &file) {
                (Some(c), _) => sys::fchownat(self.dirfd(), c, u, g)?,
                (None, Some(f)) => sys::fchown(f.fd.as_fd(), u, g)?,
                _ => unreachable!("checked above"),
            }
            if let Some(p) = &repl_path {
                self.push(&mut last, Op::Chown { path: rel(p), uid, gid });
            }
        }
        if let Some(mode) = mode {
            let mode = mode & 0o7777;
            match (&cp, &file) {
                (_, Some(f)) => sys::fchmod(f.fd.as_fd(), mode)?,
                (Some(c), None) => sys::fchmodat(self.dirfd(), c, mode)?,
                _ => unreachable!("checked above"),
            }
            if let Some(p) = &repl_path {
                self.push(&mut last, Op::Chmod { path: rel(p), mode });
            }
        }
        if let Some(size) = size {
            self.activity_whole(file.as_ref().map(|f| &f.fd), path.as_deref());
            if let Some(log) = self.zone_log() {
                let st = match (&file, &path) {
                    (Some(f), _) => sys::fstat(f.fd.as_fd()).ok(),
                    (None, Some(p)) => self.stat_path(p).ok(),
                    _ => None,
                };
                if let Some(st) = st {
                    log.before_identity_change(key_of(&st));
                }
            }
            match (&cp, &file) {
                (_, Some(f)) => sys::ftruncate(f.fd.as_fd(), size)?,
                (Some(c), None) => {
                    let fd = sys::openat(self.dirfd(), c, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
                    sys::ftruncate(fd.as_fd(), size)?;
                }
                _ => unreachable!("checked above"),
            }
            let handle = self.replicated_handle_of(ino, fh).filter(|_| file.is_some());
            match (handle, &repl_path) {
                (Some(h), _) => self.push(&mut last, Op::Truncate { fh: h, size }),
                (None, Some(p)) => self.push(&mut last, Op::TruncatePath { path: rel(p), size }),
                (None, None) => {}
            }
            if let Some(f) = &file {
                f.wrote.store(true, Ordering::Relaxed);
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = [timespec_of(atime), timespec_of(mtime)];
            match (&cp, &file) {
                (Some(c), _) => sys::utimensat(self.dirfd(), c, &ts)?,
                (None, Some(f)) => sys::futimens(f.fd.as_fd(), &ts)?,
                _ => unreachable!("checked above"),
            }
            if let (Some(p), Some(local)) = (&repl_path, &path) {
                // "Now" is resolved to the value the local file system stored, so that both
                // copies hold the same time.
                let st = self.stat_path(local)?;
                let a = if atime.is_some() { time_set(st.st_atime, st.st_atime_nsec) } else { TimeSet::Omit };
                let m = if mtime.is_some() { time_set(st.st_mtime, st.st_mtime_nsec) } else { TimeSet::Omit };
                self.push(&mut last, Op::SetTimes { path: rel(p), atime: a, mtime: m });
                // An explicit mtime must not be overwritten by the mtime sent at close.
                if let Some(f) = &file {
                    f.wrote.store(false, Ordering::Relaxed);
                }
            }
        }
        let st = match (&file, &cp) {
            (Some(f), _) => sys::fstat(f.fd.as_fd())?,
            (None, Some(c)) => sys::fstatat(self.dirfd(), c)?,
            _ => unreachable!("checked above"),
        };
        Ok((to_attr(ino, &st), last))
    }

    fn do_mknod_like(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        what: NewNode<'_>,
    ) -> SysResult<(FileAttr, Pending)> {
        let _g = self.order();
        let p = self.child_of(parent, name)?;
        let c = cpath(&p)?;
        let parent_path = self.path_of(parent)?;
        self.log_dir_change(&parent_path);
        let parent_st = self.stat_path(&parent_path)?;
        match what {
            NewNode::Dir { mode } => {
                sys::mkdirat(self.dirfd(), &c, mode & 0o7777)?;
                self.own_new(&c, true, &parent_st, req, mode)?;
            }
            NewNode::Node { mode, rdev } => {
                sys::mknodat(self.dirfd(), &c, mode, rdev)?;
                self.own_new(&c, false, &parent_st, req, mode)?;
            }
            NewNode::Symlink { target } => {
                let t = CString::new(target).map_err(|_| Errno(libc::EINVAL))?;
                sys::symlinkat(&t, self.dirfd(), &c)?;
                let gid = if parent_st.st_mode & libc::S_ISGID != 0 { parent_st.st_gid } else { req.gid() };
                sys::fchownat(self.dirfd(), &c, req.uid(), gid)?;
            }
        }
        let st = sys::fstatat(self.dirfd(), &c)?;
        let ino = self.inodes().lookup(parent, name, key_of(&st), st.st_mode);
        let mut last = None;
        if self.replicates(&p) {
            if let NewNode::Dir { .. } = what {
                // A new directory is empty on both sides: its entries are on the secondary.
                self.sync_mark_listed(key_of(&st));
            }
            let (uid, gid) = (st.st_uid, st.st_gid);
            let symlink = matches!(what, NewNode::Symlink { .. });
            let op = match what {
                NewNode::Dir { .. } => Op::Mkdir { path: rel(&p), mode: st.st_mode & 0o7777, uid, gid },
                NewNode::Node { .. } => {
                    Op::Mknod { path: rel(&p), mode: st.st_mode & (libc::S_IFMT | 0o7777), rdev: st.st_rdev, uid, gid }
                }
                NewNode::Symlink { target } => Op::Symlink { path: rel(&p), target: target.to_vec(), uid, gid },
            };
            self.push(&mut last, op);
            // A symlink's times cannot be changed through it later (utimes follows it): send the
            // time it was created with, so both copies hold the same.
            if symlink {
                let atime = time_set(st.st_atime, st.st_atime_nsec);
                let mtime = time_set(st.st_mtime, st.st_mtime_nsec);
                self.push(&mut last, Op::SetTimes { path: rel(&p), atime, mtime });
            }
        }
        Ok((to_attr(ino, &st), last))
    }

    fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> SysResult<Pending> {
        let _g = self.order();
        let p = self.child_of(parent, name)?;
        let replicated = self.replicates(&p);
        let gone = if self.syncing() { self.stat_path(&p).ok().map(|st| key_of(&st)) } else { None };
        self.log_parent_change(&p);
        if !dir {
            // Its inode number may come back for another file.
            self.log_identity_change(&p);
        }
        sys::unlinkat(self.dirfd(), &cpath(&p)?, if dir { libc::AT_REMOVEDIR } else { 0 })?;
        self.inodes().remove_name(parent, name);
        match gone {
            Some(k) if dir => self.sync_unlist(k),
            Some(k) => self.sync_forget_name(k, &p),
            None => {}
        }
        let mut last = None;
        if replicated {
            self.push(&mut last, if dir { Op::Rmdir { path: rel(&p) } } else { Op::Unlink { path: rel(&p) } });
        }
        Ok(last)
    }

    fn do_rename(&self, p1: u64, n1: &OsStr, p2: u64, n2: &OsStr, flags: u32) -> SysResult<Pending> {
        let _g = self.order();
        let from = self.child_of(p1, n1)?;
        let to = self.child_of(p2, n2)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        // "Excluded" here means "not on the secondary": an excluded name, or, during a full
        // sync, a name in a directory not listed yet; crossing either boundary is sent the same way.
        let (ef, et) = (!self.replicates(&from), !self.replicates(&to));
        // What the secondary holds at `to` before it is overwritten (only needed when the
        // rename itself cannot be replayed there).
        let to_before = if ef && !et && !exchange { self.stat_path(&to).ok() } else { None };
        let replaced = if self.syncing() && !exchange { self.stat_path(&to).ok().map(|st| key_of(&st)) } else { None };
        self.log_parent_change(&from);
        self.log_parent_change(&to);
        // Both files change path (the replaced one may lose its last name).
        self.log_identity_change(&from);
        self.log_identity_change(&to);
        sys::renameat2(self.dirfd(), &cpath(&from)?, &cpath(&to)?, flags)?;
        self.inodes().rename(p1, n1, p2, n2, exchange);
        if let Some(k) = replaced {
            self.sync_unlist(k);
        }
        self.sync_renamed(&from, &to, exchange);
        let mut last = None;
        let mut links = HashMap::new();
        // Errors below concern only what is sent (the local rename is done): the application
        // gets success, and a failed copy is logged (the secondary is then repaired by the
        // catch-up/verify machinery).
        let r: SysResult<()> = (|| {
            match (ef, et) {
                (false, false) => self.push(&mut last, Op::Rename { from: rel(&from), to: rel(&to), flags }),
                (true, true) => {}
                (false, true) => {
                    self.emit_remove(&from, &to, &mut last)?;
                    if exchange {
                        self.emit_copy(&from, &mut links, &mut last)?;
                    }
                }
                (true, false) => {
                    if exchange {
                        self.emit_remove(&to, &from, &mut last)?;
                    } else if let Some(st) = to_before {
                        let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                        self.push(
                            &mut last,
                            if dir { Op::Rmdir { path: rel(&to) } } else { Op::Unlink { path: rel(&to) } },
                        );
                    }
                    self.emit_copy_or_link(&to, &mut links, &mut last)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!(from = %String::from_utf8_lossy(&from), to = %String::from_utf8_lossy(&to), error = %e,
                "rename across the exclusion boundary could not be sent completely");
        }
        Ok(last)
    }

    fn do_link(&self, ino: u64, newparent: u64, newname: &OsStr) -> SysResult<(FileAttr, Pending)> {
        let _g = self.order();
        let from = self.path_of(ino)?;
        let to = self.child_of(newparent, newname)?;
        let ct = cpath(&to)?;
        self.log_parent_change(&to);
        self.log_identity_change(&from);
        sys::linkat(self.dirfd(), &cpath(&from)?, &ct)?;
        let st = sys::fstatat(self.dirfd(), &ct)?;
        let new_ino = self.inodes().lookup(newparent, newname, key_of(&st), st.st_mode);
        let mut last = None;
        // `from` as the secondary knows it: during a full sync, possibly another name of the file.
        let from_sec = self.secondary_name(&from);
        if let Some(f) = &from_sec {
            self.sync_record_name(key_of(&st), f);
        }
        match (from_sec.is_none(), !self.replicates(&to)) {
            (false, false) => {
                let from = from_sec.unwrap_or(from);
                self.push(&mut last, Op::Link { from: rel(&from), to: rel(&to) });
                // During a full sync: both names now reach the file on the secondary.
                self.sync_record_name(key_of(&st), &from);
                self.sync_record_name(key_of(&st), &to);
            }
            // The secondary has no file to link to: it gets a copy under the new name.
            (true, false) => {
                if let Err(e) = self.emit_copy_or_link(&to, &mut HashMap::new(), &mut last) {
                    tracing::warn!(error = %e, "link from an excluded name could not be sent");
                }
            }
            _ => {}
        }
        Ok((to_attr(new_ino, &st), last))
    }

    fn do_open(&self, ino: u64, flags: i32) -> SysResult<(u64, Pending)> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncates = flags & libc::O_TRUNC != 0;
        // Opens that change nothing take no order lock; writable ones must be ordered before
        // the writes through them (and O_TRUNC is itself a change).
        let _g = if writable || truncates { Some(self.order()) } else { None };
        let path = self.inodes().path(ino);
        if truncates {
            if let Some(p) = &path {
                self.log_identity_change(p);
                self.activity_whole(None, Some(p));
            }
        }
        let fd = match &path {
            Some(p) => sys::openat(self.dirfd(), &cpath(p)?, local_open_flags(flags), 0)?,
            None => {
                // Reopened through /proc/<pid>/fd after its last name went: reopen our own
                // descriptor the same way.
                let other = self.any_file_of(ino).ok_or(Errno(libc::ENOENT))?;
                let proc =
                    CString::new(format!("/proc/self/fd/{}", other.fd.as_raw_fd())).map_err(|_| Errno(libc::EINVAL))?;
                sys::open(&proc, local_open_flags(flags) & !libc::O_NOFOLLOW)?
            }
        };
        let fh = self.new_fh();
        let repl_path = path.and_then(|p| self.secondary_name(&p));
        let mut last = None;
        let mut replicated = false;
        if let Some(p) = &repl_path {
            if writable {
                self.push(&mut last, Op::Open { fh, path: rel(p), flags: op_flags(flags, libc::O_TRUNC) });
                replicated = true;
            } else if truncates {
                self.push(&mut last, Op::TruncatePath { path: rel(p), size: 0 });
            }
        }
        let file = OpenFile {
            fd,
            ino,
            writable,
            sync: sync_mode(flags),
            replicated: AtomicBool::new(replicated),
            wrote: AtomicBool::new(truncates),
        };
        self.files().insert(fh, Arc::new(file));
        // Only a truncation needs the acknowledgement before the application goes on: a plain
        // Open is ordered before the writes through it anyway.
        Ok((fh, if truncates { last } else { None }))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> SysResult<(FileAttr, u64, Pending)> {
        let _g = self.order();
        let p = self.child_of(parent, name)?;
        let c = cpath(&p)?;
        let mode = mode & !umask & 0o7777;
        let exclusive = flags & libc::O_EXCL != 0;
        let lflags = local_open_flags(flags);
        if flags & libc::O_TRUNC != 0 && !exclusive {
            self.log_identity_change(&p);
            self.activity_whole(None, Some(&p));
        }
        // Find out whether we create the file or open an existing one (another opener may have
        // won a race): only a new file gets the caller's owner, and the op differs.
        let mut attempt = 0;
        let (fd, created) = loop {
            attempt += 1;
            if !exclusive {
                match sys::openat(self.dirfd(), &c, lflags, 0) {
                    Ok(fd) => break (fd, false),
                    Err(Errno(libc::ENOENT)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.log_parent_change(&p);
            match sys::openat(self.dirfd(), &c, lflags | libc::O_CREAT | libc::O_EXCL, mode) {
                Ok(fd) => break (fd, true),
                Err(Errno(libc::EEXIST)) if !exclusive && attempt < 4 => continue,
                Err(e) => return Err(e),
            }
        };
        if created {
            let parent_st = self.stat_path(&self.path_of(parent)?)?;
            let gid = if parent_st.st_mode & libc::S_ISGID != 0 { parent_st.st_gid } else { req.gid() };
            sys::fchown(fd.as_fd(), req.uid(), gid)?;
            // After the chown, which clears set-user/group-ID bits.
            sys::fchmod(fd.as_fd(), mode)?;
        }
        let st = sys::fstat(fd.as_fd())?;
        let ino = self.inodes().lookup(parent, name, key_of(&st), st.st_mode);
        let fh = self.new_fh();
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncates = flags & libc::O_TRUNC != 0;
        let mut last = None;
        let mut replicated = false;
        let repl = if created { self.replicates(&p).then(|| p.clone()) } else { self.secondary_name(&p) };
        if let Some(p) = repl {
            if created {
                self.push(
                    &mut last,
                    Op::Create {
                        fh,
                        path: rel(&p),
                        flags: op_flags(flags, libc::O_EXCL | libc::O_TRUNC),
                        mode: st.st_mode & 0o7777,
                        uid: st.st_uid,
                        gid: st.st_gid,
                    },
                );
                replicated = true;
            } else if writable {
                self.push(&mut last, Op::Open { fh, path: rel(&p), flags: op_flags(flags, libc::O_TRUNC) });
                replicated = true;
            } else if truncates {
                self.push(&mut last, Op::TruncatePath { path: rel(&p), size: 0 });
            }
        }
        let file = OpenFile {
            fd,
            ino,
            writable,
            sync: sync_mode(flags),
            replicated: AtomicBool::new(replicated),
            wrote: AtomicBool::new(created || truncates),
        };
        self.files().insert(fh, Arc::new(file));
        Ok((to_attr(ino, &st), fh, last))
    }

    fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<(usize, Arc<OpenFile>, Pending)> {
        let file = self.file(fh)?;
        let _g = self.order();
        self.log_write(&file.fd, offset, data.len() as u64);
        let n = sys::pwrite_full(file.fd.as_fd(), data, offset)?;
        file.wrote.store(true, Ordering::Relaxed);
        let mut last = None;
        if n > 0 && file.replicated.load(Ordering::Relaxed) {
            self.push(&mut last, Op::Write { fh, offset, data: data[..n].to_vec() });
        }
        Ok((n, file, last))
    }

    fn do_release(&self, fh: u64) {
        let Some(file) = self.files().remove(&fh) else { return };
        let _g = self.order();
        if file.replicated.load(Ordering::Relaxed) {
            // The secondary's writes stamped its own clock on the file: send ours, once per
            // open, rather than an extra op per write.
            if file.wrote.load(Ordering::Relaxed) {
                let path = self.inodes().path(file.ino).and_then(|p| self.secondary_name(&p));
                if let (Some(p), Ok(st)) = (path, sys::fstat(file.fd.as_fd())) {
                    self.emit(Op::SetTimes {
                        path: rel(&p),
                        atime: TimeSet::Omit,
                        mtime: time_set(st.st_mtime, st.st_mtime_nsec),
                    });
                }
            }
            self.emit(Op::Close { fh });
        }
    }

    fn do_fsync(&self, fh: u64, datasync: bool) -> SysResult<Pending> {
        let file = self.file(fh)?;
        let mut last = None;
        {
            let _g = self.order();
            let path = self.inodes().path(file.ino);
            let handle = self.replicated_handle_of(file.ino, Some(fh));
            match (handle, path) {
                (Some(h), _) => self.push(&mut last, Op::Fsync { fh: Some(h), datasync }),
                // No handle open on the secondary for this file (e.g. fsync on a read-only
                // descriptor after writing through another one): sync the whole directory there.
                (None, Some(p)) if self.replicates(&p) => self.push(&mut last, Op::Fsync { fh: None, datasync }),
                _ => {}
            }
        }
        // The secondary's fsync is queued first, so both disks flush at the same time instead of
        // one after the other; the reply still waits for both (the local one here, outside the
        // order lock as it may take milliseconds, the secondary's acknowledgement after).
        sys::fsync(file.fd.as_fd(), datasync)?;
        Ok(last)
    }

    fn do_fsyncdir(&self, ino: u64, datasync: bool) -> SysResult<Pending> {
        let p = self.path_of(ino)?;
        let fd = sys::openat(self.dirfd(), &cpath(&p)?, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
        sys::fsync(fd.as_fd(), datasync)?;
        let _g = self.order();
        let mut last = None;
        if self.replicates(&p) {
            self.push(&mut last, Op::Fsync { fh: None, datasync });
        }
        Ok(last)
    }

    fn do_fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> SysResult<Pending> {
        let file = self.file(fh)?;
        let _g = self.order();
        if let Some(log) = self.zone_log() {
            if let Ok(st) = sys::fstat(file.fd.as_fd()) {
                log.before_identity_change(key_of(&st));
            }
        }
        self.activity_whole(Some(&file.fd), None);
        sys::fallocate(file.fd.as_fd(), mode, offset, len)?;
        file.wrote.store(true, Ordering::Relaxed);
        let mut last = None;
        if file.replicated.load(Ordering::Relaxed) {
            self.push(&mut last, Op::Fallocate { fh, mode, offset, len });
        }
        Ok(last)
    }

    fn do_setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<Pending> {
        let _g = self.order();
        let p = self.path_of(ino)?;
        let cname = CString::new(name.as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
        self.log_parent_change(&p);
        XattrPath::new(self.root.as_raw_fd(), &p)?.set(&cname, value, flags)?;
        let mut last = None;
        if let Some(p) = self.secondary_name(&p) {
            self.push(
                &mut last,
                Op::SetXattr { path: rel(&p), name: name.as_bytes().to_vec(), value: value.to_vec(), flags },
            );
        }
        Ok(last)
    }

    fn do_removexattr(&self, ino: u64, name: &OsStr) -> SysResult<Pending> {
        let _g = self.order();
        let p = self.path_of(ino)?;
        let cname = CString::new(name.as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
        self.log_parent_change(&p);
        XattrPath::new(self.root.as_raw_fd(), &p)?.remove(&cname)?;
        let mut last = None;
        if let Some(p) = self.secondary_name(&p) {
            self.push(&mut last, Op::RemoveXattr { path: rel(&p), name: name.as_bytes().to_vec() });
        }
        Ok(last)
    }

    fn do_getattr(&self, ino: u64, fh: Option<u64>) -> SysResult<FileAttr> {
        if let Some(f) = fh.and_then(|h| self.files().get(&h).cloned()) {
            return Ok(to_attr(ino, &sys::fstat(f.fd.as_fd())?));
        }
        match self.inodes().path(ino) {
            Some(p) => Ok(to_attr(ino, &self.stat_path(&p)?)),
            None => {
                let f = self.any_file_of(ino).ok_or(Errno(libc::ENOENT))?;
                Ok(to_attr(ino, &sys::fstat(f.fd.as_fd())?))
            }
        }
    }

    fn do_opendir(&self, ino: u64) -> SysResult<u64> {
        let p = self.path_of(ino)?;
        let fd = sys::openat(self.dirfd(), &cpath(&p)?, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
        let entries = sys::read_dir(fd)?;
        let fh = self.new_fh();
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, Arc::new(entries));
        Ok(fh)
    }

    fn xattr_path(&self, ino: u64) -> SysResult<XattrPath> {
        let p = self.path_of(ino)?;
        XattrPath::new(self.root.as_raw_fd(), &p)
    }
}

/// The attributes a setattr request changes (None: unchanged).
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

enum NewNode<'a> {
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a [u8] },
}

/// The `fuser::Filesystem` face of [`Inner`].
pub struct Fuse(pub Arc<Inner>);

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large writes: fewer round trips through the kernel and fewer ops per MiB.
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        // O_TRUNC reaches open() instead of a separate setattr: one op instead of two.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Deliberately not requested: FUSE_WRITEBACK_CACHE (a write must reach us, and the
        // secondary, before the application sees it complete) and FUSE_POSIX_LOCKS /
        // FUSE_FLOCK_LOCKS (the kernel then keeps locks local, which is what the primary needs).
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.lookup_entry(parent.0, name) {
            Ok(attr) => reply.entry(&self.0.ttl, &attr, Generation(0)),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.do_getattr(ino.0, fh.map(|h| h.0)) {
            Ok(attr) => reply.attr(&self.0.ttl, &attr),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.0.do_setattr(ino.0, fh.map(|h| h.0), SetAttr { mode, uid, gid, size, atime, mtime }) {
            Ok((attr, pending)) => {
                let ttl = self.0.ttl;
                self.0.complete(pending, AckLevel::Written, move || reply.attr(&ttl, &attr))
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.0.path_of(ino.0).and_then(|p| sys::readlinkat(self.0.dirfd(), &cpath(&p)?));
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let mode = (mode & libc::S_IFMT) | (mode & !umask & 0o7777);
        self.entry_reply(self.0.do_mknod_like(req, parent.0, name, NewNode::Node { mode, rdev: rdev as u64 }), reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mode = mode & !umask & 0o7777;
        self.entry_reply(self.0.do_mknod_like(req, parent.0, name, NewNode::Dir { mode }), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty_reply(self.0.do_remove(parent.0, name, false), AckLevel::Written, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty_reply(self.0.do_remove(parent.0, name, true), AckLevel::Written, reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes();
        self.entry_reply(self.0.do_mknod_like(req, parent.0, link_name, NewNode::Symlink { target }), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.0.do_rename(parent.0, name, newparent.0, newname, flags.bits());
        self.empty_reply(r, AckLevel::Written, reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.entry_reply(self.0.do_link(ino.0, newparent.0, newname), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.0.do_open(ino.0, flags.0) {
            Ok((fh, pending)) => {
                let fopen =
                    if flags.0 & libc::O_DIRECT != 0 { FopenFlags::empty() } else { FopenFlags::FOPEN_KEEP_CACHE };
                self.0.complete(pending, AckLevel::Written, move || reply.opened(FileHandle(fh), fopen))
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.0.file(fh.0).and_then(|f| {
            let mut buf = vec![0u8; size as usize];
            let n = sys::pread_full(f.fd.as_fd(), &mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.0.do_write(fh.0, offset, data) {
            Ok((n, file, pending)) => {
                // The per-write flags also carry O_DSYNC/O_DIRECT set after open (fcntl).
                let mode = match (file.sync, sync_mode(flags.0)) {
                    (SyncMode::Full, _) | (_, SyncMode::Full) => SyncMode::Full,
                    (SyncMode::Data, _) | (_, SyncMode::Data) => SyncMode::Data,
                    _ => SyncMode::None,
                };
                if mode == SyncMode::None {
                    self.0.complete(pending, AckLevel::Written, move || reply.written(n as u32));
                    return;
                }
                // Durable here and there before the application sees the write complete.
                self.0.completions.run(Box::new(move || {
                    if let Err(e) = sys::fsync(file.fd.as_fd(), mode == SyncMode::Data) {
                        reply.error(fe(e));
                        return;
                    }
                    if let Some((sink, seq)) = pending {
                        if let Err(e) = sink.wait(seq, AckLevel::Durable) {
                            tracing::warn!(seq, error = %e, "durable acknowledgement failed; answering locally");
                        }
                    }
                    reply.written(n as u32)
                }));
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() of one descriptor: nothing to do, every write was already replicated
        // synchronously. The handle is closed on release.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // No wait: close() does not wait for release, and the Close is ordered after the writes.
        self.0.do_release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        // Entirely on a completion thread: the local flush may be slow and must not hold up
        // the FUSE threads.
        let inner = self.0.clone();
        self.0.completions.run(Box::new(move || match inner.do_fsync(fh.0, datasync) {
            Ok(pending) => {
                if let Some((sink, seq)) = pending {
                    if let Err(e) = sink.wait(seq, AckLevel::Durable) {
                        tracing::warn!(seq, error = %e, "durable acknowledgement failed; answering locally");
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(fe(e)),
        }));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.do_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = self.0.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(&fh.0).cloned();
        let Some(entries) = entries else {
            reply.error(FuseErrno::EBADF);
            return;
        };
        let dir_path = self.0.inodes().path(ino.0);
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let kind = kind_of_dtype(e.d_type).unwrap_or_else(|| {
                dir_path
                    .as_ref()
                    .and_then(|d| self.0.stat_path(&join(d, &e.name)).ok())
                    .map(|st| kind_of(st.st_mode))
                    .unwrap_or(FileType::RegularFile)
            });
            if reply.add(INodeNo(e.ino.max(1)), (i + 1) as u64, kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.0.dirs.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let inner = self.0.clone();
        self.0.completions.run(Box::new(move || match inner.do_fsyncdir(ino.0, datasync) {
            Ok(pending) => {
                if let Some((sink, seq)) = pending {
                    if let Err(e) = sink.wait(seq, AckLevel::Durable) {
                        tracing::warn!(seq, error = %e, "durable acknowledgement failed; answering locally");
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(fe(e)),
        }));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::fstatvfs(self.0.dirfd()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.empty_reply(self.0.do_setxattr(ino.0, name, value, flags), AckLevel::Written, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = CString::new(name.as_bytes())
            .map_err(|_| Errno(libc::EINVAL))
            .and_then(|n| self.0.xattr_path(ino.0)?.get(&n, size as usize));
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.0.xattr_path(ino.0).and_then(|x| x.list(size as usize)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty_reply(self.0.do_removexattr(ino.0, name), AckLevel::Written, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let r = self.0.path_of(ino.0).and_then(|p| sys::faccessat(self.0.dirfd(), &cpath(&p)?, mask.bits()));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.0.do_create(req, parent.0, name, mode, umask, flags) {
            Ok((attr, fh, pending)) => {
                let ttl = self.0.ttl;
                let fopen =
                    if flags & libc::O_DIRECT != 0 { FopenFlags::empty() } else { FopenFlags::FOPEN_KEEP_CACHE };
                self.0.complete(pending, AckLevel::Written, move || {
                    reply.created(&ttl, &attr, Generation(0), FileHandle(fh), fopen)
                })
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.empty_reply(self.0.do_fallocate(fh.0, offset, length, mode), AckLevel::Written, reply);
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        // SEEK_DATA/SEEK_HOLE answered from the real file, so sparse-aware tools see the holes.
        match self.0.file(fh.0).and_then(|f| sys::lseek(f.fd.as_fd(), offset, whence)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(fe(e)),
        }
    }
}

impl Fuse {
    fn entry_reply(&self, r: SysResult<(FileAttr, Pending)>, reply: ReplyEntry) {
        match r {
            Ok((attr, pending)) => {
                let ttl = self.0.ttl;
                self.0.complete(pending, AckLevel::Written, move || reply.entry(&ttl, &attr, Generation(0)))
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn empty_reply(&self, r: SysResult<Pending>, level: AckLevel, reply: ReplyEmpty) {
        match r {
            Ok(pending) => self.0.complete(pending, level, move || reply.ok()),
            Err(e) => reply.error(fe(e)),
        }
    }
}
