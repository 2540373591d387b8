//! The full synchronisation of the FUSE layer against a real kernel mount (needs root and
//! /dev/fuse; skipped with a message otherwise). A tree made before the mount is sent with
//! `full_sync` to a recording sink, possibly while writers change it through the mount; the
//! recorded ops are replayed with the secondary's applier into an EMPTY directory, and the two
//! trees are compared with `manifest`.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_replication::apply::Applier;
use tandem_replication::fs::{Basis, ChangeObserver, FsError, MountOptions, OpSink, ReplicatedFs, SyncProgress};
use tandem_replication::manifest::{self, DiffOptions};
use tandem_replication::op::{AckLevel, Op};
use tandem_replication::zonelog::ZoneLog;

fn fuse_available() -> bool {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        // In CI (scripts/setup.sh guarantees FUSE) a skip would pass without testing anything.
        assert!(std::env::var_os("CI").is_none(), "real FUSE tests need root and /dev/fuse");
        eprintln!("SKIPPED: real FUSE tests need root and /dev/fuse");
        return false;
    }
    true
}

/// Records every op and acknowledges at once.
#[derive(Default)]
struct RecordingSink {
    ops: Mutex<Vec<Op>>,
    count: AtomicU64,
    /// Fail every wait from this sequence number on (0: never).
    fail_from: AtomicU64,
    /// Delay of each `Received` wait (the full sync's flow control; the application's own
    /// requests wait for `Written`): a slow stream, so that the sync lasts.
    received_delay: Duration,
}

impl RecordingSink {
    fn new() -> Arc<RecordingSink> {
        Arc::new(RecordingSink::default())
    }
    fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().unwrap())
    }
}

