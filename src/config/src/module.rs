//! `module.toml`: one mirror or farm module (its nodes, heartbeat, virtual IPs, replication or
//! load balancing, failover policy, checkers and hooks).

use crate::error::ConfigErrors;
use crate::units::{self, format_duration, format_size};
use crate::walk::{Ctx, Sp, Tbl};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Highest module id.
pub const MAX_MODULE_ID: u8 = 64;
/// Default heartbeat pulse.
pub const DEFAULT_PULSE: Duration = Duration::from_millis(200);
/// Default heartbeat timeout.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default VIP interface.
pub const DEFAULT_VIP_INTERFACE: &str = "eth0";
/// Default replication zone size (1 MiB).
pub const DEFAULT_ZONE_SIZE_BYTES: u64 = 1 << 20;
/// Smallest zone size (4 KiB).
pub const MIN_ZONE_SIZE_BYTES: u64 = 4 << 10;
/// Largest zone size (1 GiB).
pub const MAX_ZONE_SIZE_BYTES: u64 = 1 << 30;
/// Replicated directories per module (each is one FUSE mount on the primary).
pub const MAX_REPLICATED_DIRS: usize = 64;
/// Default failover loop limit.
pub const DEFAULT_LOOP_LIMIT: u32 = 3;
/// Default failover loop interval (24 h).
pub const DEFAULT_LOOP_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Default checker interval.
pub const DEFAULT_CHECKER_INTERVAL: Duration = Duration::from_secs(1);
/// Default hook timeout.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed and validated `module.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleConfig {
    /// Module name (`[a-z0-9][a-z0-9-]*`, at most 32 characters), unique in the cluster.
    pub name: String,
    /// Mirror (2 nodes, replicated directories) or farm (N nodes, load-balanced).
    pub kind: ModuleKind,
    /// Module id, 1..=64, unique in the cluster; selects the module's ports (see
    /// [`crate::ClusterConfig::heartbeat_port`]).
    pub id: u8,
    /// WASM plugin holding the module logic (start/stop/check). A relative path in the file is
    /// resolved against the directory of `module.toml`.
    pub plugin: Option<PathBuf>,
    /// The nodes that run the module (names of cluster nodes), in file order. Mirror: exactly 2;
    /// farm: 2 or more.
    pub nodes: Vec<ModuleNode>,
    /// Heartbeat timing.
    pub heartbeat: Heartbeat,
    /// Virtual IPs (none for a VM module, which keeps its own address).
    pub vips: Vec<Vip>,
    /// Replication settings: always `Some` for a mirror (defaults filled in), `None` for a farm.
    pub replication: Option<Replication>,
    /// Load-balancing settings: always `Some` for a farm (defaults filled in), `None` for a mirror.
    pub farm: Option<Farm>,
    /// Automatic failover policy.
    pub failover: Failover,
    /// Health checkers, in file order.
    pub checkers: Vec<Checker>,
    /// Hook commands.
    pub hooks: Hooks,
    /// What the plugin may do (`[capabilities]`; all denied by default).
    pub capabilities: Capabilities,
    /// Parameters passed to the plugin (`[params]`), as strings.
    pub params: std::collections::BTreeMap<String, String>,
}

/// The two kinds of module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// Two nodes, primary + secondary, synchronous replication of directories.
    Mirror,
    /// Two or more nodes all running the application, clients shared by hashing.
    Farm,
}

impl ModuleKind {
    /// `"mirror"` or `"farm"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Mirror => "mirror",
            ModuleKind::Farm => "farm",
        }
    }
}

/// A node of a module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleNode {
    /// Name of a cluster node.
    pub name: String,
    /// Farm load-balancing weight (≥ 1, default 1): a node of power 2 gets twice the share of
    /// clients of a node of power 1. Always 1 for a mirror.
    pub power: u32,
}

/// Heartbeat timing (heartbeats are sent on every cluster network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Heartbeat {
    /// Interval between two heartbeats (default 200 ms).
    pub pulse: Duration,
    /// A peer is declared lost after this long without any heartbeat (default 1 s; at least
    /// 2 pulses).
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { pulse: DEFAULT_PULSE, timeout: DEFAULT_HEARTBEAT_TIMEOUT }
    }
}

/// A virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Vip {
    /// The address (IPv4 or IPv6, unicast).
    pub address: IpAddr,
    /// Prefix length of the subnet it is added to (1..=32 for IPv4, 1..=128 for IPv6).
    pub prefix_len: u8,
    /// Interface it is added to on the node (default `eth0`).
    pub interface: String,
}

/// Replication settings of a mirror.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replication {
    /// When a replicated write is acknowledged to the application (default `written`).
    pub ack: AckMode,
    /// The replicated directories (may be empty: a mirror that only moves a VIP and restarts).
    pub dirs: Vec<ReplicatedDir>,
    /// Upper bound on resynchronisation traffic, in bytes per second (`None`: unlimited).
    pub resync_bandwidth_bytes_per_sec: Option<u64>,
    /// Keep the activity log while primary with the secondary in sync (default true). Without
    /// it a write into a new zone costs no record, and a crash of the primary costs its catch-up
    /// a comparison of every file (DRBD's `al-updates no`).
    pub activity_log: bool,
}

impl Default for Replication {
    fn default() -> Self {
        Replication { ack: AckMode::Written, dirs: Vec::new(), resync_bandwidth_bytes_per_sec: None, activity_log: true }
    }
}

/// When the secondary acknowledges a replicated write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// As soon as the secondary has received it (in memory).
    Received,
    /// When the secondary has written it to its file (page cache). The default.
    Written,
    /// When the secondary has made it durable (fsync).
    Durable,
}

/// A replicated directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicatedDir {
    /// Absolute path of the directory (the same on both nodes).
    pub path: PathBuf,
    /// Glob patterns, relative to `path`, of files not replicated.
    pub exclude: Vec<String>,
    /// Granularity of change tracking while ALONE, in bytes (power of two, 4 KiB..=1 GiB,
    /// default 1 MiB).
    pub zone_size_bytes: u64,
}

/// Load-balancing settings of a farm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Farm {
    /// How clients are assigned to nodes.
    pub balance: Balance,
}

/// Farm client hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Hash of the client IP: a client always reaches the same node (session affinity). Default.
    #[default]
    ClientIp,
    /// Hash of the client IP and port: finer spreading, no affinity (stateless services).
    ClientIpPort,
}

