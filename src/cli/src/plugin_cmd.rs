//! `tandem plugin`: for plugin authors. `new` scaffolds a plugin crate; `test` runs one call of a
//! plugin in the real host, with a module's capabilities, and prints everything it did.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_config::HookPoint;
use tandem_plugin::{CallError, Event, Grants, HookInput, Host, Origin};

/// Write and try WASM plugins.
#[derive(Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin crate NAME (in the current directory, or --dir) that builds with
    /// `cargo build --release` into target/wasm32-wasip2/release/NAME.wasm.
    New {
        /// Plugin name (`[a-z][a-z0-9-]*`): the crate and the .wasm file.
        name: String,
        /// Where to create the crate's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The tandem plugin SDK (plugins/sdk of the tandem sources); default: the SDK of the
        /// sources this tandem was built from, or $TANDEM_PLUGIN_SDK.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run one call of a plugin in the real host and print what it did (commands it ran, files,
    /// probes, denials, log lines) and what it returned. Exit code: 0 if the hook succeeded or the
    /// check is up, 1 if the hook failed or the check is down or unknown, 2 if the plugin trapped,
    /// ran out of time or memory, or could not be loaded.
    Test {
        /// The plugin (.wasm).
        file: PathBuf,
        /// The module.toml whose [capabilities] and [params] the plugin gets (without it: none).
        #[arg(long)]
        module: Option<PathBuf>,
        /// Call this hook (prestart, start_prim, stop_prim, start_second, stop_second, start_both,
        /// stop_both, poststop).
        #[arg(long, value_name = "HOOK", group = "call")]
        hook: Option<String>,
        /// Call the custom check of this checker name.
        #[arg(long, value_name = "CHECKER", group = "call")]
        check: Option<String>,
        /// Call `decide` with these resources (NAME=VALUE, repeatable).
        #[arg(long, value_name = "NAME=VALUE", group = "call", num_args = 0..)]
        decide: Option<Vec<String>>,
        /// Call `balance` with these nodes (NAME:POWER, repeatable).
        #[arg(long, value_name = "NAME:POWER", group = "call", num_args = 1..)]
        balance: Option<Vec<String>>,
        /// The state the hook is told it leaves.
        #[arg(long, default_value = "WAIT")]
        state: String,
        /// The state the hook is told it enters (default: by hook, e.g. ALONE for start_prim).
        #[arg(long)]
        next: Option<String>,
        /// The action the hook is told.
        #[arg(long, default_value = "admin")]
        action: String,
        /// The forced pass of a stop hook.
        #[arg(long)]
        force: bool,
        /// Node name the hook is told.
        #[arg(long, default_value = "n1")]
        node: String,
        /// Deadline of the call (default: the module's hook timeout, or 30s).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tandem_config::units::parse_duration(s)
}

/// Runs a `tandem plugin` command and returns the process exit code.
pub fn run(args: PluginArgs) -> anyhow::Result<u8> {
    match args.command {
        PluginCommand::New { name, dir, sdk } => new(&name, &dir, sdk),
        PluginCommand::Test {
            file,
            module,
            hook,
            check,
            decide,
            balance,
            state,
            next,
            action,
            force,
            node,
            timeout,
        } => {
            let call = match (hook, check, decide, balance) {
                (Some(h), _, _, _) => Call::Hook(
                    HookPoint::ALL
                        .into_iter()
                        .find(|p| p.key() == h)
                        .with_context(|| format!("unknown hook `{h}`: expected one of {}", hook_names()))?,
                ),
                (_, Some(c), _, _) => Call::Check(c),
                (_, _, Some(d), _) => Call::Decide(d),
                (_, _, _, Some(b)) => Call::Balance(b),
                _ => anyhow::bail!("say what to call: --hook HOOK, --check CHECKER, --decide or --balance"),
            };
            test(&file, module.as_deref(), call, &state, next, &action, force, &node, timeout)
        }
    }
}

fn hook_names() -> String {
    HookPoint::ALL.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
}

enum Call {
    Hook(HookPoint),
    Check(String),
    Decide(Vec<String>),
    Balance(Vec<String>),
}

#[allow(clippy::too_many_arguments)]
fn test(
    file: &Path,
    module: Option<&Path>,
    call: Call,
    state: &str,
    next: Option<String>,
    action: &str,
    force: bool,
    node: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    let (grants, module_name, hook_timeout) = match module {
        Some(m) => {
            let cfg = tandem_config::load_module(m).map_err(|e| anyhow::anyhow!("{e}"))?;
            (Grants::of(&cfg), cfg.name.clone(), Some(cfg.hooks.timeout))
        }
        None => (Grants::new("test", Default::default(), Default::default()), "test".to_string(), None),
    };
    let deadline = timeout.or(hook_timeout).unwrap_or(tandem_config::DEFAULT_HOOK_TIMEOUT);
    print_grants(&grants, module);
    let host = Host::new(None)?;
    let t = Instant::now();
    let plugin = match host.load(file, grants) {
        Ok(p) => p,
        Err(e) => {
            println!("load: FAILED: {e}");
            return Ok(2);
        }
    };
    println!(
        "plugin: {} (blake3 {}, {} in {} ms)",
        file.display(),
        &plugin.hash()[..16],
        if plugin.origin() == Origin::Cache { "from the cache" } else { "compiled" },
        t.elapsed().as_millis()
    );
    let (code, events, resources, elapsed) = match call {
        Call::Hook(point) => {
            let next = next.unwrap_or_else(|| default_next(point).to_string());
            let input = HookInput {
                module: module_name,
                node: node.to_string(),
                current: state.to_ascii_uppercase(),
                next: next.to_ascii_uppercase(),
                action: action.to_string(),
                force,
            };
            println!(
                "call: {} ({} -> {}, {}{}), deadline {} ms",
                point.key(),
                input.current,
                input.next,
                action,
                if force { ", force" } else { "" },
                deadline.as_millis()
            );
            let r = plugin.hook(point, &input, deadline);
            let (code, line) = match &r.result {
                Ok(Ok(())) => (0, "ok".to_string()),
                Ok(Err(m)) => (1, format!("hook failed: {m}")),
                Err(e) => (2, failure(e)),
            };
            print_events(&r.events);
            println!("result: {line}");
            (code, r.events, r.resources, r.elapsed)
        }
        Call::Check(name) => {
            println!("call: check {name}, deadline {} ms", deadline.as_millis());
            let r = plugin.check(&name, deadline);
            print_events(&r.events);
            let code = match &r.result {
                Ok(c) => {
                    println!("result: {}: {}", c.health.as_str(), c.message);
                    u8::from(c.health != tandem_plugin::Health::Up)
                }
                Err(e) => {
                    println!("result: {}", failure(e));
                    2
                }
            };
            (code, r.events, r.resources, r.elapsed)
        }
        Call::Decide(pairs) => {
            let mut resources = Vec::new();
            for p in &pairs {
                let (n, v) = p.split_once('=').with_context(|| format!("--decide {p}: expected NAME=VALUE"))?;
                resources.push((n.to_string(), v.to_string()));
            }
            println!("call: decide ({} resources), deadline {} ms", resources.len(), deadline.as_millis());
            let r = plugin.decide(&resources, deadline);
            print_events(&r.events);
            let code = match &r.result {
                Ok(Some(d)) => {
                    println!("result: {}", d.as_str());
                    0
                }
                Ok(None) => {
                    println!("result: none (the checkers' own actions apply)");
                    0
                }
                Err(e) => {
                    println!("result: {}", failure(e));
                    2
                }
            };
            (code, r.events, r.resources, r.elapsed)
        }
        Call::Balance(specs) => {
            let mut nodes = Vec::new();
            for s in &specs {
                let (n, p) = s.split_once(':').unwrap_or((s, "1"));
                let power = p.parse().with_context(|| format!("--balance {s}: expected NAME:POWER"))?;
                nodes.push(tandem_plugin::FarmNode { name: n.to_string(), power, resources: Vec::new() });
            }
            println!("call: balance ({} nodes), deadline {} ms", nodes.len(), deadline.as_millis());
            let r = plugin.balance(&nodes, deadline);
            print_events(&r.events);
            let code = match &r.result {
                Ok(Some(w)) => {
                    let list: Vec<String> = nodes.iter().zip(w).map(|(n, w)| format!("{} {w}", n.name)).collect();
                    println!("result: {}", list.join(", "));
                    0
                }
                Ok(None) => {
                    println!("result: none (the nodes' power applies)");
                    0
                }
                Err(e) => {
                    println!("result: {}", failure(e));
                    2
                }
            };
            (code, r.events, r.resources, r.elapsed)
        }
    };
    for (n, v) in &resources {
        println!("resource: {n} = {v}");
    }
    let denied = events.iter().filter(|e| matches!(e, Event::Call { denied: true, .. })).count();
    let calls = events.iter().filter(|e| matches!(e, Event::Call { .. })).count();
    println!(
        "took {} ms; {calls} host call{}, {denied} denied",
        elapsed.as_millis(),
        if calls == 1 { "" } else { "s" }
    );
    Ok(code)
}

fn failure(e: &CallError) -> String {
    format!("FAILED: {e}")
}

fn default_next(point: HookPoint) -> &'static str {
    match point {
        HookPoint::StartPrim => "ALONE",
        HookPoint::StartSecond => "SECOND",
        HookPoint::StartBoth => "UP",
        HookPoint::Prestart => "WAIT",
        _ => "STOP",
    }
}

