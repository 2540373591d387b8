//! `tandem daemon`: loads the cluster and every installed module, runs one driver per module, serves
//! the control socket, and on SIGTERM stops every module in order (stop hooks, VIP released, STOP
//! announced to the peers) so that a clean stop of a primary fails over at once.

use crate::control::{ModuleStatus, Request, Response};
use crate::driver::{self, Driver, Link, Machine, Msg};
use crate::modlog::{ModLog, DEFAULT_MAX_BYTES};
use crate::policy;
use crate::replica::{DirSpec, Replica, ReplicaSpec};
use crate::store::Store;
use crate::wire::{Opener, Sealer};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tandem_config::{ClusterConfig, ConfigErrors, ModuleConfig, ModuleKind};
use tandem_machine::{FarmMachine, MirrorMachine, Persisted};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// One virtual IP of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
}

/// Address operations the daemon needs (the binary plugs in rtnetlink; see `tandem-network`).
pub trait VipOps: Send + Sync + 'static {
    fn add(&self, vip: &VipSpec) -> impl Future<Output = Result<(), String>> + Send;
    fn remove(&self, vip: &VipSpec) -> impl Future<Output = Result<(), String>> + Send;
    /// Gratuitous ARP burst and repeats, in the background.
    fn announce_takeover(&self, vip: &VipSpec);
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: PathBuf,
    /// This node's name; by default the host name, if it names a node of the cluster.
    pub node: Option<String>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Installed modules: `<modules_dir>/<name>/module.toml`.
    pub modules_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cluster key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{0}")]
    Node(String),
    #[error("control socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("{0}")]
    Io(String),
}

/// Reads the cluster key: 64 or more hex characters (256 bits or more), as `tandem cluster init` writes.
pub fn read_key(path: &Path) -> Result<Vec<u8>, DaemonError> {
    let err = |reason: String| DaemonError::Key { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let hex = text.trim();
    if hex.len() < 64 || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(
            "expected at least 64 hexadecimal characters (a 256-bit key); `tandem cluster init` writes one".into(),
        ));
    }
    Ok((0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex checked")).collect())
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string())
}

fn pick_node(cluster: &ClusterConfig, wanted: Option<&str>) -> Result<String, DaemonError> {
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    match wanted {
        Some(n) if names.contains(&n) => Ok(n.to_string()),
        Some(n) => Err(DaemonError::Node(format!("node `{n}` is not in the cluster (nodes: {})", names.join(", ")))),
        None => match host_name() {
            Some(h) if names.contains(&h.as_str()) => Ok(h),
            h => Err(DaemonError::Node(format!(
                "the host name `{}` names no node of the cluster (nodes: {}); use --node",
                h.unwrap_or_default(),
                names.join(", ")
            ))),
        },
    }
}

struct Loaded {
    name: String,
    id: u8,
    tx: mpsc::Sender<Msg>,
    status: watch::Receiver<ModuleStatus>,
    log: ModLog,
    pulse: Duration,
}

/// Loads the modules of `dir` that run on `node`. A module that cannot be loaded is reported and
/// skipped: the others still run.
fn load_modules(dir: &Path, cluster: &ClusterConfig, node: &str) -> Vec<ModuleConfig> {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path().join("module.toml")).filter(|p| p.exists()).collect(),
        Err(e) => {
            tracing::warn!("no modules loaded: {}: {e}", dir.display());
            return Vec::new();
        }
    };
    entries.sort();
    let mut out: Vec<ModuleConfig> = Vec::new();
    for path in entries {
        let cfg = match tandem_config::load_module(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("module {} not loaded:\n{e}", path.display());
                continue;
            }
        };
        if cfg.node(node).is_none() {
            tracing::info!("module {} does not run on {node}", cfg.name);
            continue;
        }
        if let Some(missing) = cfg.nodes.iter().find(|n| cluster.node(&n.name).is_none()) {
            tracing::error!("module {} not loaded: its node `{}` is not in the cluster file", cfg.name, missing.name);
            continue;
        }
        if let Some(other) = out.iter().find(|m| m.id == cfg.id || m.name == cfg.name) {
            tracing::error!(
                "module {} not loaded: id {} or name already used by module {}",
                cfg.name,
                cfg.id,
                other.name
            );
            continue;
        }
        out.push(cfg);
    }
    out
}

