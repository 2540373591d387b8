//! `cluster.toml`: the cluster's name and key, its networks and its nodes.

use crate::error::ConfigErrors;
use crate::walk::{parse_ip, Ctx, Sp, Tbl};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Default `port_base`.
pub const DEFAULT_PORT_BASE: u16 = 7400;
/// Highest `port_base`: the highest module port, `port_base + 100 + 64`, must fit in a u16.
pub const MAX_PORT_BASE: u16 = u16::MAX - 100 - crate::module::MAX_MODULE_ID as u16;

/// A parsed and validated `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterConfig {
    /// Cluster name (`[a-z0-9][a-z0-9-]*`, at most 32 characters).
    pub name: String,
    /// Path of the cluster key file (heartbeat MACs, replication authentication). A relative path
    /// in the file is resolved against the directory of `cluster.toml`.
    pub key_file: PathBuf,
    /// Base of the module ports: module `N` uses port `port_base + N` for heartbeats and port
    /// `port_base + 100 + N` for replication. Default 7400.
    pub port_base: u16,
    /// Declared networks, in file order. Exactly one has `replication = true`.
    pub networks: Vec<Network>,
    /// Cluster nodes, in file order.
    pub nodes: Vec<ClusterNode>,
}

/// A network the nodes share. Heartbeats go on every network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Network {
    /// Network name, used as a key in each node's `addresses`.
    pub name: String,
    /// True for the one network that carries replication traffic.
    pub replication: bool,
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterNode {
    /// Node name (`[a-z0-9][a-z0-9-]*`, at most 32 characters), unique in the cluster.
    pub name: String,
    /// The node's address on each declared network (network name → address); exactly one per
    /// network.
    pub addresses: BTreeMap<String, IpAddr>,
}

impl ClusterConfig {
    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The network that carries replication.
    pub fn replication_network(&self) -> &Network {
        self.networks.iter().find(|n| n.replication).expect("a validated cluster has exactly one replication network")
    }

    /// Port of the heartbeats of module `id`: `port_base + id`.
    pub fn heartbeat_port(&self, module_id: u8) -> u16 {
        self.port_base + u16::from(module_id)
    }

    /// Port of the replication of module `id`: `port_base + 100 + id`.
    pub fn replication_port(&self, module_id: u8) -> u16 {
        self.port_base + 100 + u16::from(module_id)
    }
}

impl ClusterNode {
    /// The node's address on a network.
    pub fn address(&self, network: &str) -> Option<IpAddr> {
        self.addresses.get(network).copied()
    }
}

const TOP_KEYS: &[&str] = &["name", "key_file", "port_base", "network", "node"];

