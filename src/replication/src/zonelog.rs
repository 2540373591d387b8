//! The zone log: which zones (fixed-size ranges) of which files changed while the primary had no
//! in-sync secondary, kept durable so that a catch-up after a power loss of the primary is still
//! incremental (DRBD's activity log, per file). A zone is recorded, and the record made durable,
//! before the first write into it reaches the file; later writes into a recorded zone cost a
//! lookup in memory. See docs/replication.md, "Zone tracking".
//!
//! On disk: a 4 KiB header (magic, version, zone size, the start of tracking, a check), then
//! 32-byte records, each with its own check (the first 8 bytes of the blake3 of the other 24):
//! `kind u8, 3 zero bytes, zone u32, dev u64, ino u64, check [u8; 8]`. The file grows by zeroed
//! MiB, synced once, so that a record's `fdatasync` has no size to update. Loading stops at the
//! first record that does not check (the one torn by a power loss, or the zeroed tail).
//!
//! Files are named by (st_dev, st_ino). Whatever could make a recorded inode stand for other data
//! on the secondary (truncation, a rename or link of the file, its last unlink, inode reuse) marks
//! it whole first; a file never recorded is trusted unchanged only if its ctime is older than the
//! start of tracking minus a margin (writes in flight when tracking began, and changes made
//! outside the layer, all move the ctime). A directory renamed at all makes every file suspect.
//! (A log that vouches for names, below, has no margin: such a change to a file not recorded
//! marks it whole at once.)
//!
//! Namespace changes are recorded too: before an entry of a directory is created, removed,
//! renamed or linked, or an entry's attributes (mode, owner, times, xattrs) change, the
//! directory is recorded (a DIR record, once per directory). A log that holds a NAMES record
//! vouches for every change since it started, with no margin: it was started as the in-sync
//! secondary left, with the activity log's zones and directories (what was in flight) imported,
//! or by a node that was the in-sync secondary. Such a log lets a catch-up skip what it records
//! nothing of: the secondary lists only the names of unchanged directories (see
//! docs/replication.md, "Namespace log").

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"TNDMZLOG";
const VERSION: u32 = 1;
const HEADER: u64 = 4096;
const RECORD: u64 = 32;
/// The file grows by this much at a time (zeroed and synced once).
const GROWTH: u64 = 1 << 20;
/// At most this many records (64 MiB of log); past it, tracking is lost (everything is compared).
pub const MAX_RECORDS: u64 = 2_000_000;
/// Changes up to this long before tracking started may be missing from the log (a write whose
/// acknowledgement failed as the secondary left, the time the daemon took to start tracking):
/// files whose ctime is that recent are compared whole. The daemon uses its replication timeout
/// plus 5 s; this is the default.
pub const MARGIN: Duration = Duration::from_secs(30);

const ZONE: u8 = 1;
const WHOLE: u8 = 2;
const DIR_RENAMED: u8 = 3;
const LOST: u8 = 4;
/// The (st_dev, st_ino) of a replicated directory (its index in the zone field): an activity log
/// names files by inode, valid only on the same filesystem (see activity.rs).
const ROOT: u8 = 5;
/// A directory (by st_dev, st_ino) whose entries or their attributes changed.
const DIR: u8 = 6;
/// The log records every change since it started, namespace included, with no margin.
const NAMES: u8 = 7;

/// What the log says of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// Not recorded: unchanged since tracking started, if its ctime is old enough.
    Untouched,
    /// Compare all of it.
    Whole,
    /// Only these byte ranges (zone-aligned, sorted, merged) changed.
    Ranges(Vec<(u64, u64)>),
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneLogError {
    #[error("zone log {path}: {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: io::Error },
    #[error("zone log {path}: zone size {size} is not a power of two between 4 KiB and 1 GiB")]
    ZoneSize { path: PathBuf, size: u64 },
}

#[derive(Debug, Default)]
enum FileState {
    #[default]
    Whole,
    Zones(BTreeSet<u32>),
}

struct State {
    file: File,
    /// Records written; the next goes at HEADER + records * RECORD.
    records: u64,
    /// Bytes of the file (zeroed past the records).
    capacity: u64,
    files: HashMap<(u64, u64), FileState>,
    dir_renamed: bool,
    lost: bool,
    roots: Vec<(u32, (u64, u64))>,
    /// Directories with a DIR record.
    dirs: HashSet<(u64, u64)>,
    /// A NAMES record was written.
    names: bool,
    /// Appends made durable (each one `fdatasync`), for tests of what a writer waits for.
    syncs: u64,
    /// Per file written in order lately: the zone after its last append, and how many appends
    /// in a row went on where the one before ended (see [`ZoneLog::before_write`]). At most
    /// RUNS_TRACKED files.
    runs: HashMap<(u64, u64), (u32, u32)>,
}

/// How far ahead of a writer going on in order its zones may be recorded.
pub const RECORD_AHEAD: u64 = 32 << 20;

/// Files whose sequential writing is followed at once (a bound on memory: forgotten all at
/// once past it, which costs only a few more appends).
const RUNS_TRACKED: usize = 4096;

/// A new log written and synced under a temporary name, not in place yet
/// ([`ZoneLog::prepare_rewrite`]); dropped, it is removed.
pub struct Prepared {
    file: File,
    tmp: PathBuf,
    started: SystemTime,
    /// The records it holds.
    written: HashSet<[u8; 32]>,
    count: u64,
    capacity: u64,
}

