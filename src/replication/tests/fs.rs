//! The FUSE layer against a real kernel mount (needs root and /dev/fuse; skipped with a message
//! otherwise). Each test mounts over a directory holding files, runs real file operations
//! through the mount, records the emitted ops and replays them with the secondary's applier
//! into a copy of the initial directory, then compares both trees.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tandem_replication::apply::Applier;
use tandem_replication::fs::{clean_stale_mounts, ChangeObserver, MountOptions, OpSink, ReplicatedFs};
use tandem_replication::op::{AckLevel, Op};

fn fuse_available() -> bool {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        // In CI (scripts/setup.sh guarantees FUSE) a skip would pass without testing anything.
        assert!(std::env::var_os("CI").is_none(), "real FUSE tests need root and /dev/fuse");
        eprintln!("SKIPPED: real FUSE tests need root and /dev/fuse");
        return false;
    }
    true
}

/// Records every op and acknowledges at once (or after `delay`, per wait call).
#[derive(Default)]
struct RecordingSink {
    ops: Mutex<Vec<Op>>,
    delay: Duration,
    record: bool,
    count: AtomicU64,
    /// Every wait: (seq, level).
    waits: Mutex<Vec<(u64, AckLevel)>>,
}

impl RecordingSink {
    fn new() -> Arc<RecordingSink> {
        Arc::new(RecordingSink { record: true, ..Default::default() })
    }
    fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
}

