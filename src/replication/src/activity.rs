//! The activity log of a primary with its secondary in sync (DRBD's activity log, per file): the
//! zones this node may hold differently from its peer if it crashes now, kept durable so that,
//! when it comes back as the peer's secondary, its catch-up re-sends those zones instead of
//! comparing every file. See docs/replication.md, "Activity log".
//!
//! A zone can differ after a crash in two ways: a write reached this node's file but not the peer
//! (its acknowledgement was still awaited), or a write acknowledged by the peer was still in this
//! node's page cache and is lost with it (its mtime may have reached the disk: ext4 commits
//! metadata before overwritten data). So a zone is recorded (a 32-byte record, `fdatasync`ed, in
//! the zone log's format) before the first write into it, and leaves the log only once
//! - nothing was written into it for the window (the replication timeout + 5 s: every write
//!   before that was acknowledged by the peer, or the stream broke and this node went ALONE), and
//! - the directory's filesystem was synced (`syncfs`) after that last write.
//!
//! A background thread does this every half window: it syncs, then rewrites the log with the
//! zones still active (written under another name and renamed: the log is always whole; only
//! the rename, with what was recorded meanwhile, holds up the writers). It
//! syncs the files concerned (`fdatasync`, reopened by the file handle taken at their first
//! record: `open_by_handle_at`), or the whole filesystem (`syncfs`) when they are many (over
//! 256) or one cannot be reopened that way. A writer going on in order gets zones ahead of it
//! recorded with the one it enters (the zone log's own rule: up to 32 MiB ahead). A
//! truncation or fallocate marks the file whole. Files are named by (st_dev, st_ino), and the
//! replicated directories' own (st_dev, st_ino) are recorded first: a copy whose directory has
//! another identity when the log is read (another filesystem, a device renumbered by a reboot)
//! cannot use it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::zonelog::{Tracked, ZoneLog, ZoneLogError};

struct Active {
    /// Shared, so that a retirement writes the next log without holding up the writers.
    log: Arc<ZoneLog>,
    /// Last write into each active zone (`None`: the file is whole).
    touched: HashMap<((u64, u64), Option<u32>), Instant>,
    /// A file handle of each file with active zones, to sync it alone at retirement.
    handles: HashMap<(u64, u64), Handle>,
    /// Last namespace change in each active directory (see [`ActivityLog::before_dir_change`]).
    dirs: HashMap<(u64, u64), Instant>,
}

/// What an activity log holds now ([`ActivityLog::live`]): the files (zones or whole) and the
/// directories.
pub type Live = (HashMap<(u64, u64), Tracked>, HashSet<(u64, u64)>);

/// A file whose zones retire, with its handle if one was taken.
type FileToSync = ((u64, u64), Option<Handle>);

/// At most this many files are synced one by one at a retirement; more, and it is `syncfs`.
const SYNC_ONE_BY_ONE: usize = 256;

/// A `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ).
#[repr(C)]
#[derive(Clone)]
struct Handle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

impl Handle {
    /// The handle of the file open as `fd`, if its filesystem has them.
    fn of(fd: BorrowedFd<'_>) -> Option<Handle> {
        let mut h = Handle { handle_bytes: 128, handle_type: 0, f_handle: [0; 128] };
        let mut mount_id = 0;
        // SAFETY: `h` is a file_handle with 128 bytes of room, as handle_bytes says.
        let r = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                &mut h as *mut Handle as *mut libc::file_handle,
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        (r == 0).then_some(h)
    }