/// Automatic failover policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failover {
    /// Whether the module fails over automatically (default true). When false a node that loses
    /// its peer waits for the administrator.
    pub enabled: bool,
    /// Which node should be primary (mirror only).
    pub preferred: Preferred,
    /// How many automatic restarts/failovers within `loop_interval` before the module is stopped
    /// instead (default 3; 0 = no limit).
    pub loop_limit: u32,
    /// The window of `loop_limit` (default 24 h).
    pub loop_interval: Duration,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            enabled: true,
            preferred: Preferred::Alone,
            loop_limit: DEFAULT_LOOP_LIMIT,
            loop_interval: DEFAULT_LOOP_INTERVAL,
        }
    }
}

/// Preferred primary of a mirror.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preferred {
    /// This node becomes primary whenever it is up with up-to-date data (automatic swap back).
    Node(String),
    /// No preference: whichever node is (or becomes) ALONE stays primary. The default.
    Alone,
    /// The node that was primary last, if it has up-to-date data.
    Last,
}

/// A health checker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checker {
    /// Checker name, unique in the module.
    pub name: String,
    /// What is checked, with the type's parameters.
    pub kind: CheckerKind,
    /// What to do on failure; `None` for splitbrain checkers (they decide who may be primary,
    /// they have no action).
    pub action: Option<CheckerAction>,
    /// Time between two checks (default 1 s).
    pub interval: Duration,
    /// Time allowed for one check (default: `interval`).
    pub timeout: Duration,
}

/// What a checker checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckerKind {
    /// At least `min_count` processes named `process` run.
    Process {
        /// Process name (as in /proc/PID/comm).
        process: String,
        /// Minimum number of such processes (default 1).
        min_count: u32,
    },
    /// A network interface is up (link).
    Interface {
        /// Interface name.
        interface: String,
    },
    /// An address (normally the VIP) is present on this node.
    Ip {
        /// The address.
        address: IpAddr,
    },
    /// A TCP port accepts connections.
    Tcp {
        /// Address to connect to.
        address: IpAddr,
        /// Port to connect to.
        port: u16,
    },
    /// An address answers ping.
    Ping {
        /// Address to ping.
        address: IpAddr,
    },
    /// Another module is in a Ready state on this node.
    Module {
        /// The other module's name.
        module: String,
    },
    /// The plugin's check function (requires `plugin`).
    Custom,
    /// Witnesses that decide which side may be primary after a network split (mirror only).
    Splitbrain {
        /// The witnesses (at least one).
        witnesses: Vec<Witness>,
    },
}

impl CheckerKind {
    /// The `type` string of this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckerKind::Process { .. } => "process",
            CheckerKind::Interface { .. } => "interface",
            CheckerKind::Ip { .. } => "ip",
            CheckerKind::Tcp { .. } => "tcp",
            CheckerKind::Ping { .. } => "ping",
            CheckerKind::Module { .. } => "module",
            CheckerKind::Custom => "custom",
            CheckerKind::Splitbrain { .. } => "splitbrain",
        }
    }
}

/// A split-brain witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Witness {
    /// Reachable if it answers ping (`"IP"`).
    Ping(IpAddr),
    /// Reachable if it accepts a TCP connection (`"tcp:IP:PORT"`, IPv6 as `"tcp:[IP]:PORT"`).
    Tcp(SocketAddr),
}

/// Action of a checker on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckerAction {
    /// Restart the module on this node (stop and start hooks again).
    Restart,
    /// Stop and start the module: a primary fails over to its peer.
    Stopstart,
    /// Go to WAIT until the checker succeeds again.
    Wait,
    /// Stop the module on this node.
    Stop,
}

/// Hook commands; each is optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hooks {
    /// Default timeout of a hook (default 30 s).
    pub timeout: Duration,
    /// Before the module starts, on every node.
    pub prestart: Option<Hook>,
    /// Mirror: this node becomes primary.
    pub start_prim: Option<Hook>,
    /// Mirror: this node stops being primary.
    pub stop_prim: Option<Hook>,
    /// Mirror: this node becomes secondary.
    pub start_second: Option<Hook>,
    /// Mirror: this node stops being secondary.
    pub stop_second: Option<Hook>,
    /// Farm: the node starts serving; mirror: any Ready state is entered.
    pub start_both: Option<Hook>,
    /// Farm: the node stops serving; mirror: a Ready state is left.
    pub stop_both: Option<Hook>,
    /// After the module stopped, on every node.
    pub poststop: Option<Hook>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            timeout: DEFAULT_HOOK_TIMEOUT,
            prestart: None,
            start_prim: None,
            stop_prim: None,
            start_second: None,
            stop_second: None,
            start_both: None,
            stop_both: None,
            poststop: None,
        }
    }
}

/// The points where hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// `prestart`
    Prestart,
    /// `start_prim`
    StartPrim,
    /// `stop_prim`
    StopPrim,
    /// `start_second`
    StartSecond,
    /// `stop_second`
    StopSecond,
    /// `start_both`
    StartBoth,
    /// `stop_both`
    StopBoth,
    /// `poststop`
    Poststop,
}

impl HookPoint {
    /// Every hook point, in the order of the file reference.
    pub const ALL: [HookPoint; 8] = [
        HookPoint::Prestart,
        HookPoint::StartPrim,
        HookPoint::StopPrim,
        HookPoint::StartSecond,
        HookPoint::StopSecond,
        HookPoint::StartBoth,
        HookPoint::StopBoth,
        HookPoint::Poststop,
    ];

    /// The key of this hook in `[hooks]`.
    pub fn key(self) -> &'static str {
        match self {
            HookPoint::Prestart => "prestart",
            HookPoint::StartPrim => "start_prim",
            HookPoint::StopPrim => "stop_prim",
            HookPoint::StartSecond => "start_second",
            HookPoint::StopSecond => "stop_second",
            HookPoint::StartBoth => "start_both",
            HookPoint::StopBoth => "stop_both",
            HookPoint::Poststop => "poststop",
        }
    }

    /// True for the hooks that only a mirror has.
    pub fn mirror_only(self) -> bool {
        matches!(self, HookPoint::StartPrim | HookPoint::StopPrim | HookPoint::StartSecond | HookPoint::StopSecond)
    }
}

impl Hooks {
    /// The hook at a point.
    pub fn get(&self, point: HookPoint) -> Option<&Hook> {
        match point {
            HookPoint::Prestart => self.prestart.as_ref(),
            HookPoint::StartPrim => self.start_prim.as_ref(),
            HookPoint::StopPrim => self.stop_prim.as_ref(),
            HookPoint::StartSecond => self.start_second.as_ref(),
            HookPoint::StopSecond => self.stop_second.as_ref(),
            HookPoint::StartBoth => self.start_both.as_ref(),
            HookPoint::StopBoth => self.stop_both.as_ref(),
            HookPoint::Poststop => self.poststop.as_ref(),
        }
    }

