//! The secondary's applier on temporary directories: every operation, and the paths it refuses.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tandem_replication::apply::{validate, Applier, ApplyError};
use tandem_replication::op::{Op, RelPath, TimeSet};

fn p(s: &str) -> RelPath {
    RelPath(s.as_bytes().to_vec())
}

fn setup() -> (tempfile::TempDir, Applier) {
    let d = tempfile::tempdir().unwrap();
    let a = Applier::open(d.path()).unwrap();
    (d, a)
}

const O_WRONLY: i32 = 0o1;
const O_RDWR: i32 = 0o2;
const O_CREAT: i32 = 0o100;
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;
const O_APPEND: i32 = 0o2000;

fn create(a: &mut Applier, fh: u64, path: &str) {
    a.apply(&Op::Create { fh, path: p(path), flags: O_WRONLY | O_CREAT, mode: 0o640, uid: 1234, gid: 5678 }).unwrap();
}

fn write(a: &mut Applier, fh: u64, offset: u64, data: &[u8]) {
    a.apply(&Op::Write { fh, offset, data: data.to_vec() }).unwrap();
}

/// The value of xattr `name`, following a final symlink or not.
fn getx(path: impl AsRef<Path>, name: &str, nofollow: bool) -> rustix::io::Result<Vec<u8>> {
    let mut v = vec![0u8; 65536];
    let n = if nofollow {
        rustix::fs::lgetxattr(path.as_ref(), name, &mut v)?
    } else {
        rustix::fs::getxattr(path.as_ref(), name, &mut v)?
    };
    v.truncate(n);
    Ok(v)
}

fn read(d: &Path, path: &str) -> Vec<u8> {
    fs::read(d.join(path)).unwrap()
}

#[test]
fn create_write_close_keeps_mode_and_owner() {
    let (d, mut a) = setup();
    create(&mut a, 1, "f");
    write(&mut a, 1, 0, b"hello");
    write(&mut a, 1, 5, b" world");
    a.apply(&Op::Close { fh: 1 }).unwrap();
    assert_eq!(read(d.path(), "f"), b"hello world");
    let m = fs::metadata(d.path().join("f")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640, "mode is the primary's, not our umask's");
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(a.open_handles(), 0);
}

