//! Pure part: lab and host names, namespace and interface names, addressing.
//!
//! | host      | networks    | address on network k |
//! |-----------|-------------|----------------------|
//! | `n<i>`    | all         | 198.18.k.i           |
//! | `client`  | 0 only      | 198.18.0.200         |
//! | `witness` | 0 only      | 198.18.0.201         |
//!
//! 198.18.0.0/15 is the RFC 2544 benchmarking range: never routed on the internet, and the lab has
//! no default route anyway.

use crate::error::{LabError, Result};
use std::fmt;
use std::net::Ipv4Addr;

/// Most nodes a lab may have.
pub const MAX_NODES: u8 = 16;
/// Most networks a lab may have.
pub const MAX_NETWORKS: u8 = 4;
/// Longest lab name (namespaces are named `tl-<lab>-<host>`).
pub const MAX_LAB_NAME: usize = 12;
/// Prefix of every network namespace of every lab.
pub const NETNS_PREFIX: &str = "tl-";
/// Lab name used when none is given.
pub const DEFAULT_LAB: &str = "tandem";
/// Prefix length of each lab network.
pub const PREFIX_LEN: u8 = 24;

/// Checks a lab name: `[a-z0-9][a-z0-9-]{0,11}`.
pub fn validate_lab_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(LabError::InvalidName { name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_LAB_NAME {
        return bad("longer than 12 characters");
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("must start with a lowercase letter or a digit (pattern [a-z0-9][a-z0-9-]{0,11})");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return bad("only lowercase letters, digits and '-' are allowed (pattern [a-z0-9][a-z0-9-]{0,11})");
    }
    Ok(())
}

/// One simulated machine of a lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// Cluster node `n<i>`, i in 1..=16.
    Node(u8),
    /// A client machine on network 0.
    Client,
    /// The witness (split-brain arbiter) on network 0.
    Witness,
}

impl Host {
    /// Name as used on the command line and in namespaces: `n1`, `client`, `witness`.
    pub fn name(&self) -> String {
        match self {
            Host::Node(i) => format!("n{i}"),
            Host::Client => "client".into(),
            Host::Witness => "witness".into(),
        }
    }

    /// Short form used in switch-side interface names (15 characters at most).
    pub fn short(&self) -> String {
        match self {
            Host::Node(i) => format!("n{i}"),
            Host::Client => "c".into(),
            Host::Witness => "w".into(),
        }
    }

    /// Parses `n<i>` (i in 1..=16, no leading zero), `client`, `witness`. Does not check the lab's node count.
    pub fn parse(s: &str) -> Option<Host> {
        match s {
            "client" => Some(Host::Client),
            "witness" => Some(Host::Witness),
            _ => {
                let digits = s.strip_prefix('n')?;
                if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let i: u8 = digits.parse().ok()?;
                (1..=MAX_NODES).contains(&i).then_some(Host::Node(i))
            }
        }
    }

    /// Is this a cluster node?
    pub fn is_node(&self) -> bool {
        matches!(self, Host::Node(_))
    }

    /// The networks this host is attached to, in a lab with `networks` networks.
    pub fn networks(&self, networks: u8) -> std::ops::Range<u8> {
        match self {
            Host::Node(_) => 0..networks,
            Host::Client | Host::Witness => 0..1,
        }
    }

    /// Address of this host on network `k` (None when it is not on that network).
    pub fn addr(&self, network: u8, networks: u8) -> Option<Ipv4Addr> {
        if !self.networks(networks).contains(&network) {
            return None;
        }
        Some(match self {
            Host::Node(i) => node_addr(*i, network),
            Host::Client => client_addr(),
            Host::Witness => witness_addr(),
        })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Address of node `n<i>` on network `k`: 198.18.k.i.
pub fn node_addr(i: u8, network: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, network, i)
}

/// Address of the client (network 0 only): 198.18.0.200.
pub fn client_addr() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 200)
}

/// Address of the witness (network 0 only): 198.18.0.201.
pub fn witness_addr() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 201)
}

/// The subnet of network `k`: (198.18.k.0, 24).
pub fn network_subnet(network: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(198, 18, network, 0), PREFIX_LEN)
}

/// MAC address of a host's interface on network `k`: fixed (locally administered
/// `02:74:6c:0k:00:<id>`, id = i for node n<i>, 200 client, 201 witness), so that it survives a
/// `restart` as a real NIC's does and peers' ARP caches stay right.
pub fn host_mac(host: Host, network: u8) -> String {
    let id = match host {
        Host::Node(i) => i,
        Host::Client => 200,
        Host::Witness => 201,
    };
    format!("02:74:6c:{network:02x}:00:{id:02x}")
}

