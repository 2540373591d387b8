//! `tandem daemon` and `tandem cluster init`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use tandem_cluster::{DaemonOptions, VipOps, VipSpec};

#[derive(Args)]
pub struct DaemonArgs {
    /// The cluster file.
    #[arg(long, default_value = "/etc/tandem/cluster.toml")]
    config: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Installed modules: DIR/NAME/module.toml (default: `modules` next to the cluster file).
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Where the daemon keeps its state (data generations, module logs).
    #[arg(long, default_value = "/var/lib/tandem")]
    state_dir: PathBuf,
    /// The control socket (root only).
    #[arg(long, default_value = tandem_cluster::control::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// The daemon's address operations: rtnetlink and gratuitous ARP from `tandem-network`.
struct NetVips(Arc<tandem_network::Vips>);

fn spec(v: &VipSpec) -> tandem_network::VipSpec {
    tandem_network::VipSpec::new(v.address, v.prefix_len, v.interface.clone())
}

impl VipOps for NetVips {
    async fn add(&self, vip: &VipSpec) -> Result<(), String> {
        self.0.add(&spec(vip)).await.map_err(|e| e.to_string())
    }
    async fn remove(&self, vip: &VipSpec) -> Result<(), String> {
        self.0.remove(&spec(vip)).await.map_err(|e| e.to_string())
    }
    fn announce_takeover(&self, vip: &VipSpec) {
        tandem_network::announce_takeover(self.0.clone(), spec(vip));
    }
}

pub fn run_daemon(args: DaemonArgs) -> anyhow::Result<u8> {
    let modules_dir = args
        .modules
        .unwrap_or_else(|| args.config.parent().map(|p| p.join("modules")).unwrap_or_else(|| PathBuf::from("modules")));
    let opts = DaemonOptions {
        config: args.config,
        node: args.node,
        state_dir: args.state_dir,
        socket: args.socket,
        modules_dir,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let vips = tandem_network::Vips::connect().await.context("netlink")?;
        tandem_cluster::run_daemon(opts, Arc::new(NetVips(Arc::new(vips)))).await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Write a cluster.toml skeleton and a new random cluster key (mode 0600).
    Init {
        /// Cluster name.
        #[arg(long)]
        name: String,
        /// A node and its address on each network, in order: `n1=198.18.0.1,198.18.1.1`. At least two.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Directory to write cluster.toml and cluster.key into.
        #[arg(long, default_value = "/etc/tandem")]
        dir: PathBuf,
        /// Replace existing files (a new key must then be copied to every node).
        #[arg(long)]
        force: bool,
    },
}

pub fn run_cluster(args: ClusterArgs) -> anyhow::Result<u8> {
    let ClusterCmd::Init { name, nodes, dir, force } = args.cmd;
    let mut parsed = Vec::new();
    for n in &nodes {
        let Some((node, addrs)) = n.split_once('=') else {
            bail!("--node {n}: expected NAME=ADDRESS[,ADDRESS...]");
        };
        let addrs: Vec<&str> = addrs.split(',').collect();
        for a in &addrs {
            a.parse::<std::net::IpAddr>().with_context(|| format!("--node {n}: `{a}` is not an IP address"))?;
        }
        parsed.push((node.to_string(), addrs));
    }
    if parsed.len() < 2 {
        bail!("a cluster needs at least two nodes (--node given {} time)", parsed.len());
    }
    let networks = parsed[0].1.len();
    if let Some((n, a)) = parsed.iter().find(|(_, a)| a.len() != networks) {
        bail!(
            "node {n} has {} address(es) but {} has {networks}: one address per network for every node",
            a.len(),
            parsed[0].0
        );
    }
    let toml_path = dir.join("cluster.toml");
    let key_path = dir.join("cluster.key");
    for p in [&toml_path, &key_path] {
        if p.exists() && !force {
            bail!("{} exists; use --force to replace it (every node needs the same key)", p.display());
        }
    }
    let mut text = format!(
        "# Written by `tandem cluster init`. Reference: docs/configuration.md\nname = \"{name}\"\nkey_file = \"{}\"\n",
        key_path.display()
    );
    for k in 0..networks {
        text.push_str(&format!(
            "\n[[network]]\nname = \"net{k}\"\n{}",
            if k == 0 { "replication = true\n" } else { "" }
        ));
    }
    for (node, addrs) in &parsed {
        let list: Vec<String> = addrs.iter().enumerate().map(|(k, a)| format!("net{k} = \"{a}\"")).collect();
        text.push_str(&format!("\n[[node]]\nname = \"{node}\"\naddresses = {{ {} }}\n", list.join(", ")));
    }
    // Validate what we are about to write with the same rules as `config check`.
    tandem_config::parse_cluster(&toml_path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_file(&key_path, &format!("{hex}\n"), 0o600)?;
    write_file(&toml_path, &text, 0o644)?;
    println!("wrote {} and {} (mode 0600): copy both to every node", toml_path.display(), key_path.display());
    Ok(0)
}

fn write_file(path: &std::path::Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