    fn slot(&mut self, point: HookPoint) -> &mut Option<Hook> {
        match point {
            HookPoint::Prestart => &mut self.prestart,
            HookPoint::StartPrim => &mut self.start_prim,
            HookPoint::StopPrim => &mut self.stop_prim,
            HookPoint::StartSecond => &mut self.start_second,
            HookPoint::StopSecond => &mut self.stop_second,
            HookPoint::StartBoth => &mut self.start_both,
            HookPoint::StopBoth => &mut self.stop_both,
            HookPoint::Poststop => &mut self.poststop,
        }
    }
}

/// One hook command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hook {
    /// Command and arguments; `argv[0]` is an absolute path. Run directly, not by a shell.
    pub argv: Vec<String>,
    /// Time allowed (the hook's own `timeout`, else `[hooks] timeout`).
    pub timeout: Duration,
}

impl ModuleConfig {
    /// The module node with this name.
    pub fn node(&self, name: &str) -> Option<&ModuleNode> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Positions (line, column) of the values that cross-file checks point at.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModuleSpans {
    pub name: (usize, usize),
    pub id: (usize, usize),
    /// Position of `node[i].name`, for each entry of `nodes`.
    pub nodes: Vec<(usize, usize)>,
}

const TOP_KEYS: &[&str] = &[
    "name",
    "kind",
    "id",
    "plugin",
    "node",
    "heartbeat",
    "vip",
    "replication",
    "farm",
    "failover",
    "checker",
    "hooks",
    "capabilities",
    "params",
];
const CHECKER_TYPES: &[&str] = &["process", "interface", "ip", "tcp", "ping", "module", "custom", "splitbrain"];
const CHECKER_COMMON: &[&str] = &["name", "type", "action", "interval", "timeout"];
const CHECKER_SPECIFIC: &[(&str, &[&str])] = &[
    ("process", &["process", "min_count"]),
    ("interface", &["interface"]),
    ("ip", &["address"]),
    ("tcp", &["address", "port"]),
    ("ping", &["address"]),
    ("module", &["module"]),
    ("custom", &[]),
    ("splitbrain", &["witnesses"]),
];

/// Parses and validates the text of a `module.toml`; `file` is used in error messages and to
/// resolve a relative `plugin`.
pub fn parse_module(file: &Path, text: &str) -> Result<ModuleConfig, ConfigErrors> {
    parse_module_spanned(file, text).map(|(m, _)| m)
}

pub(crate) fn parse_module_spanned(file: &Path, text: &str) -> Result<(ModuleConfig, ModuleSpans), ConfigErrors> {
    let mut ctx = Ctx::new(file, text);
    let result = parse_module_inner(&mut ctx, file, text);
    let errors = ctx.into_errors();
    match result {
        Some(m) if errors.is_empty() => Ok(m),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Reads and parses a `module.toml`.
pub fn load_module(path: impl AsRef<Path>) -> Result<ModuleConfig, ConfigErrors> {
    let path = path.as_ref();
    let text = crate::read_file(path)?;
    parse_module(path, &text)
}

fn parse_module_inner(ctx: &mut Ctx, file: &Path, text: &str) -> Option<(ModuleConfig, ModuleSpans)> {
    let doc = crate::walk::parse_doc(ctx, text)?;
    let root = Tbl::of(doc.as_item(), String::new(), "the top level".into(), 0)?;
    root.check_keys(ctx, TOP_KEYS, &[]);
    let mut spans = ModuleSpans::default();

    let name = root.name(ctx, "name", true);
    if let Some(n) = &name {
        spans.name = ctx.loc(n.off);
    }
    let kind = root.req_str(ctx, "kind", "\"mirror\" or \"farm\"").and_then(|_| {
        root.choice(ctx, "kind", &["mirror", "farm"]).map(|k| match k.val.as_str() {
            "mirror" => ModuleKind::Mirror,
            _ => ModuleKind::Farm,
        })
    });
    if !root.has("id") {
        root.missing(ctx, "id", " (an integer from 1 to 64, unique in the cluster)");
    }
    let id = root.int(ctx, "id", 1, i64::from(MAX_MODULE_ID));
    if let Some(i) = &id {
        spans.id = ctx.loc(i.off);
    }
    let plugin = root.str(ctx, "plugin", "a path string to a .wasm file").and_then(|p| {
        if !p.val.ends_with(".wasm") {
            ctx.error(p.off, "plugin", format!("plugin \"{}\" must be a .wasm file", p.val));
            return None;
        }
        let path = PathBuf::from(&p.val);
        Some(if path.is_relative() { file.parent().map(|d| d.join(&path)).unwrap_or(path) } else { path })
    });
    let plugin_set = root.has("plugin");

    // Nodes.
    let nodes = parse_nodes(ctx, &root, kind, &mut spans);

    let heartbeat = parse_heartbeat(ctx, &root);
    let vips = parse_vips(ctx, &root);

    // Replication (mirror) and farm sections.
    let mut replication = None;
    let mut farm = None;
    match kind {
        Some(ModuleKind::Mirror) => {
            if let Some(e) = root.get("farm") {
                ctx.error(
                    e.off(),
                    "farm",
                    "[farm] is only valid in a farm module; this module is a mirror (use [replication])",
                );
            }
            replication = Some(parse_replication(ctx, &root));
        }
        Some(ModuleKind::Farm) => {
            if let Some(e) = root.get("replication") {
                ctx.error(
                    e.off(),
                    "replication",
                    "[replication] is only valid in a mirror module; a farm does not replicate data",
                );
            }
            farm = Some(parse_farm(ctx, &root));
        }
        None => {}
    }

    let failover = parse_failover(ctx, &root, kind, &nodes);
    let checkers = parse_checkers(ctx, &root, kind, plugin_set, name.as_ref().map(|n| n.val.as_str()));
    let hooks = parse_hooks(ctx, &root, kind);
    check_plugin_sections(ctx, &root, plugin_set);
    let capabilities = parse_capabilities(ctx, &root);
    let params = parse_params(ctx, &root);

    let config = ModuleConfig {
        name: name?.val,
        kind: kind?,
        id: id?.val as u8,
        plugin,
        nodes,
        heartbeat,
        vips,
        replication,
        farm,
        failover,
        checkers,
        hooks,
        capabilities,
        params,
    };
    Some((config, spans))
}

fn parse_nodes(ctx: &mut Ctx, root: &Tbl, kind: Option<ModuleKind>, spans: &mut ModuleSpans) -> Vec<ModuleNode> {
    let mut nodes = Vec::new();
    if !root.has("node") {
        root.missing(ctx, "node", " (declare the module's nodes as [[node]] tables with a `name`)");
        return nodes;
    }
    let tables = root.tables(ctx, "node");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &tables {
        t.check_keys(ctx, &["name", "power"], &[]);
        let name = t.name(ctx, "name", true);
        let mut power = 1;
        if let Some(e) = t.get("power") {
            if kind == Some(ModuleKind::Mirror) {
                ctx.error(
                    e.key_off,
                    t.key_path("power"),
                    "`power` applies only to farm nodes (it weights load balancing); a mirror node has no power: remove it",
                );
            } else if let Some(p) = t.int(ctx, "power", 1, i64::from(u32::MAX)) {
                power = p.val as u32;
            }
        }
        if let Some(n) = name {
            if let Some(&first) = seen.get(&n.val) {
                let (l, _) = ctx.loc(first);
                ctx.error(
                    n.off,
                    t.key_path("name"),
                    format!("duplicate node name \"{}\" (first listed on line {l})", n.val),
                );
            } else {
                seen.insert(n.val.clone(), n.off);
                spans.nodes.push(ctx.loc(n.off));
                nodes.push(ModuleNode { name: n.val, power });
            }
        }
    }
    let at = root.get("node").map(|e| e.off()).unwrap_or(root.off);
    let is_array = root.get("node").is_some_and(|e| e.item.is_array_of_tables() || e.item.is_array());
    match kind {
        _ if !is_array => {}
        Some(ModuleKind::Mirror) if tables.len() > 2 => {
            ctx.error(
                tables[2].off,
                "node",
                format!("a mirror module has exactly 2 nodes, found {}; use a farm module for more", tables.len()),
            );
        }
        Some(ModuleKind::Mirror) if tables.len() < 2 => {
            ctx.error(at, "node", format!("a mirror module has exactly 2 nodes, found {}", tables.len()));
        }
        Some(ModuleKind::Farm) if tables.len() < 2 => {
            ctx.error(at, "node", format!("a farm module needs at least 2 nodes, found {}", tables.len()));
        }
        _ => {}
    }
    nodes
}

fn parse_heartbeat(ctx: &mut Ctx, root: &Tbl) -> Heartbeat {
    let mut hb = Heartbeat::default();
    let Some(t) = root.table(ctx, "heartbeat") else {
        return hb;
    };
    t.check_keys(ctx, &["pulse", "timeout"], &[]);
    let pulse = t.positive_duration(ctx, "pulse");
    let timeout = t.positive_duration(ctx, "timeout");
    if let Some(p) = &pulse {
        hb.pulse = p.val;
    }
    if let Some(to) = &timeout {
        hb.timeout = to.val;
    }
    let pulse_ok = pulse.is_some() || !t.has("pulse");
    let timeout_ok = timeout.is_some() || !t.has("timeout");
    if pulse_ok && timeout_ok && hb.timeout < hb.pulse * 2 {
        let (key, off) = match (&timeout, &pulse) {
            (Some(to), _) => ("timeout", to.off),
            (None, Some(p)) => ("pulse", p.off),
            (None, None) => ("timeout", t.off),
        };
        let relation = if hb.timeout <= hb.pulse { "must be greater than" } else { "is too close to" };
        ctx.error(
            off,
            t.key_path(key),
            format!(
                "timeout {} {relation} pulse {}: it must be at least 2 pulses ({}) so that one lost heartbeat does not cause a failover",
                format_duration(hb.timeout),
                format_duration(hb.pulse),
                format_duration(hb.pulse * 2)
            ),
        );
    }
    hb
}

fn check_ifname(ctx: &mut Ctx, key: &str, s: &Sp<String>) -> bool {
    let v = &s.val;
    if v.is_empty()
        || v.len() > 15
        || v.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control())
        || v == "."
        || v == ".."
    {
        ctx.error(s.off, key, format!("invalid interface name \"{v}\": 1 to 15 characters, no '/' or spaces"));
        return false;
    }
    true
}

fn parse_vips(ctx: &mut Ctx, root: &Tbl) -> Vec<Vip> {
    let mut vips = Vec::new();
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    for t in root.tables(ctx, "vip") {
        t.check_keys(ctx, &["address", "interface"], &[]);
        let address =
            t.req_str(ctx, "address", "a CIDR string such as \"198.18.0.100/24\"").and_then(
                |s| match units::parse_cidr(&s.val) {
                    Ok((ip, len)) => {
                        let bad = ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]);
                        if bad {
                            ctx.error(
                                s.off,
                                t.key_path("address"),
                                format!("{ip} cannot be a virtual IP: it must be a unicast address"),
                            );
                            return None;
                        }
                        Some((ip, len, s.off))
                    }
                    Err(m) => {
                        ctx.error(s.off, t.key_path("address"), m);
                        None
                    }
                },
            );
        let interface = match t.str(ctx, "interface", "an interface name string such as \"eth0\"") {
            Some(s) if check_ifname(ctx, &t.key_path("interface"), &s) => Some(s.val),
            Some(_) => None,
            None => (!t.has("interface")).then(|| DEFAULT_VIP_INTERFACE.to_string()),
        };
        if let (Some((ip, len, off)), Some(interface)) = (address, interface) {
            if let Some(&first) = seen.get(&ip) {
                let (l, _) = ctx.loc(first);
                ctx.error(
                    off,
                    t.key_path("address"),
                    format!("duplicate virtual IP {ip} (first declared on line {l})"),
                );
                continue;
            }
            seen.insert(ip, off);
            vips.push(Vip { address: ip, prefix_len: len, interface });
        }
    }
    vips
}

