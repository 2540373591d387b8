//! The WASM plugin host: a module's logic (hooks, custom checks, failover rules, farm weights) as
//! a WebAssembly component of the world `tandem:module@1.0.0` (`plugins/wit/module.wit`), run by
//! wasmtime in a sandbox.
//!
//! - **Capabilities**: a plugin can only call the functions of the `host` interface, and each
//!   call is checked against the module's `[capabilities]` ([`grants`]); nothing is granted by
//!   default. No WASI is provided: a plugin has no ambient file system, network, clock or
//!   environment (a WASI import it makes is linked to a function that traps when called).
//! - **Limits**: every call runs in a fresh instance, with an epoch deadline (a plugin that loops
//!   is interrupted), a memory cap (a [`wasmtime::ResourceLimiter`]) and caps on what host calls
//!   return ([`sys`]). A trap or a limit is an error of that call, never a panic of the daemon.
//! - **Compilation** happens once per daemon start (`Host::load`), from an on-disk cache of
//!   compiled artifacts keyed by the plugin's blake3 hash ([`cache`]).
//!
//! The alternative rejected: keeping one instance per plugin across calls would save the
//! instantiation (about 10 µs, see docs/benchmarks.md) but let a plugin keep state between calls
//! and let one trapped call poison the next.

pub mod cache;
pub mod grants;
mod host;
pub mod sys;

pub use grants::Grants;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_config::HookPoint;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, Store};

/// The interface version this host provides.
pub const INTERFACE: &str = "tandem:module@1.0.0";
/// The package of the interface, without version.
pub const INTERFACE_PACKAGE: &str = "tandem:module";
/// The version part of [`INTERFACE`].
pub const INTERFACE_VERSION: &str = "1.0.0";
/// Granularity of the deadlines: the epoch ticks this often.
pub const TICK: Duration = Duration::from_millis(10);
/// At most this many log lines per call are kept; at most this many bytes each.
pub const LOG_LINES_LIMIT: usize = 100;
pub const LOG_LINE_LIMIT: usize = 4096;
/// Wasm stack of a call (a runaway recursion traps here).
pub const STACK_LIMIT_BYTES: usize = 512 << 10;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../plugins/wit",
        world: "module",
    });
}

pub use bindings::tandem::module::types::{Decision, Health};

/// Why a plugin could not be loaded, or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// cannot read plugin {path}: {source}
    #[error("cannot read plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// plugin {path} is not a valid WASM component: {message}
    #[error("plugin {path} is not a valid WASM component: {message}")]
    Invalid { path: PathBuf, message: String },
    /// plugin {path} is built for another interface version
    #[error("plugin {path} is built for {found}; this tandem provides {INTERFACE}: rebuild it with the SDK of this version (plugins/sdk)")]
    Version { path: PathBuf, found: String },
    /// plugin {path} does not fit the interface: {message}
    #[error("plugin {path} does not fit {INTERFACE}: {message}")]
    Interface { path: PathBuf, message: String },
    /// the WASM engine could not be set up
    #[error("cannot set up the WASM engine: {0}")]
    Engine(String),
}

/// Why one call failed (the plugin itself, not what it returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// It ran past its deadline and was interrupted.
    Timeout(Duration),
    /// It asked for more memory than its cap.
    Memory { limit_bytes: u64, asked_bytes: u64 },
    /// It trapped (panic, unreachable, division by zero, stack overflow, a WASI call, ...).
    Trap(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(d) => write!(f, "timed out after {} ms: the plugin was interrupted", d.as_millis()),
            CallError::Memory { limit_bytes, asked_bytes } => write!(
                f,
                "memory limit reached: it asked for {} MiB, the cap is {} MiB (capabilities.memory)",
                asked_bytes.div_ceil(1 << 20),
                limit_bytes >> 20
            ),
            CallError::Trap(m) => write!(f, "trapped: {m}"),
        }
    }
}

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        }
    }
}