impl OpSink for RecordingSink {
    fn submit(&self, op: Op) -> u64 {
        let mut ops = self.ops.lock().unwrap();
        ops.push(op);
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn wait(&self, seq: u64, level: AckLevel) -> Result<(), String> {
        if level == AckLevel::Received {
            std::thread::sleep(self.received_delay);
        }
        let f = self.fail_from.load(Ordering::SeqCst);
        if f != 0 && seq >= f {
            return Err("connection lost (test)".into());
        }
        Ok(())
    }
}

struct Area {
    _tmp: tempfile::TempDir,
    primary: PathBuf,
    replica: PathBuf,
}

fn area() -> Area {
    let tmp = tempfile::Builder::new().prefix("tandem-sync-").tempdir_in("/var/tmp").unwrap();
    let primary = tmp.path().join("primary");
    let replica = tmp.path().join("replica");
    fs::create_dir(&primary).unwrap();
    fs::create_dir(&replica).unwrap();
    Area { _tmp: tmp, primary, replica }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    let r = unsafe { libc::lsetxattr(cstr(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {}: {}", p.display(), std::io::Error::last_os_error());
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = [libc::timespec { tv_sec: sec, tv_nsec: nsec }, libc::timespec { tv_sec: sec, tv_nsec: nsec }];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cstr(p).as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

/// A small deterministic generator (no external crate).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn replay(ops: &[Op], replica: &Path) {
    let mut app = Applier::open(replica).unwrap();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = app.apply(op) {
            let around: Vec<String> = ops[i.saturating_sub(8)..i]
                .iter()
                .map(|o| match o {
                    Op::Write { fh, offset, data } => {
                        format!("Write {{ fh: {fh}, offset: {offset}, len: {} }}", data.len())
                    }
                    o => format!("{o:?}"),
                })
                .collect();
            panic!("op #{i} {op:?} failed on the replica: {e}\nbefore it: {around:#?}");
        }
    }
    assert_eq!(app.open_handles(), 0, "every handle closed");
}

/// Both trees identical (except `skip`ped paths of the primary, e.g. excluded names).
fn assert_identical(primary: &Path, replica: &Path, skip: &[&str], options: &DiffOptions) {
    let mut a = manifest::build(primary).unwrap();
    let b = manifest::build(replica).unwrap();
    a.entries.retain(|k, _| !skip.iter().any(|s| k.0.starts_with(s.as_bytes())));
    let diffs = manifest::diff_with(&a, &b, options);
    let shown: Vec<String> = diffs.iter().map(|d| d.to_string()).collect();
    assert!(diffs.is_empty(), "{} differences: {shown:#?}", diffs.len());
}

/// The bytes a copy skipping holes sends for one file (SEEK_DATA/SEEK_HOLE).
fn data_bytes(p: &Path) -> u64 {
    let f = File::open(p).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let (mut off, mut total) = (0i64, 0u64);
    while off < size {
        let d = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) }.min(size);
        total += (h - d) as u64;
        off = h;
    }
    total
}

/// The tree of test (1), made directly in `p` (before any mount).
fn make_tree(p: &Path) -> (u64, u64, u64) {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    fs::create_dir_all(p.join("a/b/c")).unwrap();
    fs::create_dir(p.join("empty")).unwrap();
    fs::create_dir(p.join("name with space")).unwrap();
    fs::write(p.join("small.txt"), b"hello").unwrap();
    fs::set_permissions(p.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(p.join("small.txt"), Some(1234), Some(5678)).unwrap();
    fs::write(p.join("empty-file"), b"").unwrap();
    fs::write(p.join("a/b/c/deep.bin"), rng.bytes(3 * 1024 * 1024 + 123)).unwrap();
    fs::write(p.join("name with space/f"), b"spaced").unwrap();
    // Sparse: data at 0, in the middle, and a hole at the end.
    let f = File::create(p.join("sparse")).unwrap();
    f.write_all_at(&rng.bytes(4096), 0).unwrap();
    f.write_all_at(&rng.bytes(8192), 50 << 20).unwrap();
    f.set_len(100 << 20).unwrap();
    drop(f);
    // Three names of one file.
    fs::write(p.join("a/hl1"), b"linked content").unwrap();
    fs::hard_link(p.join("a/hl1"), p.join("a/b/hl2")).unwrap();
    fs::hard_link(p.join("a/hl1"), p.join("zz-hl3")).unwrap();
    symlink("a/b", p.join("link")).unwrap();
    symlink("../nowhere", p.join("a/dangling")).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cstr(&p.join("a/fifo")).as_ptr(), 0o620) }, 0);
    assert_eq!(
        unsafe { libc::mknod(cstr(&p.join("devnull")).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
        0
    );
    fs::set_permissions(p.join("a/b/c"), fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(p, "user.root", b"on the root");
    set_xattr(&p.join("small.txt"), "user.one", b"1");
    set_xattr(&p.join("small.txt"), "user.two", &[0u8, 1, 2, 255]);
    set_xattr(&p.join("a"), "user.dir", b"a directory");
    set_xattr(&p.join("sparse"), "user.big", &vec![7u8; 3000]);
    fs::write(p.join("junk.tmp"), b"excluded").unwrap();
    // Times last, children before parents.
    for (i, f) in
        ["small.txt", "empty-file", "a/b/c/deep.bin", "sparse", "a/hl1", "a/fifo", "devnull"].iter().enumerate()
    {
        set_mtime(&p.join(f), 1_600_000_000 + i as i64, 123_456_789);
    }
    set_mtime(&p.join("link"), 1_500_000_000, 5);
    for (i, d) in ["a/b/c", "a/b", "a", "empty", "name with space", ""].iter().enumerate() {
        set_mtime(&p.join(d), 1_700_000_000 + i as i64, 987_654_321);
    }
    // Expected totals: non-directory entries (excluded one aside), directories (root
    // included), data bytes (each inode once).
    let names = [
        "small.txt",
        "empty-file",
        "a/b/c/deep.bin",
        "name with space/f",
        "sparse",
        "a/hl1",
        "a/b/hl2",
        "zz-hl3",
        "link",
        "a/dangling",
        "a/fifo",
        "devnull",
    ];
    let dirs_list = ["", "a", "a/b", "a/b/c", "empty", "name with space"];
    let bytes = ["small.txt", "a/b/c/deep.bin", "name with space/f", "sparse", "a/hl1"]
        .iter()
        .map(|f| data_bytes(&p.join(f)))
        .sum();
    (names.len() as u64, dirs_list.len() as u64, bytes)
}

/// (1) and (3): a static tree with every kind of object, sent by `full_sync` to an empty
/// replica; the application holds a file open across the attach and writes to it after.
#[test]
fn full_sync_of_a_static_tree_is_identical_and_counted() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    let (files, dirs, bytes) = make_tree(p);

    struct Seen(AtomicU64);
    impl ChangeObserver for Seen {
        fn on_local_change(&self, _op: &Op) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let fsys = ReplicatedFs::mount(p, MountOptions::new("sync1").exclude(["*.tmp"]), None).unwrap();
    let seen = Arc::new(Seen(AtomicU64::new(0)));
    fsys.set_observer(Some(seen.clone()));
    let sink = RecordingSink::new();
    assert!(matches!(fsys.full_sync(&mut |_| {}), Err(FsError::NotSyncing)));

    // Opened (ALONE) before the stream exists, written after the sync: must reach the replica.
    let held = OpenOptions::new().write(true).open(p.join("name with space/f")).unwrap();
    let reader = File::open(p.join("small.txt")).unwrap();
    seen.0.store(0, Ordering::SeqCst); // the application's own open above was a change
    fsys.attach_empty_secondary(sink.clone());
    assert!(fsys.syncing());
    let mut calls: Vec<SyncProgress> = Vec::new();
    let result = fsys.full_sync(&mut |pr| calls.push(*pr)).unwrap();
    assert!(!fsys.syncing());
    println!("static tree: {result:?}, {} progress calls", calls.len());
    assert_eq!(seen.0.load(Ordering::SeqCst), 0, "the sync's own ops are not changes for the observer");

    // (3) The totals match the tree; the callbacks are monotonic and end at the result.
    assert_eq!((result.files, result.dirs, result.bytes), (files, dirs, bytes), "{result:?}");
    let diff = result.total_bytes_estimate.abs_diff(bytes);
    assert!(diff <= 64 << 10, "estimate {} vs {bytes}", result.total_bytes_estimate);
    assert_eq!(calls.len() as u64, files + dirs + (1 + 4 + 1 + 2 + 1), "one call per object and per chunk");
    for w in calls.windows(2) {
        assert!(w[0].files <= w[1].files && w[0].dirs <= w[1].dirs && w[0].bytes <= w[1].bytes);
    }
    let last = calls.last().unwrap();
    assert_eq!((last.files, last.dirs, last.bytes), (result.files, result.dirs, result.bytes));

    // The held handle is opened on the secondary right after its file was created there.
    let ops = sink.ops.lock().unwrap().clone();
    let create =
        ops.iter().position(|o| matches!(o, Op::Create { path, .. } if path.0 == b"name with space/f")).unwrap();
    let open = ops.iter().position(|o| matches!(o, Op::Open { path, .. } if path.0 == b"name with space/f")).unwrap();
    assert!(create < open, "{ops:?}");
    assert!(!ops.iter().any(|o| matches!(o, Op::Create { path, .. } if path.0 == b"junk.tmp")));
    // Chunks of at most 1 MiB, and no write into a hole.
    assert!(ops.iter().all(|o| !matches!(o, Op::Write { data, .. } if data.len() > 1 << 20)));
    let links = ops.iter().filter(|o| matches!(o, Op::Link { .. })).count();
    assert_eq!(links, 2, "two more names of one file");

    held.write_all_at(b"SPACED after the sync", 3).unwrap();
    drop(held);
    drop(reader);
    drop(fsys);
    replay(&sink.take(), &a.replica);
    // Exact: file and directory mtimes, and the allocated size (holes are kept).
    let exact = DiffOptions { file_mtime: true, dir_mtime: false, allocated: true };
    assert_identical(p, &a.replica, &["junk.tmp"], &exact);
    assert_eq!(fs::read(a.replica.join("name with space/f")).unwrap(), b"spaSPACED after the sync");
}

/// Directory mtimes of a static tree are exact too (no application change touches them).
#[test]
fn full_sync_keeps_directory_times() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    make_tree(p);
    let fsys = ReplicatedFs::mount(p, MountOptions::new("sync1b").exclude(["*.tmp"]), None).unwrap();
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    fsys.full_sync(&mut |_| {}).unwrap();
    drop(fsys);
    replay(&sink.take(), &a.replica);
    // The excluded file's name changed the root's mtime on the primary only at creation,
    // before the times were set: the root compares too.
    let all = DiffOptions { file_mtime: true, dir_mtime: true, allocated: false };
    assert_identical(p, &a.replica, &["junk.tmp"], &all);
}

/// `resync_bandwidth`: the sync's traffic is paced (outside the order lock); 8 MiB at 4 MiB/s
/// cannot take less than about 2 s.
#[test]
fn the_resync_bandwidth_caps_the_copy() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let mut rng = Rng(11);
    fs::write(a.primary.join("f"), rng.bytes(8 << 20)).unwrap();
    let fsys = ReplicatedFs::mount(&a.primary, MountOptions::new("sync-capped"), None).unwrap();
    fsys.set_resync_bandwidth(Some(4 << 20));
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    let start = Instant::now();
    let result = fsys.full_sync(&mut |_| {}).unwrap();
    let took = start.elapsed();
    println!("8 MiB at 4 MiB/s: {took:?}");
    assert_eq!(result.bytes, 8 << 20);
    assert!(took >= Duration::from_millis(1900), "paced: {took:?}");
    drop(fsys);
    replay(&sink.take(), &a.replica);
}

