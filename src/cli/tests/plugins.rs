//! WASM plugins in real daemons: a failover driven by the shipped `process` plugin (it starts the
//! small TCP service of the lab on the new primary), and hostile plugins in modules of their own
//! that are contained and reported while the daemon keeps serving the other modules. The plugins
//! come from plugins/dist/ (scripts/build-plugins.sh).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Cluster, DEFAULT_TIMERS, VIP};

fn dist(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-plugins.sh", p.display());
    p.canonicalize().unwrap().display().to_string()
}

const SERVICE: &str = "/etc/tandem/modules/web/service.sh";

/// The lab's `web` module with its hooks replaced by the `process` plugin, which may run exactly
/// the two commands of the service script.
fn web_with_plugin() -> String {
    format!(
        r#"name = "web"
kind = "mirror"
id = 1
plugin = "{plugin}"

[[node]]
name = "n1"

[[node]]
name = "n2"

[heartbeat]
pulse = "{pulse}"
timeout = "{timeout}"

[[vip]]
address = "{VIP}/24"
interface = "eth0"

[hooks]
timeout = "10s"

[capabilities]
commands = [["{SERVICE}", "start"], ["{SERVICE}", "stop"]]

[params]
start = "{SERVICE} start"
stop = "{SERVICE} stop"
"#,
        plugin = dist("process"),
        pulse = DEFAULT_TIMERS.pulse,
        timeout = DEFAULT_TIMERS.timeout,
    )
}

/// A module without VIP whose logic is a hostile plugin.
fn hostile(name: &str, id: u8, plugin: &str) -> String {
    format!(
        r#"name = "{name}"
kind = "mirror"
id = {id}
plugin = "{plugin}"

[[node]]
name = "n1"

[[node]]
name = "n2"

[hooks]
timeout = "1s"

[capabilities]
memory = "16MiB"
"#,
        plugin = dist(plugin)
    )
}

fn module_log(c: &Cluster, node: &str, module: &str) -> String {
    String::from_utf8(c.tandem(node, &["log", "-n", "1000", "-m", module]).stdout).unwrap()
}