/// True if the path has `..` components.
fn has_parent_dir(p: &Path) -> bool {
    p.components().any(|c| c == Component::ParentDir)
}

fn parse_replication(ctx: &mut Ctx, root: &Tbl) -> Replication {
    let mut rep = Replication::default();
    let Some(t) = root.table(ctx, "replication") else {
        return rep;
    };
    t.check_keys(
        ctx,
        &["ack", "dir", "resync_bandwidth", "activity_log"],
        &[
            ("zone_size", "belongs in each [[replication.dir]]"),
            ("exclude", "belongs in each [[replication.dir]]"),
            ("path", "belongs in each [[replication.dir]]"),
        ],
    );
    if let Some(a) = t.choice(ctx, "ack", &["received", "written", "durable"]) {
        rep.ack = match a.val.as_str() {
            "received" => AckMode::Received,
            "durable" => AckMode::Durable,
            _ => AckMode::Written,
        };
    }
    if let Some(b) = t.bool(ctx, "activity_log") {
        rep.activity_log = b.val;
    }
    if let Some(s) = t.str(ctx, "resync_bandwidth", "a bandwidth string such as \"100MiB/s\"") {
        match units::parse_bandwidth(&s.val) {
            Ok(0) => {
                ctx.error(s.off, t.key_path("resync_bandwidth"), "must be greater than zero (omit it for no limit)")
            }
            Ok(b) => rep.resync_bandwidth_bytes_per_sec = Some(b),
            Err(m) => ctx.error(s.off, t.key_path("resync_bandwidth"), m),
        }
    }
    let mut seen: Vec<(PathBuf, usize, String)> = Vec::new();
    for (index, d) in t.tables(ctx, "dir").into_iter().enumerate() {
        d.check_keys(ctx, &["path", "exclude", "zone_size"], &[]);
        let path = d.req_str(ctx, "path", "an absolute path string").and_then(|s| {
            let p = PathBuf::from(&s.val);
            if index >= MAX_REPLICATED_DIRS {
                ctx.error(
                    s.off,
                    d.key_path("path"),
                    format!("a module replicates at most {MAX_REPLICATED_DIRS} directories"),
                );
                return None;
            }
            if !p.is_absolute() {
                ctx.error(
                    s.off,
                    d.key_path("path"),
                    format!("\"{}\" is not an absolute path (it must start with '/')", s.val),
                );
                return None;
            }
            if has_parent_dir(&p) || p.parent().is_none() {
                ctx.error(
                    s.off,
                    d.key_path("path"),
                    format!("\"{}\" cannot be replicated: use a plain directory path, not '/' and without '..'", s.val),
                );
                return None;
            }
            let p: PathBuf = p.components().collect();
            for (other, _, other_key) in &seen {
                if p.starts_with(other) || other.starts_with(&p) {
                    ctx.error(
                        s.off,
                        d.key_path("path"),
                        format!(
                            "\"{}\" overlaps {other_key} \"{}\": replicated directories must not contain one another",
                            s.val,
                            other.display()
                        ),
                    );
                    return None;
                }
            }
            seen.push((p.clone(), s.off, d.key_path("path")));
            Some(p)
        });
        let mut exclude = Vec::new();
        if let Some(list) = d.str_array(ctx, "exclude", "glob pattern strings") {
            for (i, pat) in list.val.into_iter().enumerate() {
                let key = format!("{}[{i}]", d.key_path("exclude"));
                if pat.val.is_empty() {
                    ctx.error(pat.off, key, "empty pattern");
                } else if pat.val.starts_with('/') || has_parent_dir(Path::new(&pat.val)) {
                    ctx.error(
                        pat.off,
                        key,
                        format!(
                            "pattern \"{}\" must be relative to the replicated directory (no leading '/', no '..')",
                            pat.val
                        ),
                    );
                } else if pat.val.matches('[').count() != pat.val.matches(']').count() {
                    ctx.error(pat.off, key, format!("pattern \"{}\" has unbalanced brackets", pat.val));
                } else {
                    exclude.push(pat.val);
                }
            }
        }
        let mut zone_size_bytes = DEFAULT_ZONE_SIZE_BYTES;
        if let Some(z) = d.size(ctx, "zone_size") {
            if !z.val.is_power_of_two() || !(MIN_ZONE_SIZE_BYTES..=MAX_ZONE_SIZE_BYTES).contains(&z.val) {
                ctx.error(
                    z.off,
                    d.key_path("zone_size"),
                    format!(
                        "zone size {} must be a power of two from 4KiB to 1GiB (e.g. \"1MiB\")",
                        format_size(z.val)
                    ),
                );
            } else {
                zone_size_bytes = z.val;
            }
        }
        if let Some(path) = path {
            rep.dirs.push(ReplicatedDir { path, exclude, zone_size_bytes });
        }
    }
    rep
}