/// A broken stream stops the sync with the stream's error; detaching ends it too.
#[test]
fn full_sync_stops_on_a_broken_stream() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    let mut rng = Rng(7);
    for i in 0..6 {
        fs::write(p.join(format!("f{i}")), rng.bytes(8 << 20)).unwrap();
    }
    let fsys = ReplicatedFs::mount(p, MountOptions::new("sync-broken"), None).unwrap();
    let sink = RecordingSink::new();
    sink.fail_from.store(1, Ordering::SeqCst);
    fsys.attach_empty_secondary(sink.clone());
    let r = fsys.full_sync(&mut |_| {});
    assert!(matches!(r, Err(FsError::Stream(ref m)) if m.contains("connection lost")), "{r:?}");
    // Detached by the daemon (ALONE); a new sync needs a new attach.
    fsys.set_sink(None);
    assert!(matches!(fsys.full_sync(&mut |_| {}), Err(FsError::NotSyncing)));
    drop(fsys);
}

/// What the writers of the race test do, and check afterwards.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

const BIG: u64 = 64 << 20;

/// `dir_renames`: whether the namespace writer also moves whole directories (which makes a zone
/// log compare everything); it may change while the writers run.
fn start_writers(p: &Path, seed: u64, big: File, dir_renames: Arc<AtomicBool>) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // 1. Known patterns at known offsets of the big file, through a handle opened before the
    //    stream was attached; now and then an fsync, a fallocate punch, an extension.
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let len = 512 + rng.below(8 << 10) as usize;
                let off = rng.below(BIG + (4 << 20));
                let byte = (n % 251) as u8;
                big.write_all_at(&vec![byte; len], off).unwrap();
                if n.is_multiple_of(97) {
                    big.sync_data().unwrap();
                }
                if n.is_multiple_of(131) {
                    let r = unsafe {
                        libc::fallocate(
                            std::os::fd::AsRawFd::as_raw_fd(&big),
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            rng.below(BIG) as i64,
                            65536,
                        )
                    };
                    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
                }
                n += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            n
        }));
    }
    // 2. Appends of numbered records to a log (O_APPEND), reopened now and then.
    {
        let stop = stop.clone();
        let p = p.to_path_buf();
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut f = OpenOptions::new().append(true).open(p.join("logs/log")).unwrap();
                for _ in 0..50 {
                    writeln!(f, "record {n:08}").unwrap();
                    n += 1;
                }
            }
            n
        }));
    }
    // 3. The namespace: new files and directories, renames of files and whole directories
    //    across the tree (in and out of parts sent and not sent yet), rewrites, deletions.
    {
        let stop = stop.clone();
        let p = p.to_path_buf();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_mul(31) | 1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let d = |r: &mut Rng| format!("d{}", r.below(10));
                let mut op = rng.below(8);
                if !dir_renames.load(Ordering::Relaxed) && (op == 2 || op == 6) {
                    op = 0;
                }
                match op {
                    0 => {
                        let name = p.join(d(&mut rng)).join(format!("new{n}"));
                        let len = rng.below(20000) as usize;
                        fs::write(&name, rng.bytes(len)).unwrap();
                    }
                    1 => {
                        // Move a small file from one directory to another.
                        let from = p.join(d(&mut rng));
                        if let Some(e) =
                            fs::read_dir(&from).unwrap().flatten().find(|e| e.file_type().unwrap().is_file())
                        {
                            if e.file_name() != "log" {
                                let _ = fs::rename(e.path(), p.join(d(&mut rng)).join(format!("mv{n}")));
                            }
                        }
                    }
                    2 => {
                        // A whole directory moves between two parents.
                        let (a, b) = (p.join(d(&mut rng)).join("sub"), p.join(d(&mut rng)).join("sub"));
                        if a.exists() && !b.exists() {
                            fs::rename(&a, &b).unwrap();
                        } else if !a.exists() && !b.exists() {
                            fs::create_dir(&a).unwrap();
                            fs::write(a.join("inside"), format!("made {n}")).unwrap();
                        }
                    }
                    3 => {
                        let dir = p.join(d(&mut rng));
                        if let Some(e) = fs::read_dir(&dir)
                            .unwrap()
                            .flatten()
                            .find(|e| e.file_name() != "log" && e.file_type().unwrap().is_file())
                        {
                            let _ = fs::remove_file(e.path());
                        }
                    }
                    4 => {
                        // Rewrite in place at a known offset.
                        let dir = p.join(d(&mut rng));
                        if let Some(e) =
                            fs::read_dir(&dir).unwrap().flatten().find(|e| e.file_type().unwrap().is_file())
                        {
                            if let Ok(f) = OpenOptions::new().write(true).open(e.path()) {
                                f.write_all_at(format!("overwritten {n}").as_bytes(), 10).unwrap();
                            }
                        }
                    }
                    5 => {
                        let name = p.join(d(&mut rng)).join(format!("dir{n}"));
                        fs::create_dir(&name).unwrap();
                        fs::write(name.join("x"), b"x").unwrap();
                    }
                    6 => {
                        // Rename a whole top directory away and back (its subtree's paths change).
                        let a = p.join(d(&mut rng));
                        let tmp = p.join(format!("moving{n}"));
                        fs::rename(&a, &tmp).unwrap();
                        fs::rename(&tmp, &a).unwrap();
                    }
                    _ => {
                        let dir = p.join(d(&mut rng));
                        if let Some(e) =
                            fs::read_dir(&dir).unwrap().flatten().find(|e| e.file_type().unwrap().is_file())
                        {
                            let _ = fs::hard_link(e.path(), dir.join(format!("hl{n}")));
                        }
                    }
                }
                n += 1;
            }
            n
        }));
    }
    Writers { stop, threads }
}

