//! The primary's interception layer: a FUSE passthrough mounted over the replicated directory
//! itself, which applies every change locally and emits it as an [`Op`] to an [`OpSink`].
//!
//! How it stays out of its own way: the directory is opened (`O_PATH`) *before* the mount is
//! stacked on it, and every real system call is made relative to that descriptor (`openat` and
//! friends, `/proc/self/fd/N/...` for extended attributes which have no `*at` call). A walk that
//! starts from that descriptor begins on the underlying file system, so the application sees the
//! mount at its usual paths while the layer sees the real files underneath.
//!
//! See docs/replication.md, "The file system layer", for the guarantees and their limits.

mod basis;
mod completion;
mod exclude;
mod handlers;
mod inodes;
mod sync;
mod sys;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use exclude::{Exclusions, PatternError};
pub use handlers::MAX_WRITE;

use crate::op::{AckLevel, Op};
use completion::Completions;
use handlers::{Fuse, Inner};

/// Where the layer sends the ops it applied locally (the replication stream of the module).
pub trait OpSink: Send + Sync + 'static {
    /// Enqueue an op (already applied locally); returns its sequence number. Never blocks for long.
    fn submit(&self, op: Op) -> u64;
    /// Block until the secondary acknowledged every op up to `seq` at `level`, or fail
    /// (peer gone, timeout): the caller then answers the application normally (the op is local)
    /// and the daemon goes ALONE; it must never hang the application past the timeout.
    fn wait(&self, seq: u64, level: AckLevel) -> Result<(), String>;
}

/// The hook for change tracking: sees every replicated change (never an excluded one), in the
/// order it was applied locally, whether a sink is attached or not. Called under the layer's
/// order lock, so it must be quick (record the zone and return).
pub trait ChangeObserver: Send + Sync + 'static {
    fn on_local_change(&self, op: &Op);
}

/// Errors of mounting, unmounting and stale-mount cleaning. Errors of the application's own
/// operations never appear here: they go back to the application as the local errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("module name {0:?} cannot be used in a file system name (letters, digits, '-', '_', '.')")]
    ModuleName(String),
    #[error("{0}: not an absolute path to a directory")]
    NotADirectory(PathBuf),
    /// The replication stream broke (or was detached) during a full synchronisation.
    #[error("replication stream: {0}")]
    Stream(String),
    #[error("no full synchronisation to run: attach the stream with `attach_empty_secondary` first")]
    NotSyncing,
}

/// Running totals of a full synchronisation ([`ReplicatedFs::full_sync`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Non-directory entries sent: regular files (each name, a hard link included), symlinks,
    /// fifos, sockets, devices.
    pub files: u64,
    /// Directories sent, the root included.
    pub dirs: u64,
    /// Bytes of file data sent (holes are not sent).
    pub bytes: u64,
    /// The allocated bytes of the regular files when the sync started (each inode once).
    pub total_bytes_estimate: u64,
    pub elapsed: Duration,
    /// Catch-up: bytes of files the secondary kept that were compared by block hash and found
    /// identical (not sent).
    pub matched: u64,
    /// Catch-up: files the secondary kept and that were compared by block hash.
    pub compared: u64,
    /// Catch-up: stale names removed from the secondary (a directory counts once, with its tree).
    pub removed: u64,
    /// Catch-up with a zone log: bytes of kept files not read at all, known unchanged.
    pub unread: u64,
}

/// What a catch-up of a secondary that left cleanly would do ([`ReplicatedFs::catch_up_estimate`]):
/// from the metadata and the zone log, nothing read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatchUpEstimate {
    /// Regular files (each inode once) and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Bytes to compare by block hash on both sides: at most this much is sent (plus what the
    /// secondary lacks entirely).
    pub compare: u64,
    /// Bytes the zone log vouches for: not read.
    pub unread: u64,
}

