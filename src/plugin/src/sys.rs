//! The adapters behind the host calls, once `grants` has allowed them: running a command,
//! probing TCP and HTTP, reading and writing confined files. Each is bounded in time (by the
//! call's deadline) and in the size of what it returns.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// At most this much of a command's stdout, and as much of its stderr, is returned.
pub const COMMAND_OUTPUT_LIMIT: usize = 64 << 10;
/// At most this much of an HTTP body is returned.
pub const HTTP_BODY_LIMIT: usize = 64 << 10;
/// Files larger than this cannot be read or written by a plugin.
pub const FILE_LIMIT: usize = 1 << 20;
/// PATH of the commands a plugin runs (their environment holds nothing else).
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

/// Runs `argv` directly, in its own process group, with an empty environment but PATH, stdin
/// from /dev/null and output to unlinked files (not pipes: a command that leaves a server in the
/// background must not hold us until the server exits). On timeout the whole group is killed.
pub fn run_command(argv: &[String], timeout: Duration) -> Result<CommandOutcome, String> {
    let (program, args) = argv.split_first().ok_or("empty argv")?;
    let mut out = tempfile::tempfile().map_err(|e| format!("cannot create an output file: {e}"))?;
    let mut err = tempfile::tempfile().map_err(|e| format!("cannot create an output file: {e}"))?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id() as i32;
    let mut pause = Duration::from_millis(1);
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(s)) => break (Some(s), false),
            Ok(None) if started.elapsed() >= timeout => {
                // SAFETY: kill(2) on the command's own process group; no memory is involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("wait for {program}: {e}")),
        }
    };
    let (stdout, t1) = read_capped(&mut out, COMMAND_OUTPUT_LIMIT);
    let (stderr, t2) = read_capped(&mut err, COMMAND_OUTPUT_LIMIT);
    Ok(CommandOutcome { exit_code: status.and_then(|s| s.code()), timed_out, stdout, stderr, truncated: t1 || t2 })
}

/// The end of a file, at most `limit` bytes (the end says why a command failed), as text.
fn read_capped(f: &mut std::fs::File, limit: usize) -> (String, bool) {
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0) as usize;
    let start = len.saturating_sub(limit);
    let _ = f.seek(SeekFrom::Start(start as u64));
    let mut buf = Vec::with_capacity(len - start);
    let _ = f.take(limit as u64).read_to_end(&mut buf);
    (String::from_utf8_lossy(&buf).into_owned(), start > 0)
}

/// Connects to `address`; ok if it accepts within `timeout`.
pub fn probe_tcp(address: SocketAddr, timeout: Duration) -> Result<(), String> {
    TcpStream::connect_timeout(&address, timeout.max(Duration::from_millis(1)))
        .map(drop)
        .map_err(|e| format!("connect to {address}: {e}"))
}