async fn bind_links(cluster: &ClusterConfig, cfg: &ModuleConfig, node: &str) -> Result<Vec<Link>, String> {
    let me = cluster.node(node).expect("node checked");
    let port = cluster.heartbeat_port(cfg.id);
    let mut links = Vec::new();
    for (k, net) in cluster.networks.iter().enumerate() {
        let addr = me.address(&net.name).ok_or_else(|| format!("no address for network {}", net.name))?;
        let socket = UdpSocket::bind(SocketAddr::new(addr, port))
            .await
            .map_err(|e| format!("cannot bind heartbeat socket {addr}:{port} on {}: {e}", net.name))?;
        let peers = cfg
            .nodes
            .iter()
            .filter(|n| n.name != node)
            .filter_map(|n| cluster.node(&n.name)?.address(&net.name))
            .map(|a| SocketAddr::new(a, port))
            .collect();
        links.push(Link { network: k as u8, network_name: net.name.clone(), socket: Arc::new(socket), peers });
    }
    Ok(links)
}

pub async fn run_daemon<V: VipOps>(opts: DaemonOptions, vips: Arc<V>) -> Result<(), DaemonError> {
    let cluster = tandem_config::load_cluster(&opts.config)?;
    let key = read_key(&cluster.key_file)?;
    let node = pick_node(&cluster, opts.node.as_deref())?;
    let epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    tracing::info!("tandem daemon: node {node} of cluster {}", cluster.name);

    let mut loaded: Vec<Loaded> = Vec::new();
    for cfg in load_modules(&opts.modules_dir, &cluster, &node) {
        let dir = opts.state_dir.join("modules").join(&cfg.name);
        let store = Store::new(&dir);
        let log = ModLog::new(&dir, DEFAULT_MAX_BYTES);
        let persisted = match store.load() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("module {} not loaded: {e}", cfg.name);
                log.append("ERROR", &format!("not loaded: {e}"));
                continue;
            }
        };
        if cfg.checkers.iter().any(|c| !matches!(c.kind, tandem_config::CheckerKind::Splitbrain { .. })) {
            log.append(
                "WARN",
                "only the splitbrain checker is run by this version: the other checkers are not run yet",
            );
        }
        let (machine, autostart) = match cfg.kind {
            ModuleKind::Mirror => {
                let p = match persisted {
                    Some(Persisted::Mirror(p)) => Some(p),
                    None => None,
                    Some(Persisted::Farm(_)) => {
                        tracing::error!(
                            "module {} not loaded: its state file is a farm's; it is a mirror now",
                            cfg.name
                        );
                        continue;
                    }
                };
                let autostart = p.as_ref().is_some_and(|p| p.started);
                let pol = policy::mirror_policy(&cfg, &node, true).expect("node is a module node");
                (Machine::Mirror(MirrorMachine::new(pol, p)), autostart)
            }
            ModuleKind::Farm => {
                let p = match persisted {
                    Some(Persisted::Farm(p)) => Some(p),
                    None => None,
                    Some(Persisted::Mirror(_)) => {
                        tracing::error!(
                            "module {} not loaded: its state file is a mirror's; it is a farm now",
                            cfg.name
                        );
                        continue;
                    }
                };
                let autostart = p.as_ref().is_some_and(|p| p.started);
                let pol = policy::farm_policy(&cfg, &node).expect("node is a module node");
                (Machine::Farm(FarmMachine::new(pol, p)), autostart)
            }
        };
        // A VIP left behind by a crashed daemon: nothing serves yet, so none may be here.
        if cfg.kind == ModuleKind::Mirror {
            for v in &cfg.vips {
                let spec = VipSpec { address: v.address, prefix_len: v.prefix_len, interface: v.interface.clone() };
                if let Err(e) = vips.remove(&spec).await {
                    log.append("WARN", &format!("cleaning a leftover VIP: {e}"));
                }
            }
        }
        let links = match bind_links(&cluster, &cfg, &node).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!("module {} not started: {e}", cfg.name);
                log.append("ERROR", &format!("not started: {e}"));
                continue;
            }
        };
        let nodes: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
        let opener = Opener::new(&key, &cluster.name, cfg.id, nodes);
        let networks: Vec<String> = cluster.networks.iter().map(|n| n.name.clone()).collect();
        let (tx, rx) = mpsc::channel(1024);
        let name = cfg.name.clone();
        let id = cfg.id;
        let pulse = cfg.heartbeat.pulse;
        let replica = replica_spec(&cluster, &cfg, &node, &key, &dir).map(|spec| Replica::new(spec, tx.clone()));
        if let Some(r) = &replica {
            for note in r.clean_leftovers() {
                log.append("WARN", &note);
            }
        }
        let witness_probes = policy::splitbrain_checker(&cfg).and_then(|c| match &c.kind {
            tandem_config::CheckerKind::Splitbrain { witnesses } if cfg.kind == ModuleKind::Mirror => {
                Some((witnesses.clone(), c.interval, c.timeout))
            }
            _ => None,
        });
        if cfg.plugin.is_some() {
            // Compiled once per daemon start (or taken from the cache), before its first hook.
            let (c, d, l) = (cfg.clone(), dir.clone(), ModLog::new(&dir, DEFAULT_MAX_BYTES));
            tokio::task::spawn_blocking(move || match crate::hooks::plugin_of(&c, &d) {
                Ok(_) => l.append("INFO", "plugin ready (compiled, or loaded from the cache)"),
                Err(e) => l.append("ERROR", &format!("plugin not loaded: {e}")),
            });
        }
        let (mut drv, body_rx, status_rx) = Driver::new(
            cfg,
            node.clone(),
            cluster.name.clone(),
            networks,
            machine,
            opener,
            store,
            ModLog::new(&dir, DEFAULT_MAX_BYTES),
            dir.clone(),
            vips.clone(),
        );
        drv.replica = replica;
        for link in links.iter() {
            tokio::spawn(driver::recv_loop(link.socket.clone(), link.network, tx.clone()));
        }
        tokio::spawn(driver::send_loop(id, links.clone(), body_rx, Sealer::new(&key, epoch), pulse));
        if let Some((witnesses, interval, timeout)) = witness_probes {
            tokio::spawn(crate::witness::run(witnesses, interval, timeout, tx.clone()));
        }
        tokio::spawn(drv.run(rx, autostart));
        tracing::info!("module {name} (id {id}) loaded");
        loaded.push(Loaded { name, id, tx, status: status_rx, log, pulse });
    }
    loaded.sort_by_key(|m| m.id);
    let modules = Arc::new(loaded);

    let listener = bind_control(&opts.socket)?;
    let server = tokio::spawn(serve_control(listener, modules.clone()));
    crate::notify::notify("READY=1");
    tracing::info!("ready: {} module(s), control socket {}", modules.len(), opts.socket.display());

    wait_for_signal().await;
    crate::notify::notify("STOPPING=1");
    tracing::info!("stopping every module");
    server.abort();
    let mut longest_pulse = Duration::ZERO;
    for m in modules.iter() {
        let (reply, done) = oneshot::channel();
        if m.tx.send(Msg::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
        m.log.append("INFO", "daemon stopped");
        longest_pulse = longest_pulse.max(m.pulse);
    }
    // Let the STOP views go out (sent on change, then every pulse) before the process ends.
    tokio::time::sleep((longest_pulse * 2).min(Duration::from_millis(500))).await;
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}