/// What the secondary's copy of one directory holds at the start of a catch-up: its manifest
/// (paths relative to the directory; the empty path is the directory itself), taken at the
/// start of the stream, before any op of the catch-up.
#[derive(Debug, Clone)]
pub struct Basis {
    pub entries: std::collections::BTreeMap<crate::op::RelPath, crate::manifest::Entry>,
    /// Keep and compare the secondary's directories and files (a block-hash catch-up). False:
    /// remove everything it holds and send it all again (`second --fullsync`).
    pub reuse: bool,
    /// The zone log kept since the secondary's copy was last in sync, when it may be trusted
    /// (the secondary left cleanly): a kept file is then compared only in its recorded zones,
    /// and not read at all if the log never saw it change (and its ctime, size and mtime agree).
    pub zones: Option<Arc<crate::zonelog::ZoneLog>>,
    /// A names catch-up: `entries` is a names listing ([`crate::manifest::build_names`]).
    pub names: Option<NamesBasis>,
}

/// Asks the secondary for the entries of one directory, whole ([`crate::manifest::build_dir`]),
/// at this point of the stream; the paths are relative to the replicated directory.
pub type Fetch = Arc<
    dyn Fn(&[u8]) -> Result<std::collections::BTreeMap<crate::op::RelPath, crate::manifest::Entry>, String>
        + Send
        + Sync,
>;

/// The basis of a names catch-up (a zone log vouching for every namespace change): the
/// secondary listed whole only the entries of the directories in `full`; a directory the log
/// records a change in later is asked for with `fetch` before it is listed.
#[derive(Clone)]
pub struct NamesBasis {
    pub full: Vec<Vec<u8>>,
    pub fetch: Fetch,
}

impl std::fmt::Debug for NamesBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamesBasis").field("full", &self.full).finish_non_exhaustive()
    }
}

/// What the secondary lists for a names catch-up ([`ReplicatedFs::names_plan`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamesPlan {
    /// Directories whose entries it lists whole (a namespace change recorded in them).
    pub full: Vec<Vec<u8>>,
    /// Regular files it hashes (recorded whole).
    pub hash: Vec<Vec<u8>>,
}

fn io_err(path: &Path, what: &'static str, e: sys::Errno) -> FsError {
    FsError::Io { path: path.to_path_buf(), what, source: std::io::Error::from_raw_os_error(e.0) }
}

/// How to mount one replicated directory.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The module's name: the mount shows as `tandem-<module>` (type `fuse.tandem-<module>`).
    pub module: String,
    /// Glob patterns of paths not replicated (see [`Exclusions`] for the semantics).
    pub exclude: Vec<String>,
    /// Threads reading FUSE requests. They never wait for the network, so a few suffice.
    pub fuse_threads: usize,
    /// Threads waiting for acknowledgements: at most this many application requests wait for
    /// the secondary at the same time (more queue behind them).
    pub completion_threads: usize,
    /// How long the kernel may cache attributes and names. Every change goes through this
    /// layer, so the cache cannot go stale behind the kernel's back.
    pub attr_ttl: Duration,
}

impl MountOptions {
    pub fn new(module: impl Into<String>) -> MountOptions {
        MountOptions {
            module: module.into(),
            exclude: Vec::new(),
            fuse_threads: 2,
            completion_threads: 32,
            attr_ttl: Duration::from_secs(1),
        }
    }

    pub fn exclude<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> MountOptions {
        self.exclude = patterns.into_iter().map(Into::into).collect();
        self
    }
}

/// A mounted replicated directory. Unmounted by [`ReplicatedFs::unmount`] or on drop.
pub struct ReplicatedFs {
    inner: Arc<Inner>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    /// The FUSE connection number (the mount's minor device number), to abort it when a lazy
    /// unmount leaves it alive.
    connection: Option<u32>,
}

impl std::fmt::Debug for ReplicatedFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedFs").field("mountpoint", &self.mountpoint).finish()
    }
}

/// `dir` made absolute without resolving its last component: on a dead FUSE mount, resolving
/// it would fail with ENOTCONN, and the parent is what locates the mount anyway.
fn absolute(dir: &Path) -> Result<PathBuf, FsError> {
    let not_dir = || FsError::NotADirectory(dir.to_path_buf());
    let name = dir.file_name().ok_or_else(not_dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent.canonicalize().map_err(|e| FsError::Io {
        path: parent.clone(),
        what: "resolving the parent directory",
        source: e,
    })?;
    Ok(parent.join(name))
}

fn cstring(p: &Path) -> Result<CString, FsError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| FsError::NotADirectory(p.to_path_buf()))
}

