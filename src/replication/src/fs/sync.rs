//! The full synchronisation: sends a secondary whose copy is empty everything it needs, while the
//! application keeps using the mount. See docs/replication.md, "The file system layer", "Full
//! synchronisation", for the invariants and why no write is lost.
//!
//! In short: while a sync runs, the layer knows which directories the secondary already holds
//! *listed* (every entry of theirs is there). An application change is sent only when the
//! secondary holds what it touches (the parent directory is listed); a change elsewhere is not
//! sent, and the walk picks it up when it lists that directory. Listing one directory is one step
//! under the order lock; the data of each file is then sent one chunk per step under the order
//! lock, through the sync's own handle, while the application's own handles on that file are
//! already replicated.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::basis::Model;
use super::handlers::{join, key_of, rel, time_set, Inner, Pending};
use super::inodes::Key;
use super::sys::{self, cpath, Errno};
use super::{Basis, FsError, OpSink, SyncProgress};
use crate::manifest::{Entry, Hash, Kind, Suspect};
use crate::op::{AckLevel, Handle, Op, TimeSet};
use crate::zonelog::Tracked;

thread_local! {
    /// Set on the thread running a full sync: its ops are not the application's changes, so the
    /// change observer does not see them.
    pub(super) static QUIET: Cell<bool> = const { Cell::new(false) };
}

struct Quiet;

impl Quiet {
    fn new() -> Quiet {
        QUIET.with(|q| q.set(true));
        Quiet
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(false));
    }
}

/// What the layer knows of the secondary's copy while a full sync runs. Read and changed only
/// under the order lock.
pub(super) struct SyncState {
    /// Identifies this sync: attaching or detaching a sink ends it.
    pub generation: u64,
    /// Directories whose entries are all on the secondary (the root first).
    pub listed: HashSet<Key>,
    /// Directories on the secondary (their Mkdir was sent) not listed yet: the walk's stack.
    pub stack: Vec<(Vec<u8>, Key)>,
    /// The names sent (or linked on the secondary) of each regular file with several links.
    /// Some may have left the secondary since: a name is used only after checking that it still
    /// names the same file and that the secondary holds it.
    pub links: HashMap<Key, Vec<Vec<u8>>>,
    /// Files whose data the walk is sending, by the sync's handle: their current name.
    pub copying: HashMap<Handle, (Vec<u8>, Key)>,
    /// A catch-up: what the secondary kept, as it is now (None: its copy is empty).
    pub basis: Option<Model>,
    /// A catch-up that may trust the zone log.
    pub zones: Option<Arc<crate::zonelog::ZoneLog>>,
    /// A names catch-up (see [`super::NamesBasis`]): the directories whose entries the basis
    /// holds whole (the others: by name and kind only), and how to ask for one.
    pub names: Option<(HashSet<Vec<u8>>, super::Fetch)>,
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

/// `p` renamed: `from` (or what is below it) becomes `to`.
fn moved(p: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if p == from {
        return Some(to.to_vec());
    }
    if p.len() > from.len() && p.starts_with(from) && p[from.len()] == b'/' {
        let mut n = to.to_vec();
        n.extend_from_slice(&p[from.len()..]);
        return Some(n);
    }
    None
}

impl SyncState {
    fn new(generation: u64) -> SyncState {
        SyncState {
            generation,
            listed: HashSet::new(),
            stack: Vec::new(),
            links: HashMap::new(),
            copying: HashMap::new(),
            basis: None,
            zones: None,
            names: None,
        }
    }