fn parse_farm(ctx: &mut Ctx, root: &Tbl) -> Farm {
    let mut farm = Farm::default();
    let Some(t) = root.table(ctx, "farm") else {
        return farm;
    };
    t.check_keys(ctx, &["balance"], &[]);
    if let Some(b) = t.choice(ctx, "balance", &["client-ip", "client-ip-port"]) {
        farm.balance = if b.val == "client-ip-port" { Balance::ClientIpPort } else { Balance::ClientIp };
    }
    farm
}

fn parse_failover(ctx: &mut Ctx, root: &Tbl, kind: Option<ModuleKind>, nodes: &[ModuleNode]) -> Failover {
    let mut f = Failover::default();
    let Some(t) = root.table(ctx, "failover") else {
        return f;
    };
    t.check_keys(ctx, &["enabled", "preferred", "loop_limit", "loop_interval"], &[]);
    if let Some(b) = t.bool(ctx, "enabled") {
        f.enabled = b.val;
    }
    if let Some(p) = t.str(ctx, "preferred", "a node name, \"alone\" or \"last\"") {
        if kind == Some(ModuleKind::Farm) {
            ctx.error(
                p.off,
                t.key_path("preferred"),
                "`preferred` applies only to mirror modules: a farm has no primary",
            );
        } else {
            match p.val.as_str() {
                "alone" => f.preferred = Preferred::Alone,
                "last" => f.preferred = Preferred::Last,
                n if nodes.iter().any(|m| m.name == n) => f.preferred = Preferred::Node(n.to_string()),
                n => {
                    let names: Vec<&str> = nodes.iter().map(|m| m.name.as_str()).collect();
                    ctx.error(
                        p.off,
                        t.key_path("preferred"),
                        format!(
                            "preferred primary \"{n}\" is not a node of this module (nodes: {}); expected one of them, \"alone\" or \"last\"",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(n) = t.int(ctx, "loop_limit", 0, i64::from(u32::MAX)) {
        f.loop_limit = n.val as u32;
    }
    if let Some(d) = t.positive_duration(ctx, "loop_interval") {
        f.loop_interval = d.val;
    }
    f
}

fn parse_witness(s: &str) -> Result<Witness, String> {
    if let Some(rest) = s.strip_prefix("tcp:") {
        return rest
            .parse::<SocketAddr>()
            .map(Witness::Tcp)
            .map_err(|_| format!("invalid witness \"{s}\": expected \"tcp:IP:PORT\" (IPv6 as \"tcp:[IP]:PORT\")"));
    }
    s.parse::<IpAddr>().map(Witness::Ping).map_err(|_| {
        format!("invalid witness \"{s}\": expected an IP address to ping (\"198.18.0.201\") or \"tcp:IP:PORT\"")
    })
}

fn parse_checkers(
    ctx: &mut Ctx,
    root: &Tbl,
    kind: Option<ModuleKind>,
    plugin_set: bool,
    module_name: Option<&str>,
) -> Vec<Checker> {
    let mut checkers = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut splitbrain_seen: Option<usize> = None;
    let all_specific: Vec<&str> = {
        let mut v: Vec<&str> = CHECKER_SPECIFIC.iter().flat_map(|(_, k)| k.iter().copied()).collect();
        v.sort();
        v.dedup();
        v
    };
    for t in root.tables(ctx, "checker") {
        let name = t.name(ctx, "name", true);
        let ty = if t.has("type") {
            t.choice(ctx, "type", CHECKER_TYPES)
        } else {
            t.missing(ctx, "type", &format!(" (one of {})", CHECKER_TYPES.join(", ")));
            None
        };
        // Unknown keys, or keys of another checker type.
        let specific: &[&str] = ty
            .as_ref()
            .and_then(|ty| CHECKER_SPECIFIC.iter().find(|(n, _)| *n == ty.val).map(|(_, k)| *k))
            .unwrap_or(&[]);
        let mut allowed: Vec<&str> = CHECKER_COMMON.to_vec();
        match &ty {
            Some(_) => allowed.extend(specific),
            None => allowed.extend(&all_specific),
        }
        let elsewhere: Vec<(&str, String)> = all_specific
            .iter()
            .filter(|k| !allowed.contains(k))
            .map(|k| {
                let users: Vec<&str> =
                    CHECKER_SPECIFIC.iter().filter(|(_, ks)| ks.contains(k)).map(|(n, _)| *n).collect();
                (
                    *k,
                    format!(
                        "does not apply to a {} checker (it is used by: {})",
                        ty.as_ref().map(|t| t.val.as_str()).unwrap_or("?"),
                        users.join(", ")
                    ),
                )
            })
            .collect();
        let elsewhere_ref: Vec<(&str, &str)> = elsewhere.iter().map(|(k, m)| (*k, m.as_str())).collect();
        t.check_keys(ctx, &allowed, &elsewhere_ref);

        let interval = t.positive_duration(ctx, "interval").map(|d| d.val).unwrap_or(DEFAULT_CHECKER_INTERVAL);
        let timeout = t.positive_duration(ctx, "timeout").map(|d| d.val).unwrap_or(interval);

        let Some(ty) = ty else { continue };
        let type_off = ty.off;
        let type_key = t.key_path("type");
        let ck: Option<CheckerKind> = match ty.val.as_str() {
            "process" => {
                let process = t.req_str(ctx, "process", "a process name string");
                if let Some(p) = &process {
                    if p.val.is_empty() {
                        ctx.error(p.off, t.key_path("process"), "empty process name");
                    }
                }
                let min_count = t.int(ctx, "min_count", 1, i64::from(u32::MAX)).map(|n| n.val as u32).unwrap_or(1);
                process.filter(|p| !p.val.is_empty()).map(|p| CheckerKind::Process { process: p.val, min_count })
            }
            "interface" => t
                .req_str(ctx, "interface", "an interface name string such as \"eth0\"")
                .filter(|s| check_ifname(ctx, &t.key_path("interface"), s))
                .map(|s| CheckerKind::Interface { interface: s.val }),
            "ip" | "ping" | "tcp" => {
                let address = if t.has("address") {
                    t.ip(ctx, "address")
                } else {
                    t.missing(ctx, "address", "");
                    None
                };
                match ty.val.as_str() {
                    "ip" => address.map(|a| CheckerKind::Ip { address: a.val }),
                    "ping" => address.map(|a| CheckerKind::Ping { address: a.val }),
                    _ => {
                        if !t.has("port") {
                            t.missing(ctx, "port", " (the TCP port to connect to)");
                        }
                        let port = t.int(ctx, "port", 1, 65535);
                        match (address, port) {
                            (Some(a), Some(p)) => Some(CheckerKind::Tcp { address: a.val, port: p.val as u16 }),
                            _ => None,
                        }
                    }
                }
            }
            "module" => {
                let m = t.name(ctx, "module", true);
                match m {
                    Some(m) if Some(m.val.as_str()) == module_name => {
                        ctx.error(
                            m.off,
                            t.key_path("module"),
                            "a module checker must watch another module, not this one",
                        );
                        None
                    }
                    Some(m) => Some(CheckerKind::Module { module: m.val }),
                    None => None,
                }
            }
            "custom" => {
                if !plugin_set {
                    ctx.error(
                        type_off,
                        type_key.clone(),
                        "a custom checker calls the module's plugin, but this module has no `plugin`: set plugin = \"<file>.wasm\" at the top level",
                    );
                }
                Some(CheckerKind::Custom)
            }
            _ => {
                // splitbrain
                if kind == Some(ModuleKind::Farm) {
                    ctx.error(
                        type_off,
                        type_key.clone(),
                        "a splitbrain checker is only valid in a mirror module: a farm has no primary to protect",
                    );
                }
                if let Some(first) = splitbrain_seen {
                    let (l, _) = ctx.loc(first);
                    ctx.error(type_off, type_key.clone(), format!("only one splitbrain checker is allowed (another is declared on line {l}); list all witnesses in it"));
                } else {
                    splitbrain_seen = Some(type_off);
                }
                if !t.has("witnesses") {
                    t.missing(ctx, "witnesses", " (e.g. witnesses = [\"198.18.0.201\"])");
                }
                let mut witnesses = Vec::new();
                let mut ok = true;
                if let Some(list) = t.str_array(ctx, "witnesses", "witness strings (\"IP\" or \"tcp:IP:PORT\")") {
                    if list.val.is_empty() {
                        ctx.error(list.off, t.key_path("witnesses"), "at least one witness is needed");
                        ok = false;
                    }
                    for (i, w) in list.val.iter().enumerate() {
                        match parse_witness(&w.val) {
                            Ok(w) => witnesses.push(w),
                            Err(m) => {
                                ctx.error(w.off, format!("{}[{i}]", t.key_path("witnesses")), m);
                                ok = false;
                            }
                        }
                    }
                } else {
                    ok = false;
                }
                ok.then_some(CheckerKind::Splitbrain { witnesses })
            }
        };
        let action = if ty.val == "splitbrain" {
            if let Some(e) = t.get("action") {
                ctx.error(
                    e.key_off,
                    t.key_path("action"),
                    "a splitbrain checker has no action: its witnesses decide which node may be primary",
                );
            }
            None
        } else {
            let default = match ty.val.as_str() {
                "process" | "tcp" | "custom" => CheckerAction::Restart,
                _ => CheckerAction::Wait,
            };
            Some(match t.choice(ctx, "action", &["restart", "stopstart", "wait", "stop"]) {
                Some(a) => match a.val.as_str() {
                    "restart" => CheckerAction::Restart,
                    "stopstart" => CheckerAction::Stopstart,
                    "wait" => CheckerAction::Wait,
                    _ => CheckerAction::Stop,
                },
                None => default,
            })
        };
        let Some(name) = name else { continue };
        if let Some(&first) = names.get(&name.val) {
            let (l, _) = ctx.loc(first);
            ctx.error(
                name.off,
                t.key_path("name"),
                format!("duplicate checker name \"{}\" (first declared on line {l})", name.val),
            );
            continue;
        }
        names.insert(name.val.clone(), name.off);
        if let Some(kind) = ck {
            checkers.push(Checker { name: name.val, kind, action, interval, timeout });
        }
    }
    checkers
}

fn parse_hooks(ctx: &mut Ctx, root: &Tbl, kind: Option<ModuleKind>) -> Hooks {
    let mut hooks = Hooks::default();
    let Some(t) = root.table(ctx, "hooks") else {
        return hooks;
    };
    let mut allowed = vec!["timeout"];
    allowed.extend(HookPoint::ALL.iter().map(|p| p.key()));
    t.check_keys(ctx, &allowed, &[]);
    if let Some(d) = t.positive_duration(ctx, "timeout") {
        hooks.timeout = d.val;
    }
    let default_timeout = hooks.timeout;
    for point in HookPoint::ALL {
        let key = point.key();
        let Some(e) = t.get(key) else { continue };
        let path = t.key_path(key);
        if kind == Some(ModuleKind::Farm) && point.mirror_only() {
            ctx.error(
                e.key_off,
                path,
                format!("`{key}` is a mirror hook; a farm has no primary or secondary: use start_both/stop_both"),
            );
            continue;
        }
        // Either an argv array, or a table { argv = [...], timeout = "60s" }.
        let (argv_tbl, argv_key, timeout) = if e.item.is_array() {
            (None, path.clone(), default_timeout)
        } else if let Some(ht) = Tbl::of(e.item, path.clone(), path.clone(), e.key_off) {
            ht.check_keys(ctx, &["argv", "timeout"], &[]);
            let timeout = ht.positive_duration(ctx, "timeout").map(|d| d.val).unwrap_or(default_timeout);
            if !ht.has("argv") {
                ht.missing(ctx, "argv", " (e.g. argv = [\"/usr/local/bin/start\", \"--now\"])");
                continue;
            }
            (Some(ht), format!("{path}.argv"), timeout)
        } else {
            ctx.error(
                e.off(),
                path,
                format!(
                    "expected an argv array such as [\"/usr/local/bin/start\"] or a table {{ argv = [...], timeout = \"60s\" }}, found {}",
                    crate::walk::type_name(e.item)
                ),
            );
            continue;
        };
        let list = match &argv_tbl {
            Some(ht) => ht.str_array(ctx, "argv", "argument strings"),
            None => t.str_array(ctx, key, "argument strings"),
        };
        let Some(list) = list else { continue };
        if list.val.is_empty() {
            ctx.error(list.off, argv_key, "empty argv: give at least the absolute path of the program");
            continue;
        }
        let prog = &list.val[0];
        if !prog.val.starts_with('/') {
            ctx.error(
                prog.off,
                format!("{argv_key}[0]"),
                format!("program \"{}\" must be an absolute path (hooks run without a shell or PATH search)", prog.val),
            );
            continue;
        }
        *hooks.slot(point) = Some(Hook { argv: list.val.into_iter().map(|s| s.val).collect(), timeout });
    }
    hooks
}

// ---------------------------------------------------------------------------------------------
// Plugin capabilities and parameters.

/// Default memory cap of a plugin instance (64 MiB).
pub const DEFAULT_PLUGIN_MEMORY_BYTES: u64 = 64 << 20;
/// Smallest plugin memory cap (1 MiB).
pub const MIN_PLUGIN_MEMORY_BYTES: u64 = 1 << 20;
/// Largest plugin memory cap (4 GiB, the most a 32-bit WASM memory can hold).
pub const MAX_PLUGIN_MEMORY_BYTES: u64 = 4 << 30;
/// The last element of a `capabilities.commands` entry that allows any further arguments.
pub const ANY_ARGS: &str = "...";

/// What a module's plugin may do (`[capabilities]`); everything not listed is denied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Commands the plugin may run, each an argv it must match exactly, or a prefix when the
    /// entry ends with `"..."`.
    pub commands: Vec<CommandGrant>,
    /// Directories (absolute) under which the plugin may read and write files.
    pub files: Vec<PathBuf>,
    /// TCP addresses the plugin may probe.
    pub tcp: Vec<SocketAddr>,
    /// URL prefixes (`http://IP:PORT/path`) the plugin may probe with GET.
    pub http: Vec<HttpGrant>,
    /// Resource names the plugin may set.
    pub resources: Vec<String>,
    /// Memory cap of one plugin instance (default 64 MiB).
    pub memory_bytes: u64,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            commands: Vec::new(),
            files: Vec::new(),
            tcp: Vec::new(),
            http: Vec::new(),
            resources: Vec::new(),
            memory_bytes: DEFAULT_PLUGIN_MEMORY_BYTES,
        }
    }
}

/// One allowed command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandGrant {
    /// The argv (`argv[0]` absolute), without the trailing `"..."`.
    pub argv: Vec<String>,
    /// The entry ended with `"..."`: any further arguments are allowed.
    pub any_args: bool,
}

/// One allowed HTTP URL prefix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpGrant {
    /// The server (no names: a plugin cannot resolve DNS).
    pub address: SocketAddr,
    /// Path prefix, starting with `/`.
    pub path: String,
}

fn check_plugin_sections(ctx: &mut Ctx, root: &Tbl, plugin_set: bool) {
    if plugin_set {
        return;
    }
    for key in ["capabilities", "params"] {
        if let Some(e) = root.get(key) {
            ctx.error(
                e.key_off,
                key,
                format!("[{key}] applies to the module's plugin, but this module has no `plugin`: set plugin = \"<file>.wasm\" at the top level or remove [{key}]"),
            );
        }
    }
}

fn parse_capabilities(ctx: &mut Ctx, root: &Tbl) -> Capabilities {
    let mut caps = Capabilities::default();
    let Some(t) = root.table(ctx, "capabilities") else {
        return caps;
    };
    t.check_keys(ctx, &["commands", "files", "tcp", "http", "resources", "memory"], &[]);
    if let Some(e) = t.get("commands") {
        let path = t.key_path("commands");
        match e.item.as_array() {
            None => ctx.error(
                e.off(),
                path,
                format!(
                    "expected an array of argv arrays such as [[\"/usr/bin/systemctl\", \"start\", \"web\"]], found {}",
                    crate::walk::type_name(e.item)
                ),
            ),
            Some(arr) => {
                for (i, v) in arr.iter().enumerate() {
                    let off = v.span().map(|s| s.start).unwrap_or(e.off());
                    if let Some(g) = parse_command_grant(ctx, &format!("{path}[{i}]"), off, v) {
                        caps.commands.push(g);
                    }
                }
            }
        }
    }
    if let Some(list) = t.str_array(ctx, "files", "absolute directory paths") {
        for (i, d) in list.val.into_iter().enumerate() {
            let p = Path::new(&d.val);
            let bad = !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir));
            if bad || d.val.len() > 4096 {
                ctx.error(
                    d.off,
                    format!("{}[{i}]", t.key_path("files")),
                    format!("directory \"{}\" must be an absolute path without `.` or `..`", d.val),
                );
            } else if p == Path::new("/") {
                ctx.error(
                    d.off,
                    format!("{}[{i}]", t.key_path("files")),
                    "granting \"/\" would give the plugin the whole file system: name the directories it needs",
                );
            } else {
                caps.files.push(p.to_path_buf());
            }
        }
    }
    if let Some(list) = t.str_array(ctx, "tcp", "\"IP:PORT\" strings") {
        for (i, a) in list.val.into_iter().enumerate() {
            match a.val.parse::<SocketAddr>() {
                Ok(s) => caps.tcp.push(s),
                Err(_) => ctx.error(
                    a.off,
                    format!("{}[{i}]", t.key_path("tcp")),
                    format!(
                        "invalid address \"{}\": expected IP:PORT such as \"127.0.0.1:8080\" (IPv6 as \"[::1]:8080\")",
                        a.val
                    ),
                ),
            }
        }
    }
    if let Some(list) = t.str_array(ctx, "http", "URL prefix strings") {
        for (i, u) in list.val.into_iter().enumerate() {
            match parse_http_url(&u.val) {
                Ok((address, path)) => caps.http.push(HttpGrant { address, path }),
                Err(m) => ctx.error(u.off, format!("{}[{i}]", t.key_path("http")), m),
            }
        }
    }
    if let Some(list) = t.str_array(ctx, "resources", "resource name strings") {
        for (i, r) in list.val.into_iter().enumerate() {
            match units::check_name(&r.val) {
                Ok(()) => caps.resources.push(r.val),
                Err(m) => ctx.error(r.off, format!("{}[{i}]", t.key_path("resources")), m),
            }
        }
    }
    if let Some(m) = t.size(ctx, "memory") {
        if (MIN_PLUGIN_MEMORY_BYTES..=MAX_PLUGIN_MEMORY_BYTES).contains(&m.val) {
            caps.memory_bytes = m.val;
        } else {
            ctx.error(
                m.off,
                t.key_path("memory"),
                format!("plugin memory {} is out of range: from 1MiB to 4GiB (e.g. \"64MiB\")", format_size(m.val)),
            );
        }
    }
    caps
}