impl ReplicatedFs {
    /// Mounts the layer over `dir` (which keeps its contents, visible through the mount). A
    /// stale tandem mount left at `dir` by a crashed daemon is cleaned first. With `sink` None
    /// the directory is served ALONE: changes are applied locally only (and seen by the
    /// observer); a sink can be attached later with [`ReplicatedFs::set_sink`].
    pub fn mount(dir: &Path, options: MountOptions, sink: Option<Arc<dyn OpSink>>) -> Result<ReplicatedFs, FsError> {
        let m = &options.module;
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(FsError::ModuleName(m.clone()));
        }
        let exclusions = Exclusions::new(&options.exclude)?;
        let mountpoint = absolute(dir)?;
        clean_stale_mounts(&mountpoint)?;
        let target = cstring(&mountpoint)?;
        let root = sys::open_path_dir(&target).map_err(|e| io_err(&mountpoint, "opening the directory", e))?;
        let st = sys::fstat(std::os::fd::AsFd::as_fd(&root)).map_err(|e| io_err(&mountpoint, "stat", e))?;
        let completions = Completions::new(options.completion_threads).map_err(|e| FsError::Io {
            path: mountpoint.clone(),
            what: "starting completion threads",
            source: e,
        })?;
        let inner = Arc::new(Inner::new(root, (st.st_dev, st.st_ino), exclusions, sink, completions, options.attr_ttl));

        let dev = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(|e| io_err(Path::new("/dev/fuse"), "open", e))?;
        // The mount is made here rather than by fuser so that its type is `fuse.tandem-<module>`
        // (fuser's own mount uses plain `fuse`), which is what stale-mount cleaning looks for.
        // No writeback cache is ever requested (see `Fuse::init`); nosuid/nodev as every FUSE
        // mount by default.
        let data = format!(
            "fd={},rootmode={:o},user_id={},group_id={},default_permissions,allow_other",
            dev.as_raw_fd(),
            st.st_mode & libc::S_IFMT,
            unsafe { libc::getuid() },
            unsafe { libc::getgid() },
        );
        let name = format!("tandem-{m}");
        let cstr = |s: String| CString::new(s).map_err(|_| FsError::ModuleName(m.clone()));
        sys::mount(
            &cstr(name.clone())?,
            &target,
            &cstr(format!("fuse.{name}"))?,
            libc::MS_NOSUID | libc::MS_NODEV,
            &cstr(data)?,
        )
        .map_err(|e| io_err(&mountpoint, "mounting FUSE", e))?;