/// Parses and validates the text of a `cluster.toml`; `file` is used in error messages and to
/// resolve a relative `key_file`.
pub fn parse_cluster(file: &Path, text: &str) -> Result<ClusterConfig, ConfigErrors> {
    let mut ctx = Ctx::new(file, text);
    let result = parse_cluster_inner(&mut ctx, file, text);
    let errors = ctx.into_errors();
    match result {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Reads and parses a `cluster.toml`.
pub fn load_cluster(path: impl AsRef<Path>) -> Result<ClusterConfig, ConfigErrors> {
    let path = path.as_ref();
    let text = crate::read_file(path)?;
    parse_cluster(path, &text)
}

pub(crate) fn parse_cluster_inner(ctx: &mut Ctx, file: &Path, text: &str) -> Option<ClusterConfig> {
    let doc = crate::walk::parse_doc(ctx, text)?;
    let root = Tbl::of(doc.as_item(), String::new(), "the top level".into(), 0)?;
    root.check_keys(ctx, TOP_KEYS, &[]);

    let name = root.name(ctx, "name", true);
    let key_file = root.req_str(ctx, "key_file", "a path string").and_then(|s| {
        if s.val.is_empty() {
            ctx.error(s.off, "key_file", "empty path: expected the path of the cluster key file");
            return None;
        }
        let p = PathBuf::from(&s.val);
        Some(if p.is_relative() { file.parent().map(|d| d.join(&p)).unwrap_or(p) } else { p })
    });
    let port_base =
        root.int(ctx, "port_base", 1, i64::from(MAX_PORT_BASE)).map(|p| p.val as u16).unwrap_or(DEFAULT_PORT_BASE);

    // Networks.
    let mut networks = Vec::new();
    let mut net_offs: HashMap<String, usize> = HashMap::new();
    if !root.has("network") {
        root.missing(ctx, "network", " (declare at least one [[network]] with a `name`)");
    }
    let net_tables = root.tables(ctx, "network");
    let mut replication_count = 0;
    for t in &net_tables {
        t.check_keys(ctx, &["name", "replication"], &[]);
        let name = t.name(ctx, "name", true);
        let replication = t.bool(ctx, "replication").map(|b| b.val).unwrap_or(false);
        if replication {
            replication_count += 1;
            if replication_count > 1 {
                let off = t.get("replication").map(|e| e.off()).unwrap_or(t.off);
                ctx.error(off, t.key_path("replication"), "only one network may have `replication = true`");
            }
        }
        if let Some(n) = name {
            if let Some(&first) = net_offs.get(&n.val) {
                let (l, _) = ctx.loc(first);
                ctx.error(
                    n.off,
                    t.key_path("name"),
                    format!("duplicate network name \"{}\" (first declared on line {l})", n.val),
                );
            } else {
                net_offs.insert(n.val.clone(), n.off);
                networks.push(Network { name: n.val, replication });
            }
        }
    }
    if !net_tables.is_empty() && replication_count == 0 {
        let off = root.get("network").map(|e| e.off()).unwrap_or(0);
        ctx.error(
            off,
            "network",
            "no network has `replication = true`: mark exactly one [[network]] as the replication network",
        );
    }

    // Nodes.
    let mut nodes: Vec<ClusterNode> = Vec::new();
    let mut node_offs: HashMap<String, usize> = HashMap::new();
    let mut addr_offs: HashMap<IpAddr, (usize, String)> = HashMap::new();
    if !root.has("node") {
        root.missing(ctx, "node", " (declare the nodes as [[node]] tables)");
    }
    let node_tables = root.tables(ctx, "node");
    for t in &node_tables {
        t.check_keys(ctx, &["name", "addresses"], &[]);
        let name = t.name(ctx, "name", true);
        let mut addresses = BTreeMap::new();
        if !t.has("addresses") {
            t.missing(ctx, "addresses", " (e.g. addresses = { net0 = \"198.18.0.1\" })");
        } else if let Some(at) = t.table(ctx, "addresses") {
            let at = Tbl { label: format!("{}.addresses", t.path), ..at };
            for e in &at.entries {
                let key = at.key_path(e.name);
                if !net_offs.contains_key(e.name) {
                    let known: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
                    let hint = match crate::units::suggest(e.name, &known) {
                        Some(s) => format!("; did you mean `{s}`?"),
                        None => format!("; declared networks: {}", known.join(", ")),
                    };
                    ctx.error(e.key_off, key, format!("`{}` is not a declared [[network]]{hint}", e.name));
                    continue;
                }
                let Some(s) = e.item.as_str() else {
                    ctx.error(
                        e.off(),
                        key,
                        format!("expected an IP address string, found {}", crate::walk::type_name(e.item)),
                    );
                    continue;
                };
                let Some(ip) = parse_ip(ctx, &key, &Sp { val: s.to_string(), off: e.off() }) else {
                    continue;
                };
                if let Some((first, owner)) = addr_offs.get(&ip.val) {
                    let (l, _) = ctx.loc(*first);
                    ctx.error(ip.off, key.clone(), format!("address {} is already used by {owner} (line {l})", ip.val));
                } else {
                    addr_offs.insert(ip.val, (ip.off, key.clone()));
                }
                addresses.insert(e.name.to_string(), ip.val);
            }
            for n in &networks {
                if !at.has(&n.name) {
                    ctx.error(
                        at.off,
                        at.key_path(&n.name),
                        format!(
                            "missing address on network `{}`: every node needs one address per declared network",
                            n.name
                        ),
                    );
                }
            }
        }
        if let Some(n) = name {
            if let Some(&first) = node_offs.get(&n.val) {
                let (l, _) = ctx.loc(first);
                ctx.error(
                    n.off,
                    t.key_path("name"),
                    format!("duplicate node name \"{}\" (first declared on line {l})", n.val),
                );
            } else {
                node_offs.insert(n.val.clone(), n.off);
                nodes.push(ClusterNode { name: n.val, addresses });
            }
        }
    }
    if root.has("node") && node_tables.len() == 1 {
        let off = root.get("node").map(|e| e.off()).unwrap_or(0);
        ctx.error(off, "node", format!("a cluster needs at least 2 nodes, found {}", node_tables.len()));
    }

    Some(ClusterConfig { name: name?.val, key_file: key_file?, port_base, networks, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "lab"
key_file = "/etc/tandem/cluster.key"

[[network]]
name = "net0"
replication = true

[[network]]
name = "net1"

[[node]]
name = "n1"
addresses = { net0 = "198.18.0.1", net1 = "198.18.1.1" }

[[node]]
name = "n2"
addresses = { net0 = "198.18.0.2", net1 = "198.18.1.2" }
"#;

    fn errs(text: &str) -> Vec<String> {
        match parse_cluster(Path::new("c.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn good_cluster() {
        let c = parse_cluster(Path::new("/x/c.toml"), GOOD).unwrap();
        assert_eq!(c.name, "lab");
        assert_eq!(c.port_base, 7400);
        assert_eq!(c.networks.len(), 2);
        assert_eq!(c.replication_network().name, "net0");
        assert_eq!(c.nodes[1].address("net1"), Some("198.18.1.2".parse().unwrap()));
        assert_eq!(c.heartbeat_port(3), 7403);
        assert_eq!(c.replication_port(3), 7503);
    }

    #[test]
    fn relative_key_file() {
        let text = GOOD.replace("/etc/tandem/cluster.key", "cluster.key");
        let c = parse_cluster(Path::new("/x/c.toml"), &text).unwrap();
        assert_eq!(c.key_file, PathBuf::from("/x/cluster.key"));
    }

    #[test]
    fn duplicate_nodes_and_addresses() {
        let text = GOOD.replace("name = \"n2\"", "name = \"n1\"").replace("198.18.1.2", "198.18.1.1");
        let e = errs(&text);
        assert!(
            e.iter().any(
                |e| e.contains("c.toml:17:8: node[1].name: duplicate node name \"n1\" (first declared on line 13)")
            ),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e
                    .contains("node[1].addresses.net1: address 198.18.1.1 is already used by node[0].addresses.net1")),
            "{e:?}"
        );
    }

    #[test]
    fn missing_and_extra_networks() {
        let text = GOOD.replace(", net1 = \"198.18.1.2\"", ", net2 = \"198.18.2.2\"");
        let e = errs(&text);
        assert!(
            e.iter()
                .any(|e| e
                    .contains("node[1].addresses.net2: `net2` is not a declared [[network]]; did you mean `net0`?")),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.contains("node[1].addresses.net1: missing address on network `net1`")), "{e:?}");
    }

    #[test]
    fn replication_network_count() {
        let e = errs(&GOOD.replace("replication = true", ""));
        assert!(e.iter().any(|e| e.contains("no network has `replication = true`")), "{e:?}");
        let e = errs(&GOOD.replace("name = \"net1\"", "name = \"net1\"\nreplication = true"));
        assert!(e.iter().any(|e| e.contains("network[1].replication: only one network")), "{e:?}");
    }

    #[test]
    fn missing_keys_and_port_base() {
        let e = errs("[[node]]\nname = \"n1\"\n");
        assert!(
            e.iter().any(|e| e.contains("c.toml:1:1: name: missing required key `name` in the top level")),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.contains("key_file: missing required key")), "{e:?}");
        assert!(
            e.iter().any(|e| e.contains("c.toml:1:1: node[0].addresses: missing required key `addresses` in [[node]]")),
            "{e:?}"
        );
        let e = errs(&format!("port_base = 70000\n{GOOD}"));
        assert!(e.iter().any(|e| e.contains("c.toml:1:13: port_base: 70000 is out of range")), "{e:?}");
    }

    #[test]
    fn unknown_top_key() {
        let e = errs(&format!("nmae = \"x\"\n{GOOD}"));
        assert_eq!(e, vec!["c.toml:1:1: nmae: unknown key `nmae` in the top level; did you mean `name`?"]);
    }
}
