//! Running a hook command: its argv from module.toml, then four arguments (hook, current state,
//! next state, action) and `graceful` or `force`; the same facts in the environment. Output goes
//! to a file rather than a pipe: a start hook that leaves a server running in the background must
//! not keep us waiting for the pipe to close. On timeout the hook's whole process group is killed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tandem_machine::{Cause, Hook, State};

/// At most this much of a hook's output is kept in the module log.
pub const OUTPUT_LIMIT: usize = 4096;

pub struct HookCall<'a> {
    pub module: &'a str,
    pub node: &'a str,
    pub hook: Hook,
    pub current: State,
    pub next: State,
    pub cause: Cause,
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub ok: bool,
    /// e.g. "exit 0 after 12 ms", "timed out after 30 s", "cannot run /x: No such file".
    pub summary: String,
    pub output: String,
}

pub async fn run_hook(argv: &[String], timeout: Duration, call: &HookCall<'_>, scratch_dir: &Path) -> HookOutcome {
    let started = Instant::now();
    let fail = |summary: String| HookOutcome { ok: false, summary, output: String::new() };
    let Some((program, args)) = argv.split_first() else {
        return fail("empty argv".into());
    };
    if let Err(e) = std::fs::create_dir_all(scratch_dir) {
        return fail(format!("cannot create {}: {e}", scratch_dir.display()));
    }
    let out_path = scratch_dir.join(format!("{}.out", call.hook.as_str()));
    let out = match std::fs::File::create(&out_path) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create {}: {e}", out_path.display())),
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot duplicate {}: {e}", out_path.display())),
    };
    let mode = if call.force { "force" } else { "graceful" };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .args([call.hook.as_str(), call.current.as_str(), call.next.as_str(), call.cause.as_str(), mode])
        .env("TANDEM_MODULE", call.module)
        .env("TANDEM_NODE", call.node)
        .env("TANDEM_HOOK", call.hook.as_str())
        .env("TANDEM_STATE", call.current.as_str())
        .env("TANDEM_NEXT_STATE", call.next.as_str())
        .env("TANDEM_ACTION", call.cause.as_str())
        .env("TANDEM_FORCE", if call.force { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {program}: {e}")),
    };
    let pid = child.id();
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let elapsed = started.elapsed().as_millis();
    let (ok, summary) = match waited {
        Ok(Ok(status)) if status.success() => (true, format!("exit 0 after {elapsed} ms")),
        Ok(Ok(status)) => (false, format!("{status} after {elapsed} ms")),
        Ok(Err(e)) => (false, format!("wait failed: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on the hook's own process group; no memory is involved.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            (false, format!("timed out after {} s: its process group was killed", timeout.as_secs_f32()))
        }
    };
    let mut output = std::fs::read(&out_path).unwrap_or_default();
    if output.len() > OUTPUT_LIMIT {
        let cut = output.len() - OUTPUT_LIMIT;
        output.drain(..cut);
    }
    HookOutcome { ok, summary, output: String::from_utf8_lossy(&output).trim().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(force: bool) -> HookCall<'static> {
        HookCall {
            module: "web",
            node: "n1",
            hook: Hook::StartPrim,
            current: State::Wait,
            next: State::Alone,
            cause: Cause::Prim,
            force,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into(), "hook".into()]
    }

    #[tokio::test]
    async fn arguments_environment_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let o = run_hook(
            &sh("echo \"$@|$TANDEM_MODULE|$TANDEM_NODE|$TANDEM_ACTION|$TANDEM_FORCE\""),
            Duration::from_secs(5),
            &call(true),
            dir.path(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.output, "start_prim WAIT ALONE prim force|web|n1|prim|1");
    }

    #[tokio::test]
    async fn failure_timeout_and_background_children() {
        let dir = tempfile::tempdir().unwrap();
        let o = run_hook(&sh("echo boom >&2; exit 3"), Duration::from_secs(5), &call(false), dir.path()).await;
        assert!(!o.ok);
        assert!(o.summary.contains("exit status: 3"), "{o:?}");
        assert_eq!(o.output, "boom");
        let t = Instant::now();
        let o = run_hook(&sh("sleep 30"), Duration::from_millis(300), &call(false), dir.path()).await;
        assert!(!o.ok && o.summary.contains("timed out"), "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // A server left running in the background does not hold the hook.
        let t = Instant::now();
        let o = run_hook(&sh("sleep 30 & echo started"), Duration::from_secs(10), &call(false), dir.path()).await;
        assert!(o.ok && o.output == "started", "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let o = run_hook(&["/nonexistent/hook".to_string()], Duration::from_secs(1), &call(false), dir.path()).await;
        assert!(!o.ok && o.summary.contains("cannot run /nonexistent/hook"), "{o:?}");
    }
}