        let mut config = fuser::Config::default();
        config.n_threads = Some(options.fuse_threads.max(1));
        config.clone_fd = true;
        config.acl = fuser::SessionACL::All;
        let session =
            fuser::Session::from_fd(Fuse(inner.clone()), dev, fuser::SessionACL::All, config).and_then(|s| s.spawn());
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                let _ = sys::umount2(&target, libc::MNT_DETACH);
                inner.completions.shutdown();
                return Err(FsError::Io { path: mountpoint, what: "starting the FUSE session", source: e });
            }
        };
        // The connection number is the minor of the mount's device; stat goes through our
        // own (already running) session.
        let connection =
            std::fs::symlink_metadata(&mountpoint).ok().map(|md| libc::minor(std::os::unix::fs::MetadataExt::dev(&md)));
        Ok(ReplicatedFs { inner, mountpoint, session: Some(session), connection })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The replicated directory itself (under the mount), open anew: its filesystem's identity
    /// and `syncfs`.
    pub fn backing_dir(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.inner.dirfd().try_clone_to_owned()
    }

    /// Attaches (PRIM) or detaches (ALONE) the replication stream. Takes effect between two
    /// ops: no op is half-way between applied and submitted at that moment.
    pub fn set_sink(&self, sink: Option<Arc<dyn OpSink>>) {
        self.inner.set_sink(sink);
    }

    pub fn has_sink(&self) -> bool {
        self.inner.has_sink()
    }

    /// Attaches the stream of a secondary whose replica directory is EMPTY (SECOND Transient).
    /// From then on a change is sent only when it concerns what the secondary already holds;
    /// [`ReplicatedFs::full_sync`] sends the rest. Files the application holds open are opened
    /// on the secondary when the sync sends them (not now: they do not exist there yet).
    /// [`ReplicatedFs::set_sink`] instead attaches a secondary whose copy is up to date.
    pub fn attach_empty_secondary(&self, sink: Arc<dyn OpSink>) {
        self.inner.attach_empty(sink);
    }

    /// Turns the pending synchronisation (after [`ReplicatedFs::attach_empty_secondary`]) into a
    /// catch-up of a secondary that kept its copy, described by `basis`: the walk removes the
    /// names it holds that this directory lacks, keeps its directories and single-link files,
    /// and sends only the 1 MiB blocks whose blake3 differs (docs/replication.md, "Catch-up").
    pub fn set_basis(&self, basis: Basis) -> Result<(), FsError> {
        self.inner.set_basis(basis)
    }

    /// Whether a full synchronisation is pending or running (attached with
    /// [`ReplicatedFs::attach_empty_secondary`] and not finished).
    pub fn syncing(&self) -> bool {
        self.inner.syncing()
    }

    /// Sends through the attached sink everything a secondary whose replica directory is EMPTY
    /// needs to become identical to this directory: every replicated (non-excluded) object —
    /// directories (parents before children), regular files (Create, Truncate to the size, Write
    /// of the data skipping holes in chunks of at most 1 MiB, Close), symlinks, hard links (a
    /// Link to the first name sent), fifos/devices (Mknod), and modes, owners, times (mtime;
    /// directories' times after their entries), xattrs. Runs while the application keeps
    /// writing through the mount: a directory is listed in one step under the layer's order
    /// lock, and each file's data is read and queued one chunk per step under it, so a
    /// concurrent write is either already in the copy or queued after it (docs/replication.md,
    /// "Full synchronisation"). Calls `progress` after each object and each chunk with running
    /// totals. Returns the totals once the secondary acknowledged everything as written, or the
    /// first error (a stream error means the stream broke: the sync stops).
    ///
    /// Must follow [`ReplicatedFs::attach_empty_secondary`] (else [`FsError::NotSyncing`]).
    /// Attaching or detaching a sink meanwhile ends it with [`FsError::Stream`].
    pub fn full_sync(&self, progress: &mut dyn FnMut(&SyncProgress)) -> Result<SyncProgress, FsError> {
        self.inner.full_sync(progress)
    }

    /// What a catch-up would compare and skip, given `log` (None: every file is compared). A
    /// walk of the metadata of the directory under the mount.
    pub fn catch_up_estimate(&self, log: Option<&crate::zonelog::ZoneLog>) -> CatchUpEstimate {
        self.inner.catch_up_estimate(log)
    }

    /// Caps the traffic of the next full copies and catch-ups (not the application's changes,
    /// which are replicated as they come) at `bytes_per_sec` (None: no cap).
    pub fn set_resync_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.inner.resync_bandwidth.store(bytes_per_sec.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// What the secondary lists for a catch-up that trusts `log` for names too (None: it cannot).
    /// A walk of the directories only.
    pub fn names_plan(&self, log: &crate::zonelog::ZoneLog) -> Option<NamesPlan> {
        self.inner.names_plan(log)
    }

    /// The files a catch-up trusting `log` compares by block hash: the secondary's manifest needs
    /// their hashes only ([`crate::manifest::build_with`]).
    pub fn files_to_hash(&self, log: &crate::zonelog::ZoneLog) -> Vec<Vec<u8>> {
        self.inner.files_to_hash(log)
    }

    /// Installs (or removes) the zone log: from now on, every change that reaches a file through
    /// the mount is recorded in it first (see [`crate::zonelog`]).
    pub fn set_zone_log(&self, log: Option<Arc<crate::zonelog::ZoneLog>>) {
        self.inner.set_zone_log(log);
    }

    /// Installs (or removes) the activity log: while the secondary is in sync, every write that
    /// reaches a file through the mount is recorded in it first (see [`crate::activity`]).
    pub fn set_activity_log(&self, log: Option<Arc<crate::activity::ActivityLog>>) {
        self.inner.set_activity_log(log);
    }

    /// Installs the change-tracking hook (see [`ChangeObserver`]).
    pub fn set_observer(&self, observer: Option<Arc<dyn ChangeObserver>>) {
        self.inner.set_observer(observer);
    }

    /// Files the applications hold open through the mount.
    pub fn open_files(&self) -> usize {
        self.inner.open_files()
    }

    /// Inodes the kernel currently knows (for leak checks).
    pub fn known_inodes(&self) -> usize {
        self.inner.known_inodes()
    }

    /// Unmounts and waits for the FUSE threads and pending replies. If the mount is busy
    /// (a process still has its working directory or a file in it), it is detached lazily and
    /// its FUSE connection aborted, so the call never hangs; those processes then get ENOTCONN.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.stop()
    }

    /// Fails, at once, every request the applications have in flight through the mount and every
    /// later one (the FUSE connection is aborted: they get ENOTCONN). For a node that stops being
    /// primary: a write still waiting for the secondary must fail rather than be answered once the
    /// stream is closed, as this copy may be about to be discarded. Unmount afterwards as usual.
    pub fn fence(&self) -> bool {
        self.connection.map(abort_connection).unwrap_or(false)
    }

    fn stop(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let target = cstring(&self.mountpoint)?;
        let mut result = Ok(());
        let mut joinable = true;
        match sys::umount2(&target, 0) {
            Ok(()) => {}
            Err(sys::Errno(libc::EBUSY)) => {
                let _ = sys::umount2(&target, libc::MNT_DETACH);
                joinable = self.connection.map(abort_connection).unwrap_or(false);
            }
            Err(e) => {
                joinable = false;
                result = Err(io_err(&self.mountpoint, "unmounting", e));
            }
        }
        if joinable {
            let _ = session.join();
        }
        // Else the session thread ends by itself when the last user of the detached mount leaves.
        self.inner.completions.shutdown();
        result
    }
}

