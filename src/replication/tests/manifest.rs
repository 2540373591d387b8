//! Manifests and their differences on temporary trees.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use tandem_replication::manifest::{build, diff, diff_with, DiffOptions, Difference, Kind, Side, BLOCK_SIZE};
use tandem_replication::op::RelPath;

fn p(s: &str) -> RelPath {
    RelPath(s.as_bytes().to_vec())
}

fn setx(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn set_mtime(path: &Path, sec: i64) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: sec, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: sec, tv_nsec: 0 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// A tree with one of everything, identical each time it is built.
fn tree(root: &Path) {
    fs::create_dir(root.join("d")).unwrap();
    fs::create_dir(root.join("d/e")).unwrap();
    fs::write(root.join("small"), b"hello").unwrap();
    let big: Vec<u8> = (0..(3 * BLOCK_SIZE + 100)).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("d/big"), &big).unwrap();
    fs::hard_link(root.join("d/big"), root.join("d/e/big-link")).unwrap();
    symlink("../small", root.join("d/link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(5 * BLOCK_SIZE).unwrap();
    drop(f);
    setx(&root.join("small"), "user.a", b"1");
    setx(&root.join("d"), "user.dir", b"x");
    fs::set_permissions(root.join("small"), fs::Permissions::from_mode(0o640)).unwrap();
    for e in ["small", "d/big", "d/link", "dangling", "fifo", "sparse"] {
        set_mtime(&root.join(e), 1_000_000);
    }
}

#[test]
fn identical_trees_have_identical_manifests() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    tree(a.path());
    tree(b.path());
    let ma = build(a.path()).unwrap();
    let mb = build(b.path()).unwrap();
    assert_eq!(diff(&ma, &mb), vec![]);

    let e = &ma.entries[&p("d/big")];
    assert_eq!(e.kind, Kind::File);
    assert_eq!(e.blocks.len(), 4);
    assert_eq!(e.hash, Some(*blake3::hash(&fs::read(a.path().join("d/big")).unwrap()).as_bytes()));
    assert_eq!(e.link_group, Some(p("d/big")));
    assert_eq!(ma.entries[&p("d/e/big-link")].link_group, Some(p("d/big")));
    assert_eq!(ma.entries[&p("small")].link_group, None);
    assert_eq!(ma.entries[&p("d/link")].symlink_target.as_deref(), Some(&b"../small"[..]));
    assert_eq!(ma.entries[&p("fifo")].kind, Kind::Fifo);
    assert_eq!(ma.entries[&p("d")].xattrs.get(&b"user.dir"[..]).map(|v| &v[..]), Some(&b"x"[..]));
    assert_eq!(ma.entries[&p("")].kind, Kind::Dir, "the root is an entry");
    // Holes hash as zeros, and are not allocated.
    let sp = &ma.entries[&p("sparse")];
    assert_eq!(sp.blocks, vec![*blake3::hash(&vec![0u8; BLOCK_SIZE as usize]).as_bytes(); 5]);
    assert_eq!(sp.hash, Some(*blake3::hash(&vec![0u8; 5 * BLOCK_SIZE as usize]).as_bytes()));
    // The symlinks were not followed: no entry under the dangling link, the walk stayed inside.
    assert!(ma.entries.keys().all(|k| !k.0.starts_with(b"dangling/")));
}

#[test]
fn sparse_and_dense_copies_compare_equal_unless_asked() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let f = fs::File::create(a.path().join("f")).unwrap();
    f.set_len(2 * BLOCK_SIZE + 10).unwrap();
    fs::write(b.path().join("f"), vec![0u8; 2 * BLOCK_SIZE as usize + 10]).unwrap();
    for d in [a.path(), b.path()] {
        set_mtime(&d.join("f"), 5);
    }
    let (ma, mb) = (build(a.path()).unwrap(), build(b.path()).unwrap());
    assert_eq!(diff(&ma, &mb), vec![]);
    let d = diff_with(&ma, &mb, &DiffOptions { allocated: true, ..DiffOptions::default() });
    assert!(matches!(&d[..], [Difference::Allocated { a: 0, .. }]), "{d:?}");
}