/// The replicated directories of a mirror module on this node, if it has any.
fn replica_spec(
    cluster: &ClusterConfig,
    cfg: &ModuleConfig,
    node: &str,
    key: &[u8],
    state_dir: &std::path::Path,
) -> Option<ReplicaSpec> {
    let rep = cfg.replication.as_ref().filter(|r| !r.dirs.is_empty())?;
    let peer = cfg.nodes.iter().find(|n| n.name != node)?;
    let net = &cluster.replication_network().name;
    let port = cluster.replication_port(cfg.id);
    let listen = SocketAddr::new(cluster.node(node)?.address(net)?, port);
    let peer_addr = SocketAddr::new(cluster.node(&peer.name)?.address(net)?, port);
    Some(ReplicaSpec {
        module: cfg.name.clone(),
        module_id: cfg.id,
        cluster: cluster.name.clone(),
        node: node.to_string(),
        peer: peer.name.clone(),
        dirs: rep.dirs.iter().map(|d| DirSpec { path: d.path.clone(), exclude: d.exclude.clone() }).collect(),
        key: key.to_vec(),
        listen,
        peer_addr,
        // A write waits this long for the secondary before the stream is declared broken and the
        // primary goes ALONE: several heartbeat timeouts, as the secondary may be flushing a
        // large file to disk. With a witness, also well past the loss plus the witness deadline:
        // until the verdict a primary that lost its peer holds the writes (docs/algorithm.md).
        timeout: replication_timeout(cfg),
        staging: PathBuf::from("/run/tandem/replica").join(&cfg.name),
        resync_bandwidth: rep.resync_bandwidth_bytes_per_sec,
        zone_log: state_dir.join("zones.log"),
        activity_log: state_dir.join("activity.log"),
        activity_enabled: rep.activity_log,
        // One log for the module's directories: the smallest of their zone sizes.
        zone_size: rep.dirs.iter().map(|d| d.zone_size_bytes).min().unwrap_or(1 << 20),
    })
}