    /// Follows a local rename in every path the sync keeps (whether the rename was sent or not).
    pub fn renamed(&mut self, from: &[u8], to: &[u8], exchange: bool) {
        let fix = |p: &mut Vec<u8>| {
            if let Some(n) = moved(p, from, to) {
                *p = n;
            } else if exchange {
                if let Some(n) = moved(p, to, from) {
                    *p = n;
                }
            }
        };
        self.stack.iter_mut().for_each(|(p, _)| fix(p));
        self.links.values_mut().for_each(|names| names.iter_mut().for_each(fix));
        self.copying.values_mut().for_each(|(p, _)| fix(p));
    }
}

/// Bounds what the sync has queued but the secondary has not received, and surfaces a broken
/// stream: every `WINDOW` bytes (or objects) a checkpoint is taken, and the one before the
/// previous is waited for.
#[derive(Default)]
struct Flow {
    since: u64,
    checkpoints: VecDeque<(Arc<dyn OpSink>, u64)>,
    last: Pending,
    /// `resync_bandwidth`: at most this many bytes per second of the sync's own traffic.
    cap: Option<u64>,
    started: Option<Instant>,
    paced: u64,
}

const WINDOW: u64 = 8 << 20;
/// What an object without data counts for in the window (a checkpoint every 2048 objects).
const OBJECT_COST: u64 = 4096;

impl Flow {
    fn note(&mut self, last: Pending, cost: u64) -> Result<(), FsError> {
        if last.is_some() {
            self.last = last;
        }
        if let Some(cap) = self.cap.filter(|c| *c > 0) {
            // Paced here, outside the order lock: the application is never held by the cap.
            let started = *self.started.get_or_insert_with(Instant::now);
            self.paced += cost;
            let due = std::time::Duration::from_secs_f64(self.paced as f64 / cap as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        self.since += cost;
        if self.since < WINDOW {
            return Ok(());
        }
        self.since = 0;
        if let Some(p) = self.last.clone() {
            self.checkpoints.push_back(p);
        }
        while self.checkpoints.len() > 2 {
            let (sink, seq) = self.checkpoints.pop_front().expect("non-empty");
            sink.wait(seq, AckLevel::Received).map_err(FsError::Stream)?;
        }
        Ok(())
    }

    /// Waits until everything sent is applied on the secondary.
    fn finish(&mut self) -> Result<(), FsError> {
        if let Some((sink, seq)) = self.last.take() {
            sink.wait(seq, AckLevel::Written).map_err(FsError::Stream)?;
        }
        Ok(())
    }
}

/// A file listed whose data is still to send.
struct FileJob {
    fh: Handle,
    fd: OwnedFd,
    /// The block hashes of the secondary's copy, which it kept: only differing blocks are sent.
    basis: Option<Vec<Hash>>,
    /// With a zone log: only the blocks of these byte ranges may differ (the rest is not read).
    ranges: Option<Vec<(u64, u64)>>,
    /// The mtime of the secondary's copy, which it kept: if nothing is sent and the mtime is the
    /// same, the secondary's file is not touched at all (its ctime stays, for its own zone log).
    kept_mtime: Option<(i64, i64)>,
    /// Data was sent into the file.
    sent: bool,
}

/// How a catch-up treats a file the secondary kept.
enum Plan {
    /// Compare every block by hash.
    Compare,
    /// The zone log says these ranges changed: compare their blocks only.
    Ranges(Vec<(u64, u64)>),
    /// Unchanged since the secondary was in sync: not opened, not read.
    Unchanged,
}

/// What one listing step sent.
#[derive(Default)]
struct Listed {
    files: u64,
    dirs: u64,
    removed: u64,
    unread: u64,
    jobs: Vec<FileJob>,
}

fn local_err(path: &[u8], what: &'static str, e: Errno) -> FsError {
    FsError::Io {
        path: std::path::PathBuf::from(String::from_utf8_lossy(path).into_owned()),
        what,
        source: std::io::Error::from_raw_os_error(e.0),
    }
}

fn p_or_empty(name: &Option<Vec<u8>>) -> Vec<u8> {
    name.clone().unwrap_or_default()
}

/// What a block of `COPY_CHUNK` holes reads as, for its hash.
static ZEROS: [u8; super::handlers::COPY_CHUNK] = [0; super::handlers::COPY_CHUNK];

/// Whether `[off, off + len)` of the file is a hole (reads as zeros without being read).
fn is_hole(fd: &OwnedFd, off: u64, len: u64) -> bool {
    match sys::lseek(fd.as_fd(), off as i64, libc::SEEK_DATA) {
        Ok(data) => data as u64 >= off + len,
        Err(Errno(libc::ENXIO)) => true,
        Err(_) => false,
    }
}

/// Errors that mean the object went away meanwhile (the application removed or renamed it).
/// The union of two sorted lists of (start, length) ranges, sorted and merged.
fn merge_ranges(a: Vec<(u64, u64)>, b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all = a;
    all.extend_from_slice(b);
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (start, len) in all {
        match out.last_mut() {
            Some(last) if start <= last.0 + last.1 => last.1 = last.1.max(start + len - last.0),
            _ => out.push((start, len)),
        }
    }
    out
}

fn vanished(e: Errno) -> bool {
    matches!(e.0, libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
}

impl Inner {
    pub(super) fn sync_state(&self) -> MutexGuard<'_, Option<SyncState>> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the secondary holds the entry at `p` (always, when no sync runs). Under the order lock.
    pub(super) fn on_secondary(&self, p: &[u8]) -> bool {
        let s = self.sync_state();
        match s.as_ref() {
            None => true,
            Some(s) => self.on_secondary_in(s, p),
        }
    }

    pub(super) fn on_secondary_in(&self, s: &SyncState, p: &[u8]) -> bool {
        p.is_empty() || self.stat_path(parent_of(p)).map(|st| s.listed.contains(&key_of(&st))).unwrap_or(false)
    }

    /// Whether a change at `p` is sent: not excluded and on the secondary.
    pub(super) fn replicates(&self, p: &[u8]) -> bool {
        !self.excluded(p) && self.on_secondary(p)
    }

    /// The name under which the secondary holds the object at `p`: `p` itself, or, while a sync
    /// runs, another name of the same regular file (a hard link already sent while `p` is in a
    /// directory not listed yet). None: changes to it are not sent.
    pub(super) fn secondary_name(&self, p: &[u8]) -> Option<Vec<u8>> {
        if self.excluded(p) {
            return None;
        }
        let s = self.sync_state();
        let Some(s) = s.as_ref() else { return Some(p.to_vec()) };
        if self.on_secondary_in(s, p) {
            return Some(p.to_vec());
        }
        let st = self.stat_path(p).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink < 2 {
            return None;
        }
        self.sent_name_in(s, key_of(&st))
    }

    /// A name under which the secondary holds the regular file `key`, among those recorded.
    fn sent_name_in(&self, s: &SyncState, key: Key) -> Option<Vec<u8>> {
        s.links
            .get(&key)?
            .iter()
            .find(|n| {
                !self.excluded(n)
                    && self.stat_path(n).map(|o| key_of(&o) == key).unwrap_or(false)
                    && self.on_secondary_in(s, n)
            })
            .cloned()
    }

    /// While a sync runs: a name under which the secondary holds the regular file `key`.
    pub(super) fn sync_sent_name(&self, key: Key) -> Option<Vec<u8>> {
        let s = self.sync_state();
        self.sent_name_in(s.as_ref()?, key)
    }

    /// While a sync runs: the secondary no longer holds the name `p` (now the local name of
    /// what it named) of the regular file `key`.
    pub(super) fn sync_forget_name(&self, key: Key, p: &[u8]) {
        if let Some(s) = self.sync_state().as_mut() {
            if let Some(names) = s.links.get_mut(&key) {
                names.retain(|n| n != p);
            }
        }
    }

    /// While a sync runs: the secondary now holds the regular file `key` under `p` too.
    pub(super) fn sync_record_name(&self, key: Key, p: &[u8]) {
        if let Some(s) = self.sync_state().as_mut() {
            let names = s.links.entry(key).or_default();
            if !names.iter().any(|n| n == p) {
                names.push(p.to_vec());
            }
        }
    }

    /// A directory now on the secondary with all its entries (created empty, or copied whole).
    pub(super) fn sync_mark_listed(&self, key: Key) {
        if let Some(s) = self.sync_state().as_mut() {
            s.listed.insert(key);
        }
    }

    /// A directory removed or moved out of what the secondary holds.
    pub(super) fn sync_unlist(&self, key: Key) {
        if let Some(s) = self.sync_state().as_mut() {
            s.listed.remove(&key);
        }
    }

    /// Whether a directory's entries are on the secondary (always, when no sync runs).
    pub(super) fn sync_is_listed(&self, key: Key) -> bool {
        self.sync_state().as_ref().map(|s| s.listed.contains(&key)).unwrap_or(true)
    }

    pub(super) fn sync_renamed(&self, from: &[u8], to: &[u8], exchange: bool) {
        if let Some(s) = self.sync_state().as_mut() {
            s.renamed(from, to, exchange);
        }
    }

    pub fn syncing(&self) -> bool {
        self.sync_state().is_some()
    }

    /// Attaches a stream whose secondary holds nothing yet: until [`Inner::full_sync`] has sent
    /// an object, no change to it is sent. Handles the application holds open are opened on the
    /// secondary when the sync sends their file.
    pub fn attach_empty(&self, sink: Arc<dyn OpSink>) {
        let _g = self.order();
        if let Ok(mut s) = self.sink.write() {
            *s = Some(sink);
        }
        for f in self.files().values() {
            f.replicated.store(false, Ordering::Relaxed);
        }
        let generation = self.sync_generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.sync_state() = Some(SyncState::new(generation));
    }

    /// See [`super::ReplicatedFs::set_basis`].
    pub fn set_basis(&self, basis: Basis) -> Result<(), FsError> {
        let _g = self.order();
        let mut s = self.sync_state();
        let Some(s) = s.as_mut() else { return Err(FsError::NotSyncing) };
        if !s.listed.is_empty() || !s.stack.is_empty() {
            return Err(FsError::Stream("the catch-up's basis came after the walk started".into()));
        }
        s.basis = Some(Model::new(basis.entries, basis.reuse));
        s.zones = basis.zones;
        s.names = basis.names.map(|n| (n.full.into_iter().collect(), n.fetch));
        Ok(())
    }

    /// For a names catch-up: the directories whose entries the secondary must list whole (the
    /// ones the zone log records a namespace change in), and the regular files it must hash (the
    /// ones recorded whole, which are compared block by block). A walk of the directories alone
    /// (`readdir`, a `stat` of each directory, of each entry the directory does not type, and of
    /// the files whose inode number the log records whole): no regular file is otherwise looked
    /// at. None: the log cannot be trusted that way, or the tree is not one where inode numbers
    /// read from a directory can be trusted (another filesystem below, a filesystem whose
    /// directory inode numbers may differ from stat's, such as overlayfs).
    pub fn names_plan(&self, log: &crate::zonelog::ZoneLog) -> Option<super::NamesPlan> {
        if !log.usable() || !log.names_complete() {
            return None;
        }
        // SAFETY: a plain fstatfs into a zeroed struct.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(self.dirfd().as_raw_fd(), &mut sfs) } != 0 {
            return None;
        }
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        const BTRFS: i64 = 0x9123_683E;
        const TMPFS: i64 = 0x0102_1994;
        if ![EXT4, XFS, BTRFS, TMPFS].contains(&(sfs.f_type as i64)) {
            return None;
        }
        let changed = log.changed_dirs();
        let recorded = log.recorded();
        let recorded_inos: HashSet<u64> = recorded.keys().map(|k| k.1).collect();
        // The recorded zones are handed to the kernel's readahead (up to 256 MiB), so that they
        // come from the disk while the secondary lists its copy rather than after.
        const READAHEAD_CAP: u64 = 256 << 20;
        let mut ahead = 0u64;
        let root = self.stat_path(b"").ok()?;
        let mut plan = super::NamesPlan::default();
        let mut stack = vec![(Vec::new(), key_of(&root))];
        while let Some((d, key)) = stack.pop() {
            if key.0 != root.st_dev {
                return None;
            }
            if changed.contains(&key) {
                plan.full.push(d.clone());
            }
            for (p, e) in self.entries_of(&d) {
                let look = match e.d_type {
                    libc::DT_DIR | libc::DT_UNKNOWN => true,
                    libc::DT_REG => recorded_inos.contains(&e.ino),
                    _ => false,
                };
                if !look {
                    continue;
                }
                let Ok(st) = self.stat_path(&p) else { continue };
                match (st.st_mode & libc::S_IFMT, recorded.get(&key_of(&st))) {
                    (libc::S_IFDIR, _) => stack.push((p, key_of(&st))),
                    (libc::S_IFREG, Some(Tracked::Whole)) if st.st_nlink == 1 => plan.hash.push(p),
                    (libc::S_IFREG, Some(Tracked::Ranges(r))) if ahead < READAHEAD_CAP => {
                        ahead += self.read_ahead(&p, r);
                    }
                    _ => {}
                }
            }
        }
        Some(plan)
    }

    /// Fails unless the sync `generation` still runs (the sink was neither replaced nor detached).
    fn check(&self, generation: u64) -> Result<(), FsError> {
        match self.sync_state().as_ref() {
            Some(s) if s.generation == generation => Ok(()),
            _ => Err(FsError::Stream("the replication stream was detached during the full synchronisation".into())),
        }
    }

    /// Bytes of data the sync will send, about: the allocated part of each regular file (each
    /// inode once). A walk of the metadata, without the order lock.
    fn sync_estimate(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        self.walk_files(&mut |_, st| {
            if seen.insert(key_of(st)) {
                total += (st.st_size.max(0) as u64).min(st.st_blocks.max(0) as u64 * 512)
            }
        });
        total
    }

    /// What a catch-up would read and at most send, from the metadata and the zone log: see
    /// [`super::ReplicatedFs::catch_up_estimate`].
    pub fn catch_up_estimate(&self, log: Option<&crate::zonelog::ZoneLog>) -> super::CatchUpEstimate {
        let mut e = super::CatchUpEstimate::default();
        let mut seen = HashSet::new();
        self.walk_files(&mut |_, st| {
            if !seen.insert(key_of(st)) {
                return;
            }
            let size = st.st_size.max(0) as u64;
            e.files += 1;
            e.bytes += size;
            let tracked = log.and_then(|l| l.lookup(key_of(st), super::handlers::ctime_of(st)));
            match tracked {
                None | Some(Tracked::Whole) => e.compare += size,
                Some(Tracked::Untouched) => e.unread += size,
                Some(Tracked::Ranges(r)) => {
                    let changed: u64 = r.iter().map(|(s, n)| (s + n).min(size).saturating_sub(*s)).sum();
                    e.compare += changed;
                    e.unread += size - changed;
                }
            }
        });
        e
    }

    /// The regular files a catch-up trusting `log` will compare by block hash (recorded whole,
    /// or changed too recently to be vouched for): the secondary hashes only these. Files with
    /// recorded zones get those zones sent without comparison; the others are not read at all.
    ///
    /// The recorded zones are also handed to the kernel's readahead (up to 256 MiB), so that they
    /// come from the disk while the secondary lists its copy rather than after.
    pub fn files_to_hash(&self, log: &crate::zonelog::ZoneLog) -> Vec<Vec<u8>> {
        const READAHEAD_CAP: u64 = 256 << 20;
        let mut out = Vec::new();
        let mut ahead = 0u64;
        self.walk_files(&mut |p, st| {
            if st.st_nlink == 1 {
                match log.lookup(key_of(st), super::handlers::ctime_of(st)) {
                    None | Some(Tracked::Whole) => out.push(p.to_vec()),
                    Some(Tracked::Ranges(r)) if ahead < READAHEAD_CAP => ahead += self.read_ahead(p, &r),
                    Some(Tracked::Ranges(_)) | Some(Tracked::Untouched) => {}
                }
            }
        });
        out
    }

    /// Hands the `ranges` of the file at `p` to the kernel's readahead; returns their bytes.
    fn read_ahead(&self, p: &[u8], ranges: &[(u64, u64)]) -> u64 {
        let Ok(c) = cpath(p) else { return 0 };
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME;
        let fd = sys::openat(self.dirfd(), &c, flags, 0)
            .or_else(|_| sys::openat(self.dirfd(), &c, libc::O_RDONLY | libc::O_NOFOLLOW, 0));
        let Ok(fd) = fd else { return 0 };
        for (start, len) in ranges {
            // SAFETY: a plain advice call on an open descriptor.
            unsafe { libc::posix_fadvise(fd.as_raw_fd(), *start as i64, *len as i64, libc::POSIX_FADV_WILLNEED) };
        }
        ranges.iter().map(|(_, n)| n).sum()
    }

    /// The entries of the directory `d` (their paths, and what the directory says of them),
    /// excluded names aside; none if it cannot be read (it went away meanwhile).
    fn entries_of(&self, d: &[u8]) -> Vec<(Vec<u8>, sys::DirEntry)> {
        let Ok(c) = cpath(d) else { return Vec::new() };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let Ok(fd) = sys::openat(self.dirfd(), &c, flags, 0) else { return Vec::new() };
        sys::read_dir(fd)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| (join(d, &e.name), e))
            .filter(|(p, _)| !self.excluded(p))
            .collect()
    }

    /// Calls `f` with the path and stat of every regular file of the tree (excluded names aside).
    fn walk_files(&self, f: &mut dyn FnMut(&[u8], &libc::stat)) {
        let mut stack = vec![Vec::new()];
        while let Some(d) = stack.pop() {
            for (p, _) in self.entries_of(&d) {
                let Ok(st) = self.stat_path(&p) else { continue };
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => stack.push(p),
                    libc::S_IFREG => f(&p, &st),
                    _ => {}
                }
            }
        }
    }