fn parse_command_grant(ctx: &mut Ctx, key: &str, off: usize, v: &toml_edit::Value) -> Option<CommandGrant> {
    let Some(arr) = v.as_array() else {
        ctx.error(
            off,
            key,
            format!(
                "expected an argv array such as [\"/usr/bin/systemctl\", \"start\", \"web\"], found {}",
                crate::walk::type_name(&toml_edit::Item::Value(v.clone()))
            ),
        );
        return None;
    };
    let mut argv = Vec::new();
    for (j, a) in arr.iter().enumerate() {
        let aoff = a.span().map(|s| s.start).unwrap_or(off);
        match a.as_str() {
            Some(s) => argv.push((s.to_string(), aoff)),
            None => {
                ctx.error(
                    aoff,
                    format!("{key}[{j}]"),
                    format!(
                        "expected an argument string, found {}",
                        crate::walk::type_name(&toml_edit::Item::Value(a.clone()))
                    ),
                );
                return None;
            }
        }
    }
    let any_args = argv.last().is_some_and(|(s, _)| s == ANY_ARGS);
    if any_args {
        argv.pop();
    }
    let Some((prog, poff)) = argv.first() else {
        ctx.error(off, key, "empty argv: give at least the absolute path of the program");
        return None;
    };
    if !prog.starts_with('/') {
        ctx.error(
            *poff,
            format!("{key}[0]"),
            format!(
                "program \"{prog}\" must be an absolute path (plugins run commands without a shell or PATH search)"
            ),
        );
        return None;
    }
    if let Some((_, doff)) = argv.iter().find(|(s, _)| s == ANY_ARGS) {
        ctx.error(*doff, key, format!("\"{ANY_ARGS}\" (any further arguments) may only be the last element"));
        return None;
    }
    Some(CommandGrant { argv: argv.into_iter().map(|(s, _)| s).collect(), any_args })
}