/// How long a replicated write waits for the secondary's acknowledgement.
fn replication_timeout(cfg: &ModuleConfig) -> Duration {
    let base = (cfg.heartbeat.timeout * 5).max(Duration::from_secs(5));
    match policy::splitbrain_checker(cfg) {
        Some(c) => base.max(cfg.heartbeat.timeout + policy::witness_deadline(c, cfg) + Duration::from_secs(2)),
        None => base,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    // A socket file left by a crashed daemon; a live daemon would still answer on it.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another tandem daemon is running on this node",
        )));
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

async fn serve_control(listener: UnixListener, modules: Arc<Vec<Loaded>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let modules = modules.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &modules).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, modules: &[Loaded]) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; anything longer is not ours.
    let n = BufReader::new(read.take(64 * 1024)).read_line(&mut line).await?;
    if n == 0 {
        return Ok(());
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error { message: format!("bad request: {e}") },
        Ok(req) => answer(req, modules).await,
    };
    let mut out = serde_json::to_string(&response).expect("response serializes");
    out.push('\n');
    write.write_all(out.as_bytes()).await
}

fn find<'a>(modules: &'a [Loaded], name: &str) -> Result<&'a Loaded, Response> {
    modules.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        Response::Error {
            message: format!(
                "no module `{name}` on this node (loaded: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ),
        }
    })
}

async fn answer(req: Request, modules: &[Loaded]) -> Response {
    match req {
        Request::State { module: None } => {
            Response::State { modules: modules.iter().map(|m| m.status.borrow().clone()).collect() }
        }
        Request::State { module: Some(name) } => match find(modules, &name) {
            Ok(m) => Response::State { modules: vec![m.status.borrow().clone()] },
            Err(r) => r,
        },
        Request::Admin { module, command } => match find(modules, &module) {
            Ok(m) => {
                let (reply, rx) = oneshot::channel();
                if m.tx.send(Msg::Admin { command, reply }).await.is_err() {
                    return Response::Error { message: format!("module {module} is shutting down") };
                }
                rx.await.unwrap_or(Response::Error { message: format!("module {module} is shutting down") })
            }
            Err(r) => r,
        },
        Request::Verify { module } => match find(modules, &module) {
            Ok(m) => {
                let (reply, rx) = oneshot::channel();
                if m.tx.send(Msg::Verify { reply }).await.is_err() {
                    return Response::Error { message: format!("module {module} is shutting down") };
                }
                rx.await.unwrap_or(Response::Error { message: format!("module {module} is shutting down") })
            }
            Err(r) => r,
        },
        Request::Diff { module } => match find(modules, &module) {
            Ok(m) => {
                let (reply, rx) = oneshot::channel();
                if m.tx.send(Msg::Diff { reply }).await.is_err() {
                    return Response::Error { message: format!("module {module} is shutting down") };
                }
                rx.await.unwrap_or(Response::Error { message: format!("module {module} is shutting down") })
            }
            Err(r) => r,
        },
        Request::Log { module, since, tail } => match find(modules, &module) {
            Ok(m) => match m.log.read(since, tail.min(10_000)) {
                Ok((lines, next)) => Response::Log { lines, next },
                Err(e) => Response::Error { message: format!("module log of {module}: {e}") },
            },
            Err(r) => r,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_key(&p).unwrap(), vec![0xab; 32]);
        std::fs::write(&p, "abc").unwrap();
        assert!(read_key(&p).unwrap_err().to_string().contains("64 hexadecimal"));
        std::fs::write(&p, "zz".repeat(32)).unwrap();
        assert!(read_key(&p).is_err());
    }
}