    pub fn full_sync(&self, progress: &mut dyn FnMut(&SyncProgress)) -> Result<SyncProgress, FsError> {
        let start = Instant::now();
        let generation = {
            let _g = self.order();
            let mut s = self.sync_state();
            let Some(s) = s.as_mut() else { return Err(FsError::NotSyncing) };
            let root = self.stat_path(b"").map_err(|e| local_err(b".", "stat", e))?;
            s.stack.push((Vec::new(), key_of(&root)));
            s.generation
        };
        let _quiet = Quiet::new();
        let mut totals = SyncProgress { total_bytes_estimate: self.sync_estimate(), ..Default::default() };
        let cap = self.resync_bandwidth.load(Ordering::Relaxed);
        let mut flow = Flow { cap: (cap > 0).then_some(cap), ..Flow::default() };
        let mut buf = vec![0u8; super::handlers::COPY_CHUNK];
        loop {
            let mut last: Pending = None;
            let step = {
                let _g = self.order();
                self.check(generation)?;
                let next = self.sync_state().as_mut().and_then(|s| s.stack.pop());
                match next {
                    None => None,
                    Some((dir, key)) => match self.fetch_first(&dir, key) {
                        Some(fetch) => {
                            // Listed by name only, and changed since: the secondary lists it
                            // whole first (nothing is sent into it before it is listed here).
                            if let Some(s) = self.sync_state().as_mut() {
                                s.stack.push((dir.clone(), key));
                            }
                            Some(Err((dir, key, fetch)))
                        }
                        None => Some(Ok(self.list_dir(&dir, key, &mut last)?)),
                    },
                }
            };
            let listed = match step {
                None => break,
                Some(Ok(listed)) => listed,
                Some(Err((dir, key, fetch))) => {
                    let entries = fetch(&dir).map_err(FsError::Stream)?;
                    let _g = self.order();
                    self.check(generation)?;
                    let mut s = self.sync_state();
                    let s = s.as_mut().expect("checked");
                    // Still the next directory, under that name (a rename meanwhile: ask again).
                    if s.stack.last() == Some(&(dir.clone(), key)) {
                        if let (Some(m), Some((full, _))) = (s.basis.as_mut(), s.names.as_mut()) {
                            m.replace_children(&dir, entries);
                            full.insert(dir);
                        }
                    }
                    continue;
                }
            };
            flow.note(last, (listed.files + listed.dirs + listed.removed) * OBJECT_COST)?;
            totals.removed += listed.removed;
            totals.unread += listed.unread;
            for _ in 0..listed.dirs {
                totals.dirs += 1;
                totals.elapsed = start.elapsed();
                progress(&totals);
            }
            for _ in 0..listed.files {
                totals.files += 1;
                totals.elapsed = start.elapsed();
                progress(&totals);
            }
            for job in listed.jobs {
                self.copy_data(generation, job, &mut buf, &mut flow, &mut totals, start, progress)?;
            }
        }
        {
            let _g = self.order();
            self.check(generation)?;
            *self.sync_state() = None;
        }
        flow.finish()?;
        totals.elapsed = start.elapsed();
        Ok(totals)
    }