fn print_grants(g: &Grants, module: Option<&Path>) {
    let c = &g.caps;
    match module {
        Some(m) => println!("grants of module {} ({}):", g.module, m.display()),
        None => println!("grants: none (no --module: every capability is denied)"),
    }
    if module.is_none() {
        return;
    }
    let cmds: Vec<String> = c.commands.iter().map(tandem_plugin::grants::describe_command).collect();
    let show = |v: Vec<String>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    println!("  commands: {}", show(cmds));
    println!("  files: {}", show(c.files.iter().map(|p| p.display().to_string()).collect()));
    println!("  tcp: {}", show(c.tcp.iter().map(|a| a.to_string()).collect()));
    println!("  http: {}", show(c.http.iter().map(|h| format!("http://{}{}", h.address, h.path)).collect()));
    println!("  resources: {}", show(c.resources.clone()));
    println!("  memory: {} MiB", c.memory_bytes >> 20);
    if !g.params.is_empty() {
        let p: Vec<String> = g.params.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        println!("  params: {}", p.join(", "));
    }
}

fn print_events(events: &[Event]) {
    for e in events {
        match e {
            Event::Call { text, .. } => println!("  {text}"),
            Event::Log { level, message } => println!("  log {}: {message}", level.as_str()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `tandem plugin new`

fn new(name: &str, dir: &Path, sdk: Option<PathBuf>) -> anyhow::Result<u8> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    anyhow::ensure!(
        valid,
        "invalid plugin name `{name}`: lowercase letters, digits and dashes, starting with a letter"
    );
    let sdk = match sdk.or_else(|| std::env::var_os("TANDEM_PLUGIN_SDK").map(PathBuf::from)) {
        Some(s) => s,
        None => {
            let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/sdk");
            anyhow::ensure!(
                built_from.join("Cargo.toml").exists(),
                "where is the tandem plugin SDK? give --sdk PATH (plugins/sdk of the tandem sources)"
            );
            built_from
        }
    };
    let sdk = sdk.canonicalize().with_context(|| format!("SDK {}", sdk.display()))?;
    anyhow::ensure!(sdk.join("Cargo.toml").exists(), "{} is not the SDK (no Cargo.toml)", sdk.display());
    let root = dir.join(name);
    anyhow::ensure!(!root.exists(), "{} already exists", root.display());
    let files = scaffold(name, &sdk);
    for (rel, text) in &files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    println!("created {} ({} files):", root.display(), files.len());
    for (rel, _) in &files {
        println!("  {rel}");
    }
    println!(
        "next:\n  cd {}\n  cargo build --release\n  tandem plugin test target/wasm32-wasip2/release/{}.wasm --module module.toml --check app",
        root.display(),
        name.replace('-', "_")
    );
    Ok(0)
}

/// The files of a new plugin crate, relative to its directory.
fn scaffold(name: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let ty: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
tandem-plugin-sdk = {{ path = "{sdk}" }}

# A plugin is its own workspace (not part of an enclosing one).
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1
panic = "abort"
"#,
        sdk = sdk.display()
    );
    let lib = format!(
        r#"//! The `{name}` plugin of a tandem module. Reference: docs/plugins.md of tandem.
//!
//! Every function has a default (a hook that is not written succeeds and does nothing); write
//! only what your application needs. Each call runs in a fresh instance with a deadline and a
//! memory cap, and can only do what the module's `[capabilities]` grant.

use tandem_plugin_sdk::prelude::*;

struct {ty};

impl Plugin for {ty} {{
    fn start_prim(ctx: HookContext) -> HookResult {{
        info(&format!("{{}} becomes primary on {{}} ({{}})", ctx.module, ctx.node, ctx.action));
        run_ok(&["/usr/bin/systemctl", "start", "{name}.service"])
    }}

    fn stop_prim(_ctx: HookContext) -> HookResult {{
        run_ok(&["/usr/bin/systemctl", "stop", "{name}.service"])
    }}

    fn check(checker: String) -> CheckResult {{
        let address = param("address").unwrap_or_else(|| "127.0.0.1:8080".into());
        match tandem_plugin_sdk::host::probe_tcp(&address, 1000) {{
            Ok(()) => up(format!("{{checker}}: {{address}} accepts connections")),
            Err(e) => down(format!("{{checker}}: {{address}}: {{}}", e.message())),
        }}
    }}
}}

tandem_plugin_sdk::export!({ty});
"#
    );
    let config = "# A plugin is a WASM component for the WASI preview 2 target.\n[build]\ntarget = \"wasm32-wasip2\"\n"
        .to_string();
    let module = format!(
        r#"# A module using the plugin (copy the .wasm next to it). Reference: docs/configuration.md
name = "{name}"
kind = "mirror"
id = 20
plugin = "{file}.wasm"

[[node]]
name = "n1"

[[node]]
name = "n2"

[[checker]]
name = "app"
type = "custom"
action = "restart"

# Everything the plugin may do; anything else is denied.
[capabilities]
commands = [
  ["/usr/bin/systemctl", "start", "{name}.service"],
  ["/usr/bin/systemctl", "stop", "{name}.service"],
]
tcp = ["127.0.0.1:8080"]

[params]
address = "127.0.0.1:8080"
"#,
        file = name.replace('-', "_")
    );
    let readme = format!(
        "# {name}\n\nA tandem module plugin.\n\n    cargo build --release\n    tandem plugin test target/wasm32-wasip2/release/{}.wasm --module module.toml --hook start_prim\n\nShip `target/wasm32-wasip2/release/{}.wasm` next to the module's `module.toml`.\n",
        name.replace('-', "_"),
        name.replace('-', "_")
    );
    vec![
        ("Cargo.toml", cargo),
        ("src/lib.rs", lib),
        (".cargo/config.toml", config),
        ("module.toml", module),
        ("README.md", readme),
    ]
}