#[test]
fn each_difference_is_named() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    tree(a.path());
    tree(b.path());
    let bp = b.path();
    // Content: change block 2 only (keep size and mtime).
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(bp.join("d/big")).unwrap();
        f.write_all_at(b"X", 2 * BLOCK_SIZE + 5).unwrap();
        set_mtime(&bp.join("d/big"), 1_000_000);
    }
    fs::set_permissions(bp.join("small"), fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&bp.join("small"), 1_000_000);
    std::os::unix::fs::lchown(bp.join("dangling"), Some(12), Some(34)).unwrap();
    fs::remove_file(bp.join("d/link")).unwrap();
    symlink("../other", bp.join("d/link")).unwrap();
    set_mtime(&bp.join("d/link"), 1_000_000);
    fs::remove_file(bp.join("fifo")).unwrap();
    fs::write(bp.join("extra"), b"").unwrap();
    setx(&bp.join("small"), "user.a", b"2");
    setx(&bp.join("small"), "user.b", b"");
    set_mtime(&bp.join("sparse"), 2_000_000);
    // Break the hard link: same content, but two inodes.
    fs::remove_file(bp.join("d/e/big-link")).unwrap();
    fs::copy(bp.join("d/big"), bp.join("d/e/big-link")).unwrap();
    set_mtime(&bp.join("d/e/big-link"), 1_000_000);
    // Kind: a file where a directory was is reported once, not per child.
    let d = diff(&build(a.path()).unwrap(), &build(bp).unwrap());
    let text: Vec<String> = d.iter().map(|x| x.to_string()).collect();
    let expect = [
        Difference::Content { path: p("d/big"), blocks: vec![2] },
        Difference::HardLinks { path: p("d/big"), a: Some(p("d/big")), b: None },
        Difference::Content { path: p("d/e/big-link"), blocks: vec![2] },
        Difference::HardLinks { path: p("d/e/big-link"), a: Some(p("d/big")), b: None },
        Difference::SymlinkTarget { path: p("d/link"), a: b"../small".to_vec(), b: b"../other".to_vec() },
        Difference::Owner { path: p("dangling"), a: (0, 0), b: (12, 34) },
        Difference::Only { path: p("extra"), side: Side::B, kind: Kind::File },
        Difference::Only { path: p("fifo"), side: Side::A, kind: Kind::Fifo },
        Difference::Mode { path: p("small"), a: 0o640, b: 0o600 },
        Difference::Xattr {
            path: p("small"),
            name: b"user.a".to_vec(),
            a: Some(b"1".to_vec()),
            b: Some(b"2".to_vec()),
        },
        Difference::Xattr { path: p("small"), name: b"user.b".to_vec(), a: None, b: Some(vec![]) },
        Difference::Mtime {
            path: p("sparse"),
            a: tandem_replication::manifest::Time { sec: 1_000_000, nsec: 0 },
            b: tandem_replication::manifest::Time { sec: 2_000_000, nsec: 0 },
        },
    ];
    // The copied big-link has the primary's content except block 2 of the original, which the
    // copy carries too: only the link group and block 2 relative to A differ.
    for e in &expect {
        assert!(d.contains(e), "missing {e:?} in:\n{}", text.join("\n"));
    }
    // Nothing else but directory-level noise that the defaults exclude.
    assert_eq!(d.len(), expect.len(), "unexpected extra differences:\n{}", text.join("\n"));
    assert!(text.iter().any(|t| t == "d/big: content differs in blocks [2] of 1024 KiB"), "{text:?}");
    assert!(text.iter().any(|t| t == "fifo: Fifo missing on B"), "{text:?}");
    assert!(text.iter().any(|t| t == "small: mode differs: 0640 vs 0600"), "{text:?}");
}

#[test]
fn size_and_kind_changes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fs::write(a.path().join("f"), vec![1u8; (2 * BLOCK_SIZE) as usize]).unwrap();
    fs::write(b.path().join("f"), vec![1u8; (3 * BLOCK_SIZE + 1) as usize]).unwrap();
    fs::create_dir(a.path().join("x")).unwrap();
    fs::write(b.path().join("x"), b"").unwrap();
    for d in [a.path(), b.path()] {
        set_mtime(&d.join("f"), 1);
    }
    let d = diff(&build(a.path()).unwrap(), &build(b.path()).unwrap());
    assert_eq!(
        d,
        vec![
            Difference::Size { path: p("f"), a: 2 * BLOCK_SIZE, b: 3 * BLOCK_SIZE + 1 },
            Difference::Content { path: p("f"), blocks: vec![2, 3] },
            Difference::Kind { path: p("x"), a: Kind::Dir, b: Kind::File },
        ]
    );
    assert_eq!(d[1].to_string(), "f: content differs in blocks [2-3] of 1024 KiB");
    // Directory mtimes are compared only on request.
    let d2 = diff_with(
        &build(a.path()).unwrap(),
        &build(b.path()).unwrap(),
        &DiffOptions { dir_mtime: true, ..DiffOptions::default() },
    );
    assert!(d2.len() >= d.len());
    let _ = fs::metadata(a.path()).unwrap().mtime();
}