/// The race test's tree, made before the mount: one 64 MiB file, ~400 small files in 10
/// directories, a log.
fn make_race_tree(p: &Path, rng: &mut Rng) {
    let big = File::create(p.join("big")).unwrap();
    for i in 0..64u64 {
        big.write_all_at(&rng.bytes(1 << 20), i << 20).unwrap();
    }
    drop(big);
    for d in 0..10 {
        fs::create_dir(p.join(format!("d{d}"))).unwrap();
        for f in 0..40 {
            let len = 100 + rng.below(30000) as usize;
            fs::write(p.join(format!("d{d}/f{f}")), rng.bytes(len)).unwrap();
        }
        fs::create_dir(p.join(format!("d{d}/deep"))).unwrap();
        fs::write(p.join(format!("d{d}/deep/leaf")), rng.bytes(5000)).unwrap();
    }
    fs::create_dir(p.join("logs")).unwrap();
    fs::write(p.join("logs/log"), b"").unwrap();
}

/// A copy of `from` at `to` (which must not exist), sparse files kept sparse.
fn copy_tree(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp").arg("-a").arg("--sparse=always").arg(from).arg(to).output().unwrap();
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
}

/// Makes the replica of the race tree stale the ways a returning secondary's copy can be: data
/// changed, names it alone holds (whole trees), objects of another type, metadata changed.
fn make_stale(r: &Path, rng: &mut Rng) {
    let big = OpenOptions::new().write(true).open(r.join("big")).unwrap();
    big.write_all_at(&rng.bytes(5000), 7 << 20).unwrap();
    big.write_all_at(&rng.bytes(100), (40 << 20) + 3).unwrap();
    drop(big);
    fs::remove_dir_all(r.join("d0/deep")).unwrap();
    fs::create_dir_all(r.join("d1/stale/x/y")).unwrap();
    fs::write(r.join("d1/stale/x/y/z"), b"stale").unwrap();
    symlink("nowhere", r.join("d1/stale/link")).unwrap();
    fs::remove_file(r.join("d2/f0")).unwrap();
    fs::create_dir(r.join("d2/f0")).unwrap();
    fs::write(r.join("d2/f0/inside"), b"a directory where the primary has a file").unwrap();
    fs::remove_dir_all(r.join("d3/deep")).unwrap();
    fs::write(r.join("d3/deep"), b"a file where the primary has a directory").unwrap();
    fs::set_permissions(r.join("d4/f1"), fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&r.join("d5/f2"), "user.stale", b"only here");
    OpenOptions::new().write(true).open(r.join("d6/f3")).unwrap().set_len(1 << 20).unwrap();
    fs::write(r.join("only-here"), b"x").unwrap();
}

#[derive(Clone, Copy, PartialEq)]
enum Replica {
    /// Empty: a full copy.
    Empty,
    /// An old copy with changes of its own: a catch-up by block hashes.
    Stale,
    /// In sync when the zone log started (the secondary left cleanly): a zone catch-up.
    Tracked,
    /// The same with a log vouching for names: a names catch-up (unchanged directories listed
    /// by name only, directories changed later asked for whole).
    Names,
}

