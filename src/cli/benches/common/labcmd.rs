//! Commands inside lab nodes with a timeout (`labcmd::output_in`, `labcmd::run_in`), and the
//! text of their output for error messages.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_lab::Lab;

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Runs a command in a node with a timeout; returns its output whatever its exit code (stdout
/// and stderr go through files, so a large output cannot block the child).
pub fn output_in(lab: &Lab, node: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
    let dir = std::env::temp_dir();
    let tag = format!("tandem-bench-{}-{}", std::process::id(), unique("out"));
    let (out_p, err_p) = (dir.join(format!("{tag}.out")), dir.join(format!("{tag}.err")));
    let spawned = lab
        .command(node, argv)?
        .stdin(Stdio::null())
        .stdout(File::create(&out_p)?)
        .stderr(File::create(&err_p)?)
        .spawn()
        .with_context(|| format!("running {argv:?} in {node}"));
    let cleanup = || {
        let _ = fs::remove_file(&out_p);
        let _ = fs::remove_file(&err_p);
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let end = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            cleanup();
            bail!("{argv:?} in {node} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let o =
        Output { status, stdout: fs::read(&out_p).unwrap_or_default(), stderr: fs::read(&err_p).unwrap_or_default() };
    cleanup();
    Ok(o)
}

/// Like `output_in`, but an exit code outside `ok` is an error.
pub fn run_in(lab: &Lab, node: &str, argv: &[&str], ok: &[i32], timeout: Duration) -> Result<Output> {
    let o = output_in(lab, node, argv, timeout)?;
    match o.status.code() {
        Some(c) if ok.contains(&c) => Ok(o),
        _ => bail!("{argv:?} in {node}: {}", text(&o)),
    }
}

/// `sh -c script` in a node; its stdout. A non-zero exit is an error.
pub fn sh_in(lab: &Lab, node: &str, script: &str, timeout: Duration) -> Result<String> {
    let o = run_in(lab, node, &["sh", "-c", script], &[0], timeout)?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Exit status, stdout and stderr (each cut at 2000 characters), for error messages.
pub fn text(o: &Output) -> String {
    let mut s = format!("{}", o.status);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if !out.trim().is_empty() {
        let _ = write!(s, "; stdout: {}", out.trim().chars().take(2000).collect::<String>());
    }
    if !err.trim().is_empty() {
        let _ = write!(s, "; stderr: {}", err.trim().chars().take(2000).collect::<String>());
    }
    s
}