/// Splits `http://IP:PORT/path` into the address and the path (`/` when absent). Names are
/// refused: a plugin has no DNS, and an allow-list of names would be only as good as the resolver.
pub fn parse_http_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("invalid URL \"{url}\": expected http://IP:PORT/path (plain HTTP; https is not supported)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = authority.parse::<SocketAddr>().map_err(|_| {
        format!("invalid URL \"{url}\": the server must be IP:PORT such as 127.0.0.1:8080 (no host names: plugins have no DNS)")
    })?;
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid URL \"{url}\": spaces or control characters in the path"));
    }
    Ok((address, path.to_string()))
}

fn parse_params(ctx: &mut Ctx, root: &Tbl) -> std::collections::BTreeMap<String, String> {
    let mut params = std::collections::BTreeMap::new();
    let Some(t) = root.table(ctx, "params") else {
        return params;
    };
    for e in &t.entries {
        let v = match e.item.as_value() {
            Some(toml_edit::Value::String(s)) => Some(s.value().clone()),
            Some(toml_edit::Value::Integer(i)) => Some(i.value().to_string()),
            Some(toml_edit::Value::Boolean(b)) => Some(b.value().to_string()),
            _ => None,
        };
        match v {
            Some(v) => {
                params.insert(e.name.to_string(), v);
            }
            None => ctx.error(
                e.off(),
                t.key_path(e.name),
                format!(
                    "expected a string, an integer or a boolean (plugin parameters are strings), found {}",
                    crate::walk::type_name(e.item)
                ),
            ),
        }
    }
    params
}
