//! The replicated operations: what the primary's file system layer emits, in the order it applied
//! them locally, and what the secondary applies in the same order. Pure data.
//!
//! Files are named by their path relative to the replicated directory, except writes, which go
//! through handles: an application may keep writing to a file after it was renamed or unlinked,
//! so the secondary keeps the same file open under the same handle until `Close`.

use serde::{Deserialize, Serialize};

/// A handle the primary gives to each replicated open file (never reused within a stream).
pub type Handle = u64;

/// A path relative to the replicated directory, as raw bytes (Linux paths need not be UTF-8).
/// The secondary rejects absolute paths, `..` components, empty components and NUL bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelPath(pub Vec<u8>);

/// A time as set on the primary; `Now` is resolved there so both copies hold the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Omit,
    At { sec: i64, nsec: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Open an existing file for writing (flags: the O_* access and status flags that matter:
    /// O_WRONLY/O_RDWR, O_APPEND, O_TRUNC).
    Open {
        fh: Handle,
        path: RelPath,
        flags: i32,
    },
    /// Create (O_CREAT, with O_EXCL if the primary used it) and open.
    Create {
        fh: Handle,
        path: RelPath,
        flags: i32,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Close {
        fh: Handle,
    },
    /// `data` is `serde_bytes`: the same postcard encoding as a `Vec<u8>`, but encoded and decoded
    /// as one slice instead of byte by byte (about 50 times faster on 1 MiB writes).
    Write {
        fh: Handle,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// ftruncate through a handle.
    Truncate {
        fh: Handle,
        size: u64,
    },
    /// truncate by path (setattr size without a handle).
    TruncatePath {
        path: RelPath,
        size: u64,
    },
    Fallocate {
        fh: Handle,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// fsync/fdatasync of one handle; `None`: sync the whole replicated directory (syncfs).
    Fsync {
        fh: Option<Handle>,
        datasync: bool,
    },
    Mknod {
        path: RelPath,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        path: RelPath,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Unlink {
        path: RelPath,
    },
    Rmdir {
        path: RelPath,
    },
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Link {
        from: RelPath,
        to: RelPath,
    },
    /// renameat2 flags: RENAME_NOREPLACE, RENAME_EXCHANGE.
    Rename {
        from: RelPath,
        to: RelPath,
        flags: u32,
    },
    Chmod {
        path: RelPath,
        mode: u32,
    },
    Chown {
        path: RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    SetTimes {
        path: RelPath,
        atime: TimeSet,
        mtime: TimeSet,
    },
    SetXattr {
        path: RelPath,
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        path: RelPath,
        name: Vec<u8>,
    },
}

/// How far an operation has gone on the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AckLevel {
    /// In the secondary's memory.
    Received,
    /// Applied to the secondary's file system.
    Written,
    /// Applied and fsync'd.
    Durable,
}