/// What the plugin did during a call, in order: each host call and its answer ("run ...: exit
/// 0", "DENIED read /etc/passwd: ..."), and its log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A host call and what it answered.
    Call { denied: bool, text: String },
    /// A line for the module log.
    Log { level: LogLevel, message: String },
}

/// The result of one call with everything it did.
#[derive(Debug, Clone)]
pub struct CallReport<T> {
    pub result: Result<T, CallError>,
    pub events: Vec<Event>,
    /// Resource values it set (name, value).
    pub resources: Vec<(String, String)>,
    pub elapsed: Duration,
}

/// What a hook is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookInput {
    pub module: String,
    pub node: String,
    /// State names as the daemon prints them: STOP, WAIT, ALONE, PRIM, SECOND, UP.
    pub current: String,
    pub next: String,
    /// Why ("prim", "failover", "checker", ...).
    pub action: String,
    pub force: bool,
}

/// A custom check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub health: Health,
    pub message: String,
}

/// A live farm node, for `balance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmNode {
    pub name: String,
    pub power: u32,
    pub resources: Vec<(String, String)>,
}

/// Where a plugin's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and written to the cache if there is one).
    Compiled,
    /// Loaded from the cache.
    Cache,
}

/// Stops the epoch ticker when the last host or plugin is gone.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One per daemon: the engine (its configuration is the same for every plugin, so compiled
/// artifacts can be cached), the epoch ticker and the cache directory.
pub struct Host {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    ticker: Arc<Ticker>,
}

impl Host {
    /// A host whose compiled plugins are cached in `cache_dir` (created if missing; it must be
    /// writable by root only: cached code is trusted when loaded).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Host, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(STACK_LIMIT_BYTES);
        config.wasm_component_model(true);
        // Small reservations: a plugin's memory is capped far below 4 GiB anyway, and smaller
        // mappings make instantiation cheaper.
        config.memory_reservation(1 << 30);
        config.memory_guard_size(64 << 10);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        if let Some(d) = &cache_dir {
            use std::os::unix::fs::PermissionsExt;
            // Cached code is trusted when loaded: only the daemon's user may write there.
            let made = std::fs::create_dir_all(d)
                .and_then(|()| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)));
            if let Err(e) = made {
                return Err(PluginError::Engine(format!("cannot create cache directory {}: {e}", d.display())));
            }
        }
        Ok(Host { engine, cache_dir, ticker: Arc::new(Ticker { stop }) })
    }

    /// The engine (for tests and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads a plugin file: compiles it (or takes it from the cache), checks that it is built for
    /// this interface version, and prepares its instantiation with the module's grants.
    pub fn load(&self, path: &Path, grants: Grants) -> Result<Plugin, PluginError> {
        let wasm = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_path_buf(), source })?;
        self.load_bytes(path, &wasm, grants)
    }

    /// As [`Host::load`], from bytes (`path` names it in messages).
    pub fn load_bytes(&self, path: &Path, wasm: &[u8], grants: Grants) -> Result<Plugin, PluginError> {
        let (component, origin) = cache::component(&self.engine, wasm, self.cache_dir.as_deref())
            .map_err(|message| PluginError::Invalid { path: path.to_path_buf(), message })?;
        check_interface(&self.engine, &component, path)?;
        let mut linker: Linker<host::Ctx> = Linker::new(&self.engine);
        let setup = (|| {
            bindings::Module::add_to_linker::<_, HasSelf<_>>(&mut linker, |c| c)?;
            // Standard-library code may import WASI even if the plugin never uses it: link each
            // such import to a function that traps, with the import's name, if it is ever called.
            linker.define_unknown_imports_as_traps(&component)?;
            bindings::ModulePre::new(linker.instantiate_pre(&component)?)
        })();
        let pre = setup.map_err(|e| PluginError::Interface { path: path.to_path_buf(), message: format!("{e:#}") })?;
        Ok(Plugin {
            engine: self.engine.clone(),
            pre,
            grants: Arc::new(grants),
            path: path.to_path_buf(),
            hash: blake3::hash(wasm).to_hex().to_string(),
            origin,
            _ticker: self.ticker.clone(),
        })
    }
}

