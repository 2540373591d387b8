//! What `tandem lab status` and `tandem lab list` report, as text and as JSON.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Power state of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    Running,
    /// Powered off by `kill`, until `restart`.
    Killed,
}

impl Power {
    pub fn as_str(&self) -> &'static str {
        match self {
            Power::Running => "running",
            Power::Killed => "killed",
        }
    }
}

/// State of one cable (the switch-side end of the host's veth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Up,
    /// Cut by `cut`.
    Cut,
    /// Dark because the host is powered off.
    Off,
    /// The link does not exist (broken lab).
    Missing,
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Cut => "cut",
            LinkState::Off => "off",
            LinkState::Missing => "missing",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub network: u8,
    /// Interface name inside the host (`eth<k>`).
    pub iface: String,
    pub addr: Ipv4Addr,
    pub state: LinkState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatus {
    pub host: String,
    pub power: Power,
    /// Processes in the host's cgroup (and its sub-cgroups).
    pub processes: usize,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabStatus {
    pub name: String,
    pub nodes: u8,
    pub networks: u8,
    pub created_unix: u64,
    pub private_dirs: Vec<PathBuf>,
    pub hosts: Vec<HostStatus>,
}

/// One line of `tandem lab list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSummary {
    pub name: String,
    /// False for a half-built lab or leftovers (no readable state file): `tandem lab down` removes them.
    pub complete: bool,
    pub nodes: Option<u8>,
    pub networks: Option<u8>,
    pub created_unix: Option<u64>,
    pub killed: Vec<String>,
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "null".into())
}

impl LabStatus {
    /// The status as one JSON object.
    pub fn to_json(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                let links: Vec<String> = h
                    .links
                    .iter()
                    .map(|l| {
                        format!(
                            "{{\"network\":{},\"iface\":{},\"addr\":{},\"state\":{}}}",
                            l.network,
                            json_str(&l.iface),
                            json_str(&l.addr.to_string()),
                            json_str(l.state.as_str())
                        )
                    })
                    .collect();
                format!(
                    "{{\"host\":{},\"power\":{},\"processes\":{},\"links\":[{}]}}",
                    json_str(&h.host),
                    json_str(h.power.as_str()),
                    h.processes,
                    links.join(",")
                )
            })
            .collect();
        let dirs: Vec<String> = self.private_dirs.iter().map(|d| json_str(&d.to_string_lossy())).collect();
        format!(
            "{{\"name\":{},\"nodes\":{},\"networks\":{},\"created_unix\":{},\"private_dirs\":[{}],\"hosts\":[{}]}}",
            json_str(&self.name),
            self.nodes,
            self.networks,
            self.created_unix,
            dirs.join(","),
            hosts.join(",")
        )
    }
}

impl fmt::Display for LabStatus {
    /// A table: one line per host, one column per network.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lab {}: {} node(s), {} network(s)", self.name, self.nodes, self.networks)?;
        for d in &self.private_dirs {
            writeln!(f, "private directory: {}", d.display())?;
        }
        write!(f, "{:<8} {:<8} {:>5}", "HOST", "POWER", "PROCS")?;
        for k in 0..self.networks {
            write!(f, "  {:<22}", format!("NET{k} (eth{k})"))?;
        }
        writeln!(f)?;
        for h in &self.hosts {
            write!(f, "{:<8} {:<8} {:>5}", h.host, h.power.as_str(), h.processes)?;
            for k in 0..self.networks {
                let cell = match h.links.iter().find(|l| l.network == k) {
                    Some(l) => format!("{} {}", l.addr, l.state.as_str()),
                    None => "-".into(),
                };
                write!(f, "  {cell:<22}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl LabSummary {
    pub fn to_json(&self) -> String {
        let killed: Vec<String> = self.killed.iter().map(|k| json_str(k)).collect();
        format!(
            "{{\"name\":{},\"complete\":{},\"nodes\":{},\"networks\":{},\"created_unix\":{},\"killed\":[{}]}}",
            json_str(&self.name),
            self.complete,
            json_opt(&self.nodes),
            json_opt(&self.networks),
            json_opt(&self.created_unix),
            killed.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabStatus {
        LabStatus {
            name: "x".into(),
            nodes: 1,
            networks: 2,
            created_unix: 5,
            private_dirs: vec!["/srv/a".into()],
            hosts: vec![HostStatus {
                host: "n1".into(),
                power: Power::Running,
                processes: 2,
                links: vec![
                    LinkStatus {
                        network: 0,
                        iface: "eth0".into(),
                        addr: Ipv4Addr::new(198, 18, 0, 1),
                        state: LinkState::Up,
                    },
                    LinkStatus {
                        network: 1,
                        iface: "eth1".into(),
                        addr: Ipv4Addr::new(198, 18, 1, 1),
                        state: LinkState::Cut,
                    },
                ],
            }],
        }
    }

    #[test]
    fn json() {
        assert_eq!(json_str("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
        assert_eq!(
            sample().to_json(),
            "{\"name\":\"x\",\"nodes\":1,\"networks\":2,\"created_unix\":5,\"private_dirs\":[\"/srv/a\"],\"hosts\":[\
             {\"host\":\"n1\",\"power\":\"running\",\"processes\":2,\"links\":[\
             {\"network\":0,\"iface\":\"eth0\",\"addr\":\"198.18.0.1\",\"state\":\"up\"},\
             {\"network\":1,\"iface\":\"eth1\",\"addr\":\"198.18.1.1\",\"state\":\"cut\"}]}]}"
        );
        let s = LabSummary {
            name: "y".into(),
            complete: false,
            nodes: None,
            networks: None,
            created_unix: None,
            killed: vec![],
        };
        assert_eq!(
            s.to_json(),
            "{\"name\":\"y\",\"complete\":false,\"nodes\":null,\"networks\":null,\"created_unix\":null,\"killed\":[]}"
        );
    }

    #[test]
    fn table() {
        let t = sample().to_string();
        assert!(t.contains("n1       running      2  198.18.0.1 up"), "{t}");
        assert!(t.contains("198.18.1.1 cut"), "{t}");
    }
}
