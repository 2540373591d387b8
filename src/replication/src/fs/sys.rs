//! Thin, safe wrappers over the raw `*at` system calls the FUSE layer needs.
//!
//! Every path here is relative to a directory file descriptor opened *before* the FUSE mount was
//! stacked on the replicated directory: a walk that starts from that descriptor begins on the
//! underlying file system, so the layer never re-enters its own mount. The results carry the raw
//! errno so that the application sees exactly the error the local file system gave.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A raw errno from a failed system call, passed back to the application unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

pub type SysResult<T> = Result<T, Errno>;

/// Retries on EINTR: a signal to the daemon must never surface as an error to the application.
fn cvt(mut f: impl FnMut() -> libc::c_int) -> SysResult<libc::c_int> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r);
        }
        let e = Errno::last();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

fn cvt_size(mut f: impl FnMut() -> libc::ssize_t) -> SysResult<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = Errno::last();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

/// A relative path as a C string; the root itself is ".". A NUL inside a name cannot come from the
/// kernel, but refusing it keeps this total.
pub fn cpath(rel: &[u8]) -> SysResult<CString> {
    if rel.is_empty() {
        return Ok(c".".to_owned());
    }
    CString::new(rel).map_err(|_| Errno(libc::EINVAL))
}

pub fn open_path_dir(path: &CStr) -> SysResult<OwnedFd> {
    let fd = cvt(|| unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn open(path: &CStr, flags: i32) -> SysResult<OwnedFd> {
    let fd = cvt(|| unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn openat(dir: BorrowedFd<'_>, rel: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let fd =
        cvt(|| unsafe { libc::openat(dir.as_raw_fd(), rel.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn fstatat(dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(|| unsafe { libc::fstatat(dir.as_raw_fd(), rel.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(|| unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn mkdirat(dir: BorrowedFd<'_>, rel: &CStr, mode: u32) -> SysResult<()> {
    cvt(|| unsafe { libc::mkdirat(dir.as_raw_fd(), rel.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, rel: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    cvt(|| unsafe { libc::mknodat(dir.as_raw_fd(), rel.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, rel: &CStr, flags: i32) -> SysResult<()> {
    cvt(|| unsafe { libc::unlinkat(dir.as_raw_fd(), rel.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(dir: BorrowedFd<'_>, from: &CStr, to: &CStr, flags: u32) -> SysResult<()> {
    let d = dir.as_raw_fd();
    cvt(|| unsafe { libc::renameat2(d, from.as_ptr(), d, to.as_ptr(), flags) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<()> {
    cvt(|| unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), rel.as_ptr()) }).map(drop)
}

pub fn linkat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> SysResult<()> {
    let d = dir.as_raw_fd();
    cvt(|| unsafe { libc::linkat(d, from.as_ptr(), d, to.as_ptr(), 0) }).map(drop)
}

pub fn readlinkat(dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n =
        cvt_size(|| unsafe { libc::readlinkat(dir.as_raw_fd(), rel.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(buf)
}

/// `uid`/`gid` of `u32::MAX` (-1) leave that id unchanged, as chown(2) does.
pub fn fchownat(dir: BorrowedFd<'_>, rel: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    cvt(|| unsafe { libc::fchownat(dir.as_raw_fd(), rel.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    cvt(|| unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub fn fchmodat(dir: BorrowedFd<'_>, rel: &CStr, mode: u32) -> SysResult<()> {
    cvt(|| unsafe { libc::fchmodat(dir.as_raw_fd(), rel.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    cvt(|| unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

pub fn utimensat(dir: BorrowedFd<'_>, rel: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    cvt(|| unsafe { libc::utimensat(dir.as_raw_fd(), rel.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

pub fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    cvt(|| unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
    cvt(|| unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
    let len = i64::try_from(len).map_err(|_| Errno(libc::EFBIG))?;
    cvt(|| unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    if datasync {
        cvt(|| unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(drop)
    } else {
        cvt(|| unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
    }
}

/// Reads up to `buf.len()` bytes at `offset`, looping over short reads until EOF.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let off = i64::try_from(offset + done as u64).map_err(|_| Errno(libc::EINVAL))?;
        let n = cvt_size(|| unsafe {
            libc::pread(fd.as_raw_fd(), buf[done..].as_mut_ptr().cast(), buf.len() - done, off)
        })?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Writes all of `data` at `offset`. On an error after a partial write, returns what was written
/// (the application sees a short write, as it would locally); an error with nothing written is
/// returned as such.
pub fn pwrite_full(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < data.len() {
        let off = i64::try_from(offset + done as u64).map_err(|_| Errno(libc::EFBIG))?;
        match cvt_size(|| unsafe { libc::pwrite(fd.as_raw_fd(), data[done..].as_ptr().cast(), data.len() - done, off) })
        {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(|| unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn faccessat(dir: BorrowedFd<'_>, rel: &CStr, mask: i32) -> SysResult<()> {
    cvt(|| unsafe { libc::faccessat(dir.as_raw_fd(), rel.as_ptr(), mask, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// One directory entry: name, `d_type` and the underlying inode number.
pub struct DirEntry {
    pub name: Vec<u8>,
    pub d_type: u8,
    pub ino: u64,
}

/// Reads a whole directory (opened by the caller) into memory. A snapshot taken at opendir gives
/// stable offsets for the kernel's successive readdir calls whatever changes meanwhile.
pub fn read_dir(fd: OwnedFd) -> SysResult<Vec<DirEntry>> {
    let raw: RawFd = std::os::fd::IntoRawFd::into_raw_fd(fd);
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let e = Errno::last();
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    let result = loop {
        // readdir signals the end and errors both with NULL; errno tells them apart.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            break if e == 0 { Ok(()) } else { Err(Errno(e)) };
        }
        let ent = unsafe { &*ent };
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes().to_vec();
        out.push(DirEntry { name, d_type: ent.d_type, ino: ent.d_ino });
    };
    unsafe { libc::closedir(dir) };
    result.map(|()| out)
}

/// Extended attributes have no `*at` calls before Linux 6.13, so they go through
/// `/proc/self/fd/<root>/<rel>`: the magic link jumps to the underlying directory (not to the
/// mount stacked on it) and the walk continues from there. The `l*` variants act on a final
/// symlink itself; the root is reached through the magic link, so it must be followed.
pub struct XattrPath {
    path: CString,
    follow: bool,
}

impl XattrPath {
    pub fn new(root: RawFd, rel: &[u8]) -> SysResult<XattrPath> {
        let mut p = format!("/proc/self/fd/{root}").into_bytes();
        if !rel.is_empty() {
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        Ok(XattrPath { path: CString::new(p).map_err(|_| Errno(libc::EINVAL))?, follow: rel.is_empty() })
    }

    pub fn set(&self, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
        let (p, n, v, l) = (self.path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len());
        cvt(|| unsafe {
            if self.follow {
                libc::setxattr(p, n, v, l, flags)
            } else {
                libc::lsetxattr(p, n, v, l, flags)
            }
        })
        .map(drop)
    }

    pub fn remove(&self, name: &CStr) -> SysResult<()> {
        let (p, n) = (self.path.as_ptr(), name.as_ptr());
        cvt(|| unsafe {
            if self.follow {
                libc::removexattr(p, n)
            } else {
                libc::lremovexattr(p, n)
            }
        })
        .map(drop)
    }

    /// With `size == 0` returns the value's length only (the FUSE size query).
    pub fn get(&self, name: &CStr, size: usize) -> SysResult<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let (p, n) = (self.path.as_ptr(), name.as_ptr());
        let ptr = if size == 0 { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
        let len = cvt_size(|| unsafe {
            if self.follow {
                libc::getxattr(p, n, ptr, size)
            } else {
                libc::lgetxattr(p, n, ptr, size)
            }
        })?;
        if size == 0 {
            buf.resize(len, 0);
            return Ok(buf);
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// The whole value, whatever its size (for the full copy of a file).
    pub fn get_all(&self, name: &CStr) -> SysResult<Vec<u8>> {
        loop {
            let len = self.get(name, 0)?.len();
            match self.get(name, len.max(1)) {
                Err(Errno(libc::ERANGE)) => continue,
                Ok(mut v) if len == 0 => {
                    v.clear();
                    return Ok(v);
                }
                other => return other,
            }
        }
    }

    pub fn list(&self, size: usize) -> SysResult<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let p = self.path.as_ptr();
        let ptr = if size == 0 { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
        let len = cvt_size(|| unsafe {
            if self.follow {
                libc::listxattr(p, ptr, size)
            } else {
                libc::llistxattr(p, ptr, size)
            }
        })?;
        if size == 0 {
            buf.resize(len, 0);
            return Ok(buf);
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// All attribute names (for the full copy of a file).
    pub fn names(&self) -> SysResult<Vec<Vec<u8>>> {
        let list = loop {
            let len = self.list(0)?.len();
            if len == 0 {
                return Ok(Vec::new());
            }
            match self.list(len) {
                Err(Errno(libc::ERANGE)) => continue,
                other => break other?,
            }
        };
        Ok(list.split(|b| *b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect())
    }
}

pub fn umount2(path: &CStr, flags: i32) -> SysResult<()> {
    cvt(|| unsafe { libc::umount2(path.as_ptr(), flags) }).map(drop)
}

pub fn mount(source: &CStr, target: &CStr, fstype: &CStr, flags: libc::c_ulong, data: &CStr) -> SysResult<()> {
    cvt(|| unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) })
        .map(drop)
}