/// Refuses a component built for another version of the interface, or one that is not a tandem
/// plugin at all, with a message that says which.
fn check_interface(
    engine: &Engine,
    component: &wasmtime::component::Component,
    path: &Path,
) -> Result<(), PluginError> {
    let ty = component.component_type();
    let prefix = format!("{INTERFACE_PACKAGE}/");
    let mut names: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    names.extend(exports.iter().cloned());
    for n in &names {
        if let Some(rest) = n.strip_prefix(&prefix) {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(no version)");
            if version != INTERFACE_VERSION {
                return Err(PluginError::Version {
                    path: path.to_path_buf(),
                    found: format!("{INTERFACE_PACKAGE}@{version}"),
                });
            }
        }
    }
    let want = format!("{INTERFACE_PACKAGE}/plugin@{INTERFACE_VERSION}");
    if !exports.contains(&want) {
        return Err(PluginError::Interface {
            path: path.to_path_buf(),
            message: format!("it does not export {want} (exports: {}): is it a tandem plugin?", list(&exports)),
        });
    }
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    if let Some(other) = imports.iter().find(|n| !n.starts_with(&prefix) && !n.starts_with("wasi:")) {
        return Err(PluginError::Interface {
            path: path.to_path_buf(),
            message: format!("it imports {other}, which tandem does not provide"),
        });
    }
    Ok(())
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A loaded plugin, ready to be called for one module. Cheap to share: calls take `&self` and
/// may run concurrently (each in its own store).
pub struct Plugin {
    engine: Engine,
    pre: bindings::ModulePre<host::Ctx>,
    grants: Arc<Grants>,
    path: PathBuf,
    hash: String,
    origin: Origin,
    _ticker: Arc<Ticker>,
}

impl Plugin {
    /// The plugin's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// blake3 of the plugin's bytes (hex).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Compiled now or loaded from the cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The grants this plugin runs with.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Calls a hook. `Ok(Err(message))`: the plugin says the hook failed.
    pub fn hook(&self, point: HookPoint, input: &HookInput, deadline: Duration) -> CallReport<Result<(), String>> {
        let ctx = bindings::tandem::module::types::HookContext {
            module: input.module.clone(),
            node: input.node.clone(),
            current: state(&input.current),
            next: state(&input.next),
            action: input.action.clone(),
            force: input.force,
        };
        self.call(deadline, move |store, m| {
            let p = m.tandem_module_plugin();
            match point {
                HookPoint::Prestart => p.call_prestart(store, &ctx),
                HookPoint::StartPrim => p.call_start_prim(store, &ctx),
                HookPoint::StopPrim => p.call_stop_prim(store, &ctx),
                HookPoint::StartSecond => p.call_start_second(store, &ctx),
                HookPoint::StopSecond => p.call_stop_second(store, &ctx),
                HookPoint::StartBoth => p.call_start_both(store, &ctx),
                HookPoint::StopBoth => p.call_stop_both(store, &ctx),
                HookPoint::Poststop => p.call_poststop(store, &ctx),
            }
        })
    }

    /// Calls the custom check `checker`.
    pub fn check(&self, checker: &str, deadline: Duration) -> CallReport<CheckOutcome> {
        self.call(deadline, |store, m| {
            m.tandem_module_plugin()
                .call_check(store, checker)
                .map(|r| CheckOutcome { health: r.health, message: r.message })
        })
    }

    /// Calls the custom failover rule with the module's resources.
    pub fn decide(&self, resources: &[(String, String)], deadline: Duration) -> CallReport<Option<Decision>> {
        let rs: Vec<_> = resources
            .iter()
            .map(|(n, v)| bindings::tandem::module::types::ResourceValue { name: n.clone(), value: v.clone() })
            .collect();
        self.call(deadline, |store, m| m.tandem_module_plugin().call_decide(store, &rs))
    }

    /// Calls the farm weighting with the live nodes. A wrong number of weights is a trap.
    pub fn balance(&self, nodes: &[FarmNode], deadline: Duration) -> CallReport<Option<Vec<u32>>> {
        let ns: Vec<_> = nodes
            .iter()
            .map(|n| bindings::tandem::module::types::FarmNode {
                name: n.name.clone(),
                power: n.power,
                resources: n
                    .resources
                    .iter()
                    .map(|(k, v)| bindings::tandem::module::types::ResourceValue { name: k.clone(), value: v.clone() })
                    .collect(),
            })
            .collect();
        let count = nodes.len();
        let mut report = self.call(deadline, |store, m| m.tandem_module_plugin().call_balance(store, &ns));
        if let Ok(Some(w)) = &report.result {
            if w.len() != count {
                report.result = Err(CallError::Trap(format!("balance returned {} weights for {count} nodes", w.len())));
            }
        }
        report
    }

    /// Only what every call pays before the plugin runs: a store and a fresh instance (for the
    /// benchmark).
    #[doc(hidden)]
    pub fn instantiate_only(&self) -> Result<(), CallError> {
        self.call(Duration::from_secs(5), |_, _| Ok(())).result
    }

    /// One call in a fresh instance with the deadline and the memory cap.
    fn call<R>(
        &self,
        deadline: Duration,
        f: impl FnOnce(&mut Store<host::Ctx>, &bindings::Module) -> wasmtime::Result<R>,
    ) -> CallReport<R> {
        let started = Instant::now();
        let ctx = host::Ctx::new(self.grants.clone(), started + deadline);
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limits);
        let ticks = deadline.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let result = self.pre.instantiate(&mut store).and_then(|m| f(&mut store, &m));
        let elapsed = started.elapsed();
        let ctx = store.into_data();
        let result = result.map_err(|e| classify(e, &ctx, deadline));
        CallReport { result, events: ctx.events, resources: ctx.resources, elapsed }
    }
}