#[test]
fn failover_driven_by_the_process_plugin() {
    let mut c = Cluster::new("pf", 1, &DEFAULT_TIMERS);
    for n in ["n1", "n2"] {
        c.write(n, "/etc/tandem/modules/web/module.toml", &web_with_plugin(), "644");
    }
    let out = c.tandem("n1", &["config", "check", "/etc/tandem/cluster.toml", "/etc/tandem/modules/web/module.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.bring_up();
    assert_eq!(c.vip_holders(), vec!["n1"]);
    assert!(c.client_connect(Duration::from_secs(5)).is_some(), "the plugin started the service on n1");
    let log = c.log("n1");
    assert!(
        log.contains("hook start_prim (WAIT -> ALONE, prim): plugin ok after")
            && log.contains(&format!("run {SERVICE} start: exit 0")),
        "{log}"
    );
    // The secondary's hooks went to the plugin too, which does nothing there.
    assert!(c.sh("n2", "ss -ltn").lines().all(|l| !l.contains(":8080")), "no service on the secondary");

    c.lab().kill("n1").unwrap();
    let killed = Instant::now();
    let reconnect = c.client_connect(Duration::from_secs(15)).expect("client reconnects after failover");
    println!("plugin-driven failover: kill -> first client connection on n2: {:.3} s", reconnect.as_secs_f64());
    c.forget_daemon("n1");
    assert_eq!(c.state("n2"), 2, "n2 ALONE");
    assert_eq!(c.vip_holders(), vec!["n2"]);
    assert!(killed.elapsed().min(reconnect + Duration::from_millis(100)) < Duration::from_secs(4));
    let log = c.log("n2");
    assert!(log.contains("n1 lost: failover"), "{log}");
    let start = log.lines().find(|l| l.contains("hook start_prim") && l.contains("failover")).unwrap_or_else(|| {
        panic!("no start_prim on failover in n2's log:\n{log}");
    });
    assert!(start.contains("plugin ok") && start.contains(&format!("run {SERVICE} start: exit 0")), "{start}");
    assert!(c.sh("n2", "ss -ltn").contains(&format!("{VIP}:8080")), "the plugin started the service on n2");
}

#[test]
fn hostile_plugins_are_contained_and_the_daemon_keeps_serving() {
    let mut c = Cluster::new("ph", 1, &DEFAULT_TIMERS);
    for n in ["n1", "n2"] {
        c.write(n, "/etc/tandem/modules/web/module.toml", &web_with_plugin(), "644");
        c.write(n, "/etc/tandem/modules/spin/module.toml", &hostile("spin", 2, "hostile-spin"), "644");
        c.write(n, "/etc/tandem/modules/bomb/module.toml", &hostile("bomb", 3, "hostile-memory-bomb"), "644");
        c.write(n, "/etc/tandem/modules/future/module.toml", &hostile("future", 4, "hostile-other-version"), "644");
    }
    c.bring_up();
    for m in ["spin", "bomb", "future"] {
        assert!(c.tandem("n1", &["start", "-m", m]).status.success());
        let out = c.tandem("n1", &["prim", "-m", m]);
        assert!(out.status.success(), "prim {m}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Each fails its hooks (`future` cannot even be loaded, so its first hook, prestart, fails),
    // is restarted by its machine, and is stopped by the loop limit.
    let wanted = [
        ("spin", "hook start_prim (WAIT -> ALONE, prim): plugin timed out after 1000 ms: the plugin was interrupted"),
        ("bomb", "hook start_prim (WAIT -> ALONE, prim): plugin memory limit reached: it asked for"),
        ("future", "hook prestart ("),
    ];
    for (m, what) in wanted {
        c.wait_until(Duration::from_secs(10), &format!("{m}: failed hook in the log"), || {
            module_log(&c, "n1", m).lines().any(|l| {
                l.contains("ERROR")
                    && l.contains(what)
                    && (m != "future" || l.contains("cannot load the plugin: plugin"))
            })
        });
        c.wait_until(Duration::from_secs(30), &format!("{m} stopped by the loop limit"), || {
            c.tandem("n1", &["state", "-m", m]).status.code() == Some(0)
        });
        assert!(module_log(&c, "n1", m).contains("loop limit reached"), "{}", module_log(&c, "n1", m));
    }
    assert!(module_log(&c, "n1", "future")
        .contains("built for tandem:module@2.0.0; this tandem provides tandem:module@1.0.0"));
    // `tandem state` reports the last failure too.
    let state = String::from_utf8_lossy(&c.tandem("n1", &["state", "-m", "spin"]).stdout).into_owned();
    assert!(state.contains("last failure:") && state.contains("plugin timed out"), "{state}");
    // Meanwhile `web` was not disturbed, and its plugin still serves a failover.
    assert_eq!((c.state("n1"), c.state("n2")), (3, 4));
    assert!(c.client_connect(Duration::from_secs(5)).is_some());
    assert!(c.admin("n1", &["stop"]).status.success());
    c.wait_state("n2", 2, Duration::from_secs(5));
    assert!(c.client_connect(Duration::from_secs(5)).is_some(), "the plugin started the service on n2");
    assert!(c.tandem("n1", &["state"]).status.code().is_some(), "the daemon of n1 still answers");
}

// ---------------------------------------------------------------------------------------------
// Tooling for plugin authors (no lab, no root needed).

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tandem(args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::TANDEM).current_dir(repo()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn shipped_plugin_variants_of_the_generic_modules_are_valid() {
    let out = tandem(&[
        "config",
        "check",
        "docs/examples/cluster.toml",
        "app-modules/generic-mirror/module.toml",
        "app-modules/generic-farm/module.toml",
        "app-modules/generic-mirror-plugin/module.toml",
        "app-modules/generic-farm-plugin/module.toml",
    ]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    for m in ["generic-mirror-plugin", "generic-farm-plugin"] {
        let cfg = tandem_config::load_module(repo().join(format!("app-modules/{m}/module.toml"))).unwrap();
        assert_eq!(cfg.plugin.unwrap(), repo().join(format!("app-modules/{m}/process.wasm")));
        assert!(!cfg.capabilities.commands.is_empty());
        assert!(cfg.hooks.start_prim.is_none() && cfg.hooks.start_both.is_none(), "the plugin is the hooks");
    }
}

#[test]
fn plugin_test_runs_one_call_and_prints_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("running").display().to_string();
    let module = dir.path().join("module.toml");
    std::fs::write(
        &module,
        format!(
            "name = \"web\"\nkind = \"mirror\"\nid = 1\nplugin = \"process.wasm\"\n[[node]]\nname = \"n1\"\n[[node]]\nname = \"n2\"\n\
             [capabilities]\ncommands = [[\"/usr/bin/touch\", \"{marker}\"]]\n[params]\nstart = \"/usr/bin/touch {marker}\"\n\
             stop = \"/bin/rm -f {marker}\"\n"
        ),
    )
    .unwrap();
    let m = module.display().to_string();
    let process = dist("process");
    let out = tandem(&["plugin", "test", &process, "--module", &m, "--hook", "start_prim", "--action", "prim"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("  commands: [\"/usr/bin/touch\", \"{marker}\"]")), "{stdout}");
    assert!(stdout.contains("call: start_prim (WAIT -> ALONE, prim), deadline 30000 ms"), "{stdout}");
    assert!(stdout.contains(&format!("  run /usr/bin/touch {marker}: exit 0 in ")), "{stdout}");
    assert!(stdout.contains("  log INFO: starting for web: /usr/bin/touch"), "{stdout}");
    assert!(stdout.contains("\nresult: ok\n"), "{stdout}");
    assert!(Path::new(&marker).exists());
    // Not granted: the stop is denied, the hook fails (exit 1), and the file stays.
    let out = tandem(&["plugin", "test", &process, "--module", &m, "--hook", "stop_prim", "--state", "ALONE"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("  DENIED run /bin/rm -f {marker}: command [")), "{stdout}");
    assert!(stdout.contains("result: hook failed: `/bin/rm -f"), "{stdout}");
    assert!(stdout.contains("1 denied"), "{stdout}");
    assert!(Path::new(&marker).exists());
    // A plugin that loops: interrupted at the deadline (exit 2).
    let out = tandem(&["plugin", "test", &dist("hostile-spin"), "--check", "x", "--timeout", "300ms"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("grants: none (no --module: every capability is denied)"), "{stdout}");
    assert!(stdout.contains("result: FAILED: timed out after 300 ms: the plugin was interrupted"), "{stdout}");
    // Built for another interface version: refused at load.
    let out = tandem(&["plugin", "test", &dist("hostile-other-version"), "--check", "x"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("load: FAILED: plugin") && stdout.contains("is built for tandem:module@2.0.0"), "{stdout}");
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let out = tandem(&["plugin", "new", "demo-check", "--dir", &d]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let root = dir.path().join("demo-check");
    for f in ["Cargo.toml", "src/lib.rs", ".cargo/config.toml", "module.toml", "README.md"] {
        assert!(root.join(f).exists(), "{f} missing");
    }
    let again = tandem(&["plugin", "new", "demo-check", "--dir", &d]);
    assert!(!again.status.success() && text(&again.stderr).contains("already exists"));
    assert!(!tandem(&["plugin", "new", "Bad_Name", "--dir", &d]).status.success());
    // It builds for wasm32-wasip2 (in the plugins' target directory: the SDK and its dependencies
    // are built already; scripts/build-plugins.sh takes only its own crates from there) ...
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("plugins/target"));
    let build = std::process::Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build.stderr));
    let wasm = target.join("wasm32-wasip2/release/demo_check.wasm");
    // ... and its example module passes `config check` and runs it: a check that probes TCP.
    let m = root.join("module.toml").display().to_string();
    assert!(tandem(&["config", "check", &m]).status.success());
    let out = tandem(&["plugin", "test", &wasm.display().to_string(), "--module", &m, "--check", "app"]);
    let stdout = text(&out.stdout);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("  probe tcp 127.0.0.1:8080: "), "{stdout}");
}

#[test]
fn plugin_test_refuses_bad_input_with_a_reason() {
    let out = tandem(&["plugin", "test", "/nonexistent.wasm", "--check", "x"]);
    assert_eq!(out.status.code(), Some(2), "a plugin that cannot be loaded");
    assert!(text(&out.stdout).contains("cannot read plugin /nonexistent.wasm"), "{}", text(&out.stdout));
    let out = tandem(&["plugin", "test", &dist("process")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("say what to call"), "{}", text(&out.stderr));
    let out = tandem(&["plugin", "new", "Bad/Name"]);
    assert!(!out.status.success() && text(&out.stderr).contains("invalid plugin name"), "{}", text(&out.stderr));
}
