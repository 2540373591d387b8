//! Running a hook command: its argv from module.toml, then four arguments (hook, current state,
//! next state, action) and `graceful` or `force`; the same facts in the environment. Output goes
//! to a file rather than a pipe: a start hook that leaves a server running in the background must
//! not keep us waiting for the pipe to close. On timeout the hook's whole process group is killed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tandem_config::{HookPoint, ModuleConfig};
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

// ---------------------------------------------------------------------------------------------
// Hooks and custom checks of a module's WASM plugin (`plugin` in module.toml). One plugin host
// per daemon; each module's plugin is compiled (or taken from `<state>/plugin-cache`) at its first
// use and kept for the life of the daemon. A call runs on a blocking thread: it is bounded by its
// own deadline, and a trap or a limit is a failed hook, never a panic of the daemon.

static PLUGIN_HOST: std::sync::OnceLock<Result<tandem_plugin::Host, String>> = std::sync::OnceLock::new();
type Loaded = std::collections::HashMap<String, std::sync::Arc<tandem_plugin::Plugin>>;
static PLUGINS: std::sync::Mutex<Option<Loaded>> = std::sync::Mutex::new(None);

/// The module's plugin, loaded once. `module_dir` is `<state>/modules/<name>`.
pub fn plugin_of(cfg: &ModuleConfig, module_dir: &Path) -> Result<std::sync::Arc<tandem_plugin::Plugin>, String> {
    let path = cfg.plugin.as_ref().ok_or_else(|| format!("module {} has no plugin", cfg.name))?;
    let mut loaded = PLUGINS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = loaded.get_or_insert_with(Default::default).get(&cfg.name) {
        return Ok(p.clone());
    }
    let cache = module_dir.parent().and_then(Path::parent).map(|state| state.join("plugin-cache"));
    // Without a usable cache directory plugins still run: they are compiled at each daemon start.
    let host = PLUGIN_HOST.get_or_init(|| {
        tandem_plugin::Host::new(cache).or_else(|_| tandem_plugin::Host::new(None)).map_err(|e| e.to_string())
    });
    let host = host.as_ref().map_err(|e| e.clone())?;
    let plugin = std::sync::Arc::new(host.load(path, tandem_plugin::Grants::of(cfg)).map_err(|e| e.to_string())?);
    loaded.get_or_insert_with(Default::default).insert(cfg.name.clone(), plugin.clone());
    Ok(plugin)
}

/// Calls the hook of the module's plugin; the same outcome as a hook command: `output` holds what
/// the plugin did (host calls, denials, log lines), `; `-separated.
pub async fn run_plugin_hook(
    cfg: &ModuleConfig,
    module_dir: &Path,
    timeout: Duration,
    call: &HookCall<'_>,
) -> HookOutcome {
    let started = Instant::now();
    let Some(point) = HookPoint::ALL.into_iter().find(|p| p.key() == call.hook.as_str()) else {
        return HookOutcome { ok: false, summary: format!("no hook point {}", call.hook), output: String::new() };
    };
    let input = tandem_plugin::HookInput {
        module: call.module.to_string(),
        node: call.node.to_string(),
        current: call.current.as_str().to_string(),
        next: call.next.as_str().to_string(),
        action: call.cause.as_str().to_string(),
        force: call.force,
    };
    // Loading (a compilation at the first call) and the call both block: not on a runtime thread.
    let (cfg, dir) = (cfg.clone(), module_dir.to_path_buf());
    let call = tokio::task::spawn_blocking(move || plugin_of(&cfg, &dir).map(|p| p.hook(point, &input, timeout)));
    let report = match call.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return HookOutcome { ok: false, summary: format!("cannot load the plugin: {e}"), output: String::new() }
        }
        Err(e) => return HookOutcome { ok: false, summary: format!("plugin call lost: {e}"), output: String::new() },
    };
    let ms = started.elapsed().as_millis();
    let (ok, summary) = match &report.result {
        Ok(Ok(())) => (true, format!("plugin ok after {ms} ms")),
        Ok(Err(m)) => (false, format!("plugin failed after {ms} ms: {m}")),
        Err(e) => (false, format!("plugin {e}")),
    };
    HookOutcome { ok, summary, output: plugin_events(&report.events) }
}