#[test]
fn create_existing_without_excl_opens_it() {
    let (d, mut a) = setup();
    fs::write(d.path().join("f"), b"old content").unwrap();
    fs::set_permissions(d.path().join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    a.apply(&Op::Create { fh: 1, path: p("f"), flags: O_RDWR | O_CREAT, mode: 0o777, uid: 1, gid: 1 }).unwrap();
    write(&mut a, 1, 0, b"NEW");
    assert_eq!(read(d.path(), "f"), b"NEW content");
    // O_CREAT on an existing file changes neither mode nor owner.
    assert_eq!(fs::metadata(d.path().join("f")).unwrap().mode() & 0o777, 0o600);
    let e = a.apply(&Op::Create { fh: 2, path: p("f"), flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o777, uid: 1, gid: 1 });
    assert!(matches!(e, Err(ApplyError::Os { op: "create", .. })), "{e:?}");
    a.apply(&Op::Create { fh: 3, path: p("f"), flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o777, uid: 1, gid: 1 })
        .unwrap();
    assert_eq!(read(d.path(), "f"), b"");
}

#[test]
fn open_with_trunc_and_append() {
    let (d, mut a) = setup();
    fs::write(d.path().join("f"), b"0123456789").unwrap();
    a.apply(&Op::Open { fh: 1, path: p("f"), flags: O_WRONLY | O_APPEND }).unwrap();
    // Writes carry the primary's offset: O_APPEND must not move them to the end.
    write(&mut a, 1, 2, b"ab");
    assert_eq!(read(d.path(), "f"), b"01ab456789");
    a.apply(&Op::Open { fh: 2, path: p("f"), flags: O_WRONLY | O_TRUNC }).unwrap();
    assert_eq!(read(d.path(), "f"), b"");
    let e = a.apply(&Op::Open { fh: 2, path: p("f"), flags: O_WRONLY });
    assert!(matches!(e, Err(ApplyError::HandleInUse { fh: 2, .. })), "{e:?}");
    let e = a.apply(&Op::Open { fh: 3, path: p("missing"), flags: O_WRONLY });
    let err = e.unwrap_err();
    assert_eq!(err.os_error().unwrap().raw_os_error(), Some(2), "{err}");
    assert!(err.to_string().contains("open missing"), "{err}");
}

#[test]
fn write_to_unlinked_open_handle() {
    let (d, mut a) = setup();
    create(&mut a, 1, "f");
    a.apply(&Op::Link { from: p("f"), to: p("g") }).unwrap();
    a.apply(&Op::Unlink { path: p("f") }).unwrap();
    write(&mut a, 1, 0, b"still here");
    a.apply(&Op::Fsync { fh: Some(1), datasync: false }).unwrap();
    a.apply(&Op::Close { fh: 1 }).unwrap();
    assert!(!d.path().join("f").exists());
    assert_eq!(read(d.path(), "g"), b"still here");

    // Fully unlinked: writes go to the orphan inode, no error.
    create(&mut a, 2, "h");
    a.apply(&Op::Unlink { path: p("h") }).unwrap();
    write(&mut a, 2, 0, b"gone");
    a.apply(&Op::Close { fh: 2 }).unwrap();
    assert!(!d.path().join("h").exists());
}

#[test]
fn truncate_by_handle_and_path() {
    let (d, mut a) = setup();
    create(&mut a, 1, "f");
    write(&mut a, 1, 0, b"0123456789");
    a.apply(&Op::Truncate { fh: 1, size: 4 }).unwrap();
    assert_eq!(read(d.path(), "f"), b"0123");
    a.apply(&Op::TruncatePath { path: p("f"), size: 6 }).unwrap();
    assert_eq!(read(d.path(), "f"), b"0123\0\0");
}

#[test]
fn sparse_writes_and_punch_hole() {
    let (d, mut a) = setup();
    create(&mut a, 1, "sparse");
    write(&mut a, 1, 10 << 20, b"end");
    let m = fs::metadata(d.path().join("sparse")).unwrap();
    assert_eq!(m.len(), (10 << 20) + 3);
    assert!(m.blocks() * 512 < 1 << 20, "the hole is not allocated: {} blocks", m.blocks());

    create(&mut a, 2, "dense");
    write(&mut a, 2, 0, &vec![0xAA; 1 << 20]);
    // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    a.apply(&Op::Fallocate { fh: 2, mode: 0x02 | 0x01, offset: 4096, len: 65536 }).unwrap();
    let data = read(d.path(), "dense");
    assert_eq!(data.len(), 1 << 20);
    assert!(data[4096..4096 + 65536].iter().all(|&b| b == 0));
    assert_eq!(data[4095], 0xAA);
    assert_eq!(data[4096 + 65536], 0xAA);
    // Plain preallocation extends the size.
    a.apply(&Op::Fallocate { fh: 2, mode: 0, offset: 0, len: 2 << 20 }).unwrap();
    assert_eq!(fs::metadata(d.path().join("dense")).unwrap().len(), 2 << 20);
}

#[test]
fn directories_and_nodes() {
    let (d, mut a) = setup();
    a.apply(&Op::Mkdir { path: p("a"), mode: 0o2750, uid: 7, gid: 8 }).unwrap();
    a.apply(&Op::Mkdir { path: p("a/b"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    let m = fs::metadata(d.path().join("a")).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o2750);
    assert_eq!((m.uid(), m.gid()), (7, 8));
    a.apply(&Op::Mknod { path: p("a/fifo"), mode: 0o010600, rdev: 0, uid: 3, gid: 4 }).unwrap();
    let m = fs::symlink_metadata(d.path().join("a/fifo")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.uid(), 3);
    a.apply(&Op::Mknod { path: p("a/reg"), mode: 0o100644, rdev: 0, uid: 0, gid: 0 }).unwrap();
    assert!(fs::symlink_metadata(d.path().join("a/reg")).unwrap().is_file());
    a.apply(&Op::Unlink { path: p("a/fifo") }).unwrap();
    a.apply(&Op::Rmdir { path: p("a/b") }).unwrap();
    assert!(!d.path().join("a/b").exists());
    // A directory the primary removed (so it was empty there) that still holds a stale tree
    // here, from before a catch-up: the tree goes with it, symlinks not followed.
    a.apply(&Op::Mkdir { path: p("a/s"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    a.apply(&Op::Mkdir { path: p("a/s/t"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    fs::write(d.path().join("a/s/t/f"), b"stale").unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), b"outside").unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("a/s/out")).unwrap();
    a.apply(&Op::Rmdir { path: p("a") }).unwrap();
    assert!(!d.path().join("a").exists());
    assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"outside");
}

#[test]
fn rename_across_directories_noreplace_and_exchange() {
    let (d, mut a) = setup();
    a.apply(&Op::Mkdir { path: p("x"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    a.apply(&Op::Mkdir { path: p("y"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    create(&mut a, 1, "x/one");
    write(&mut a, 1, 0, b"1");
    create(&mut a, 2, "y/two");
    write(&mut a, 2, 0, b"2");
    a.apply(&Op::Rename { from: p("x/one"), to: p("y/uno"), flags: 0 }).unwrap();
    assert_eq!(read(d.path(), "y/uno"), b"1");
    assert!(!d.path().join("x/one").exists());
    // The handle follows the inode, not the name.
    write(&mut a, 1, 1, b"!");
    assert_eq!(read(d.path(), "y/uno"), b"1!");
    // RENAME_NOREPLACE
    let e = a.apply(&Op::Rename { from: p("y/uno"), to: p("y/two"), flags: 1 }).unwrap_err();
    assert_eq!(e.os_error().unwrap().raw_os_error(), Some(17), "EEXIST: {e}");
    // RENAME_EXCHANGE
    a.apply(&Op::Rename { from: p("y/uno"), to: p("y/two"), flags: 2 }).unwrap();
    assert_eq!(read(d.path(), "y/uno"), b"2");
    assert_eq!(read(d.path(), "y/two"), b"1!");
    // A directory moves with its content.
    a.apply(&Op::Rename { from: p("y"), to: p("x/y"), flags: 0 }).unwrap();
    assert_eq!(read(d.path(), "x/y/two"), b"1!");
}

#[test]
fn hard_links_and_symlinks() {
    let (d, mut a) = setup();
    create(&mut a, 1, "f");
    a.apply(&Op::Link { from: p("f"), to: p("f2") }).unwrap();
    assert_eq!(fs::metadata(d.path().join("f")).unwrap().ino(), fs::metadata(d.path().join("f2")).unwrap().ino());
    a.apply(&Op::Symlink { path: p("s"), target: b"/etc/passwd".to_vec(), uid: 42, gid: 43 }).unwrap();
    assert_eq!(fs::read_link(d.path().join("s")).unwrap().to_str().unwrap(), "/etc/passwd");
    let m = fs::symlink_metadata(d.path().join("s")).unwrap();
    assert_eq!((m.uid(), m.gid()), (42, 43));
    // A hard link to a symlink links the symlink itself.
    a.apply(&Op::Link { from: p("s"), to: p("s2") }).unwrap();
    assert!(fs::symlink_metadata(d.path().join("s2")).unwrap().file_type().is_symlink());
    let e = a.apply(&Op::Symlink { path: p("bad"), target: b"a\0b".to_vec(), uid: 0, gid: 0 });
    assert!(matches!(e, Err(ApplyError::InvalidPath { .. })), "{e:?}");
}

#[test]
fn chmod_chown_times() {
    let (d, mut a) = setup();
    create(&mut a, 1, "f");
    a.apply(&Op::Chmod { path: p("f"), mode: 0o4711 }).unwrap();
    assert_eq!(fs::metadata(d.path().join("f")).unwrap().mode() & 0o7777, 0o4711);
    a.apply(&Op::Chown { path: p("f"), uid: Some(10), gid: None }).unwrap();
    let m = fs::metadata(d.path().join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (10, 5678));
    // As on the primary, chown cleared the set-uid bit.
    assert_eq!(m.mode() & 0o7777, 0o711);
    a.apply(&Op::Chmod { path: p("f"), mode: 0o4711 }).unwrap();
    a.apply(&Op::Chown { path: p("f"), uid: None, gid: Some(11) }).unwrap();
    assert_eq!(fs::metadata(d.path().join("f")).unwrap().gid(), 11);
    a.apply(&Op::SetTimes {
        path: p("f"),
        atime: TimeSet::At { sec: 1_000_000, nsec: 5 },
        mtime: TimeSet::At { sec: 2_000_000, nsec: 123_456_789 },
    })
    .unwrap();
    let m = fs::metadata(d.path().join("f")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000, 5));
    assert_eq!((m.mtime(), m.mtime_nsec()), (2_000_000, 123_456_789));
    a.apply(&Op::SetTimes { path: p("f"), atime: TimeSet::Omit, mtime: TimeSet::At { sec: 3, nsec: 0 } }).unwrap();
    let m = fs::metadata(d.path().join("f")).unwrap();
    assert_eq!((m.atime(), m.mtime()), (1_000_000, 3), "Omit leaves atime alone");

    // On a symlink: times and owner change the link itself, chmod is a no-op, the target is
    // untouched.
    a.apply(&Op::Symlink { path: p("s"), target: b"f".to_vec(), uid: 0, gid: 0 }).unwrap();
    a.apply(&Op::SetTimes { path: p("s"), atime: TimeSet::Omit, mtime: TimeSet::At { sec: 77, nsec: 0 } }).unwrap();
    a.apply(&Op::Chown { path: p("s"), uid: Some(99), gid: Some(99) }).unwrap();
    a.apply(&Op::Chmod { path: p("s"), mode: 0o600 }).unwrap();
    let l = fs::symlink_metadata(d.path().join("s")).unwrap();
    assert_eq!((l.mtime(), l.uid()), (77, 99));
    let m = fs::metadata(d.path().join("f")).unwrap();
    assert_eq!((m.mtime(), m.uid(), m.mode() & 0o7777), (3, 10, 0o4711 & !0o4000));

    // The root itself (empty path).
    a.apply(&Op::Chmod { path: p(""), mode: 0o711 }).unwrap();
    a.apply(&Op::SetTimes { path: p(""), atime: TimeSet::Omit, mtime: TimeSet::At { sec: 5, nsec: 0 } }).unwrap();
    let m = fs::metadata(d.path()).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 5));
}

#[test]
fn xattrs_user_namespace() {
    let (d, mut a) = setup();
    create(&mut a, 1, "f");
    a.apply(&Op::Mkdir { path: p("dir"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    for path in ["f", "dir", ""] {
        a.apply(&Op::SetXattr { path: p(path), name: b"user.k".to_vec(), value: b"v1".to_vec(), flags: 0 }).unwrap();
        let full = d.path().join(path);
        assert_eq!(getx(&full, "user.k", false).unwrap(), b"v1");
        // XATTR_CREATE on an existing name fails.
        let e = a.apply(&Op::SetXattr { path: p(path), name: b"user.k".to_vec(), value: b"v2".to_vec(), flags: 1 });
        assert!(e.is_err());
        // XATTR_REPLACE
        a.apply(&Op::SetXattr { path: p(path), name: b"user.k".to_vec(), value: b"v2".to_vec(), flags: 2 }).unwrap();
        assert_eq!(getx(&full, "user.k", false).unwrap(), b"v2");
        a.apply(&Op::RemoveXattr { path: p(path), name: b"user.k".to_vec() }).unwrap();
        assert!(getx(&full, "user.k", false).is_err());
    }
    // trusted.* xattrs apply to the symlink itself, never to its target.
    a.apply(&Op::Symlink { path: p("s"), target: b"f".to_vec(), uid: 0, gid: 0 }).unwrap();
    a.apply(&Op::SetXattr { path: p("s"), name: b"trusted.t".to_vec(), value: b"x".to_vec(), flags: 0 }).unwrap();
    assert_eq!(getx(d.path().join("s"), "trusted.t", true).unwrap(), b"x");
    assert!(getx(d.path().join("f"), "trusted.t", false).is_err());
}

#[test]
fn fsync_variants_and_durability_tracking() {
    let (_d, mut a) = setup();
    assert!(a.is_clean());
    create(&mut a, 1, "f");
    write(&mut a, 1, 0, b"x");
    assert!(!a.is_clean());
    a.apply(&Op::Fsync { fh: Some(1), datasync: true }).unwrap();
    assert!(a.is_clean(), "after an fsync everything before it is durable");
    write(&mut a, 1, 1, b"y");
    a.apply(&Op::Fsync { fh: None, datasync: false }).unwrap();
    assert!(a.is_clean());
    write(&mut a, 1, 2, b"z");
    a.sync().unwrap();
    assert!(a.is_clean());
    let e = a.apply(&Op::Fsync { fh: Some(9), datasync: false });
    assert!(matches!(e, Err(ApplyError::UnknownHandle { fh: 9, .. })), "{e:?}");
    let e = a.apply(&Op::Close { fh: 9 });
    assert!(matches!(e, Err(ApplyError::UnknownHandle { fh: 9, .. })), "{e:?}");
    let e = a.apply(&Op::Write { fh: 9, offset: 0, data: vec![1] });
    assert!(matches!(e, Err(ApplyError::UnknownHandle { fh: 9, .. })), "{e:?}");
}

#[test]
fn invalid_paths_refused() {
    for bad in ["/abs", "a/../b", "..", ".", "a//b", "a/", "a/./b", "a\0b"] {
        assert!(validate(&p(bad)).is_err(), "{bad:?}");
    }
    for good in ["", "a", "a/b", "..a", "a..", ".hidden", "a/b.c/d"] {
        assert!(validate(&p(good)).is_ok(), "{good:?}");
    }
    let (_d, mut a) = setup();
    let e = a.apply(&Op::Mkdir { path: p("../escape"), mode: 0o755, uid: 0, gid: 0 }).unwrap_err();
    assert!(matches!(e, ApplyError::InvalidPath { op: "mkdir", .. }), "{e:?}");
    assert!(e.to_string().contains("../escape"), "{e}");
    let e = a.apply(&Op::Create { fh: 1, path: p("/etc/x"), flags: O_CREAT, mode: 0o644, uid: 0, gid: 0 });
    assert!(matches!(e, Err(ApplyError::InvalidPath { .. })), "{e:?}");
    let e = a.apply(&Op::SetXattr { path: p("f"), name: vec![], value: vec![], flags: 0 });
    assert!(matches!(e, Err(ApplyError::InvalidPath { .. })), "{e:?}");
}

#[test]
fn symlinks_never_lead_out_of_the_root() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim"), b"safe").unwrap();
    let (d, mut a) = setup();
    // A symlink planted in the replica, pointing out of it (to a directory and to a file).
    std::os::unix::fs::symlink(outside.path(), d.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("victim"), d.path().join("vlink")).unwrap();
    // ... also a relative one that climbs.
    std::os::unix::fs::symlink("../../../../../../../../..", d.path().join("up")).unwrap();
    let through_dir = [
        Op::Create { fh: 1, path: p("out/new"), flags: O_CREAT, mode: 0o644, uid: 0, gid: 0 },
        Op::Open { fh: 1, path: p("out/victim"), flags: O_WRONLY | O_TRUNC },
        Op::Unlink { path: p("out/victim") },
        Op::Mkdir { path: p("up/tmp/x"), mode: 0o755, uid: 0, gid: 0 },
        Op::Chmod { path: p("out/victim"), mode: 0o777 },
        Op::SetXattr { path: p("out/victim"), name: b"user.x".to_vec(), value: vec![], flags: 0 },
        Op::TruncatePath { path: p("out/victim"), size: 0 },
        Op::Rename { from: p("out/victim"), to: p("stolen"), flags: 0 },
        Op::Link { from: p("out/victim"), to: p("stolen") },
    ];
    for op in through_dir {
        assert!(a.apply(&op).is_err(), "{op:?} must fail");
    }
    // Final-component symlinks are not followed either.
    assert!(a.apply(&Op::Open { fh: 2, path: p("vlink"), flags: O_WRONLY | O_TRUNC }).is_err());
    assert!(a.apply(&Op::TruncatePath { path: p("vlink"), size: 0 }).is_err());
    a.apply(&Op::Chmod { path: p("vlink"), mode: 0o777 }).unwrap();
    a.apply(&Op::SetTimes { path: p("vlink"), atime: TimeSet::Omit, mtime: TimeSet::At { sec: 1, nsec: 0 } }).unwrap();
    a.apply(&Op::Chown { path: p("vlink"), uid: Some(5), gid: Some(5) }).unwrap();
    // Renaming or unlinking the symlink acts on the link, not on its target.
    a.apply(&Op::Rename { from: p("vlink"), to: p("vlink2"), flags: 0 }).unwrap();
    a.apply(&Op::Unlink { path: p("vlink2") }).unwrap();
    let m = fs::metadata(outside.path().join("victim")).unwrap();
    assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"safe");
    assert_ne!(m.mode() & 0o777, 0o777);
    assert_ne!(m.mtime(), 1);
    assert_ne!(m.uid(), 5);
    assert!(!outside.path().join("new").exists());
}

/// An fsync makes durable exactly what changed (files, then the directories that name them) and
/// falls back to syncfs only for what cannot be synced by name, a whole-replica sync, or too much.
#[test]
fn fsync_syncs_what_changed_and_falls_back_to_syncfs_only_when_it_must() {
    let (d, mut a) = setup();
    a.apply(&Op::Mkdir { path: p("dir"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    create(&mut a, 1, "dir/f");
    write(&mut a, 1, 0, b"data");
    a.apply(&Op::Close { fh: 1 }).unwrap();
    create(&mut a, 2, "g");
    write(&mut a, 2, 0, b"more");
    a.apply(&Op::Rename { from: p("dir/f"), to: p("h"), flags: 0 }).unwrap();
    a.apply(&Op::Chmod { path: p("h"), mode: 0o600 }).unwrap();
    a.apply(&Op::SetXattr { path: p("dir"), name: b"user.k".to_vec(), value: b"v".to_vec(), flags: 0 }).unwrap();
    assert!(!a.is_clean());
    a.apply(&Op::Fsync { fh: Some(2), datasync: false }).unwrap();
    assert!(a.is_clean());
    assert_eq!(a.whole_syncs(), 0, "everything here can be synced by name");
    assert_eq!(read(d.path(), "h"), b"data");

    // A symlink's owner cannot be synced by name: syncfs.
    a.apply(&Op::Symlink { path: p("l"), target: b"h".to_vec(), uid: 0, gid: 0 }).unwrap();
    a.apply(&Op::Chown { path: p("l"), uid: Some(7), gid: None }).unwrap();
    a.apply(&Op::Fsync { fh: Some(2), datasync: true }).unwrap();
    assert_eq!(a.whole_syncs(), 1);
    // A name changed and then renamed away: syncfs rather than miss it.
    a.apply(&Op::Chmod { path: p("h"), mode: 0o644 }).unwrap();
    a.apply(&Op::Rename { from: p("h"), to: p("dir/h2"), flags: 0 }).unwrap();
    a.apply(&Op::Fsync { fh: Some(2), datasync: false }).unwrap();
    assert_eq!(a.whole_syncs(), 2);
    // The primary asks for the whole replica.
    a.apply(&Op::Fsync { fh: None, datasync: false }).unwrap();
    assert_eq!(a.whole_syncs(), 3);
    // Too many changes to track one by one.
    for i in 0..1100u64 {
        create(&mut a, 100 + i, &format!("dir/many{i}"));
        a.apply(&Op::Close { fh: 100 + i }).unwrap();
    }
    a.apply(&Op::Fsync { fh: Some(2), datasync: false }).unwrap();
    assert_eq!(a.whole_syncs(), 4);
    assert!(a.is_clean());
}

/// A rename over a directory that is empty on the primary but holds a stale tree here (a
/// catch-up in progress) replaces it; RENAME_NOREPLACE still refuses an existing target.
#[test]
fn rename_over_a_stale_tree_replaces_it() {
    let (d, mut a) = setup();
    a.apply(&Op::Mkdir { path: p("new"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    a.apply(&Op::Mkdir { path: p("old"), mode: 0o755, uid: 0, gid: 0 }).unwrap();
    fs::create_dir_all(d.path().join("old/x/y")).unwrap();
    fs::write(d.path().join("old/x/y/z"), b"stale").unwrap();
    let e = a.apply(&Op::Rename { from: p("new"), to: p("old"), flags: 1 }).unwrap_err();
    assert_eq!(e.os_error().unwrap().raw_os_error(), Some(17), "EEXIST: {e}");
    a.apply(&Op::Rename { from: p("new"), to: p("old"), flags: 0 }).unwrap();
    assert!(!d.path().join("new").exists());
    assert_eq!(fs::read_dir(d.path().join("old")).unwrap().count(), 0);
}

/// A Ready secondary's applier records what it applies in the activity log installed in its
/// slot (durably, before the write), and nothing while the slot is empty.
#[test]
fn the_activity_log_in_the_slot_records_what_is_applied() {
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, RwLock};
    use tandem_replication::activity::ActivityLog;
    use tandem_replication::zonelog::Tracked;
    let (d, mut a) = setup();
    let slot: tandem_replication::apply::ActivitySlot = Arc::new(RwLock::new(None));
    a.set_activity(slot.clone());
    create(&mut a, 1, "before");
    write(&mut a, 1, 0, b"no log yet");
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("activity.log");
    let root: OwnedFd = fs::File::open(d.path()).unwrap().into();
    let al = ActivityLog::start(&path, 4 << 20, std::time::Duration::from_secs(3600), vec![root]).unwrap();
    *slot.write().unwrap() = Some(al.clone());
    create(&mut a, 2, "after");
    write(&mut a, 2, (9 << 20) + 5, b"recorded");
    write(&mut a, 1, 3, b"recorded too");
    a.apply(&Op::Truncate { fh: 2, size: 100 }).unwrap();
    let key = |f: &str| {
        let m = fs::metadata(d.path().join(f)).unwrap();
        (m.dev(), m.ino())
    };
    // Read back as a crash would leave it.
    let r = ActivityLog::read(&path).unwrap();
    assert_eq!(r.files.get(&key("before")), Some(&Tracked::Ranges(vec![(0, 4 << 20)])));
    assert_eq!(r.files.get(&key("after")), Some(&Tracked::Whole), "a truncation marks it whole");
    assert_eq!(r.files.len(), 2);
    al.remove().unwrap();
}