impl Prepared {
    /// Appends `more` (synced), renames the log over `path` and syncs the directory.
    fn install(
        mut self,
        path: &Path,
        shift: u32,
        margin: Duration,
        more: &[[u8; 32]],
    ) -> Result<ZoneLog, ZoneLogError> {
        let io = |what| move |source| ZoneLogError::Io { path: path.to_owned(), what, source };
        if !more.is_empty() {
            let end = HEADER + (self.count + more.len() as u64) * RECORD;
            if end > self.capacity {
                let grow = (end - self.capacity).div_ceil(GROWTH) * GROWTH;
                self.file.write_all_at(&vec![0u8; grow as usize], self.capacity).map_err(io("writing"))?;
                self.capacity += grow;
            }
            let bytes: Vec<u8> = more.iter().flatten().copied().collect();
            self.file.write_all_at(&bytes, HEADER + self.count * RECORD).map_err(io("writing"))?;
            self.file.sync_all().map_err(io("syncing"))?;
        }
        std::fs::rename(&self.tmp, path).map_err(io("renaming"))?;
        self.tmp = PathBuf::new();
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing its directory"))?;
        }
        let file = self.file.try_clone().map_err(io("reading"))?;
        ZoneLog::load(path, file, shift, self.started, margin).map_err(io("reading"))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub struct ZoneLog {
    path: PathBuf,
    zone_shift: u32,
    /// When tracking started (from the header).
    started: SystemTime,
    /// See [`MARGIN`].
    margin: Duration,
    state: Mutex<State>,
}

fn check(bytes: &[u8]) -> [u8; 8] {
    let h = blake3::hash(bytes);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.as_bytes()[..8]);
    c
}

fn record(kind: u8, zone: u32, key: (u64, u64)) -> [u8; 32] {
    let mut r = [0u8; 32];
    r[0] = kind;
    r[4..8].copy_from_slice(&zone.to_le_bytes());
    r[8..16].copy_from_slice(&key.0.to_le_bytes());
    r[16..24].copy_from_slice(&key.1.to_le_bytes());
    let c = check(&r[..24]);
    r[24..].copy_from_slice(&c);
    r
}

/// Whether zone `n` of `key` is recorded (or the whole file is).
fn recorded(st: &State, key: (u64, u64), n: u32) -> bool {
    match st.files.get(&key) {
        Some(FileState::Whole) => true,
        Some(FileState::Zones(z)) => z.contains(&n),
        None => false,
    }
}

fn header(zone_shift: u32, started: SystemTime) -> [u8; 40] {
    let since = started.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut h = [0u8; 40];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&zone_shift.to_le_bytes());
    h[16..24].copy_from_slice(&since.as_secs().to_le_bytes());
    h[24..28].copy_from_slice(&since.subsec_nanos().to_le_bytes());
    let c = check(&h[..32]);
    h[32..].copy_from_slice(&c);
    h
}

/// The header's zone shift and start, if it checks.
fn parse_header(h: &[u8; 40]) -> Option<(u32, SystemTime)> {
    if &h[..8] != MAGIC || h[8..12] != VERSION.to_le_bytes() || h[32..] != check(&h[..32]) {
        return None;
    }
    let shift = u32::from_le_bytes(h[12..16].try_into().unwrap());
    let secs = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let nanos = u32::from_le_bytes(h[24..28].try_into().unwrap());
    Some((shift, UNIX_EPOCH + Duration::new(secs, nanos)))
}

impl std::fmt::Debug for ZoneLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (records, files) = self.size();
        f.debug_struct("ZoneLog").field("path", &self.path).field("records", &records).field("files", &files).finish()
    }
}

impl ZoneLog {
    /// Opens the log at `path` and goes on recording into it if it is there and sound (tracking
    /// survived a restart); otherwise starts a new one, tracking from now. `zone_size` is used
    /// for a new log; an existing one keeps its own.
    pub fn open_or_start(path: &Path, zone_size: u64) -> Result<ZoneLog, ZoneLogError> {
        ZoneLog::open_with_margin(path, zone_size, MARGIN)
    }

    /// As [`ZoneLog::open_or_start`], with another margin than [`MARGIN`] (tests).
    pub fn open_with_margin(path: &Path, zone_size: u64, margin: Duration) -> Result<ZoneLog, ZoneLogError> {
        let io = |what| move |source| ZoneLogError::Io { path: path.to_owned(), what, source };
        if !(4096..=1 << 30).contains(&zone_size) || !zone_size.is_power_of_two() {
            return Err(ZoneLogError::ZoneSize { path: path.to_owned(), size: zone_size });
        }
        if let Ok(file) = OpenOptions::new().read(true).write(true).open(path) {
            let mut h = [0u8; 40];
            if file.read_exact_at(&mut h, 0).is_ok() {
                if let Some((shift, started)) = parse_header(&h) {
                    return ZoneLog::load(path, file, shift, started, margin).map_err(io("reading"));
                }
            }
            // Torn at creation (the header never became durable): nothing was recorded in it,
            // and no write was let through before its header was durable; start again.
        }
        ZoneLog::create(path, zone_size.trailing_zeros(), margin, &[])
    }