/// Calls the custom check `checker` of the module's plugin: `Some(true)` up, `Some(false)` down,
/// `None` unknown; with the message (and what the plugin did). A trap or a timeout is down.
pub async fn run_plugin_check(
    cfg: &ModuleConfig,
    module_dir: &Path,
    checker: &str,
    timeout: Duration,
) -> (Option<bool>, String) {
    let (cfg, dir, name) = (cfg.clone(), module_dir.to_path_buf(), checker.to_string());
    let call = tokio::task::spawn_blocking(move || plugin_of(&cfg, &dir).map(|p| p.check(&name, timeout)));
    let report = match call.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (Some(false), format!("cannot load the plugin: {e}")),
        Err(e) => return (Some(false), format!("plugin call lost: {e}")),
    };
    let events = plugin_events(&report.events);
    let with = |m: String| if events.is_empty() { m } else { format!("{m} ({events})") };
    match report.result {
        Ok(c) => {
            let verdict = match c.health {
                tandem_plugin::Health::Up => Some(true),
                tandem_plugin::Health::Down => Some(false),
                tandem_plugin::Health::Unknown => None,
            };
            (verdict, with(c.message))
        }
        Err(e) => (Some(false), with(format!("plugin {e}"))),
    }
}

fn plugin_events(events: &[tandem_plugin::Event]) -> String {
    let lines: Vec<String> = events
        .iter()
        .map(|e| match e {
            tandem_plugin::Event::Call { text, .. } => text.clone(),
            tandem_plugin::Event::Log { level, message } => format!("{}: {message}", level.as_str().to_lowercase()),
        })
        .collect();
    let mut out = lines.join("; ");
    if out.len() > OUTPUT_LIMIT {
        let mut cut = out.len() - OUTPUT_LIMIT;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
    out
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

    fn plugin_module(name: &str, plugin: &str, extra: &str) -> ModuleConfig {
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../plugins/dist/{plugin}.wasm"));
        assert!(wasm.exists(), "{} is missing: run scripts/build-plugins.sh", wasm.display());
        let text = format!(
            "name = \"{name}\"\nkind = \"mirror\"\nid = 1\nplugin = \"{}\"\n[[node]]\nname = \"n1\"\n[[node]]\nname = \"n2\"\n{extra}",
            wasm.display()
        );
        tandem_config::parse_module(Path::new("m.toml"), &text).unwrap()
    }

    #[tokio::test]
    async fn plugin_hooks_succeed_fail_and_time_out_like_commands() {
        let dir = tempfile::tempdir().unwrap();
        let module_dir = dir.path().join("modules/web");
        let marker = dir.path().join("running").display().to_string();
        let cfg = plugin_module(
            "web",
            "process",
            &format!("[capabilities]\ncommands = [[\"/usr/bin/touch\", \"{marker}\"]]\n[params]\nstart = \"/usr/bin/touch {marker}\"\nstop = \"/bin/rm {marker}\"\ncheck = \"/usr/bin/test -e {marker}\"\n"),
        );
        let o = run_plugin_hook(&cfg, &module_dir, Duration::from_secs(5), &call(false)).await;
        assert!(o.ok && o.summary.starts_with("plugin ok after"), "{o:?}");
        assert!(o.output.contains(&format!("run /usr/bin/touch {marker}: exit 0")), "{o:?}");
        assert!(Path::new(&marker).exists());
        // Compiled once, into the daemon's cache next to the modules' directories.
        assert_eq!(std::fs::read_dir(dir.path().join("plugin-cache")).unwrap().count(), 1);
        // Its stop command is not granted: a failed hook, the file stays.
        let stop = HookCall { hook: Hook::StopPrim, current: State::Alone, next: State::Stop, ..call(false) };
        let o = run_plugin_hook(&cfg, &module_dir, Duration::from_secs(5), &stop).await;
        assert!(!o.ok && o.summary.contains("denied: command"), "{o:?}");
        assert!(o.output.contains("; DENIED run /bin/rm"), "{o:?}");
        assert!(Path::new(&marker).exists());
        // The check's command is not granted either: down, and why.
        let (up, msg) = run_plugin_check(&cfg, &module_dir, "app", Duration::from_secs(5)).await;
        assert_eq!(up, None, "{msg}");
        assert!(msg.contains("denied"), "{msg}");

        let spin = plugin_module("spin", "hostile-spin", "");
        let t = Instant::now();
        let o = run_plugin_hook(&spin, &module_dir, Duration::from_millis(300), &call(false)).await;
        assert!(!o.ok && o.summary == "plugin timed out after 300 ms: the plugin was interrupted", "{o:?}");
        assert_eq!(o.output, "info: spinning forever");
        assert!(t.elapsed() < Duration::from_secs(2));
        let (up, msg) = run_plugin_check(&spin, &module_dir, "c", Duration::from_millis(100)).await;
        assert_eq!(up, Some(false), "{msg}");

        let future = plugin_module("future", "hostile-other-version", "");
        let o = run_plugin_hook(&future, &module_dir, Duration::from_secs(1), &call(false)).await;
        assert!(!o.ok && o.summary.starts_with("cannot load the plugin: plugin"), "{o:?}");
        assert!(o.summary.contains("built for tandem:module@2.0.0"), "{o:?}");
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