    /// One step under the order lock: sends every entry of the directory `dir` (which the
    /// secondary holds, empty) and marks it listed. Regular files get their name, size,
    /// attributes and the application's handles; their data follows in [`Inner::copy_data`].
    fn list_dir(&self, dir: &[u8], key: Key, last: &mut Pending) -> Result<Listed, FsError> {
        let mut out = Listed::default();
        // Still there, under this name, and not already sent whole (moved in by a rename)?
        let st = match self.stat_path(dir) {
            Ok(st) => st,
            Err(e) if vanished(e) => return Ok(out),
            Err(e) => return Err(local_err(dir, "stat", e)),
        };
        if key_of(&st) != key || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(out);
        }
        {
            let s = self.sync_state();
            let Some(s) = s.as_ref() else { return Ok(out) };
            if s.listed.contains(&key) || !self.on_secondary_in(s, dir) {
                // Listed already, or moved under a directory not listed yet: found again there.
                return Ok(out);
            }
        }
        if dir.is_empty() {
            // The secondary's root exists: give it the primary's owner, mode and xattrs.
            self.push(last, Op::Chown { path: rel(dir), uid: Some(st.st_uid), gid: Some(st.st_gid) });
            self.push(last, Op::Chmod { path: rel(dir), mode: st.st_mode & 0o7777 });
            let root = self.sync_state().as_ref().and_then(|s| s.basis.as_ref()).and_then(|m| m.get(b"").cloned());
            self.emit_xattrs_over(dir, root.as_ref(), last);
            out.dirs += 1;
        }
        // Listed from now on (the whole step is under the order lock, so no application change
        // sees it half done): the names sent below are on the secondary, for hard links.
        self.sync_mark_listed(key);
        let c = cpath(dir).map_err(|e| local_err(dir, "path", e))?;
        let fd = sys::openat(self.dirfd(), &c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
            .map_err(|e| local_err(dir, "opening the directory", e))?;
        let mut entries = sys::read_dir(fd).map_err(|e| local_err(dir, "reading the directory", e))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut locals = Vec::with_capacity(entries.len());
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let p = join(dir, &e.name);
            if self.excluded(&p) {
                continue;
            }
            match self.stat_path(&p) {
                Ok(st) => locals.push((e.name, p, st)),
                Err(e) if vanished(e) => continue,
                Err(e) => return Err(local_err(&p, "stat", e)),
            }
        }
        // A catch-up: first the names the secondary holds here and may not keep go.
        let mut kept = self.prune(dir, &locals, last, &mut out);
        for (name, p, st) in locals {
            let old = kept.remove(&name);
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    match &old {
                        // Kept: its entries are compared when it is listed in turn.
                        Some(e) if !e.bare => self.emit_meta_over(&p, &st, e, last),
                        Some(_) => {}
                        None => {
                            self.push(
                                last,
                                Op::Mkdir { path: rel(&p), mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid },
                            );
                            self.emit_xattrs(&p, last);
                        }
                    }
                    if let Some(s) = self.sync_state().as_mut() {
                        s.stack.push((p, key_of(&st)));
                    }
                    out.dirs += 1;
                }
                libc::S_IFREG => {
                    out.files += 1;
                    let plan = old.as_ref().map(|e| self.plan(&st, e)).unwrap_or(Plan::Compare);
                    if let (Plan::Unchanged, Some(e)) = (&plan, &old) {
                        // Not read; its metadata may still differ (chmod, xattrs), unless it is
                        // known by name only (its directory saw no attribute change). The
                        // handles the application holds on it replicate from now on.
                        if !e.bare {
                            self.emit_meta_over(&p, &st, e, last);
                        }
                        self.open_app_handles(key_of(&st), &p, last);
                        out.unread += st.st_size.max(0) as u64;
                        continue;
                    }
                    let head = self.send_file_head(&p, &st, old.as_ref(), plan, last);
                    if let Some(job) = head.map_err(|e| local_err(&p, "open", e))? {
                        out.jobs.push(job);
                    }
                }
                _ => {
                    // Symlinks, fifos, sockets, devices: the colleague's whole-object copy.
                    match self.emit_copy(&p, &mut HashMap::new(), last) {
                        Ok(()) => out.files += 1,
                        Err(e) if vanished(e) => {}
                        Err(e) => return Err(local_err(&p, "copy", e)),
                    }
                }
            }
        }
        // The directory's entries are created: now its times (its subdirectories get theirs when
        // they are listed, which does not change this directory's).
        self.push(
            last,
            Op::SetTimes {
                path: rel(dir),
                atime: time_set(st.st_atime, st.st_atime_nsec),
                mtime: time_set(st.st_mtime, st.st_mtime_nsec),
            },
        );
        Ok(out)
    }

    /// Under the order lock, in a names catch-up: how to list the directory `dir` whole on the
    /// secondary, if its basis holds its entries by name only and the zone log records a change
    /// in it since (or no longer vouches for names at all).
    fn fetch_first(&self, dir: &[u8], key: Key) -> Option<super::Fetch> {
        let s = self.sync_state();
        let s = s.as_ref()?;
        let (full, fetch) = s.names.as_ref()?;
        if full.contains(dir) {
            return None;
        }
        let log = s.zones.as_ref()?;
        (log.dir_changed(key) || !log.names_complete()).then(|| fetch.clone())
    }

    /// What the zone log (if this catch-up may trust one) says of the local file `st`, whose
    /// copy `old` the secondary kept. An unrecorded file counts as unchanged only if its size and
    /// mtime are still those of the secondary's copy.
    fn plan(&self, st: &libc::stat, old: &Entry) -> Plan {
        let ours = self.plan_by_log(st, old);
        // What the secondary's activity log says it may hold differently (it crashed as
        // primary): those zones are sent too.
        match (&old.suspect, ours) {
            (None, plan) => plan,
            (Some(Suspect::Whole), _) | (_, Plan::Compare) => Plan::Compare,
            (Some(Suspect::Ranges(theirs)), Plan::Unchanged) => Plan::Ranges(theirs.clone()),
            (Some(Suspect::Ranges(theirs)), Plan::Ranges(mine)) => Plan::Ranges(merge_ranges(mine, theirs)),
        }
    }

    fn plan_by_log(&self, st: &libc::stat, old: &Entry) -> Plan {
        let log = self.sync_state().as_ref().and_then(|s| s.zones.clone());
        let Some(log) = log else { return Plan::Compare };
        match log.lookup(key_of(st), super::handlers::ctime_of(st)) {
            None | Some(Tracked::Whole) => Plan::Compare,
            Some(Tracked::Ranges(r)) => Plan::Ranges(r),
            // Listed by name only: its directory saw no namespace or attribute change (else it
            // was listed whole), so no change through the layer moved its ctime since tracking
            // started, but a change through another of its names, or outside the layer (while
            // the daemon was down, say): compared (its data sent whole, as there are no hashes
            // of it, with its owner, mode and xattrs).
            Some(Tracked::Untouched) if old.bare => {
                if super::handlers::ctime_of(st) > log.started() {
                    Plan::Compare
                } else {
                    Plan::Unchanged
                }
            }
            Some(Tracked::Untouched) => {
                let same = old.size == st.st_size.max(0) as u64
                    && old.mtime.sec == st.st_mtime
                    && old.mtime.nsec as i64 == st.st_mtime_nsec;
                if same {
                    Plan::Unchanged
                } else {
                    Plan::Compare
                }
            }
        }
    }

    /// Under the order lock, in a catch-up: removes on the secondary the names of `dir` it may
    /// not keep (absent here, excluded, of another type, hard-linked, or all of them for a full
    /// copy), and returns those it keeps, with what they hold.
    fn prune(
        &self,
        dir: &[u8],
        locals: &[(Vec<u8>, Vec<u8>, libc::stat)],
        last: &mut Pending,
        out: &mut Listed,
    ) -> HashMap<Vec<u8>, Entry> {
        let here: HashMap<&[u8], &libc::stat> = locals.iter().map(|(n, _, st)| (n.as_slice(), st)).collect();
        let verdicts: Vec<(Vec<u8>, Entry, bool)> = {
            let s = self.sync_state();
            let Some(m) = s.as_ref().and_then(|s| s.basis.as_ref()) else { return HashMap::new() };
            m.children(dir)
                .into_iter()
                .map(|(n, e)| {
                    let keep =
                        here.get(n.as_slice()).is_some_and(|st| m.keeps(&e, st.st_mode & libc::S_IFMT, st.st_nlink));
                    (n, e, keep)
                })
                .collect()
        };
        let mut kept = HashMap::new();
        for (name, e, keep) in verdicts {
            if keep {
                kept.insert(name, e);
                continue;
            }
            let p = join(dir, &name);
            // The secondary removes a directory with whatever stale tree it holds.
            self.push(
                last,
                if e.kind == Kind::Dir { Op::Rmdir { path: rel(&p) } } else { Op::Unlink { path: rel(&p) } },
            );
            out.removed += 1;
        }
        kept
    }

    /// A directory or file the secondary kept: its owner, mode and xattrs where they differ.
    fn emit_meta_over(&self, p: &[u8], st: &libc::stat, old: &Entry, last: &mut Pending) {
        let mode = st.st_mode & 0o7777;
        let chown = old.uid != st.st_uid || old.gid != st.st_gid;
        if chown {
            self.push(last, Op::Chown { path: rel(p), uid: Some(st.st_uid), gid: Some(st.st_gid) });
        }
        // After a chown too: it clears the set-id bits.
        if chown || old.mode != mode {
            self.push(last, Op::Chmod { path: rel(p), mode });
        }
        self.emit_xattrs_over(p, Some(old), last);
    }

    /// The xattrs of `p`, over what the secondary holds (`old`; None: nothing): only the
    /// differing ones are set, and the ones it has that `p` lacks are removed.
    fn emit_xattrs_over(&self, p: &[u8], old: Option<&Entry>, last: &mut Pending) {
        let Some(old) = old else { return self.emit_xattrs(p, last) };
        let mine = self.xattrs_of(p);
        for name in old.xattrs.keys() {
            if !mine.contains_key(name) {
                self.push(last, Op::RemoveXattr { path: rel(p), name: name.clone() });
            }
        }
        for (name, value) in mine {
            if old.xattrs.get(&name) != Some(&value) {
                self.push(last, Op::SetXattr { path: rel(p), name, value, flags: 0 });
            }
        }
    }

    /// Under the order lock: a Link to the first name sent of a hard-linked file, or the file's
    /// Create, Truncate to its size, xattrs, and the application's writable handles opened on
    /// the secondary. Returns the job that sends its data.
    /// A file the secondary kept (`old`) is opened there without truncation; the job then sends
    /// only the blocks that differ from its hashes.
    fn send_file_head(
        &self,
        p: &[u8],
        st: &libc::stat,
        old: Option<&Entry>,
        plan: Plan,
        last: &mut Pending,
    ) -> Result<Option<FileJob>, Errno> {
        let key = key_of(st);
        if st.st_nlink > 1 {
            if let Some(first) = self.sync_sent_name(key).filter(|f| f != p) {
                self.push(last, Op::Link { from: rel(&first), to: rel(p) });
                self.sync_record_name(key, p);
                self.open_app_handles(key, p, last);
                return Ok(None);
            }
        }
        let fd = match sys::openat(self.dirfd(), &cpath(p)?, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if vanished(e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fh = self.new_fh();
        let size = st.st_size.max(0) as u64;
        self.push(
            last,
            Op::Create {
                fh,
                path: rel(p),
                // An existing file keeps its data (and its owner and mode: set below).
                flags: if old.is_some() { libc::O_WRONLY } else { libc::O_WRONLY | libc::O_TRUNC },
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
            },
        );
        match old {
            Some(old) if !old.bare => {
                let chown = old.uid != st.st_uid || old.gid != st.st_gid;
                if chown {
                    self.push(last, Op::Chown { path: rel(p), uid: Some(st.st_uid), gid: Some(st.st_gid) });
                }
                if chown || old.mode != st.st_mode & 0o7777 {
                    self.push(last, Op::Chmod { path: rel(p), mode: st.st_mode & 0o7777 });
                }
            }
            // Known by name only, and changed: its owner and mode are sent as they are here (a
            // change of them may have gone through another name, or outside the layer).
            Some(_) => {
                self.push(last, Op::Chown { path: rel(p), uid: Some(st.st_uid), gid: Some(st.st_gid) });
                self.push(last, Op::Chmod { path: rel(p), mode: st.st_mode & 0o7777 });
            }
            None => {}
        }
        // The size first: from now on every change of size by the application is sent. (A kept
        // file of the same size is not truncated: that would only move its times.)
        if old.is_none_or(|e| e.bare || e.size != size) {
            self.push(last, Op::Truncate { fh, size });
        }
        // Known by name only: its xattrs are set as they are here (one the secondary alone
        // holds stays: docs/replication.md, "Namespace log").
        match old {
            Some(e) if e.bare => self.emit_xattrs(p, last),
            _ => self.emit_xattrs_over(p, old, last),
        }
        self.open_app_handles(key, p, last);
        if let Some(s) = self.sync_state().as_mut() {
            if st.st_nlink > 1 {
                s.links.insert(key, vec![p.to_vec()]);
            }
            s.copying.insert(fh, (p.to_vec(), key));
        }
        let ranges = match plan {
            Plan::Ranges(r) => Some(r),
            _ => None,
        };
        let kept_mtime = old.map(|e| (e.mtime.sec, e.mtime.nsec as i64));
        Ok(Some(FileJob { fh, fd, basis: old.map(|e| e.blocks.clone()), ranges, kept_mtime, sent: false }))
    }

    /// Sends the data of one file, one chunk (at most 1 MiB) per step under the order lock, then
    /// closes the sync's handle and sends the file's mtime.
    #[allow(clippy::too_many_arguments)]
    fn copy_data(
        &self,
        generation: u64,
        job: FileJob,
        buf: &mut [u8],
        flow: &mut Flow,
        totals: &mut SyncProgress,
        start: Instant,
        progress: &mut dyn FnMut(&SyncProgress),
    ) -> Result<(), FsError> {
        let mut job = job;
        match job.basis.take() {
            Some(blocks) => {
                totals.compared += 1;
                let ranges = job.ranges.take();
                job.sent = self.copy_differing(
                    generation,
                    &job,
                    &blocks,
                    ranges.as_deref(),
                    buf,
                    flow,
                    totals,
                    start,
                    progress,
                )?;
            }
            None => {
                job.sent = true;
                self.copy_all(generation, &job, buf, flow, totals, start, progress)?
            }
        }
        self.close_copy(generation, job, flow)
    }

    /// Sends every data chunk of the file (holes skipped).
    #[allow(clippy::too_many_arguments)]
    fn copy_all(
        &self,
        generation: u64,
        job: &FileJob,
        buf: &mut [u8],
        flow: &mut Flow,
        totals: &mut SyncProgress,
        start: Instant,
        progress: &mut dyn FnMut(&SyncProgress),
    ) -> Result<(), FsError> {
        let mut pos = 0u64;
        loop {
            let mut last: Pending = None;
            let n = {
                let _g = self.order();
                self.check(generation)?;
                let st = sys::fstat(job.fd.as_fd()).map_err(|e| local_err(b"", "fstat", e))?;
                if st.st_nlink == 0 {
                    // Deleted: the secondary's copy has no name left either.
                    break;
                }
                match self.next_chunk(&job.fd, pos, st.st_size.max(0) as u64, buf) {
                    Ok(Some((off, n))) => {
                        self.push(&mut last, Op::Write { fh: job.fh, offset: off, data: buf[..n].to_vec() });
                        pos = off + n as u64;
                        n as u64
                    }
                    Ok(None) => break,
                    Err(e) => return Err(local_err(b"", "reading a file to copy", e)),
                }
            };
            totals.bytes += n;
            totals.elapsed = start.elapsed();
            progress(totals);
            flow.note(last, n)?;
        }
        Ok(())
    }

    /// Sends the blocks of a file the secondary kept whose blake3 differs from `basis` (its
    /// hashes, per `COPY_CHUNK` block). Each block is first read and hashed without the order
    /// lock: the file is on the secondary since its listing and every later change to it is
    /// replicated, so a block equal to the basis now ends equal on both sides (the argument is
    /// in docs/replication.md, "Catch-up"). A differing block is read again and queued under
    /// the lock, so no concurrent write is overtaken by older data. A block of zeros is sent as
    /// a hole punch. Returns whether anything was sent.
    #[allow(clippy::too_many_arguments)]
    fn copy_differing(
        &self,
        generation: u64,
        job: &FileJob,
        basis: &[Hash],
        ranges: Option<&[(u64, u64)]>,
        buf: &mut [u8],
        flow: &mut Flow,
        totals: &mut SyncProgress,
        start: Instant,
        progress: &mut dyn FnMut(&SyncProgress),
    ) -> Result<bool, FsError> {
        let bs = buf.len() as u64;
        let read_err = |e| local_err(b"", "reading a file to compare", e);
        let mut index = 0usize;
        let mut changed = false;
        loop {
            self.check(generation)?;
            let off = index as u64 * bs;
            let st = sys::fstat(job.fd.as_fd()).map_err(|e| local_err(b"", "fstat", e))?;
            let size = st.st_size.max(0) as u64;
            if st.st_nlink == 0 || off >= size {
                break;
            }
            let len = (size - off).min(bs) as usize;
            let recorded = |(start, n): &(u64, u64)| *start < off + len as u64 && off < start + n;
            if ranges.is_some_and(|r| !r.iter().any(recorded)) {
                // The zone log saw no change here since the secondary was in sync.
                totals.unread += len as u64;
                index += 1;
                continue;
            }
            let same = match basis.get(index) {
                None => false,
                Some(theirs) => {
                    let mine = if is_hole(&job.fd, off, len as u64) {
                        blake3::hash(&ZEROS[..len])
                    } else {
                        let n = sys::pread_full(job.fd.as_fd(), &mut buf[..len], off).map_err(read_err)?;
                        blake3::hash(&buf[..n])
                    };
                    mine.as_bytes() == theirs
                }
            };
            let mut last: Pending = None;
            let mut sent = 0u64;
            if same {
                totals.matched += len as u64;
            } else {
                let _g = self.order();
                self.check(generation)?;
                let st = sys::fstat(job.fd.as_fd()).map_err(|e| local_err(b"", "fstat", e))?;
                let size = st.st_size.max(0) as u64;
                if st.st_nlink == 0 || off >= size {
                    break;
                }
                let len = (size - off).min(bs) as usize;
                let n = sys::pread_full(job.fd.as_fd(), &mut buf[..len], off).map_err(read_err)?;
                changed = true;
                if buf[..n].iter().all(|b| *b == 0) {
                    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                    self.push(&mut last, Op::Fallocate { fh: job.fh, mode, offset: off, len: n as u64 });
                } else {
                    self.push(&mut last, Op::Write { fh: job.fh, offset: off, data: buf[..n].to_vec() });
                    sent = n as u64;
                }
            }
            totals.bytes += sent;
            totals.elapsed = start.elapsed();
            progress(totals);
            flow.note(last, sent.max(OBJECT_COST))?;
            index += 1;
        }
        Ok(changed)
    }

    /// Closes the sync's handle on a copied file and sends its mtime.
    fn close_copy(&self, generation: u64, job: FileJob, flow: &mut Flow) -> Result<(), FsError> {
        let mut last: Pending = None;
        {
            let _g = self.order();
            self.check(generation)?;
            self.push(&mut last, Op::Close { fh: job.fh });
            let named = self.sync_state().as_mut().and_then(|s| s.copying.remove(&job.fh));
            if let Some((p, key)) = named {
                // Our writes stamped the secondary's clock on the file: send ours, under the
                // name it had when listed if the secondary still holds it, else under another
                // name of it that the secondary holds (a hard link), else it has no name there.
                let still = self.stat_path(&p).map(|st| key_of(&st) == key).unwrap_or(false) && self.replicates(&p);
                let name = if still { Some(p) } else { self.sync_sent_name(key) };
                let st = sys::fstat(job.fd.as_fd()).map_err(|e| local_err(&p_or_empty(&name), "fstat", e))?;
                let untouched = !job.sent && job.kept_mtime == Some((st.st_mtime, st.st_mtime_nsec));
                if let Some(name) = name.filter(|_| !untouched) {
                    self.push(
                        &mut last,
                        Op::SetTimes {
                            path: rel(&name),
                            atime: TimeSet::Omit,
                            mtime: time_set(st.st_mtime, st.st_mtime_nsec),
                        },
                    );
                }
            }
        }
        flow.note(last, OBJECT_COST)
    }
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn ranges_merge_into_a_sorted_union() {
        const M: u64 = 1 << 20;
        assert_eq!(merge_ranges(vec![(0, M), (5 * M, M)], &[]), vec![(0, M), (5 * M, M)]);
        assert_eq!(merge_ranges(vec![], &[(2 * M, M)]), vec![(2 * M, M)]);
        // Adjacent and overlapping ranges join; a contained one disappears.
        assert_eq!(
            merge_ranges(vec![(0, M), (5 * M, M)], &[(M, M), (4 * M, 3 * M), (5 * M, M / 2)]),
            vec![(0, 2 * M), (4 * M, 3 * M)]
        );
    }
}
