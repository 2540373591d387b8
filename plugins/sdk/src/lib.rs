//! The SDK of tandem module plugins: the bindings of the `tandem:module@1.0.0` world, a [`Plugin`]
//! trait whose every function has a sensible default, and helpers for the host's capabilities.
//!
//! A plugin is a `cdylib` crate:
//!
//! ```ignore
//! use tandem_plugin_sdk::prelude::*;
//!
//! struct Web;
//!
//! impl Plugin for Web {
//!     fn start_prim(_ctx: HookContext) -> HookResult {
//!         run_ok(&["/usr/bin/systemctl", "start", "web.service"])
//!     }
//!     fn stop_prim(_ctx: HookContext) -> HookResult {
//!         run_ok(&["/usr/bin/systemctl", "stop", "web.service"])
//!     }
//! }
//!
//! tandem_plugin_sdk::export!(Web);
//! ```
//!
//! Every call runs in a fresh instance: keep no state in statics between calls (use
//! `write_file`/`read_file` under a granted directory, or `set_resource`).

// The generated code names this crate by its path, from outside and from inside.
extern crate self as tandem_plugin_sdk;

/// Bindings generated from `plugins/wit/module.wit`.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "module",
        pub_export_macro: true,
        default_bindings_module: "tandem_plugin_sdk::bindings",
        runtime_path: "tandem_plugin_sdk::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen;

pub use bindings::export;
pub use bindings::tandem::module::host::{self, CommandOutput, HostError, HttpResponse, Level};
pub use bindings::tandem::module::types::{CheckResult, Decision, FarmNode, Health, HookContext, ResourceValue, State};

/// What a hook returns: `Err(message)` makes it a failed hook (the message goes to the module log).
pub type HookResult = Result<(), String>;