/// (2) The race: writers change the tree through the mount during the whole sync (and a little
/// after); the replay of every op recorded (sync and application) into the replica gives the
/// primary's tree exactly. Several timings, and three kinds of replica.
fn race(name: &str, replica: Replica) {
    for (round, (before_ms, after_ms)) in [(0u64, 0u64), (30, 50), (150, 10), (5, 200)].into_iter().enumerate() {
        let a = area();
        let p = a.primary.clone();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ round as u64);
        make_race_tree(&p, &mut rng);
        if replica != Replica::Empty {
            fs::remove_dir(&a.replica).unwrap();
            copy_tree(&p, &a.replica);
        }
        if replica == Replica::Stale {
            make_stale(&a.replica, &mut rng);
        }
        let fsys = ReplicatedFs::mount(&p, MountOptions::new(format!("{name}{round}")), None).unwrap();
        let log = matches!(replica, Replica::Tracked | Replica::Names).then(|| {
            // The tree's ctimes are older than the start of tracking (no margin in this test).
            std::thread::sleep(Duration::from_millis(20));
            let path = a._tmp.path().join("zones");
            let log = Arc::new(ZoneLog::open_with_margin(&path, 1 << 20, Duration::ZERO).unwrap());
            if replica == Replica::Names {
                log.vouch_names();
            }
            log
        });
        fsys.set_zone_log(log.clone());
        let big = OpenOptions::new().read(true).write(true).open(p.join("big")).unwrap();
        // A names catch-up gets directory renames once it has started (before, they would turn
        // it into a zone catch-up): the log stops vouching for names in the middle of the walk.
        let dir_renames = Arc::new(AtomicBool::new(!matches!(replica, Replica::Tracked | Replica::Names)));
        let w = start_writers(&p, 1000 + round as u64, big, dir_renames.clone());
        let mut by_names = false;
        let mut live_replica: Option<Arc<Live>> = None;
        std::thread::sleep(Duration::from_millis(before_ms));
        let sink = Arc::new(RecordingSink { received_delay: Duration::from_millis(40), ..Default::default() });
        fsys.attach_empty_secondary(sink.clone());
        if replica != Replica::Empty {
            // The replay below runs after the sync: the replica is still as the basis says.
            let plan = log.as_deref().filter(|_| replica == Replica::Names).and_then(|l| fsys.names_plan(l));
            let (entries, names) = match plan {
                // A directory renamed before this point: the log no longer vouches for names.
                None => (basis_of(&a.replica, &fsys, log.as_deref()), None),
                Some(plan) => {
                    by_names = true;
                    let live = Live::new(&a.replica, sink.clone());
                    live_replica = Some(live.clone());
                    names_basis(&a.replica, &plan, live)
                }
            };
            fsys.set_basis(Basis { entries, reuse: true, zones: log.clone(), names }).unwrap();
            if replica == Replica::Names {
                dir_renames.store(true, Ordering::Relaxed);
            }
        }
        let start = Instant::now();
        let result = fsys.full_sync(&mut |_| {}).unwrap();
        let took = start.elapsed();
        std::thread::sleep(Duration::from_millis(after_ms));
        w.stop.store(true, Ordering::Relaxed);
        let counts: Vec<u64> = w.threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Every descriptor closed: the releases reach the layer before the unmount.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fsys.open_files() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(fsys);
        let ops = sink.take();
        println!(
            "{name} round {round}: sync {took:?} ({} files, {} dirs, {} MiB sent, {} MiB matched, {} removed), \
             writers did {counts:?}, {} ops, by names: {by_names}",
            result.files,
            result.dirs,
            result.bytes >> 20,
            result.matched >> 20,
            result.removed,
            ops.len()
        );
        if let Ok(dump) = std::env::var("TANDEM_DUMP_OPS") {
            let text: Vec<String> = ops
                .iter()
                .map(|o| match o {
                    Op::Write { fh, offset, data } => format!("Write {fh} {offset} {}", data.len()),
                    o => format!("{o:?}"),
                })
                .collect();
            fs::write(format!("{dump}.{name}.{round}"), text.join("\n")).unwrap();
        }
        // A names catch-up's fetches applied what came before them already (in stream order,
        // as the secondary would before listing): the rest follows.
        match live_replica {
            Some(live) => live.finish(&ops),
            None => replay(&ops, &a.replica),
        }
        let options = DiffOptions { file_mtime: true, dir_mtime: false, allocated: false };
        assert_identical(&p, &a.replica, &[], &options);
        // The log holds every record, in order.
        let log = fs::read_to_string(p.join("logs/log")).unwrap();
        assert_eq!(log.lines().count() as u64, counts[1]);
        if replica == Replica::Tracked {
            assert!(result.unread > 0, "the zone log spared reads: {result:?}");
        }
        if replica == Replica::Stale {
            assert!(result.removed >= 4, "the stale names were removed: {result:?}");
            // The writers hard-link and rewrite files meanwhile: fewer than the ~400 are kept.
            assert!(result.compared >= 100, "the kept files were compared: {result:?}");
        }
    }
}

#[test]
fn full_sync_races_with_writers_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    race("race", Replica::Empty);
}

/// The same race over a replica that kept a stale copy: the catch-up removes, keeps and
/// compares under the writers, and ends identical.
#[test]
fn catch_up_over_a_stale_copy_races_with_writers_and_ends_identical() {
    if !fuse_available() {
        return;
    }
    race("catchup", Replica::Stale);
}

/// The same race over a replica that was in sync when the zone log started: the catch-up reads
/// only what the log recorded (and files it cannot vouch for), and ends identical.
#[test]
fn a_zone_catch_up_races_with_writers_and_ends_identical() {
    if !fuse_available() {
        return;
    }
    race("zones", Replica::Tracked);
}

/// The same race with a zone log vouching for names: the replica lists by name only the
/// directories the log records no change in, and whole the ones changed after its listing; the
/// writers create, remove, rename (directories too) and hard-link files all along.
#[test]
fn a_names_catch_up_races_with_writers_and_ends_identical() {
    if !fuse_available() {
        return;
    }
    race("names", Replica::Names);
}

/// A replica that applies what the sink recorded so far whenever it is asked to list: the
/// secondary answers a listing in stream order, after every op sent before the request.
struct Live {
    app: Mutex<Applier>,
    sink: Arc<RecordingSink>,
    replica: PathBuf,
}

impl Live {
    fn new(replica: &Path, sink: Arc<RecordingSink>) -> Arc<Live> {
        Arc::new(Live { app: Mutex::new(Applier::open(replica).unwrap()), sink, replica: replica.to_path_buf() })
    }

    /// Applies what was recorded since the last call.
    fn catch_up(&self) {
        let ops = self.sink.take();
        let mut app = self.app.lock().unwrap();
        for op in &ops {
            app.apply(op).unwrap_or_else(|e| panic!("{op:?} failed on the replica: {e}"));
        }
    }

    /// Applies `rest` (recorded after the last listing) and checks every handle is closed.
    fn finish(&self, rest: &[Op]) {
        let mut app = self.app.lock().unwrap();
        for op in rest {
            app.apply(op).unwrap_or_else(|e| panic!("{op:?} failed on the replica: {e}"));
        }
        assert_eq!(app.open_handles(), 0, "every handle closed");
    }
}

/// The basis of a names catch-up as the daemon builds it: the replica's names listing for
/// `plan`, and a fetch that lists one of its directories whole, once `live` has applied the ops
/// sent before the request.
fn names_basis(
    replica: &Path,
    plan: &tandem_replication::fs::NamesPlan,
    live: Arc<Live>,
) -> (
    std::collections::BTreeMap<tandem_replication::op::RelPath, manifest::Entry>,
    Option<tandem_replication::fs::NamesBasis>,
) {
    use tandem_replication::op::RelPath;
    let hash = plan.hash.iter().cloned().map(RelPath).collect();
    let full = plan.full.iter().cloned().map(RelPath).collect();
    let entries = manifest::build_names(replica, &hash, &full).unwrap().entries;
    let fetch: tandem_replication::fs::Fetch = Arc::new(move |dir: &[u8]| {
        live.catch_up();
        manifest::build_dir(&live.replica, &RelPath(dir.to_vec())).map(|m| m.entries).map_err(|e| e.to_string())
    });
    (entries, Some(tandem_replication::fs::NamesBasis { full: plan.full.clone(), fetch }))
}