    /// Opens the file again, read-only, through any directory of its filesystem.
    fn open(&self, mount: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
        let mut h = self.clone();
        // SAFETY: a valid file_handle from name_to_handle_at; the new descriptor is ours.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                &mut h as *mut Handle as *mut libc::file_handle,
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

pub struct ActivityLog {
    path: PathBuf,
    zone_shift: u32,
    window: Duration,
    /// The replicated directories, under the FUSE layer (synced before zones leave the log),
    /// with their st_dev (to reopen a file by handle through one of its filesystem).
    dirs: Vec<(OwnedFd, u64)>,
    active: Mutex<Active>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    failed: AtomicBool,
    /// Retirements that synced whole filesystems rather than the files (tests).
    syncfs_count: std::sync::atomic::AtomicU64,
}

/// What an activity log left by a crash says, read by the node when it comes back as secondary.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// (index, st_dev, st_ino) of each replicated directory when the log started.
    pub roots: Vec<(u32, (u64, u64))>,
    /// The files with zones that may differ (`Whole`, or `Ranges`).
    pub files: HashMap<(u64, u64), Tracked>,
}

impl ActivityLog {
    /// Starts a new, empty log at `path` for the replicated directories open as `dirs` (the
    /// directories themselves, not the FUSE mounts over them; their identity recorded first),
    /// and its maintenance thread.
    pub fn start(
        path: &Path,
        zone_size: u64,
        window: Duration,
        dirs: Vec<OwnedFd>,
    ) -> Result<Arc<ActivityLog>, String> {
        let _ = ZoneLog::remove(path);
        let log = ZoneLog::open_with_margin(path, zone_size, Duration::ZERO).map_err(|e| e.to_string())?;
        let mut with_dev = Vec::with_capacity(dirs.len());
        for (i, d) in dirs.into_iter().enumerate() {
            // A descriptor of its own, readable: the one given may be `O_PATH` (the FUSE layer's
            // view of its directory), on which `syncfs` fails with EBADF.
            let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
            let d = rustix::fs::openat(&d, c".", flags, rustix::fs::Mode::empty())
                .map_err(|e| format!("directory {i}: {e}"))?;
            let st = rustix::fs::fstat(&d).map_err(|e| format!("directory {i}: {e}"))?;
            log.record_root(i as u32, (st.st_dev, st.st_ino));
            with_dev.push((d, st.st_dev));
        }
        if log.lost() {
            return Err(format!("activity log {}: cannot be written", path.display()));
        }
        let al = Arc::new(ActivityLog {
            path: path.to_owned(),
            zone_shift: zone_size.trailing_zeros(),
            window,
            dirs: with_dev,
            active: Mutex::new(Active {
                log: Arc::new(log),
                touched: HashMap::new(),
                handles: HashMap::new(),
                dirs: HashMap::new(),
            }),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            failed: AtomicBool::new(false),
            syncfs_count: std::sync::atomic::AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&al);
        let stop = al.stop.clone();
        let every = (window / 2).max(Duration::from_millis(100));
        thread::Builder::new()
            .name("activity-log".into())
            .spawn(move || loop {
                let (m, cv) = &*stop;
                let guard = m.lock().unwrap_or_else(|p| p.into_inner());
                let (guard, _) = cv.wait_timeout(guard, every).unwrap_or_else(|p| p.into_inner());
                if *guard {
                    return;
                }
                drop(guard);
                let Some(al) = weak.upgrade() else { return };
                if let Err(e) = al.retire(Instant::now()) {
                    tracing::warn!(log = %al.path.display(), error = %e, "activity log: zones kept");
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(al)
    }

    /// Reads the log a crash left at `path`: `None` if there is none, or if it cannot be trusted
    /// (lost, unreadable).
    pub fn read(path: &Path) -> Option<Recorded> {
        let log = ZoneLog::open_existing(path).ok()??;
        if log.lost() {
            return None;
        }
        Some(Recorded { roots: log.roots(), files: log.recorded() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends made durable since the log was started or last rewritten (each one `fdatasync`).
    pub fn records(&self) -> u64 {
        self.lock().log.syncs()
    }

    /// Whether a record could not be written (the log then vouches for nothing).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a write of `len` bytes at `offset` into the file `key`, open as `fd`: its zones are
    /// active (the first write into a zone waits for its record to be durable).
    pub fn before_write(&self, fd: BorrowedFd<'_>, key: (u64, u64), offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let now = Instant::now();
        let mut a = self.lock();
        if let Some(t) = a.touched.get_mut(&(key, None)) {
            *t = now;
            return;
        }
        // `ZoneLog::before_write` records only the zones it does not hold yet, and, for a writer
        // going on in order, zones ahead of it (one `fdatasync` per 32 MiB or so rather than
        // per zone). The ctime given is old so that it never turns a first write into a whole
        // file.
        let zones = a.log.before_write(key, offset, len, std::time::UNIX_EPOCH);
        if a.log.lost() {
            self.failed.store(true, Ordering::Relaxed);
        }
        let (first, last) =
            zones.unwrap_or(((offset >> self.zone_shift) as u32, ((offset + len - 1) >> self.zone_shift) as u32));
        for z in first..=last {
            a.touched.insert((key, Some(z)), now);
        }
        if let std::collections::hash_map::Entry::Vacant(e) = a.handles.entry(key) {
            if let Some(h) = Handle::of(fd) {
                e.insert(h);
            }
        }
    }

    /// Before a truncation or fallocate of the file `key` (open as `fd`, if it is): all of it
    /// may differ.
    pub fn before_whole_change(&self, fd: Option<BorrowedFd<'_>>, key: (u64, u64)) {
        let now = Instant::now();
        let mut a = self.lock();
        a.log.mark_whole(key);
        if a.log.lost() {
            self.failed.store(true, Ordering::Relaxed);
        }
        a.touched.insert((key, None), now);
        if let std::collections::hash_map::Entry::Vacant(e) = a.handles.entry(key) {
            if let Some(h) = fd.and_then(Handle::of) {
                e.insert(h);
            }
        }
    }

    /// Before an entry of the directory `key` is created, removed, renamed or linked, or an
    /// entry's attributes change. Only the zone log that takes over when the secondary leaves
    /// needs these (an operation in flight then): a node back from a crash compares every name.
    pub fn before_dir_change(&self, key: (u64, u64)) {
        let now = Instant::now();
        let mut a = self.lock();
        if let Some(t) = a.dirs.get_mut(&key) {
            *t = now;
            return;
        }
        a.log.before_dir_change(key);
        if a.log.lost() {
            self.failed.store(true, Ordering::Relaxed);
        }
        a.dirs.insert(key, now);
    }

    /// What the log holds now: the files with active zones (or whole) and the active
    /// directories, for the zone log that takes over when the secondary leaves. `None` if a
    /// record could not be written (the log then vouches for nothing).
    pub fn live(&self) -> Option<Live> {
        let a = self.lock();
        if self.failed() || a.log.lost() {
            return None;
        }
        Some((a.log.recorded(), a.log.changed_dirs()))
    }

    /// Zones and files not written for the window leave the log, once the directories are synced
    /// (`now` is when the caller looked; the sync comes after). Directories leave after the
    /// window, with no sync (see [`ActivityLog::before_dir_change`]).
    pub fn retire(&self, now: Instant) -> Result<usize, String> {
        let Some(cut) = now.checked_sub(self.window) else { return Ok(0) };
        let (files, idle_dirs): (Vec<FileToSync>, bool) = {
            let a = self.lock();
            let mut keys: Vec<(u64, u64)> = a.touched.iter().filter(|(_, t)| **t < cut).map(|((k, _), _)| *k).collect();
            keys.sort_unstable();
            keys.dedup();
            (keys.into_iter().map(|k| (k, a.handles.get(&k).cloned())).collect(), a.dirs.values().any(|t| *t < cut))
        };
        if files.is_empty() && !idle_dirs {
            return Ok(0);
        }
        // Everything written before `cut` is in the page cache or on disk: make it durable.
        if !files.is_empty() {
            self.sync_files(&files)?;
        }
        // The next log, written and synced without holding up the writers: what is active now
        // and was written since `cut`. A record made meanwhile (a new zone, or a zone left out
        // and written again) is added to it before it takes the place of the current one.
        let (log, keep, keep_dirs) = {
            let a = self.lock();
            let keep: HashSet<((u64, u64), Option<u32>)> =
                a.touched.iter().filter(|(_, t)| **t >= cut).map(|(z, _)| *z).collect();
            let keep_dirs: HashSet<(u64, u64)> = a.dirs.iter().filter(|(_, t)| **t >= cut).map(|(d, _)| *d).collect();
            (a.log.clone(), keep, keep_dirs)
        };
        let prepared = log
            .prepare_rewrite(|key, zone| keep.contains(&(key, zone)), |key| keep_dirs.contains(&key))
            .map_err(|e: ZoneLogError| e.to_string())?;
        let mut a = self.lock();
        if self.halted() {
            // Removed meanwhile: installing it would put the log back (dropped, it is removed).
            return Ok(0);
        }
        let before = a.touched.len() + a.dirs.len();
        a.touched.retain(|_, t| *t >= cut);
        a.dirs.retain(|_, t| *t >= cut);
        let still: HashSet<(u64, u64)> = a.touched.keys().map(|(k, _)| *k).collect();
        a.handles.retain(|k, _| still.contains(k));
        let (touched, dirs) = (&a.touched, &a.dirs);
        let new = match a.log.install(
            prepared,
            |key, zone| touched.contains_key(&(key, zone)),
            |key| dirs.contains_key(&key),
        ) {
            Ok(new) => new,
            Err(e) => {
                // The log in place may now be the new one, without what is recorded from here
                // on: no log is safer (after a crash every file is compared).
                self.failed.store(true, Ordering::Relaxed);
                let _ = ZoneLog::remove(&self.path);
                return Err(e.to_string());
            }
        };
        a.log = Arc::new(new);
        Ok(before - a.touched.len() - a.dirs.len())
    }

    /// Makes the data of `files` durable: each by `fdatasync`, or, when they are many or one
    /// cannot be reopened by its handle (no handle, another filesystem), by `syncfs` of every
    /// directory. A file that no longer exists (`ESTALE`) has nothing left to lose.
    fn sync_files(&self, files: &[((u64, u64), Option<Handle>)]) -> Result<(), String> {
        if files.len() <= SYNC_ONE_BY_ONE {
            let one_by_one = files.iter().all(|(key, h)| {
                let Some(h) = h else { return false };
                let Some((mount, _)) = self.dirs.iter().find(|(_, dev)| *dev == key.0) else {
                    return false;
                };
                match h.open(mount.as_fd()) {
                    Ok(fd) => rustix::fs::fdatasync(&fd).is_ok(),
                    Err(e) => e.raw_os_error() == Some(libc::ESTALE),
                }
            });
            if one_by_one {
                return Ok(());
            }
        }
        self.syncfs_count.fetch_add(1, Ordering::Relaxed);
        self.sync_dirs()
    }

    /// Makes the replicated directories' filesystems durable (`syncfs`).
    pub fn sync_dirs(&self) -> Result<(), String> {
        for (i, (d, _)) in self.dirs.iter().enumerate() {
            // SAFETY: syncfs on a descriptor we own for the duration of the call.
            if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
                return Err(format!("directory {i}: syncfs: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Zones, whole files and directories active now (tests).
    pub fn active(&self) -> usize {
        let a = self.lock();
        a.touched.len() + a.dirs.len()
    }

    /// Stops the maintenance thread and removes the log: this node's copy no longer needs it
    /// (it stopped cleanly, its secondary left, or it is caught up as secondary).
    pub fn remove(&self) -> std::io::Result<()> {
        self.halt();
        // A retirement in progress finishes its rewrite before this, or sees the halt and skips it.
        let _a = self.lock();
        ZoneLog::remove(&self.path)
    }

    fn halted(&self) -> bool {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn halt(&self) {
        let (m, cv) = &*self.stop;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

impl Drop for ActivityLog {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replicated directory `data` and an activity log for it, of `zone` bytes zones and a
    /// window long enough that the thread never retires anything by itself here.
    fn log_of_dir(zone: u64) -> (tempfile::TempDir, PathBuf, PathBuf, Arc<ActivityLog>) {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let path = d.path().join("activity.log");
        let fd: OwnedFd = std::fs::File::open(&data).unwrap().into();
        let al = ActivityLog::start(&path, zone, WINDOW, vec![fd]).unwrap();
        (d, data, path, al)
    }

    const WINDOW: Duration = Duration::from_secs(3600);

    #[test]
    fn active_zones_are_durable_and_leave_only_after_the_window() {
        let (_d, data, path, al) = log_of_dir(1 << 20);
        let window = WINDOW;
        let files: Vec<std::fs::File> = ["a", "b"]
            .iter()
            .map(|n| std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(data.join(n)).unwrap())
            .collect();
        let key = |f: &std::fs::File| {
            let st = rustix::fs::fstat(f).unwrap();
            (st.st_dev, st.st_ino)
        };
        let (ka, kb) = (key(&files[0]), key(&files[1]));
        al.before_write(files[0].as_fd(), ka, 0, 10);
        al.before_write(files[0].as_fd(), ka, (2 << 20) + 5, 10);
        al.before_write(files[1].as_fd(), kb, 3 << 20, 1);
        // Named by key only (no descriptor, no handle): its retirement syncs the filesystem.
        al.before_whole_change(None, (1, 12));
        assert_eq!(al.active(), 4);
        assert_eq!(al.lock().handles.len(), 2, "a handle for each file written through a descriptor");

        // A crash now: the log read back names every active zone, and the directory's identity.
        let r = ActivityLog::read(&path).expect("a sound log");
        let st = rustix::fs::stat(&data).unwrap();
        assert_eq!(r.roots, vec![(0, (st.st_dev, st.st_ino))]);
        assert_eq!(r.files.get(&ka), Some(&Tracked::Ranges(vec![(0, 1 << 20), (2 << 20, 1 << 20)])));
        assert_eq!(r.files.get(&kb), Some(&Tracked::Ranges(vec![(3 << 20, 1 << 20)])));
        assert_eq!(r.files.get(&(1, 12)), Some(&Tracked::Whole));
        assert_eq!(r.files.len(), 3);

        // Nothing is older than the window: nothing leaves.
        assert_eq!(al.retire(Instant::now()).unwrap(), 0);
        // Seen from later than the window after the writes, except one written again then.
        let later = Instant::now() + window + Duration::from_secs(1);
        {
            let mut a = al.lock();
            *a.touched.get_mut(&(kb, Some(3))).unwrap() = later - Duration::from_secs(1);
        }
        assert_eq!(al.retire(later).unwrap(), 3);
        assert_eq!(al.syncfs_count.load(Ordering::Relaxed), 1, "one file had no handle: syncfs");
        let r = ActivityLog::read(&path).unwrap();
        assert_eq!(r.roots.len(), 1, "the roots stay");
        assert_eq!(r.files.len(), 1, "{:?}", r.files);
        assert_eq!(r.files.get(&kb), Some(&Tracked::Ranges(vec![(3 << 20, 1 << 20)])));
        assert_eq!(al.lock().handles.keys().collect::<Vec<_>>(), [&kb], "handles go with their zones");

        // A zone written again after it left is recorded again, durably.
        al.before_write(files[0].as_fd(), ka, 7, 1);
        assert_eq!(ActivityLog::read(&path).unwrap().files.get(&ka), Some(&Tracked::Ranges(vec![(0, 1 << 20)])));

        // Retired one by one: a file reopened by its handle, or gone (nothing left to lose).
        drop(files);
        std::fs::remove_file(data.join("b")).unwrap();
        let later = later + window + Duration::from_secs(2);
        assert_eq!(al.retire(later).unwrap(), 2);
        assert_eq!(al.syncfs_count.load(Ordering::Relaxed), 1, "both files by handle, no syncfs");
        assert!(ActivityLog::read(&path).unwrap().files.is_empty());

        al.remove().unwrap();
        assert!(!path.exists());
        assert!(ActivityLog::read(&path).is_none(), "no log: nothing to trust");
    }

    #[test]
    fn a_sequential_writer_waits_for_an_append_every_32_mib_and_a_random_one_per_zone() {
        let (_d, data, path, al) = log_of_dir(4 << 20);
        let f = std::fs::File::create(data.join("seq")).unwrap();
        let st = rustix::fs::fstat(&f).unwrap();
        let (seq, rnd) = ((st.st_dev, st.st_ino), (st.st_dev, st.st_ino + 1_000_000));
        let syncs = || al.lock().log.syncs();
        let base = syncs();

        // 256 MiB in order, 1 MiB at a time: 64 zones of 4 MiB, recorded with 1, 2, 4 then 8
        // zones (32 MiB) ahead: zones 0, 1, 2-3, 4-6, 7-11, 12-20, then 9 at a time up to 65.
        for i in 0..256u64 {
            al.before_write(f.as_fd(), seq, i << 20, 1 << 20);
        }
        let n = syncs() - base;
        assert_eq!(n, 11, "instead of 64");
        // Every zone written is in the log, durably, and at most 32 MiB past the last write.
        let r = ActivityLog::read(&path).unwrap();
        let Some(Tracked::Ranges(ranges)) = r.files.get(&seq) else { panic!("{:?}", r.files) };
        let end: u64 = ranges.iter().map(|(o, l)| o + l).max().unwrap();
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges.iter().map(|(_, l)| l).sum::<u64>(), end, "no gap: {ranges:?}");
        assert!((256 << 20..=(256 + 32) << 20).contains(&end), "{end}");

        // Writes out of order record their own zones only, one record each.
        let base = syncs();
        for z in [40u64, 3, 17, 29, 8] {
            al.before_write(f.as_fd(), rnd, z << 22, 4096);
        }
        assert_eq!(syncs() - base, 5);
        let r = ActivityLog::read(&path).unwrap();
        let Some(Tracked::Ranges(ranges)) = r.files.get(&rnd) else { panic!() };
        assert_eq!(ranges.iter().map(|(_, l)| l).sum::<u64>(), 5 << 22, "{ranges:?}");
        // A zone written again, or the next zone of a written one already recorded: no record.
        let base = syncs();
        al.before_write(f.as_fd(), rnd, 3 << 22, 4096);
        al.before_write(f.as_fd(), seq, 7 << 20, 4096);
        assert_eq!(syncs() - base, 0);
        al.remove().unwrap();
    }

    #[test]
    fn a_rewrite_that_cannot_be_put_in_place_leaves_no_log_to_trust() {
        let (_d, data, path, al) = log_of_dir(1 << 20);
        let window = WINDOW;
        let f = std::fs::File::create(data.join("a")).unwrap();
        let st = rustix::fs::fstat(&f).unwrap();
        al.before_write(f.as_fd(), (st.st_dev, st.st_ino), 0, 1);
        assert!(al.live().is_some());
        // The rename over the log fails: a non-empty directory stands in its place.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"x").unwrap();
        let later = Instant::now() + window + Duration::from_secs(1);
        assert!(al.retire(later).is_err());
        assert!(al.failed() && al.live().is_none(), "it vouches for nothing any more");
        assert!(!path.with_extension("new").exists(), "the prepared log is not left behind");
    }

    #[test]
    fn directories_are_live_until_the_window_passes_and_need_no_sync() {
        let (_d, _, path, al) = log_of_dir(1 << 20);
        let window = WINDOW;
        al.before_dir_change((9, 1));
        al.before_dir_change((9, 1));
        al.before_dir_change((9, 2));
        let (files, dirs) = al.live().unwrap();
        assert!(files.is_empty());
        assert_eq!(dirs, HashSet::from([(9, 1), (9, 2)]));
        // Durable: a crash now leaves both in the log.
        let log = ZoneLog::open_existing(&path).unwrap().unwrap();
        assert_eq!(log.changed_dirs(), HashSet::from([(9, 1), (9, 2)]));
        drop(log);
        let later = Instant::now() + window + Duration::from_secs(1);
        al.lock().dirs.insert((9, 2), later - Duration::from_secs(1));
        assert_eq!(al.retire(later).unwrap(), 1);
        assert_eq!(al.syncfs_count.load(Ordering::Relaxed), 0, "no sync for directories alone");
        assert_eq!(al.live().unwrap().1, HashSet::from([(9, 2)]));
        assert_eq!(ZoneLog::open_existing(&path).unwrap().unwrap().changed_dirs(), HashSet::from([(9, 2)]));
        al.remove().unwrap();
    }

    #[test]
    fn a_torn_or_missing_log_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("activity.log");
        assert!(ActivityLog::read(&path).is_none());
        std::fs::write(&path, b"not a log").unwrap();
        assert!(ActivityLog::read(&path).is_none(), "a bad header");
    }
}