    /// A new log at `path` holding `records`, tracking from now: written under another name,
    /// synced and renamed over `path`, so that `path` always holds a whole log, the old or the new.
    fn create(path: &Path, shift: u32, margin: Duration, records: &[[u8; 32]]) -> Result<ZoneLog, ZoneLogError> {
        ZoneLog::prepare(path, shift, records)?.install(path, shift, margin, &[])
    }

    /// The first half of [`ZoneLog::create`]: the new log written whole and synced under another
    /// name, not in place yet. The slow part (a new file's sync), so that a caller can do it
    /// without holding up the writers that record into the log in place.
    fn prepare(path: &Path, shift: u32, records: &[[u8; 32]]) -> Result<Prepared, ZoneLogError> {
        let io = |what| move |source| ZoneLogError::Io { path: path.to_owned(), what, source };
        let started = SystemTime::now();
        let tmp = path.with_extension("new");
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io("creating"))?;
        let capacity = HEADER + (records.len() as u64 * RECORD + 1).div_ceil(GROWTH) * GROWTH;
        let mut bytes = vec![0u8; capacity as usize];
        bytes[..40].copy_from_slice(&header(shift, started));
        for (i, r) in records.iter().enumerate() {
            let at = (HEADER + i as u64 * RECORD) as usize;
            bytes[at..at + RECORD as usize].copy_from_slice(r);
        }
        file.write_all_at(&bytes, 0).map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
        Ok(Prepared {
            file,
            tmp,
            started,
            written: records.iter().copied().collect(),
            count: records.len() as u64,
            capacity,
        })
    }

    /// Opens the log at `path` if it is there and sound, without creating anything.
    pub fn open_existing(path: &Path) -> io::Result<Option<ZoneLog>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = [0u8; 40];
        if file.read_exact_at(&mut h, 0).is_err() {
            return Ok(None);
        }
        match parse_header(&h) {
            Some((shift, started)) => ZoneLog::load(path, file, shift, started, Duration::ZERO).map(Some),
            None => Ok(None),
        }
    }

    /// Replaces the log with a new one (same zone size, tracking from now) holding only the
    /// roots, the whole files, the zones `keep` accepts and the directories `keep_dir` accepts,
    /// in two steps, for a log that is written meanwhile: this one writes and syncs the new log
    /// under another name (see [`ZoneLog::create`]), and [`ZoneLog::install`] then adds what was
    /// recorded since and puts it in place.
    pub fn prepare_rewrite(
        &self,
        keep: impl Fn((u64, u64), Option<u32>) -> bool,
        keep_dir: impl Fn((u64, u64)) -> bool,
    ) -> Result<Prepared, ZoneLogError> {
        let records = self.kept(keep, keep_dir);
        ZoneLog::prepare(&self.path, self.zone_shift, &records)
    }

    /// Puts a log prepared by [`ZoneLog::prepare_rewrite`] in place, once the records it lacks
    /// among those `keep` and `keep_dir` accept now are added (records made since it was
    /// prepared, or zones kept now that it left out): the log in place never lacks one of them.
    pub fn install(
        &self,
        prepared: Prepared,
        keep: impl Fn((u64, u64), Option<u32>) -> bool,
        keep_dir: impl Fn((u64, u64)) -> bool,
    ) -> Result<ZoneLog, ZoneLogError> {
        let missing: Vec<[u8; 32]> =
            self.kept(keep, keep_dir).into_iter().filter(|r| !prepared.written.contains(r)).collect();
        prepared.install(&self.path, self.zone_shift, self.margin, &missing)
    }

    /// The records of a new log holding what `keep` and `keep_dir` accept (see
    /// [`ZoneLog::prepare_rewrite`]).
    fn kept(
        &self,
        keep: impl Fn((u64, u64), Option<u32>) -> bool,
        keep_dir: impl Fn((u64, u64)) -> bool,
    ) -> Vec<[u8; 32]> {
        let st = self.lock();
        let mut records: Vec<[u8; 32]> = st.roots.iter().map(|(i, k)| record(ROOT, *i, *k)).collect();
        if st.names {
            records.push(record(NAMES, 0, (0, 0)));
        }
        if st.dir_renamed {
            records.push(record(DIR_RENAMED, 0, (0, 0)));
        }
        records.extend(st.dirs.iter().filter(|k| keep_dir(**k)).map(|k| record(DIR, 0, *k)));
        for (key, f) in &st.files {
            match f {
                FileState::Whole if keep(*key, None) => records.push(record(WHOLE, 0, *key)),
                FileState::Whole => {}
                FileState::Zones(z) => {
                    records.extend(z.iter().filter(|n| keep(*key, Some(**n))).map(|n| record(ZONE, *n, *key)))
                }
            }
        }
        if st.lost {
            records.push(record(LOST, 0, (0, 0)));
        }
        records
    }

    fn load(path: &Path, file: File, zone_shift: u32, started: SystemTime, margin: Duration) -> io::Result<ZoneLog> {
        let capacity = file.metadata()?.len();
        let mut st = State {
            file,
            records: 0,
            capacity,
            files: HashMap::new(),
            dir_renamed: false,
            lost: false,
            roots: Vec::new(),
            dirs: HashSet::new(),
            names: false,
            syncs: 0,
            runs: HashMap::new(),
        };
        let mut buf = vec![0u8; (GROWTH as usize).min(1 << 20)];
        let mut off = HEADER;
        let mut torn = false;
        'read: while off < capacity {
            let n = ((capacity - off) as usize).min(buf.len()) / RECORD as usize * RECORD as usize;
            if n == 0 {
                break;
            }
            st.file.read_exact_at(&mut buf[..n], off)?;
            for r in buf[..n].chunks_exact(RECORD as usize) {
                if r[24..] != check(&r[..24]) {
                    torn = r.iter().any(|b| *b != 0);
                    break 'read;
                }
                let zone = u32::from_le_bytes(r[4..8].try_into().unwrap());
                let key = (
                    u64::from_le_bytes(r[8..16].try_into().unwrap()),
                    u64::from_le_bytes(r[16..24].try_into().unwrap()),
                );
                match r[0] {
                    ZONE => match st.files.entry(key).or_insert_with(|| FileState::Zones(BTreeSet::new())) {
                        FileState::Zones(z) => {
                            z.insert(zone);
                        }
                        FileState::Whole => {}
                    },
                    WHOLE => {
                        st.files.insert(key, FileState::Whole);
                    }
                    DIR_RENAMED => st.dir_renamed = true,
                    LOST => st.lost = true,
                    ROOT => st.roots.push((zone, key)),
                    DIR => {
                        st.dirs.insert(key);
                    }
                    NAMES => st.names = true,
                    _ => {
                        torn = true;
                        break 'read;
                    }
                }
                st.records += 1;
            }
            off += n as u64;
        }
        if torn {
            // The record a power loss tore: zero it and what follows, so that the records
            // appended from now on are never followed by older ones.
            let at = HEADER + st.records * RECORD;
            st.file.write_all_at(&vec![0u8; (capacity - at) as usize], at)?;
            st.file.sync_data()?;
        }
        Ok(ZoneLog { path: path.to_owned(), zone_shift, started, margin, state: Mutex::new(st) })
    }

    /// Stops tracking: the log is removed (the secondary is in sync, or this node's data is being
    /// replaced). Not an error if it is not there.
    pub fn remove(path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn zone_size(&self) -> u64 {
        1 << self.zone_shift
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on the log vouches for nothing (durably): e.g. it starts after a time when
    /// changes went unrecorded.
    pub fn mark_lost(&self) {
        let mut st = self.lock();
        self.append(&mut st, &[record(LOST, 0, (0, 0))]);
        st.lost = true;
    }

    /// Whether a catch-up can use the log: not lost, and no directory renamed.
    pub fn usable(&self) -> bool {
        let st = self.lock();
        !st.lost && !st.dir_renamed
    }

    /// Whether the log can no longer be trusted (full, or a record could not be written).
    pub fn lost(&self) -> bool {
        self.lock().lost
    }

    /// Appends made durable since this log was opened (each one `fdatasync`).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Records written, and files named.
    pub fn size(&self) -> (u64, usize) {
        let st = self.lock();
        (st.records, st.files.len())
    }

    /// Whether `ctime` is too recent to trust an unrecorded file (see [`MARGIN`]). Never, in a
    /// log that vouches for every change since it started.
    fn recent(&self, st: &State, ctime: SystemTime) -> bool {
        !st.names && ctime + self.margin >= self.started
    }

    /// From now on the log vouches for every change since it started, namespace included, with
    /// no margin (durably). Only for a log started when nothing unrecorded can have happened:
    /// see the module documentation.
    pub fn vouch_names(&self) {
        let mut st = self.lock();
        if !st.names {
            self.append(&mut st, &[record(NAMES, 0, (0, 0))]);
            if !st.lost {
                st.names = true;
            }
        }
    }

    /// Whether the log records every namespace change since it started (and is usable): a
    /// catch-up may then trust the names of the directories it records nothing of.
    pub fn names_complete(&self) -> bool {
        let st = self.lock();
        st.names && !st.lost && !st.dir_renamed
    }

    /// Before an entry of the directory `key` is created, removed, renamed or linked, or an
    /// entry's attributes change: the directory is recorded (once), durably.
    pub fn before_dir_change(&self, key: (u64, u64)) {
        let mut st = self.lock();
        if st.lost || st.dirs.contains(&key) {
            return;
        }
        self.append(&mut st, &[record(DIR, 0, key)]);
        if !st.lost {
            st.dirs.insert(key);
        }
    }

    /// Whether the directory `key` has a DIR record.
    pub fn dir_changed(&self, key: (u64, u64)) -> bool {
        self.lock().dirs.contains(&key)
    }

    /// The directories with a DIR record.
    pub fn changed_dirs(&self) -> HashSet<(u64, u64)> {
        self.lock().dirs.clone()
    }

    /// Records, in one durable append, what another log holds (an activity log's live zones,
    /// whole files and directories, when the zone log takes over from it).
    pub fn import(&self, files: &HashMap<(u64, u64), Tracked>, dirs: &HashSet<(u64, u64)>) {
        let mut st = self.lock();
        if st.lost {
            return;
        }
        let zone = 1u64 << self.zone_shift;
        let mut new = Vec::new();
        let mut whole = Vec::new();
        let mut zones = Vec::new();
        for (key, t) in files {
            match (t, st.files.get(key)) {
                (_, Some(FileState::Whole)) | (Tracked::Untouched, _) => {}
                (Tracked::Whole, _) => {
                    new.push(record(WHOLE, 0, *key));
                    whole.push(*key);
                }
                (Tracked::Ranges(r), have) => {
                    for (start, len) in r {
                        for n in (start / zone)..(start + len).div_ceil(zone) {
                            let n = n as u32;
                            if !matches!(have, Some(FileState::Zones(z)) if z.contains(&n)) {
                                new.push(record(ZONE, n, *key));
                                zones.push((*key, n));
                            }
                        }
                    }
                }
            }
        }
        let new_dirs: Vec<(u64, u64)> = dirs.iter().filter(|k| !st.dirs.contains(k)).copied().collect();
        new.extend(new_dirs.iter().map(|k| record(DIR, 0, *k)));
        if new.is_empty() {
            return;
        }
        self.append(&mut st, &new);
        if st.lost {
            return;
        }
        for k in whole {
            st.files.insert(k, FileState::Whole);
        }
        for (k, n) in zones {
            if let FileState::Zones(z) = st.files.entry(k).or_insert_with(|| FileState::Zones(BTreeSet::new())) {
                z.insert(n);
            }
        }
        st.dirs.extend(new_dirs);
    }

    /// Appends `records` and makes them durable. On failure the log is lost (in memory at once,
    /// and on disk if a LOST record can still be written): the caller lets the change proceed,
    /// and the next catch-up compares everything.
    fn append(&self, st: &mut State, records: &[[u8; 32]]) {
        if st.lost {
            return;
        }
        let r = (|| -> io::Result<()> {
            if st.records + records.len() as u64 > MAX_RECORDS {
                return Err(io::Error::other(format!("more than {MAX_RECORDS} records")));
            }
            let end = HEADER + (st.records + records.len() as u64) * RECORD;
            if end > st.capacity {
                // Zeros written, not a hole: a record's fdatasync then has no block to allocate.
                let grow = (end - st.capacity).div_ceil(GROWTH) * GROWTH;
                st.file.write_all_at(&vec![0u8; grow as usize], st.capacity)?;
                st.file.sync_all()?;
                st.capacity += grow;
            }
            let mut bytes = Vec::with_capacity(records.len() * RECORD as usize);
            records.iter().for_each(|r| bytes.extend_from_slice(r));
            st.file.write_all_at(&bytes, HEADER + st.records * RECORD)?;
            st.file.sync_data()?;
            st.records += records.len() as u64;
            st.syncs += 1;
            Ok(())
        })();
        if let Err(e) = r {
            tracing::error!(log = %self.path.display(), error = %e, "zone log lost: the next catch-up compares every file");
            st.lost = true;
            let at = HEADER + st.records * RECORD;
            if at + RECORD <= st.capacity && st.file.write_all_at(&record(LOST, 0, (0, 0)), at).is_ok() {
                let _ = st.file.sync_data();
            }
        }
    }

    /// Before a write of `len` bytes at `offset` into the file `key` (whose ctime is `ctime`
    /// before the write): records the zones not recorded yet, durably. The first record of a
    /// file whose ctime is recent marks it whole instead.
    ///
    /// A writer going on in order (the first zone it needs is where this file's previous append
    /// ended, twice in a row or more) gets zones ahead of it recorded in the same append: 1,
    /// then twice as many each time, up to [`RECORD_AHEAD`] bytes. A sequential writer then
    /// waits for one `fdatasync` per 32 MiB or so rather than per zone. Fewer zones ahead than
    /// it wrote in order, and never past RECORD_AHEAD: what a catch-up may send more (clipped to
    /// the file's size, so nothing for a file that grows). A write split in two at a zone's
    /// edge gets nothing ahead.
    ///
    /// Returns the zones recorded for this write (now or before), ahead included; `None` when
    /// the file is whole or the write empty.
    pub fn before_write(&self, key: (u64, u64), offset: u64, len: u64, ctime: SystemTime) -> Option<(u32, u32)> {
        if len == 0 {
            return None;
        }
        let first = (offset >> self.zone_shift) as u32;
        let mut last = ((offset + len - 1) >> self.zone_shift) as u32;
        let mut st = self.lock();
        if st.lost {
            return Some((first, last));
        }
        if matches!(st.files.get(&key), Some(FileState::Whole)) {
            return None;
        }
        let new: Vec<[u8; 32]> = if !st.files.contains_key(&key) && self.recent(&st, ctime) {
            vec![record(WHOLE, 0, key)]
        } else {
            let Some(need) = (first..=last).find(|n| !recorded(&st, key, *n)) else { return Some((first, last)) };
            // How many appends of this file in a row each went on where the one before ended.
            let streak = match st.runs.get(&key) {
                Some(&(end, streak)) if end == need => streak.saturating_add(1),
                _ => 0,
            };
            let ahead = match streak {
                0 | 1 => 0,
                n => (1u32 << (n - 2).min(31)).min(self.max_ahead()),
            };
            last = last.saturating_add(ahead);
            if st.runs.len() >= RUNS_TRACKED && !st.runs.contains_key(&key) {
                st.runs.clear();
            }
            st.runs.insert(key, (last.saturating_add(1), streak));
            (first..=last).filter(|n| !recorded(&st, key, *n)).map(|n| record(ZONE, n, key)).collect()
        };
        self.append(&mut st, &new);
        if st.lost {
            return Some((first, last));
        }
        match new[0][0] {
            WHOLE => {
                st.files.insert(key, FileState::Whole);
                None
            }
            _ => {
                if let FileState::Zones(z) = st.files.entry(key).or_insert_with(|| FileState::Zones(BTreeSet::new())) {
                    z.extend(first..=last);
                }
                Some((first, last))
            }
        }
    }

    /// The most zones recorded ahead of a writer going on in order.
    fn max_ahead(&self) -> u32 {
        (RECORD_AHEAD >> self.zone_shift).max(1) as u32
    }

    /// Before a change that may make the recorded zones of `key` stand for other data
    /// (truncation, fallocate, a rename or link of the file, its last unlink): a recorded file
    /// becomes whole. A file not recorded needs nothing in a log with a margin (the change moves
    /// its ctime, and its first write then records it whole); in a log that vouches for names
    /// (no margin) it becomes whole too.
    pub fn before_identity_change(&self, key: (u64, u64)) {
        let mut st = self.lock();
        let whole = match st.files.get(&key) {
            Some(FileState::Zones(_)) => true,
            Some(FileState::Whole) => false,
            None => st.names,
        };
        if whole {
            self.append(&mut st, &[record(WHOLE, 0, key)]);
            if !st.lost {
                st.files.insert(key, FileState::Whole);
            }
        }
    }

    /// Before a directory is renamed: files below it change path with an old ctime.
    pub fn before_dir_rename(&self) {
        let mut st = self.lock();
        if !st.dir_renamed {
            self.append(&mut st, &[record(DIR_RENAMED, 0, (0, 0))]);
            st.dir_renamed = true;
        }
    }

    /// Records the (st_dev, st_ino) of replicated directory `index`, durably.
    pub fn record_root(&self, index: u32, key: (u64, u64)) {
        let mut st = self.lock();
        self.append(&mut st, &[record(ROOT, index, key)]);
        if !st.lost {
            st.roots.push((index, key));
        }
    }

    /// The replicated directories recorded by [`ZoneLog::record_root`].
    pub fn roots(&self) -> Vec<(u32, (u64, u64))> {
        self.lock().roots.clone()
    }

    /// Marks the file `key` whole, recorded or not, durably (unless it already is).
    pub fn mark_whole(&self, key: (u64, u64)) {
        let mut st = self.lock();
        if !matches!(st.files.get(&key), Some(FileState::Whole)) {
            self.append(&mut st, &[record(WHOLE, 0, key)]);
            if !st.lost {
                st.files.insert(key, FileState::Whole);
            }
        }
    }

    /// Every file recorded, with what is recorded of it (`Whole`, or its zones as ranges).
    pub fn recorded(&self) -> HashMap<(u64, u64), Tracked> {
        let keys: Vec<(u64, u64)> = self.lock().files.keys().copied().collect();
        // No ctime check: every key here is recorded, so `lookup` never looks at it.
        keys.into_iter().filter_map(|k| self.lookup(k, UNIX_EPOCH).map(|t| (k, t))).collect()
    }

    /// What changed in the file `key`, whose ctime is `ctime` now. `None`: the log cannot tell
    /// (lost, or a directory was renamed): compare everything.
    pub fn lookup(&self, key: (u64, u64), ctime: SystemTime) -> Option<Tracked> {
        let st = self.lock();
        if st.lost || st.dir_renamed {
            return None;
        }
        Some(match st.files.get(&key) {
            None if self.recent(&st, ctime) => Tracked::Whole,
            None => Tracked::Untouched,
            Some(FileState::Whole) => Tracked::Whole,
            Some(FileState::Zones(z)) => {
                let size = 1u64 << self.zone_shift;
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for n in z {
                    let start = (*n as u64) << self.zone_shift;
                    match ranges.last_mut() {
                        Some(r) if r.0 + r.1 == start => r.1 += size,
                        _ => ranges.push((start, size)),
                    }
                }
                Tracked::Ranges(ranges)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old() -> SystemTime {
        SystemTime::now() - Duration::from_secs(3600)
    }

    #[test]
    fn zones_are_recorded_once_and_merged_into_ranges() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("zones");
        let log = ZoneLog::open_or_start(&path, 1 << 20).unwrap();
        log.before_write((1, 10), 100, 10, old());
        log.before_write((1, 10), 200, 10, old());
        log.before_write((1, 10), (1 << 20) - 5, 10, old()); // zones 0 and 1
        log.before_write((1, 10), 5 << 20, 1, old());
        assert_eq!(log.size(), (3, 1), "zone 0 once, then 1, then 5");
        assert_eq!(log.lookup((1, 10), old()), Some(Tracked::Ranges(vec![(0, 2 << 20), (5 << 20, 1 << 20)])));
        assert_eq!(log.lookup((1, 11), old()), Some(Tracked::Untouched));
        assert_eq!(log.lookup((1, 11), SystemTime::now()), Some(Tracked::Whole), "a recent ctime is not trusted");
        // A file first written with a recent ctime is whole: it may have changed unrecorded.
        log.before_write((1, 12), 0, 10, SystemTime::now());
        assert_eq!(log.lookup((1, 12), SystemTime::now()), Some(Tracked::Whole));
        log.before_identity_change((1, 10));
        assert_eq!(log.lookup((1, 10), old()), Some(Tracked::Whole));
        log.before_identity_change((1, 13)); // not recorded: nothing to do
        assert_eq!(log.size(), (5, 2));
        log.before_dir_rename();
        log.before_dir_rename();
        assert_eq!(log.lookup((1, 11), old()), None, "after a directory rename, everything is compared");
        assert_eq!(log.size().0, 6);
    }

    #[test]
    fn a_writer_in_order_gets_zones_recorded_ahead_doubling_up_to_32_mib() {
        let d = tempfile::tempdir().unwrap();
        let log = ZoneLog::open_with_margin(&d.path().join("zones"), 1 << 20, Duration::ZERO).unwrap();
        let appends = |f: &dyn Fn()| {
            let before = log.syncs();
            f();
            log.syncs() - before
        };
        // 512 MiB in order, 1 MiB writes, 1 MiB zones: zones 0 and 1 alone, then 1, 2, 4, 8,
        // 16 and 32 zones ahead (2, 3, 5, 9, 17, 33 zones an append), then 33 at a time.
        let n = appends(&|| {
            for i in 0..512u64 {
                log.before_write((1, 1), i << 20, 1 << 20, old());
            }
        });
        assert_eq!(n, 22, "instead of 512");
        let Some(Tracked::Ranges(r)) = log.lookup((1, 1), old()) else { panic!() };
        let end = r[0].0 + r[0].1;
        assert_eq!((r.len(), r[0].0), (1, 0));
        assert!((512 << 20..=(512 + 32) << 20).contains(&end), "never more than 32 MiB ahead: {end}");
        // A write split in two at a zone's edge: nothing ahead. A writer that stops early leaves
        // fewer zones ahead than it wrote in order.
        log.before_write((1, 2), (1 << 20) - 3, 3, old());
        log.before_write((1, 2), 1 << 20, 3, old());
        assert_eq!(log.lookup((1, 2), old()), Some(Tracked::Ranges(vec![(0, 2 << 20)])));
        log.before_write((1, 2), 2 << 20, 1 << 20, old());
        assert_eq!(log.lookup((1, 2), old()), Some(Tracked::Ranges(vec![(0, 4 << 20)])), "3 zones written, 1 ahead");
        // Out of order, or back to an earlier place: nothing ahead, one append per new zone.
        let n = appends(&|| {
            for z in [40u64, 3, 17, 29, 8, 41 + 7, 2] {
                log.before_write((1, 3), z << 20, 4096, old());
            }
        });
        assert_eq!(n, 7);
        let Some(Tracked::Ranges(r)) = log.lookup((1, 3), old()) else { panic!() };
        assert_eq!(r.iter().map(|(_, l)| l).sum::<u64>(), 7 << 20, "{r:?}");
        // The run of each file is its own: two files written in order, interleaved.
        let n = appends(&|| {
            for i in 0..64u64 {
                log.before_write((1, 4), i << 20, 1 << 20, old());
                log.before_write((1, 5), i << 20, 1 << 20, old());
            }
        });
        assert!(n <= 2 * 8, "{n} appends for 2 × 64 zones");
    }

    #[test]
    fn names_are_recorded_once_kept_by_a_rewrite_and_vouched_with_no_margin() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("zones");
        let log = ZoneLog::open_with_margin(&path, 1 << 20, Duration::from_secs(3600)).unwrap();
        // Not vouched: a file changed within the margin is compared, names are not trusted.
        assert!(!log.names_complete());
        assert_eq!(log.lookup((1, 50), SystemTime::now()), Some(Tracked::Whole));
        log.before_dir_change((1, 2));
        log.before_dir_change((1, 2));
        log.before_dir_change((1, 3));
        assert_eq!(log.size().0, 2, "one record per directory");
        // What an activity log held when the secondary left: its zones, a whole file, directories.
        let files = HashMap::from([
            ((1, 60), Tracked::Ranges(vec![(0, 2 << 20), (5 << 20, 1 << 20)])),
            ((1, 61), Tracked::Whole),
            ((1, 62), Tracked::Untouched),
        ]);
        log.import(&files, &HashSet::from([(1, 3), (1, 4)]));
        assert_eq!(log.size().0, 2 + 3 + 1 + 1, "3 zones, 1 whole, 1 new directory, in one append");
        log.vouch_names();
        log.vouch_names();
        assert!(log.names_complete());
        assert_eq!(log.lookup((1, 50), SystemTime::now()), Some(Tracked::Untouched), "no margin once vouched");
        log.before_write((1, 51), 0, 1, SystemTime::now());
        assert_eq!(log.lookup((1, 51), SystemTime::now()), Some(Tracked::Ranges(vec![(0, 1 << 20)])));
        // With no margin, a truncation of a file never recorded marks it whole at once (its
        // later writes would otherwise record only their own zones).
        log.before_identity_change((1, 52));
        log.before_write((1, 52), 0, 1, SystemTime::now());
        assert_eq!(log.lookup((1, 52), old()), Some(Tracked::Whole));
        drop(log);
        let log = ZoneLog::open_with_margin(&path, 1 << 20, Duration::from_secs(3600)).unwrap();
        assert!(log.names_complete(), "the NAMES record is durable");
        assert_eq!(log.changed_dirs(), HashSet::from([(1, 2), (1, 3), (1, 4)]));
        assert_eq!(log.lookup((1, 60), old()), Some(Tracked::Ranges(vec![(0, 2 << 20), (5 << 20, 1 << 20)])));
        assert_eq!(log.lookup((1, 61), old()), Some(Tracked::Whole));
        // A rewrite (the activity log's retirement) keeps the directories asked for and NAMES.
        let keep_dir = |k| k != (1, 3);
        let new = log.install(log.prepare_rewrite(|_, _| true, keep_dir).unwrap(), |_, _| true, keep_dir).unwrap();
        drop((log, new));
        let log = ZoneLog::open_or_start(&path, 1 << 20).unwrap();
        assert!(log.names_complete());
        assert_eq!(log.changed_dirs(), HashSet::from([(1, 2), (1, 4)]));
        assert!(log.dir_changed((1, 2)) && !log.dir_changed((1, 3)));
        // A directory renamed: names (and zones) no longer vouched for.
        log.before_dir_rename();
        assert!(!log.names_complete() && !log.usable());
    }

    #[test]
    fn a_rewrite_prepared_aside_gets_what_was_recorded_meanwhile_before_it_takes_the_place() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("activity");
        let log = ZoneLog::open_with_margin(&path, 1 << 20, Duration::ZERO).unwrap();
        log.record_root(0, (1, 1));
        // Out of order: no zone recorded ahead.
        for z in [3u64, 1, 0, 2] {
            log.before_write((1, 10), z << 20, 1, old());
        }
        log.before_dir_change((1, 2));
        // Zones 0 and 1 retire; 2 and 3 stay.
        let prepared = log.prepare_rewrite(|_, z| z >= Some(2), |_| true).unwrap();
        assert!(path.with_extension("new").exists(), "written aside");
        // Meanwhile: a new zone of another file, and zone 0 written again (active again).
        log.before_write((1, 11), 7 << 20, 1, old());
        let keep = |k: (u64, u64), z: Option<u32>| k == (1, 11) || z != Some(1);
        // Until installed, the log in place is the old one, whole.
        let r = ZoneLog::open_existing(&path).unwrap().unwrap().recorded();
        assert_eq!(r.get(&(1, 10)), Some(&Tracked::Ranges(vec![(0, 4 << 20)])));
        let new = log.install(prepared, keep, |_| true).unwrap();
        assert!(!path.with_extension("new").exists(), "renamed into place");
        drop((log, new));
        let log = ZoneLog::open_existing(&path).unwrap().unwrap();
        assert_eq!(log.roots(), vec![(0, (1, 1))]);
        let r = log.recorded();
        assert_eq!(
            r.get(&(1, 10)),
            Some(&Tracked::Ranges(vec![(0, 1 << 20), (2 << 20, 2 << 20)])),
            "zone 0 added back"
        );
        assert_eq!(r.get(&(1, 11)), Some(&Tracked::Ranges(vec![(7 << 20, 1 << 20)])), "recorded meanwhile");
        assert_eq!(log.changed_dirs(), HashSet::from([(1, 2)]));
        // A prepared log dropped (its activity log removed meanwhile) leaves nothing behind.
        let prepared = log.prepare_rewrite(|_, _| true, |_| true).unwrap();
        drop(prepared);
        assert!(!path.with_extension("new").exists());
    }

    #[test]
    fn the_log_survives_a_restart_and_stops_at_a_torn_record() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("zones");
        let log = ZoneLog::open_or_start(&path, 64 << 10).unwrap();
        let started = log.started();
        log.before_write((2, 20), 0, 1, old());
        log.before_write((2, 20), 3 << 16, 1, old());
        log.before_write((2, 21), 0, 1, old());
        drop(log);
        let log = ZoneLog::open_or_start(&path, 1 << 20).unwrap();
        assert_eq!((log.zone_size(), log.started(), log.size()), (64 << 10, started, (3, 2)), "its own zone size");
        assert_eq!(log.lookup((2, 20), old()), Some(Tracked::Ranges(vec![(0, 64 << 10), (3 << 16, 64 << 10)])));
        drop(log);
        // Tear the second record: loading keeps the first only.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], HEADER + RECORD + 3).unwrap();
        drop(f);
        let log = ZoneLog::open_or_start(&path, 1 << 20).unwrap();
        assert_eq!(log.size(), (1, 1));
        assert_eq!(log.lookup((2, 20), old()), Some(Tracked::Ranges(vec![(0, 64 << 10)])));
        // Recording goes on after the last good record.
        log.before_write((2, 22), 0, 1, old());
        drop(log);
        let log = ZoneLog::open_or_start(&path, 1 << 20).unwrap();
        assert_eq!(log.size(), (2, 2));
        drop(log);
        ZoneLog::remove(&path).unwrap();
        ZoneLog::remove(&path).unwrap();
        let log = ZoneLog::open_or_start(&path, 1 << 20).unwrap();
        assert_eq!(log.size(), (0, 0), "a new log after removal");
        assert!(log.started() > started);
    }

    #[test]
    fn the_log_grows_by_zeroed_mib_and_bad_sizes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("zones");
        for bad in [0, 1000, 3 << 20, 2 << 30] {
            assert!(matches!(ZoneLog::open_or_start(&path, bad), Err(ZoneLogError::ZoneSize { .. })), "{bad}");
        }
        let log = ZoneLog::open_or_start(&path, 4096).unwrap();
        // 40,000 records in one write: more than the first MiB holds.
        log.before_write((3, 30), 0, 40_000 * 4096, old());
        assert_eq!(log.size(), (40_000, 1));
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, HEADER + 2 * GROWTH);
        drop(log);
        assert_eq!(ZoneLog::open_or_start(&path, 4096).unwrap().size(), (40_000, 1));
    }
}