/// A names catch-up of a static tree: the log vouches for names, so the replica lists whole
/// only the directories with a recorded change and hashes only the files recorded whole; the
/// rest it lists by name, without a stat. Exactly the recorded zones and the new names are sent.
#[test]
fn a_names_catch_up_lists_unchanged_directories_by_name_only() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = a.primary.clone();
    let mut rng = Rng(11);
    make_race_tree(&p, &mut rng);
    // A 3 MiB file; hard links across directories (d8/hl and d6/hl2, d9/f0 and d3/lnk).
    fs::write(p.join("d9/two"), rng.bytes(3 << 20)).unwrap();
    fs::write(p.join("d8/hl"), rng.bytes(9000)).unwrap();
    fs::hard_link(p.join("d8/hl"), p.join("d6/hl2")).unwrap();
    fs::hard_link(p.join("d9/f0"), p.join("d3/lnk")).unwrap();
    fs::remove_dir(&a.replica).unwrap();
    copy_tree(&p, &a.replica);
    let log = Arc::new(ZoneLog::open_with_margin(&a._tmp.path().join("zones"), 1 << 20, Duration::ZERO).unwrap());
    log.vouch_names();
    // A change outside the layer after tracking started (the daemon down, say), size and mtime
    // kept: its ctime gives it away, and it is sent whole.
    {
        use std::os::unix::fs::MetadataExt;
        let f = p.join("d8/f8");
        let md = fs::metadata(&f).unwrap();
        OpenOptions::new().write(true).open(&f).unwrap().write_all_at(b"outside", 1).unwrap();
        set_mtime(&f, md.mtime(), md.mtime_nsec());
    }
    let fsys = ReplicatedFs::mount(&p, MountOptions::new("names-static"), None).unwrap();
    fsys.set_zone_log(Some(log.clone()));
    // ALONE: 2 zones of the image; a small file rewritten in place; one truncated (whole); in
    // other directories one renamed, one new, one chmod, one xattr, one removed, a new directory.
    let big = OpenOptions::new().write(true).open(p.join("big")).unwrap();
    big.write_all_at(b"one", (5 << 20) + 10).unwrap();
    big.write_all_at(b"two", (9 << 20) + 10).unwrap();
    drop(big);
    OpenOptions::new().write(true).open(p.join("d1/f1")).unwrap().write_all_at(b"changed", 3).unwrap();
    let d0f3 = OpenOptions::new().write(true).open(p.join("d0/f3")).unwrap();
    d0f3.write_all_at(b"zone first", 0).unwrap();
    d0f3.set_len(50).unwrap();
    drop(d0f3);
    fs::rename(p.join("d2/f2"), p.join("d2/renamed")).unwrap();
    fs::write(p.join("d3/new"), rng.bytes(7000)).unwrap();
    fs::set_permissions(p.join("d4/f4"), fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&p.join("d5/f5"), "user.added", b"alone");
    fs::remove_file(p.join("d6/f6")).unwrap();
    fs::create_dir(p.join("d7/deep/newdir")).unwrap();
    fs::write(p.join("d7/deep/newdir/x"), b"inside").unwrap();
    // A file never recorded, in an unchanged directory, truncated and extended, then written
    // at 0: its old zones 1 and 2 are zeros now.
    let two = OpenOptions::new().write(true).open(p.join("d9/two")).unwrap();
    two.set_len(0).unwrap();
    two.set_len(3 << 20).unwrap();
    two.write_all_at(b"after the truncation", 0).unwrap();
    drop(two);
    // A save by rename over one name of a hard-linked file: d8/hl keeps the old inode alone.
    fs::write(p.join("d6/tmp"), rng.bytes(5000)).unwrap();
    fs::rename(p.join("d6/tmp"), p.join("d6/hl2")).unwrap();
    // A chmod through one name of a hard-linked file, that name then removed: d9/f0 (in an
    // unchanged directory) has another mode and one link.
    fs::set_permissions(p.join("d3/lnk"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(p.join("d3/lnk")).unwrap();
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    let plan = fsys.names_plan(&log).expect("a names catch-up");
    let mut full: Vec<String> = plan.full.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect();
    full.sort();
    assert_eq!(full, ["d2", "d3", "d4", "d5", "d6", "d7/deep", "d7/deep/newdir"], "{plan:?}");
    // Hashed: the files the log records whole (truncated, or renamed, linked or unlinked: with
    // no margin, any change of identity marks a file whole).
    let mut hashed: Vec<String> = plan.hash.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect();
    hashed.sort();
    hashed.retain(|h| h != "d7/deep/newdir/x"); // created with O_TRUNC: whole, or not yet there
    assert_eq!(hashed, ["d0/f3", "d2/renamed", "d6/hl2", "d8/hl", "d9/f0", "d9/two"], "{hashed:?}");
    let live = Live::new(&a.replica, sink.clone());
    let (entries, names) = names_basis(&a.replica, &plan, live.clone());
    let bare = entries.values().filter(|e| e.bare).count();
    // d0, d1, d7, d8, d9 (40 files each; d0/f3, d9/f0 hashed, d8/hl and d9/two hashed too),
    // the 9 deep leaves outside d7/deep, big, and logs/log.
    assert_eq!(bare, 5 * 40 - 2 + 9 + 1 + 1, "entries listed by name only");
    assert!(
        entries[&tandem_replication::op::RelPath(b"d4/f4".to_vec())].mode != 0,
        "a changed directory is listed whole"
    );
    fsys.set_basis(Basis { entries, reuse: true, zones: Some(log.clone()), names }).unwrap();
    let result = fsys.full_sync(&mut |_| {}).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fsys.open_files() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(fsys);
    println!("names catch-up: {result:?}, log {log:?}");
    live.finish(&sink.take());
    let options = DiffOptions { file_mtime: true, dir_mtime: false, allocated: false };
    assert_identical(&p, &a.replica, &[], &options);
    let small = |f: &str| fs::metadata(p.join(f)).unwrap().len();
    // Sent: the image's 2 zones, d1/f1 (one zone: all of it), d0/f3's first block (differs:
    // compared against its hashes), the renamed and the new files, x, and d8/f8 (changed
    // outside the layer).
    // d8/f8 (changed outside the layer), d9/two's block 0 (its zeros are punched), the new
    // d6/hl2, and d8/hl and d9/f0: they lost a name here, and the replica's copies still have
    // two (a hard-link group of the listing), so they are removed and sent again rather than
    // written in place (d9/f0 with its new mode).
    let sent = (2 << 20)
        + small("d1/f1")
        + 50
        + small("d2/renamed")
        + 7000
        + 6
        + small("d8/f8")
        + (1 << 20)
        + 5000
        + 9000
        + small("d9/f0");
    assert_eq!(result.bytes, sent, "{result:?}");
    assert_eq!(result.removed, 6, "d2/f2, d6/f6, d3/lnk, and the hard-linked d6/hl2, d8/hl, d9/f0: {result:?}");
}

/// A zone catch-up of a static tree: exactly the recorded zones are read and sent; files the
/// log never saw change are not even opened.
#[test]
fn a_zone_catch_up_reads_only_the_recorded_zones() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = a.primary.clone();
    let mut rng = Rng(5);
    make_race_tree(&p, &mut rng);
    fs::remove_dir(&a.replica).unwrap();
    copy_tree(&p, &a.replica);
    std::thread::sleep(Duration::from_millis(20));
    let log = Arc::new(ZoneLog::open_with_margin(&a._tmp.path().join("zones"), 1 << 20, Duration::ZERO).unwrap());
    let fsys = ReplicatedFs::mount(&p, MountOptions::new("zones-static"), None).unwrap();
    fsys.set_zone_log(Some(log.clone()));
    // ALONE: 3 zones of the image (one write across a zone boundary), one small file
    // rewritten, one renamed, one new, one chmod.
    let big = OpenOptions::new().write(true).open(p.join("big")).unwrap();
    big.write_all_at(b"one", (5 << 20) + 10).unwrap();
    big.write_all_at(b"across", (20 << 20) - 3).unwrap();
    drop(big);
    OpenOptions::new().write(true).open(p.join("d1/f1")).unwrap().write_all_at(b"changed", 3).unwrap();
    fs::rename(p.join("d2/f2"), p.join("d2/renamed")).unwrap();
    fs::write(p.join("d3/new"), rng.bytes(7000)).unwrap();
    fs::set_permissions(p.join("d4/f4"), fs::Permissions::from_mode(0o600)).unwrap();
    // Held open for writing across the catch-up, unchanged until after it: not read, but its
    // handle must replicate the writes that come later.
    let held = OpenOptions::new().write(true).open(p.join("d5/f5")).unwrap();
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    let entries = basis_of(&a.replica, &fsys, Some(&log));
    let hashed: Vec<String> = entries
        .iter()
        .filter(|(_, e)| !e.blocks.is_empty())
        .map(|(p, _)| String::from_utf8_lossy(&p.0).into_owned())
        .collect();
    assert_eq!(hashed, ["d4/f4"], "the replica hashes only what will be compared");
    fsys.set_basis(Basis { entries, reuse: true, zones: Some(log.clone()), names: None }).unwrap();
    let result = fsys.full_sync(&mut |_| {}).unwrap();
    held.write_all_at(b"written after the catch-up", 5).unwrap();
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fsys.open_files() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(fsys);
    println!("zone catch-up: {result:?}, log {log:?}");
    replay(&sink.take(), &a.replica);
    let options = DiffOptions { file_mtime: true, dir_mtime: false, allocated: false };
    assert_identical(&p, &a.replica, &[], &options);
    let small = |f: &str| fs::metadata(p.join(f)).unwrap().len();
    // Sent: the 3 zones of the image, d1/f1's one zone (the whole small file), the renamed
    // file (another file at that name on the replica) and the new one.
    assert_eq!(result.bytes, (3 << 20) + small("d1/f1") + small("d2/renamed") + 7000, "{result:?}");
    // Not read: the 61 other MiB of the image and every other small file.
    let others: u64 = fs::read_dir(&p)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .flat_map(|d| walk_files(&d.path()))
        .filter(|f| !["d1/f1", "d2/renamed", "d3/new", "d4/f4"].iter().any(|x| f.ends_with(x)))
        .map(|f| fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(result.unread, (61 << 20) + others, "{result:?}");
    // The chmod moved d4/f4's ctime without a record: compared whole, found identical.
    assert_eq!(result.matched, small("d4/f4"), "{result:?}");
}

/// A crashed primary back as secondary: the zones its activity log names are sent with the zone
/// catch-up, even where the primary's zone log saw nothing (those writes never reached it, or
/// were lost from the crashed node's page cache), and a file it names whole is sent whole.
#[test]
fn a_zone_catch_up_also_sends_what_the_secondarys_activity_log_names() {
    if !fuse_available() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    use tandem_replication::manifest::Suspect;
    use tandem_replication::op::RelPath;
    let a = area();
    let p = a.primary.clone();
    let mut rng = Rng(7);
    make_race_tree(&p, &mut rng);
    fs::remove_dir(&a.replica).unwrap();
    copy_tree(&p, &a.replica);
    std::thread::sleep(Duration::from_millis(20));
    let log = Arc::new(ZoneLog::open_with_margin(&a._tmp.path().join("zones"), 1 << 20, Duration::ZERO).unwrap());
    let fsys = ReplicatedFs::mount(&p, MountOptions::new("activity"), None).unwrap();
    fsys.set_zone_log(Some(log.clone()));
    // The primary changes one zone of the image.
    OpenOptions::new().write(true).open(p.join("big")).unwrap().write_all_at(b"one", (5 << 20) + 10).unwrap();
    // The replica holds changes the primary never had, size and mtime kept: what a crash of the
    // node as primary leaves.
    for (f, off) in [("big", (30 << 20) + 7), ("d5/f5", 3)] {
        let path = a.replica.join(f);
        let md = fs::metadata(&path).unwrap();
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"lost", off).unwrap();
        set_mtime(&path, md.mtime(), md.mtime_nsec());
    }
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    let mut entries = basis_of(&a.replica, &fsys, Some(&log));
    // What its activity log says, as `manifest::build_listing` puts it in the listing.
    entries.get_mut(&RelPath(b"big".to_vec())).unwrap().suspect = Some(Suspect::Ranges(vec![(30 << 20, 1 << 20)]));
    entries.get_mut(&RelPath(b"d5/f5".to_vec())).unwrap().suspect = Some(Suspect::Whole);
    fsys.set_basis(Basis { entries, reuse: true, zones: Some(log.clone()), names: None }).unwrap();
    let result = fsys.full_sync(&mut |_| {}).unwrap();
    drop(fsys);
    replay(&sink.take(), &a.replica);
    let options = DiffOptions { file_mtime: true, dir_mtime: false, allocated: false };
    assert_identical(&p, &a.replica, &[], &options);
    let f5 = fs::metadata(p.join("d5/f5")).unwrap().len();
    assert_eq!(result.bytes, (2 << 20) + f5, "the primary's zone, the named zone, the file named whole: {result:?}");
    let total: u64 = walk_files(&p).iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(result.unread, total - (2 << 20) - f5, "nothing else read: {result:?}");
}

