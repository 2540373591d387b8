//! The `process` plugin: starts, stops and checks the module's application, either a systemd unit
//! (`unit = "web.service"` in `[params]`) or commands (`start`, `stop`, `stop_force`, `check`,
//! each a command line split like a shell would, without variables or pipes).
//!
//! Where the application runs: a mirror runs it on its primary (start_prim/stop_prim), a farm on
//! every serving node (start_both/stop_both with the farm state `up`). A mirror's start_both and
//! stop_both (entering or leaving any Ready state, the secondary included) do nothing.
//!
//! Every command it runs must be granted in `[capabilities] commands`.

use tandem_plugin_sdk::prelude::*;

struct Process;

const SYSTEMCTL: &str = "/usr/bin/systemctl";

/// The argv of an operation from `[params]`: the command line `key`, else the systemd unit.
fn command(key: &str) -> Result<Option<Vec<String>>, String> {
    if let Some(line) = param(key) {
        let argv = split_args(&line).map_err(|e| format!("params.{key}: {e}"))?;
        if argv.is_empty() {
            return Err(format!("params.{key} is empty"));
        }
        return Ok(Some(argv));
    }
    let Some(unit) = param("unit") else { return Ok(None) };
    let verb = match key {
        "start" => vec!["start"],
        "stop" => vec!["stop"],
        "stop_force" => vec!["kill", "--signal=SIGKILL"],
        _ => vec!["is-active", "--quiet"],
    };
    let mut argv = vec![SYSTEMCTL.to_string()];
    argv.extend(verb.into_iter().map(String::from));
    argv.push(unit);
    Ok(Some(argv))
}

fn timeout_ms() -> u32 {
    param("timeout_ms").and_then(|t| t.parse().ok()).unwrap_or(tandem_plugin_sdk::DEFAULT_TIMEOUT_MS)
}

fn start(ctx: &HookContext) -> HookResult {
    let argv = command("start")?.ok_or("no `start` command and no `unit` in [params]")?;
    info(&format!("starting for {}: {}", ctx.module, argv.join(" ")));
    run_argv_ok(&argv, timeout_ms())
}

fn stop(ctx: &HookContext) -> HookResult {
    // The forced pass uses `stop_force` when there is one; otherwise it stops again (idempotent).
    let forced = if ctx.force { command("stop_force")? } else { None };
    let argv = match forced {
        Some(a) => a,
        None => command("stop")?.ok_or("no `stop` command and no `unit` in [params]")?,
    };
    info(&format!("stopping{} for {}: {}", if ctx.force { " (force)" } else { "" }, ctx.module, argv.join(" ")));
    run_argv_ok(&argv, timeout_ms())
}

impl Plugin for Process {
    fn start_prim(ctx: HookContext) -> HookResult {
        start(&ctx)
    }
    fn stop_prim(ctx: HookContext) -> HookResult {
        stop(&ctx)
    }
    fn start_both(ctx: HookContext) -> HookResult {
        if ctx.next == State::Up {
            start(&ctx)
        } else {
            Ok(())
        }
    }
    fn stop_both(ctx: HookContext) -> HookResult {
        if ctx.current == State::Up {
            stop(&ctx)
        } else {
            Ok(())
        }
    }
    fn check(checker: String) -> CheckResult {
        let argv = match command("check") {
            Ok(Some(a)) => a,
            Ok(None) => return unknown("no `check` command and no `unit` in [params]"),
            Err(e) => return unknown(e),
        };
        match tandem_plugin_sdk::host::run(&argv, timeout_ms()) {
            Ok(out) if out.exit_code == Some(0) => up(format!("{checker}: `{}` succeeded", argv.join(" "))),
            Ok(out) => down(format!("{checker}: `{}`: {}", argv.join(" "), tandem_plugin_sdk::describe(&out))),
            Err(e) => unknown(format!("{checker}: `{}`: {}", argv.join(" "), e.message())),
        }
    }
}

tandem_plugin_sdk::export!(Process);