/// The logic of a module. Every function has a default: a hook that is not written succeeds and
/// does nothing, `check` answers `unknown`, `decide` and `balance` defer to the daemon.
pub trait Plugin {
    /// Before the module starts, on every node.
    fn prestart(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// Mirror: this node becomes primary.
    fn start_prim(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// Mirror: this node stops being primary.
    fn stop_prim(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// Mirror: this node becomes secondary.
    fn start_second(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// Mirror: this node stops being secondary.
    fn stop_second(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// Farm: the node starts serving; mirror: a Ready state is entered.
    fn start_both(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// Farm: the node stops serving; mirror: a Ready state is left.
    fn stop_both(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// After the module stopped, on every node.
    fn poststop(_ctx: HookContext) -> HookResult {
        Ok(())
    }
    /// A custom checker, by name.
    fn check(_checker: String) -> CheckResult {
        unknown("this plugin has no check")
    }
    /// A custom failover rule; `None` lets the checkers' actions apply.
    fn decide(_resources: Vec<ResourceValue>) -> Option<Decision> {
        None
    }
    /// Farm weights, one per node in order; `None` uses the nodes' `power`.
    fn balance(_nodes: Vec<FarmNode>) -> Option<Vec<u32>> {
        None
    }
}

/// A panic aborts the instance (a trap the host reports); first say why in the module log, rather
/// than on stderr, which a plugin does not have.
fn report_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| host::log(Level::Error, &format!("plugin panicked: {info}"))));
    });
}

impl<T: Plugin> bindings::exports::tandem::module::plugin::Guest for T {
    fn prestart(ctx: HookContext) -> HookResult {
        report_panics();
        T::prestart(ctx)
    }
    fn start_prim(ctx: HookContext) -> HookResult {
        report_panics();
        T::start_prim(ctx)
    }
    fn stop_prim(ctx: HookContext) -> HookResult {
        report_panics();
        T::stop_prim(ctx)
    }
    fn start_second(ctx: HookContext) -> HookResult {
        report_panics();
        T::start_second(ctx)
    }
    fn stop_second(ctx: HookContext) -> HookResult {
        report_panics();
        T::stop_second(ctx)
    }
    fn start_both(ctx: HookContext) -> HookResult {
        report_panics();
        T::start_both(ctx)
    }
    fn stop_both(ctx: HookContext) -> HookResult {
        report_panics();
        T::stop_both(ctx)
    }
    fn poststop(ctx: HookContext) -> HookResult {
        report_panics();
        T::poststop(ctx)
    }
    fn check(checker: String) -> CheckResult {
        report_panics();
        T::check(checker)
    }
    fn decide(resources: Vec<ResourceValue>) -> Option<Decision> {
        report_panics();
        T::decide(resources)
    }
    fn balance(nodes: Vec<FarmNode>) -> Option<Vec<u32>> {
        report_panics();
        T::balance(nodes)
    }
}

impl HostError {
    /// "denied: ...", "failed: ...", "unavailable: ...".
    pub fn message(&self) -> String {
        match self {
            HostError::Denied(m) => format!("denied: {m}"),
            HostError::Failed(m) => format!("failed: {m}"),
            HostError::Unavailable(m) => format!("unavailable: {m}"),
        }
    }
}

/// `up` with a message.
pub fn up(message: impl Into<String>) -> CheckResult {
    CheckResult { health: Health::Up, message: message.into() }
}

/// `down` with a message.
pub fn down(message: impl Into<String>) -> CheckResult {
    CheckResult { health: Health::Down, message: message.into() }
}

/// `unknown` with a message.
pub fn unknown(message: impl Into<String>) -> CheckResult {
    CheckResult { health: Health::Unknown, message: message.into() }
}

/// Appends a line to the module log.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}

/// Appends an `info` line to the module log.
pub fn info(message: &str) {
    host::log(Level::Info, message)
}

/// A parameter from the module's `[params]`.
pub fn param(name: &str) -> Option<String> {
    host::param(name)
}

/// Default timeout of [`run`] and [`run_ok`].
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;

/// Runs an allowed command (see `capabilities.commands`) with the default timeout.
pub fn run(argv: &[&str]) -> Result<CommandOutput, HostError> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    host::run(&argv, DEFAULT_TIMEOUT_MS)
}

/// Runs an allowed command and turns anything but exit 0 into an error message naming the command
/// and the end of its output: what a hook wants.
pub fn run_ok(argv: &[&str]) -> HookResult {
    let owned: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    run_argv_ok(&owned, DEFAULT_TIMEOUT_MS)
}

/// As [`run_ok`], with owned arguments and a timeout.
pub fn run_argv_ok(argv: &[String], timeout_ms: u32) -> HookResult {
    let shown = argv.join(" ");
    let out = host::run(argv, timeout_ms).map_err(|e| format!("`{shown}`: {}", e.message()))?;
    match out.exit_code {
        Some(0) => Ok(()),
        _ => Err(format!("`{shown}`: {}", describe(&out))),
    }
}

/// "exit 3: <stderr>", "timed out", "killed by a signal".
pub fn describe(out: &CommandOutput) -> String {
    let status = match (out.exit_code, out.timed_out) {
        (_, true) => "timed out".to_string(),
        (Some(c), _) => format!("exit {c}"),
        (None, _) => "killed by a signal".to_string(),
    };
    let text = if out.stderr.trim().is_empty() { out.stdout.trim() } else { out.stderr.trim() };
    if text.is_empty() {
        status
    } else {
        format!("{status}: {text}")
    }
}

/// Splits a command line into arguments: whitespace separates, single and double quotes group,
/// a backslash escapes the next character. No variables, globs or pipes: it is not a shell.
pub fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => {
                    cur.push(n);
                    in_arg = true;
                }
                None => return Err(format!("trailing backslash in `{line}`")),
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_arg = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in `{line}`"));
    }
    if in_arg {
        args.push(cur);
    }
    Ok(args)
}

/// The usual imports of a plugin.
pub mod prelude {
    pub use crate::{
        down, info, log, param, run, run_argv_ok, run_ok, split_args, unknown, up, CheckResult, Decision, FarmNode,
        Health, HookContext, HookResult, Level, Plugin, ResourceValue, State,
    };
}

#[cfg(test)]
mod tests {
    use super::split_args;

    #[test]
    fn splitting() {
        assert_eq!(
            split_args("  /bin/x a  'b c' \"d \\\" e\" f\\ g ").unwrap(),
            ["/bin/x", "a", "b c", "d \" e", "f g"]
        );
        assert_eq!(split_args("x ''").unwrap(), ["x", ""]);
        assert!(split_args("x 'y").is_err());
        assert!(split_args("").unwrap().is_empty());
    }
}