/// Network namespace of a host: `tl-<lab>-<host>`.
pub fn netns_name(lab: &str, host: Host) -> String {
    format!("{NETNS_PREFIX}{lab}-{}", host.name())
}

/// Network namespace of the lab's switch (one bridge per network): `tl-<lab>-sw`.
pub fn switch_netns(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-sw")
}

/// Name of the bridge of network `k` in the switch namespace.
pub fn bridge_name(network: u8) -> String {
    format!("br{network}")
}

/// Switch-side end of host `h`'s veth on network `k` (in the switch namespace): `<short>e<k>`.
pub fn switch_port(host: Host, network: u8) -> String {
    format!("{}e{network}", host.short())
}

/// Host-side end of the veth on network `k` (in the host namespace): `eth<k>`.
pub fn host_iface(network: u8) -> String {
    format!("eth{network}")
}

/// Splits a namespace name `tl-<lab>-<host|sw>` into (lab, host-or-"sw"), when it is one of ours.
/// Host names contain no '-', so the split at the last '-' is unambiguous.
pub fn parse_netns_name(ns: &str) -> Option<(String, String)> {
    let rest = ns.strip_prefix(NETNS_PREFIX)?;
    let (lab, host) = rest.rsplit_once('-')?;
    validate_lab_name(lab).ok()?;
    if host == "sw" || Host::parse(host).is_some() {
        Some((lab.to_string(), host.to_string()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        for ok in ["tandem", "a", "0", "t123-4", "abcdefghijkl", "a-"] {
            validate_lab_name(ok).unwrap();
        }
        for bad in ["", "-a", "A", "abcdefghijklm", "a_b", "a.b", "a b", "é"] {
            assert!(validate_lab_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts_parse_and_names() {
        assert_eq!(Host::parse("n1"), Some(Host::Node(1)));
        assert_eq!(Host::parse("n16"), Some(Host::Node(16)));
        assert_eq!(Host::parse("client"), Some(Host::Client));
        assert_eq!(Host::parse("witness"), Some(Host::Witness));
        for bad in ["n0", "n17", "n01", "n", "x1", "n1a", "sw", "N1"] {
            assert_eq!(Host::parse(bad), None, "{bad}");
        }
        for h in [Host::Node(1), Host::Node(16), Host::Client, Host::Witness] {
            assert_eq!(Host::parse(&h.name()), Some(h));
            for k in 0..MAX_NETWORKS {
                assert!(switch_port(h, k).len() <= 15);
            }
        }
    }

    #[test]
    fn addressing() {
        assert_eq!(node_addr(1, 0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(node_addr(16, 3), Ipv4Addr::new(198, 18, 3, 16));
        assert_eq!(Host::Node(2).addr(1, 2), Some(Ipv4Addr::new(198, 18, 1, 2)));
        assert_eq!(Host::Node(2).addr(2, 2), None);
        assert_eq!(Host::Client.addr(0, 4), Some(client_addr()));
        assert_eq!(Host::Client.addr(1, 4), None);
        assert_eq!(Host::Witness.addr(0, 1), Some(Ipv4Addr::new(198, 18, 0, 201)));
        assert_eq!(Host::Witness.networks(3), 0..1);
        assert_eq!(Host::Node(3).networks(3), 0..3);
        assert_eq!(host_mac(Host::Node(16), 3), "02:74:6c:03:00:10");
        assert_eq!(host_mac(Host::Witness, 0), "02:74:6c:00:00:c9");
    }

    #[test]
    fn netns_names_roundtrip() {
        assert_eq!(netns_name("lab", Host::Node(3)), "tl-lab-n3");
        assert_eq!(switch_netns("lab"), "tl-lab-sw");
        assert_eq!(parse_netns_name("tl-lab-n3"), Some(("lab".into(), "n3".into())));
        assert_eq!(parse_netns_name("tl-a-b-sw"), Some(("a-b".into(), "sw".into())));
        assert_eq!(parse_netns_name("tl-a-b-client"), Some(("a-b".into(), "client".into())));
        assert_eq!(parse_netns_name("tl-a-b"), None);
        assert_eq!(parse_netns_name("other"), None);
        assert_eq!(parse_netns_name("tl--n1"), None);
    }
}