/// Turns a wasmtime error into what happened, in words an operator can act on.
fn classify(e: wasmtime::Error, ctx: &host::Ctx, deadline: Duration) -> CallError {
    if let Some(asked) = ctx.limits.asked {
        return CallError::Memory { limit_bytes: ctx.limits.cap as u64, asked_bytes: asked as u64 };
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::Interrupt {
            return CallError::Timeout(deadline);
        }
        if *trap == wasmtime::Trap::StackOverflow {
            return CallError::Trap(format!("stack overflow (the stack is capped at {} KiB)", STACK_LIMIT_BYTES >> 10));
        }
        return CallError::Trap(trap.to_string());
    }
    let text = format!("{e:#}");
    if let Some(rest) = text.split("unknown import: `").nth(1) {
        let name = rest.split('`').next().unwrap_or(rest);
        return CallError::Trap(format!(
            "it called {name}, which tandem does not provide: plugins get no WASI (file system, clock, \
             environment, stdio); use the host interface (log, read-file, ...)"
        ));
    }
    CallError::Trap(text.lines().next().unwrap_or("").to_string())
}

fn state(s: &str) -> bindings::tandem::module::types::State {
    use bindings::tandem::module::types::State;
    match s.to_ascii_uppercase().as_str() {
        "WAIT" => State::Wait,
        "ALONE" => State::Alone,
        "PRIM" => State::Prim,
        "SECOND" => State::Second,
        "UP" => State::Up,
        _ => State::Stop,
    }
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Restart => "restart",
            Decision::Stopstart => "stopstart",
            Decision::Wait => "wait",
            Decision::Stop => "stop",
        }
    }
}

/// The shipped plugins' directory in a source tree: `plugins/dist/` (scripts/build-plugins.sh
/// puts every plugin there as NAME.wasm).
pub fn dist_dir(repo: &Path) -> PathBuf {
    repo.join("plugins/dist")
}