impl OpSink for RecordingSink {
    fn submit(&self, op: Op) -> u64 {
        if self.record {
            self.ops.lock().unwrap().push(op);
        }
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn wait(&self, seq: u64, level: AckLevel) -> Result<(), String> {
        if self.record {
            self.waits.lock().unwrap().push((seq, level));
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        Ok(())
    }
}

/// A test area on the same disk as the repository's temp files: `primary` (mounted) and
/// `replica` (receives the replayed ops).
struct Area {
    _tmp: tempfile::TempDir,
    primary: PathBuf,
    replica: PathBuf,
}

fn area() -> Area {
    let tmp = tempfile::Builder::new().prefix("tandem-fs-").tempdir_in("/var/tmp").unwrap();
    let primary = tmp.path().join("primary");
    let replica = tmp.path().join("replica");
    fs::create_dir(&primary).unwrap();
    Area { _tmp: tmp, primary, replica }
}

/// The initial full copy (what the full synchronisation does), before the mount.
fn initial_copy(a: &Area) {
    let st = Command::new("cp").arg("-a").arg(&a.primary).arg(&a.replica).status().unwrap();
    assert!(st.success());
}

fn replay(ops: &[Op], replica: &Path) {
    let mut app = Applier::open(replica).unwrap();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = app.apply(op) {
            panic!("op #{i} {op:?} failed on the replica: {e}");
        }
    }
    assert_eq!(app.open_handles(), 0, "every handle closed");
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

/// Everything that must be equal on both copies, per relative path. Directory mtimes are not
/// replicated (each side's namespace changes stamp its own clock), nor atimes of files read.
fn snapshot(root: &Path, skip: &dyn Fn(&str) -> bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if skip(&rel) {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mut d = format!("mode={:o} uid={} gid={} xattrs={:?}", md.mode(), md.uid(), md.gid(), xattrs(&p));
            if ft.is_dir() {
                stack.push(p.clone());
            } else if ft.is_symlink() {
                d += &format!(" -> {:?}", fs::read_link(&p).unwrap());
            } else if ft.is_file() {
                let content = fs::read(&p).unwrap();
                d += &format!(
                    " nlink={} size={} blake={} mtime={}.{:09}",
                    md.nlink(),
                    md.len(),
                    blake3::hash(&content).to_hex(),
                    md.mtime(),
                    md.mtime_nsec()
                );
            } else {
                d += &format!(" rdev={}", md.rdev());
            }
            out.insert(rel, d);
        }
    }
    out
}

fn assert_same_trees(a: &Path, b: &Path, skip: &dyn Fn(&str) -> bool) {
    let (sa, sb) = (snapshot(a, skip), snapshot(b, skip));
    for (k, v) in &sa {
        assert_eq!(Some(v), sb.get(k), "{k} differs (primary: {v})");
    }
    for k in sb.keys() {
        assert!(sa.contains_key(k), "{k} only on the replica");
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn operations_replay_to_an_identical_tree() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    fs::write(p.join("old.txt"), b"hello").unwrap();
    fs::create_dir(p.join("olddir")).unwrap();
    fs::write(p.join("olddir/inner"), b"inner").unwrap();
    initial_copy(&a);

    let sink = RecordingSink::new();
    let fsys = ReplicatedFs::mount(p, MountOptions::new("ops"), Some(sink.clone())).unwrap();
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mi.lines().any(|l| l.contains(" - fuse.tandem-ops tandem-ops ")), "mount type shown");

    // Existing files stay visible.
    assert_eq!(fs::read(p.join("old.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(p.join("olddir/inner")).unwrap(), b"inner");

    // create, write, append, pwrite at offsets, truncate
    fs::write(p.join("a.txt"), b"0123456789").unwrap();
    let mut f = OpenOptions::new().append(true).open(p.join("a.txt")).unwrap();
    f.write_all(b"-appended").unwrap();
    drop(f);
    let f = OpenOptions::new().write(true).open(p.join("a.txt")).unwrap();
    f.write_all_at(b"XY", 3).unwrap();
    f.write_all_at(b"far", 100).unwrap();
    f.set_len(50).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(p.join("a.txt")).unwrap().len(), 50);
    fs::write(p.join("old.txt"), b"rewritten").unwrap(); // O_TRUNC on an existing file

    // directories, rename across directories, RENAME_NOREPLACE and RENAME_EXCHANGE
    fs::create_dir_all(p.join("d1/sub")).unwrap();
    fs::create_dir(p.join("d2")).unwrap();
    fs::write(p.join("d1/sub/f"), b"in sub").unwrap();
    fs::rename(p.join("d1/sub"), p.join("d2/moved")).unwrap();
    fs::write(p.join("d2/moved/g"), b"after move").unwrap(); // the moved directory's path is right
    fs::write(p.join("x"), b"x").unwrap();
    fs::write(p.join("y"), b"yy").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(&p.join("x")).as_ptr(),
            libc::AT_FDCWD,
            cstr(&p.join("y")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(&p.join("x")).as_ptr(),
            libc::AT_FDCWD,
            cstr(&p.join("d2/moved")).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(fs::read(p.join("d2/moved")).unwrap(), b"x");
    assert_eq!(fs::read(p.join("x/g")).unwrap(), b"after move");
    fs::rename(p.join("y"), p.join("x/y-renamed")).unwrap();
    fs::create_dir(p.join("empty")).unwrap();
    fs::create_dir(p.join("gone")).unwrap();
    fs::remove_dir(p.join("gone")).unwrap();
    assert_eq!(errno_of(fs::remove_dir(p.join("x"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(p.join("empty"))), libc::EEXIST);
    assert_eq!(errno_of(File::open(p.join("nope"))), libc::ENOENT);

    // unlink while open and keep writing; the data stays reachable through the descriptor
    let mut f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(p.join("tmpfile")).unwrap();
    f.write_all(b"before").unwrap();
    fs::remove_file(p.join("tmpfile")).unwrap();
    f.write_all(b" after unlink").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before after unlink");
    drop(f);

    // hard links (also after the first name goes) and symlinks
    fs::write(p.join("h1"), b"linked").unwrap();
    fs::hard_link(p.join("h1"), p.join("x/h2")).unwrap();
    fs::hard_link(p.join("h1"), p.join("h3")).unwrap();
    assert_eq!(fs::metadata(p.join("h3")).unwrap().nlink(), 3);
    fs::remove_file(p.join("h1")).unwrap();
    OpenOptions::new().append(true).open(p.join("h3")).unwrap().write_all(b"+more").unwrap();
    assert_eq!(fs::read(p.join("x/h2")).unwrap(), b"linked+more");
    symlink("x/h2", p.join("sl")).unwrap();
    symlink("/absolute/dangling", p.join("x/dangling")).unwrap();
    assert_eq!(fs::read(p.join("sl")).unwrap(), b"linked+more");

    // chmod, chown, times ("now" and explicit), xattrs
    fs::set_permissions(p.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(p.join("empty"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(p.join("a.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(p.join("sl"), Some(42), Some(43)).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(p.join("old.txt"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&p.join("x/h2")).as_ptr(), std::ptr::null(), 0) };
    assert_eq!(r, 0);
    assert_eq!(fs::metadata(p.join("old.txt")).unwrap().mtime(), 1_000_000_000);
    let set = |path: &Path, n: &str, v: &[u8]| {
        let n = CString::new(n).unwrap();
        let r = unsafe { libc::lsetxattr(cstr(path).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    };
    set(&p.join("a.txt"), "user.one", b"1");
    set(&p.join("a.txt"), "user.two", b"2");
    set(&p.join("x"), "user.dir", b"on a directory");
    let n = CString::new("user.two").unwrap();
    assert_eq!(unsafe { libc::removexattr(cstr(&p.join("a.txt")).as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(xattrs(&p.join("a.txt")).get(&b"user.one"[..]).map(|v| v.as_slice()), Some(&b"1"[..]));

    // sparse files, fallocate (allocate, keep size, punch a hole), fsync
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(p.join("sparse")).unwrap();
    f.write_all_at(b"end", 10 << 20).unwrap();
    f.write_all_at(&vec![7u8; 300_000], 4096).unwrap();
    let fd = f.as_raw_fd();
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 8192) }, 0);
    assert_eq!(unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 20 << 20, 4096) }, 0);
    assert_eq!(unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 8192, 65536) }, 0);
    f.sync_data().unwrap();
    drop(f);
    assert!(fs::metadata(p.join("sparse")).unwrap().blocks() * 512 < 2 << 20, "holes kept");

    // O_SYNC writes
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(p.join("osync"))
        .unwrap();
    f.write_all(b"synchronous").unwrap();
    drop(f);

    // O_DIRECT writes (aligned buffer) and a shared writable mmap flushed by msync
    let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    unsafe { std::ptr::write_bytes(buf, b'D', 8192) };
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(p.join("odirect"))
        .unwrap();
    assert_eq!(
        unsafe { libc::pwrite(f.as_raw_fd(), buf.cast(), 8192, 0) },
        8192,
        "{}",
        std::io::Error::last_os_error()
    );
    unsafe { std::alloc::dealloc(buf, layout) };
    drop(f);
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(p.join("mapped")).unwrap();
    f.set_len(3 * 4096).unwrap();
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            3 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(m, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        std::ptr::copy_nonoverlapping(b"through mmap".as_ptr(), m.cast::<u8>().add(4096 + 10), 12);
        assert_eq!(libc::msync(m, 3 * 4096, libc::MS_SYNC), 0);
        libc::munmap(m, 3 * 4096);
    }
    drop(f);
    assert_eq!(&fs::read(p.join("mapped")).unwrap()[4106..4118], b"through mmap");

    // a file and a directory created by another user get that user's owner
    fs::create_dir(p.join("shared")).unwrap();
    fs::set_permissions(p.join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg("umask 027 && echo by-user > userfile && mkdir userdir")
        .current_dir(p.join("shared"))
        .uid(1000)
        .gid(1000)
        .status()
        .unwrap();
    assert!(st.success());
    let md = fs::metadata(p.join("shared/userfile")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1000, 1000, 0o640));
    let md = fs::metadata(p.join("shared/userdir")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1000, 1000, 0o750));
    // permission checks are the kernel's (default_permissions): another user cannot write here
    let st = Command::new("sh").arg("-c").arg("echo no > a.txt").current_dir(p).uid(1001).gid(1001).status().unwrap();
    assert!(!st.success());

    // a FIFO
    assert_eq!(unsafe { libc::mkfifo(cstr(&p.join("fifo")).as_ptr(), 0o600) }, 0);

    // a bigger file in several writes
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(p.join("big"), &big).unwrap();
    assert_eq!(fs::read(p.join("big")).unwrap(), big);

    let ops = sink.ops();
    assert!(ops.iter().any(|o| matches!(o, Op::Create { uid: 1000, gid: 1000, .. })));
    assert!(ops.iter().any(|o| matches!(o, Op::Mkdir { uid: 1000, gid: 1000, .. })));
    assert!(ops.iter().any(|o| matches!(o, Op::Rename { flags, .. } if *flags == libc::RENAME_EXCHANGE)));
    assert!(ops.iter().any(|o| matches!(o, Op::Fsync { fh: Some(_), .. })));
    assert!(
        !ops.iter().any(|o| matches!(o, Op::Rename { flags, .. } if *flags == libc::RENAME_NOREPLACE)),
        "a failed rename emits nothing"
    );
    // Writes of O_SYNC and O_DIRECT files are acknowledged Durable, plain ones Written.
    let waits = sink.waits.lock().unwrap().clone();
    let level_of_write_to = |name: &[u8]| {
        let fh = ops.iter().find_map(|o| match o {
            Op::Create { fh, path, .. } if path.0 == name => Some(*fh),
            _ => None,
        });
        let seq = ops.iter().position(|o| matches!(o, Op::Write { fh: f, .. } if Some(*f) == fh)).unwrap() as u64 + 1;
        waits.iter().filter(|(s, _)| *s == seq).map(|(_, l)| *l).max()
    };
    assert_eq!(level_of_write_to(b"osync"), Some(AckLevel::Durable));
    assert_eq!(level_of_write_to(b"odirect"), Some(AckLevel::Durable));
    assert_eq!(level_of_write_to(b"a.txt"), Some(AckLevel::Written));
    let fsync_seq = ops.iter().position(|o| matches!(o, Op::Fsync { .. })).unwrap() as u64 + 1;
    assert!(waits.contains(&(fsync_seq, AckLevel::Durable)));
    // The kernel sends RELEASE after close(2) has returned, so the last handle may still be closing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fsys.open_files() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fsys.open_files(), 0, "every handle released");
    fsys.unmount().unwrap();

    replay(&ops, &a.replica);
    assert_same_trees(&a.primary, &a.replica, &|_| false);
}

#[test]
fn exclusions_are_local_only_and_renames_across_them_stay_consistent() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    fs::write(p.join("keep"), b"keep").unwrap();
    initial_copy(&a);
    let sink = RecordingSink::new();
    let opts = MountOptions::new("excl").exclude(["*.tmp", "cache/**"]);
    let fsys = ReplicatedFs::mount(p, opts, Some(sink.clone())).unwrap();

    fs::write(p.join("scratch.tmp"), b"never replicated").unwrap();
    fs::create_dir(p.join("cache")).unwrap();
    fs::write(p.join("cache/blob"), b"cached").unwrap();
    fs::create_dir(p.join("cache/deeper")).unwrap();
    fs::write(p.join("cache/deeper/x"), b"x").unwrap();
    let n = ops_mentioning(&sink.ops(), &["scratch.tmp", "cache/"]);
    assert_eq!(n, 0, "excluded paths emit nothing");

    // Write-to-temp-then-rename, the usual atomic save: the secondary gets the whole file.
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(p.join("doc.tmp")).unwrap();
    f.write_all(b"first part").unwrap();
    let t = std::time::UNIX_EPOCH + Duration::new(1_500_000_000, 5);
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
    fs::rename(p.join("doc.tmp"), p.join("doc")).unwrap();
    // The descriptor opened under the excluded name keeps writing: now replicated.
    f.write_all(b", second part").unwrap();
    drop(f);
    assert_eq!(fs::read(p.join("doc")).unwrap(), b"first part, second part");

    // Replicated → excluded: it disappears from the secondary.
    fs::write(p.join("old"), b"old").unwrap();
    fs::rename(p.join("old"), p.join("old.tmp")).unwrap();

    // A whole excluded directory (with an excluded file inside) comes in by rename, with a
    // hard link pair, a symlink and a sparse file.
    fs::create_dir(p.join("build.tmp")).unwrap();
    fs::create_dir(p.join("build.tmp/sub")).unwrap();
    fs::write(p.join("build.tmp/sub/out"), b"output").unwrap();
    fs::hard_link(p.join("build.tmp/sub/out"), p.join("build.tmp/out-link")).unwrap();
    fs::write(p.join("build.tmp/inner.tmp"), b"excluded inside").unwrap();
    symlink("sub/out", p.join("build.tmp/sl")).unwrap();
    let f = File::create(p.join("build.tmp/sparse")).unwrap();
    f.write_all_at(b"tail", 5 << 20).unwrap();
    drop(f);
    let name = CString::new("user.k").unwrap();
    let r = unsafe {
        libc::setxattr(cstr(&p.join("build.tmp/sub/out")).as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0)
    };
    assert_eq!(r, 0);
    fs::rename(p.join("build.tmp"), p.join("build")).unwrap();

    // And a replicated directory going out by RENAME_EXCHANGE with an excluded one.
    fs::create_dir(p.join("live")).unwrap();
    fs::write(p.join("live/a"), b"a").unwrap();
    fs::create_dir(p.join("swap.tmp")).unwrap();
    fs::write(p.join("swap.tmp/b"), b"b").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(&p.join("live")).as_ptr(),
            libc::AT_FDCWD,
            cstr(&p.join("swap.tmp")).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());

    // An excluded file gets a replicated hard link: the secondary gets a copy.
    fs::write(p.join("src.tmp"), b"linked from excluded").unwrap();
    fs::hard_link(p.join("src.tmp"), p.join("dst")).unwrap();

    fsys.unmount().unwrap();
    let ops = sink.ops();
    replay(&ops, &a.replica);
    let skip = |rel: &str| rel.ends_with(".tmp") || rel.contains(".tmp/") || rel.starts_with("cache/");
    // nlink differs by design for the copied hard link of an excluded file: compare the rest.
    let (sa, sb) = (snapshot(&a.primary, &skip), snapshot(&a.replica, &skip));
    let strip = |s: &String| s.split(' ').filter(|w| !w.starts_with("nlink=")).collect::<Vec<_>>().join(" ");
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (k, v) in &sa {
        assert_eq!(strip(v), strip(&sb[k]), "{k} differs");
    }
    assert!(a.replica.join("cache").is_dir() && fs::read_dir(a.replica.join("cache")).unwrap().count() == 0);
    assert!(!a.replica.join("old").exists());
    assert_eq!(fs::read(a.replica.join("doc")).unwrap(), b"first part, second part");
    assert_eq!(fs::metadata(a.replica.join("build/sub/out")).unwrap().nlink(), 2, "hard links inside a copied tree");
    assert_eq!(fs::read(a.replica.join("live/b")).unwrap(), b"b");
}

fn op_paths(op: &Op) -> Vec<&[u8]> {
    match op {
        Op::Open { path, .. }
        | Op::Create { path, .. }
        | Op::TruncatePath { path, .. }
        | Op::Mknod { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Unlink { path }
        | Op::Rmdir { path }
        | Op::Symlink { path, .. }
        | Op::Chmod { path, .. }
        | Op::Chown { path, .. }
        | Op::SetTimes { path, .. }
        | Op::SetXattr { path, .. }
        | Op::RemoveXattr { path, .. } => vec![&path.0],
        Op::Link { from, to } | Op::Rename { from, to, .. } => vec![&from.0, &to.0],
        _ => vec![],
    }
}

fn ops_mentioning(ops: &[Op], needles: &[&str]) -> usize {
    ops.iter()
        .filter(|o| op_paths(o).iter().any(|p| needles.iter().any(|n| String::from_utf8_lossy(p).contains(n))))
        .count()
}

#[test]
fn alone_then_attached_and_observed() {
    if !fuse_available() {
        return;
    }
    struct Seen(Mutex<Vec<Op>>);
    impl ChangeObserver for Seen {
        fn on_local_change(&self, op: &Op) {
            self.0.lock().unwrap().push(op.clone());
        }
    }
    let a = area();
    let p = &a.primary;
    let fsys = ReplicatedFs::mount(p, MountOptions::new("alone"), None).unwrap();
    let seen = Arc::new(Seen(Mutex::new(Vec::new())));
    fsys.set_observer(Some(seen.clone()));
    fs::write(p.join("while-alone"), b"1").unwrap();
    let mut held = OpenOptions::new().create(true).truncate(true).write(true).open(p.join("held-open")).unwrap();
    held.write_all(b"written alone, ").unwrap();
    assert!(!fsys.has_sink());
    // close() does not wait for FUSE's release: let the first file's release arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fsys.open_files() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sink = RecordingSink::new();
    fsys.set_sink(Some(sink.clone()));
    held.write_all(b"then replicated").unwrap();
    drop(held);
    fs::create_dir(p.join("while-prim")).unwrap();
    drop(fsys); // unmount on drop
    let ops = sink.ops();
    // The handle opened while ALONE is opened on the secondary first, then used.
    assert!(
        matches!(&ops[0], Op::Open { path, flags, .. } if path.0 == b"held-open" && *flags == libc::O_WRONLY),
        "{ops:?}"
    );
    assert!(matches!(&ops[1], Op::Write { offset: 15, .. }), "{ops:?}");
    assert!(matches!(ops.last().unwrap(), Op::Mkdir { path, .. } if path.0 == b"while-prim"), "{ops:?}");
    assert!(!ops.iter().any(|o| op_paths(o).contains(&&b"while-alone"[..])), "{ops:?}");
    let seen = seen.0.lock().unwrap();
    assert!(seen.iter().any(|o| matches!(o, Op::Create { path, .. } if path.0 == b"while-alone")));
    assert!(seen.iter().any(|o| matches!(o, Op::Mkdir { .. })));
    assert_eq!(fs::read(p.join("while-alone")).unwrap(), b"1", "the data stays after unmount");
}

#[test]
fn slow_acknowledgements_do_not_serialise_concurrent_writers() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = a.primary.clone();
    for i in 0..8 {
        fs::write(p.join(format!("f{i}")), b"").unwrap();
    }
    let sink = Arc::new(RecordingSink { delay: Duration::from_millis(200), ..Default::default() });
    let fsys = ReplicatedFs::mount(&p, MountOptions::new("slow"), Some(sink.clone())).unwrap();
    // Open first (an open for writing is not acknowledged, so this is quick).
    let files: Vec<File> =
        (0..8).map(|i| OpenOptions::new().write(true).open(p.join(format!("f{i}"))).unwrap()).collect();
    let barrier = Arc::new(Barrier::new(8));
    let start = Instant::now();
    let threads: Vec<_> = files
        .into_iter()
        .map(|f| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                f.write_all_at(&[1u8; 65536], 0).unwrap();
                f
            })
        })
        .collect();
    let files: Vec<File> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let took = start.elapsed();
    println!("8 concurrent writers, 200 ms acknowledgement each: {took:?}");
    assert!(took < Duration::from_millis(700), "writers were serialised: {took:?}");
    drop(files);
    fsys.unmount().unwrap();
}

#[test]
fn stale_mount_of_a_crashed_daemon_is_cleaned() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    fs::write(p.join("data"), b"underneath").unwrap();
    // A "crashed daemon": a tandem FUSE mount whose server is gone (its /dev/fuse closed).
    let crash = |p: &Path| {
        let dev = fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
        let data = CString::new(format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd())).unwrap();
        let r = unsafe {
            libc::mount(
                c"tandem-crashed".as_ptr(),
                cstr(p).as_ptr(),
                c"fuse.tandem-crashed".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        drop(dev);
    };
    crash(p);
    assert_eq!(errno_of(fs::metadata(p.join("data"))), libc::ENOTCONN);
    // Another kind of mount at the same place is left alone.
    assert_eq!(clean_stale_mounts(Path::new("/var/tmp")).unwrap(), 0);
    assert_eq!(clean_stale_mounts(p).unwrap(), 1);
    assert_eq!(fs::read(p.join("data")).unwrap(), b"underneath");
    assert_eq!(clean_stale_mounts(p).unwrap(), 0);

    // Two stacked crashes, cleaned by the next mount itself.
    crash(p);
    crash(p);
    let fsys = ReplicatedFs::mount(p, MountOptions::new("again"), None).unwrap();
    assert_eq!(fs::read(p.join("data")).unwrap(), b"underneath");
    fsys.unmount().unwrap();
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&format!(" {} ", p.display())), "nothing left mounted");
}

#[test]
fn busy_mount_unmounts_without_hanging() {
    if !fuse_available() {
        return;
    }
    let a = area();
    let p = &a.primary;
    let fsys = ReplicatedFs::mount(p, MountOptions::new("busy"), None).unwrap();
    let held = File::create(p.join("held")).unwrap();
    let start = Instant::now();
    fsys.unmount().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(held);
    assert!(p.join("held").exists(), "the file is in the underlying directory");
}

/// Not an assertion: prints sequential 1 MiB write throughput through the mount (sink acking at
/// once), through bindfs (a plain FUSE passthrough) if installed, and to the plain directory.
/// Kept light for the CI suite (256 MiB per target; fio and bindfs optional, skipped with a
/// note when absent); the real benchmark is docs/benchmarks.md's.
#[test]
#[ignore = "a throughput measurement, not a check: run with --ignored --nocapture"]
fn throughput_of_sequential_1mib_writes() {
    if !fuse_available() {
        return;
    }
    const TOTAL: usize = 256 << 20;
    // Two figures per target: the writes alone (page cache: the layer's own cost shows) and
    // writes plus the final fsync (the disk dominates).
    let run = |dir: &Path, label: &str| {
        let path = dir.join(format!("seq-{label}"));
        let buf = vec![0x5au8; 1 << 20];
        let start = Instant::now();
        let mut f = File::create(&path).unwrap();
        for _ in 0..TOTAL / buf.len() {
            f.write_all(&buf).unwrap();
        }
        let written = start.elapsed().as_secs_f64();
        f.sync_all().unwrap();
        let secs = start.elapsed().as_secs_f64();
        drop(f);
        fs::remove_file(&path).unwrap();
        let mbs = TOTAL as f64 / secs / 1e6;
        println!(
            "{label:>8}: {:6.0} MB/s writes only, {mbs:6.0} MB/s with the final fsync ({} MiB)",
            TOTAL as f64 / written / 1e6,
            TOTAL >> 20
        );
        mbs
    };
    // 4 KiB random writes with an fsync after each (fio, if installed): IOPS and p99 latency.
    let fio = |dir: &Path, label: &str| {
        if !Path::new("/usr/bin/fio").exists() {
            println!("{label:>8}: fio not installed (apt-get install fio) — 4k randwrite+fsync skipped");
            return;
        }
        let out = Command::new("fio")
            .args(["--name=randfsync", "--rw=randwrite", "--bs=4k", "--size=32M", "--fsync=1", "--runtime=4"])
            .args(["--time_based", "--ioengine=psync", "--group_reporting"])
            .arg(format!("--directory={}", dir.display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let iops = text.lines().find(|l| l.contains("IOPS=")).map(str::trim).unwrap_or("?");
        let p99 = text.lines().find(|l| l.contains("99.00th")).map(str::trim).unwrap_or("?");
        let unit = text.lines().find(|l| l.contains("clat percentiles")).map(str::trim).unwrap_or("");
        println!("{label:>8}: 4k randwrite+fsync: {iops}\n{:>10}{unit} {p99}", "");
        let _ = fs::remove_file(dir.join("randfsync.0.0"));
    };
    let a = area();
    let plain = run(&a.primary, "plain");
    fio(&a.primary, "plain");
    {
        let sink = Arc::new(RecordingSink::default()); // counts, does not keep the data
        let fsys = ReplicatedFs::mount(&a.primary, MountOptions::new("bench"), Some(sink.clone())).unwrap();
        let t = run(&a.primary, "tandem");
        fio(&a.primary, "tandem");
        println!("{:>8}  {:.2}x of plain with fsync, {} ops", "", t / plain, sink.count.load(Ordering::SeqCst));
        fsys.unmount().unwrap();
    }
    if Path::new("/usr/bin/bindfs").exists() {
        let mnt = a.primary.parent().unwrap().join("bindfs");
        fs::create_dir(&mnt).unwrap();
        let ok = Command::new("bindfs").arg(&a.primary).arg(&mnt).status().map(|s| s.success()).unwrap_or(false);
        if ok {
            let b = run(&mnt, "bindfs");
            fio(&mnt, "bindfs");
            println!("{:>8}  {:.2}x of plain with fsync", "", b / plain);
            let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
        }
    } else {
        println!("bindfs not installed (apt-get install bindfs) — skipped");
    }
}