impl Drop for ReplicatedFs {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "unmounting the replicated directory");
        }
    }
}

/// Aborts a FUSE connection through fusectl (mounting it if needed). Returns whether it worked.
fn abort_connection(conn: u32) -> bool {
    let dir = Path::new("/sys/fs/fuse/connections");
    let abort = dir.join(conn.to_string()).join("abort");
    if !abort.exists() {
        let _ = sys::mount(c"fusectl", c"/sys/fs/fuse/connections", c"fusectl", 0, c"");
    }
    std::fs::write(&abort, b"1").is_ok()
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space...) of mountinfo paths.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Parses mountinfo text: `id parent maj:min root mountpoint opts [optional...] - type source superopts`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.len() < sep + 3 || sep < 5 {
            continue;
        }
        out.push(MountEntry {
            mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(fields[4]))),
            fs_type: String::from_utf8_lossy(&unescape(fields[sep + 1])).into_owned(),
            source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
        });
    }
    out
}

/// Whether a mount is one of ours.
fn is_tandem(m: &MountEntry) -> bool {
    m.fs_type.starts_with("fuse.tandem-") || (m.fs_type == "fuse" && m.source.starts_with("tandem-"))
}

/// Lazily unmounts (`MNT_DETACH`) every tandem FUSE mount stacked on `dir`, such as one left by
/// a crashed daemon (its directory then answers ENOTCONN). Returns how many were removed. Call it
/// only when no live tandem daemon serves `dir` ([`ReplicatedFs::mount`] calls it first).
pub fn clean_stale_mounts(dir: &Path) -> Result<usize, FsError> {
    let target = absolute(dir)?;
    let ctarget = cstring(&target)?;
    let mut removed = 0;
    // Mounts may be stacked (several crashes): remove the top one until none is left; the bound
    // guards against a mount that refuses to go.
    for _ in 0..64 {
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| FsError::Io {
            path: PathBuf::from("/proc/self/mountinfo"),
            what: "reading",
            source: e,
        })?;
        let found = parse_mountinfo(&text).into_iter().any(|m| m.mount_point == target && is_tandem(&m));
        if !found {
            break;
        }
        sys::umount2(&ctarget, libc::MNT_DETACH).map_err(|e| io_err(&target, "detaching a stale mount", e))?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(dir = %target.display(), removed, "removed stale tandem mounts");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - fuse.tandem-web tandem-web rw,user_id=0\n\
                    37 35 0:40 / /data rw shared:2 - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert!(is_tandem(&m[0]));
        assert!(!is_tandem(&m[1]));
    }
}