/// The replica's manifest as the daemon asks for it: with a usable zone log, block hashes only for
/// the files the catch-up will compare.
fn basis_of(
    replica: &Path,
    fsys: &ReplicatedFs,
    log: Option<&ZoneLog>,
) -> std::collections::BTreeMap<tandem_replication::op::RelPath, manifest::Entry> {
    let hash: Option<std::collections::HashSet<_>> = log
        .filter(|l| l.usable())
        .map(|l| fsys.files_to_hash(l).into_iter().map(tandem_replication::op::RelPath).collect());
    manifest::build_with(replica, hash.as_ref()).unwrap().entries
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A catch-up of a static tree sends exactly the blocks that differ, removes what the replica
/// alone holds, fixes metadata, and ends identical, allocation included.
#[test]
fn catch_up_sends_only_the_differing_blocks() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    make_tree(p);
    fs::remove_dir(&a.replica).unwrap();
    copy_tree(p, &a.replica);
    let r = &a.replica;
    // The primary moved on: one block of a 3 MiB file, a small file rewritten, a new file.
    let mut rng = Rng(99);
    OpenOptions::new().write(true).open(p.join("a/b/c/deep.bin")).unwrap().write_all_at(b"changed", 1 << 20).unwrap();
    fs::write(p.join("small.txt"), b"HELLO").unwrap();
    fs::write(p.join("new.bin"), rng.bytes(10_000)).unwrap();
    set_mtime(&p.join("small.txt"), 1_650_000_000, 0);
    // The replica has its own stale changes.
    OpenOptions::new().write(true).open(r.join("sparse")).unwrap().write_all_at(&[9u8; 4096], 20 << 20).unwrap();
    fs::create_dir_all(r.join("a/b/c/stale/x")).unwrap();
    fs::write(r.join("a/b/c/stale/x/y"), b"stale").unwrap();
    fs::write(r.join("empty/stale"), b"stale").unwrap();
    fs::remove_file(r.join("name with space/f")).unwrap();
    fs::create_dir(r.join("name with space/f")).unwrap();
    fs::set_permissions(r.join("small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&r.join("small.txt"), "user.stale", b"only on the replica");
    set_xattr(&r.join("a"), "user.dir", b"another value");

    let fsys = ReplicatedFs::mount(p, MountOptions::new("catchup-static").exclude(["*.tmp"]), None).unwrap();
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    let entries = manifest::build(r).unwrap().entries;
    fsys.set_basis(Basis { entries, reuse: true, zones: None, names: None }).unwrap();
    let result = fsys.full_sync(&mut |_| {}).unwrap();
    drop(fsys);
    println!("static catch-up: {result:?}");
    let ops = sink.take();
    replay(&ops, r);
    let exact = DiffOptions { file_mtime: true, dir_mtime: false, allocated: true };
    assert_identical(p, r, &["junk.tmp"], &exact);
    // Sent: the changed block (1 MiB), the rewritten file (5), the new one (10,000), the file
    // that was a directory there (6) and the hard-linked file, sent again (14).
    assert_eq!(result.bytes, (1 << 20) + 5 + 10_000 + 6 + 14, "{result:?}");
    // Found identical: the rest of deep.bin and the sparse file but the block punched again.
    assert_eq!(result.matched, (2 << 20) + 123 + (99 << 20), "{result:?}");
    let punches = ops.iter().filter(|o| matches!(o, Op::Fallocate { .. })).count();
    assert_eq!(punches, 1, "the stale block of the sparse file is punched");
    // Removed: the stale tree, the stale file, the directory in place of a file, junk.tmp, and
    // the names of objects re-created (three hard links, two symlinks, the fifo, the device).
    assert_eq!(result.removed, 11, "{result:?}");
}

/// A full copy asked over a kept replica (`second --fullsync`): everything is removed and sent.
#[test]
fn a_full_copy_over_a_kept_replica_replaces_everything() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    let (_, _, bytes) = make_tree(p);
    fs::remove_dir(&a.replica).unwrap();
    copy_tree(p, &a.replica);
    fs::write(a.replica.join("a/stale"), b"stale").unwrap();
    let fsys = ReplicatedFs::mount(p, MountOptions::new("catchup-full").exclude(["*.tmp"]), None).unwrap();
    let sink = RecordingSink::new();
    fsys.attach_empty_secondary(sink.clone());
    let entries = manifest::build(&a.replica).unwrap().entries;
    fsys.set_basis(Basis { entries, reuse: false, zones: None, names: None }).unwrap();
    let result = fsys.full_sync(&mut |_| {}).unwrap();
    drop(fsys);
    replay(&sink.take(), &a.replica);
    let exact = DiffOptions { file_mtime: true, dir_mtime: false, allocated: true };
    assert_identical(p, &a.replica, &["junk.tmp"], &exact);
    assert_eq!((result.bytes, result.matched, result.compared), (bytes, 0, 0), "{result:?}");
}