/// Sends `GET path` over HTTP/1.0 and returns the status and the start of the body.
pub fn probe_http(address: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&address, left()).map_err(|e| format!("connect to {address}: {e}"))?;
    s.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: tandem-plugin\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| format!("send to {address}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Headers and the body's first HTTP_BODY_LIMIT bytes; the rest is not read.
    while buf.len() < HTTP_BODY_LIMIT + 16 * 1024 {
        s.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if Instant::now() >= deadline => return Err(format!("read from {address}: timed out ({e})")),
            Err(e) => return Err(format!("read from {address}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .filter(|_| status_line.starts_with("HTTP/"))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{address} did not answer HTTP (first line: {status_line:?})"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let body: String = body.chars().take(HTTP_BODY_LIMIT).collect();
    Ok((status, body))
}

/// The second half of file confinement: resolves symlinks in the granted directory and in the
/// path's parent, and requires the result to still be under the (resolved) granted directory.
/// Returns the resolved parent and the file name.
pub fn confine(path: &str, granted: &Path) -> Result<(PathBuf, std::ffi::OsString), String> {
    let p = Path::new(path);
    let name = p.file_name().ok_or_else(|| format!("path \"{path}\" has no file name"))?.to_os_string();
    let parent = p.parent().ok_or_else(|| format!("path \"{path}\" has no parent"))?;
    let root = granted.canonicalize().map_err(|e| format!("granted directory {}: {e}", granted.display()))?;
    let real = parent.canonicalize().map_err(|e| format!("{}: {e}", parent.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "path \"{path}\" leads outside {} (through a symlink, to {})",
            granted.display(),
            real.display()
        ));
    }
    Ok((real, name))
}

/// Reads a confined file (no symlink as its last component), up to [`FILE_LIMIT`].
pub fn read_file(dir: &Path, name: &std::ffi::OsStr) -> Result<Vec<u8>, String> {
    let path = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{}: {}", path.display(), symlink_hint(e)))?;
    let mut data = Vec::new();
    f.take(FILE_LIMIT as u64 + 1).read_to_end(&mut data).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() > FILE_LIMIT {
        return Err(format!("{} is larger than the plugin file limit ({} bytes)", path.display(), FILE_LIMIT));
    }
    Ok(data)
}

/// Writes a confined file crash-safely: a temporary file in the same directory, fsync, rename.
pub fn write_file(dir: &Path, name: &std::ffi::OsStr, data: &[u8]) -> Result<(), String> {
    if data.len() > FILE_LIMIT {
        return Err(format!("{} bytes is more than the plugin file limit ({FILE_LIMIT} bytes)", data.len()));
    }
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!("{} is a symlink: plugins do not follow them", path.display()));
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tandem-tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

fn symlink_hint(e: std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        "it is a symlink: plugins do not follow them".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn commands_environment_output_and_timeout() {
        let o =
            run_command(&sh("echo out; echo err >&2; echo \"$HOME|$PATH\"; exit 3"), Duration::from_secs(5)).unwrap();
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.stdout, format!("out\n|{COMMAND_PATH}\n"));
        assert_eq!(o.stderr, "err\n");
        assert!(!o.timed_out && !o.truncated);
        let t = Instant::now();
        let o = run_command(&sh("sleep 30"), Duration::from_millis(200)).unwrap();
        assert!(o.timed_out && o.exit_code.is_none(), "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
        // A server left in the background does not hold the call.
        let t = Instant::now();
        let o = run_command(&sh("sleep 30 & echo started"), Duration::from_secs(10)).unwrap();
        assert_eq!((o.exit_code, o.stdout.as_str()), (Some(0), "started\n"));
        assert!(t.elapsed() < Duration::from_secs(3));
        // Output beyond the cap: its end is kept.
        let o = run_command(&sh("head -c 200000 /dev/zero | tr '\\0' a; echo END"), Duration::from_secs(5)).unwrap();
        assert!(o.truncated && o.stdout.len() == COMMAND_OUTPUT_LIMIT && o.stdout.ends_with("aEND\n"));
        assert!(run_command(&["/nonexistent".into()], Duration::from_secs(1)).unwrap_err().contains("cannot run"));
    }

    #[test]
    fn http_and_tcp_probes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = c.read(&mut req).unwrap();
            let req = String::from_utf8_lossy(&req[..n]).to_string();
            c.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\ndraining").unwrap();
            req
        });
        let (status, body) = probe_http(addr, "/health?x=1", Duration::from_secs(2)).unwrap();
        assert_eq!((status, body.as_str()), (503, "draining"));
        assert!(server.join().unwrap().starts_with("GET /health?x=1 HTTP/1.0\r\n"));
        // Nobody listens any more.
        assert!(probe_tcp(addr, Duration::from_millis(500)).is_err());
        assert!(probe_http(addr, "/", Duration::from_millis(500)).is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(probe_tcp(l.local_addr().unwrap(), Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn files_do_not_escape_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let granted = root.path().join("granted");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&granted).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, granted.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), granted.join("file-link")).unwrap();
        let g = |rel: &str| format!("{}/{rel}", granted.display());
        // Through a symlinked directory.
        let e = confine(&g("link/secret"), &granted).unwrap_err();
        assert!(e.contains("leads outside"), "{e}");
        // Through a symlink as the file itself.
        let (dir, name) = confine(&g("file-link"), &granted).unwrap();
        assert!(read_file(&dir, &name).unwrap_err().contains("symlink"));
        assert!(write_file(&dir, &name, b"x").unwrap_err().contains("symlink"));
        assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "s");
        // A plain file inside: written crash-safely, read back.
        let (dir, name) = confine(&g("state"), &granted).unwrap();
        write_file(&dir, &name, b"hello").unwrap();
        assert_eq!(read_file(&dir, &name).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(&granted).unwrap().count(), 3, "no temporary file left");
        assert!(write_file(&dir, &name, &vec![0; FILE_LIMIT + 1]).unwrap_err().contains("limit"));
    }
}
