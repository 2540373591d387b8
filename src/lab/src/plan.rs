//! Pure part: the spec of a lab, where its pieces live, and the commands that build it.
//! Nothing here touches the system, so it is unit-tested without root.

use crate::error::{LabError, Result};
use crate::names::{self, Host};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Where the lab keeps its persistent state ("disks"): `/var/lib/tandem-lab/<lab>/`.
pub const STATE_ROOT: &str = "/var/lib/tandem-lab";
/// Where the lab keeps its runtime files (namespace files): `/run/tandem-lab/<lab>/`.
pub const RUN_ROOT: &str = "/run/tandem-lab";
/// Where `ip netns` keeps its namespace files.
pub const NETNS_DIR: &str = "/run/netns";
/// Lock file serialising the changes of labs on this machine.
pub const LOCK_FILE: &str = "/run/lock/tandem-lab.lock";
/// Name of the lab directory under the cgroup v2 mount.
pub const CGROUP_DIR: &str = "tandem-lab";

/// Directories every host always has a private, initially empty, copy of, with the name of their
/// per-host backing directory.
pub const FIXED_PRIVATE_DIRS: [(&str, &str); 2] =
    [("/etc/tandem", "etc-tandem"), ("/var/lib/tandem", "var-lib-tandem")];

/// What a lab is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Lab name, `[a-z0-9][a-z0-9-]{0,11}`.
    pub name: String,
    /// Number of cluster nodes `n1..nN`, 1..=16.
    pub nodes: u8,
    /// Number of networks, 1..=4. Nodes are on all of them, client and witness on network 0.
    pub networks: u8,
    /// Absolute directories each host gets a private copy of (initialised from the machine's
    /// directory when it exists), e.g. a module's replicated directory, or `/etc/libvirt`.
    /// `/etc/tandem` and `/var/lib/tandem` are always private (and start empty).
    #[serde(default)]
    pub private_dirs: Vec<PathBuf>,
}

impl LabSpec {
    /// A spec with one network and no extra private directory.
    pub fn new(name: impl Into<String>, nodes: u8) -> Self {
        LabSpec { name: name.into(), nodes, networks: 1, private_dirs: Vec::new() }
    }

    /// Sets the number of networks.
    pub fn networks(mut self, networks: u8) -> Self {
        self.networks = networks;
        self
    }

    /// Adds a private directory.
    pub fn private_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.private_dirs.push(dir.into());
        self
    }

    /// Checks the name, counts and private directories.
    pub fn validate(&self) -> Result<()> {
        names::validate_lab_name(&self.name)?;
        let bad = |reason: String| Err(LabError::InvalidSpec { lab: self.name.clone(), reason });
        if !(1..=names::MAX_NODES).contains(&self.nodes) {
            return bad(format!("--nodes must be between 1 and {} (got {})", names::MAX_NODES, self.nodes));
        }
        if !(1..=names::MAX_NETWORKS).contains(&self.networks) {
            return bad(format!("--networks must be between 1 and {} (got {})", names::MAX_NETWORKS, self.networks));
        }
        for (i, dir) in self.private_dirs.iter().enumerate() {
            if let Err(reason) = check_private_dir(dir) {
                return bad(format!("private directory {}: {reason}", dir.display()));
            }
            for other in &self.private_dirs[..i] {
                if other == dir {
                    return bad(format!("private directory {} given twice", dir.display()));
                }
                if dir.starts_with(other) || other.starts_with(dir) {
                    return bad(format!(
                        "private directories {} and {} are nested; give only the outer one",
                        other.display(),
                        dir.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// All hosts: `n1..nN`, `client`, `witness`.
    pub fn hosts(&self) -> Vec<Host> {
        let mut v: Vec<Host> = (1..=self.nodes).map(Host::Node).collect();
        v.push(Host::Client);
        v.push(Host::Witness);
        v
    }

    /// Resolves a host name of this lab.
    pub fn host(&self, name: &str) -> Result<Host> {
        match Host::parse(name) {
            Some(Host::Node(i)) if i > self.nodes => Err(self.unknown_host(name)),
            Some(h) => Ok(h),
            None => Err(self.unknown_host(name)),
        }
    }

    fn unknown_host(&self, name: &str) -> LabError {
        let known = if self.nodes == 1 { "n1".to_string() } else { format!("n1..n{}", self.nodes) };
        LabError::UnknownHost {
            lab: self.name.clone(),
            host: name.to_string(),
            known: format!("{known}, client, witness"),
        }
    }

    /// The networks a host is on, checking an optional network number.
    pub fn host_networks(&self, host: Host, network: Option<u8>) -> Result<Vec<u8>> {
        let all: Vec<u8> = host.networks(self.networks).collect();
        match network {
            None => Ok(all),
            Some(k) if all.contains(&k) => Ok(vec![k]),
            Some(k) => Err(LabError::UnknownNetwork {
                lab: self.name.clone(),
                host: host.name(),
                network: k,
                networks: self.networks,
                host_networks: all.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

/// Rejects private directories that cannot or must not be made private.
fn check_private_dir(dir: &Path) -> std::result::Result<(), String> {
    if !dir.is_absolute() {
        return Err("must be an absolute path".into());
    }
    if dir.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err("must not contain '.' or '..'".into());
    }
    if dir.to_str().is_none() {
        return Err("must be valid UTF-8".into());
    }
    if dir.parent().is_none() {
        return Err("cannot make / private".into());
    }
    for forbidden in ["/proc", "/sys", "/dev", "/run", STATE_ROOT] {
        if dir.starts_with(forbidden) {
            return Err(format!("cannot be under {forbidden}"));
        }
    }
    for (fixed, _) in FIXED_PRIVATE_DIRS {
        if dir.starts_with(fixed) || Path::new(fixed).starts_with(dir) {
            return Err(format!("overlaps {fixed}, which every host already has privately"));
        }
    }
    if [
        "/etc", "/var", "/var/lib", "/tmp", "/var/tmp", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/root", "/home",
        "/boot",
    ]
    .iter()
    .any(|d| dir == Path::new(d))
    {
        return Err("a whole system directory cannot be made private".into());
    }
    Ok(())
}

/// Where every piece of a lab lives on the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub state_root: PathBuf,
    pub run_root: PathBuf,
    pub netns_dir: PathBuf,
    /// Mount point of the cgroup v2 hierarchy (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
    pub cgroup_mount: PathBuf,
}

impl Paths {
    /// The standard locations, with the given cgroup v2 mount.
    pub fn system(cgroup_mount: PathBuf) -> Self {
        Paths { state_root: STATE_ROOT.into(), run_root: RUN_ROOT.into(), netns_dir: NETNS_DIR.into(), cgroup_mount }
    }
    pub fn lab_state_dir(&self, lab: &str) -> PathBuf {
        self.state_root.join(lab)
    }
    pub fn state_file(&self, lab: &str) -> PathBuf {
        self.lab_state_dir(lab).join("lab.toml")
    }
    /// The /etc/hosts given to every host of the lab.
    pub fn hosts_file(&self, lab: &str) -> PathBuf {
        self.lab_state_dir(lab).join("hosts")
    }
    pub fn host_state_dir(&self, lab: &str, host: Host) -> PathBuf {
        self.lab_state_dir(lab).join(host.name())
    }
    /// Backing directory of a private directory of a host.
    pub fn private_dir_source(&self, lab: &str, host: Host, dir: &Path) -> PathBuf {
        for (fixed, backing) in FIXED_PRIVATE_DIRS {
            if dir == Path::new(fixed) {
                return self.host_state_dir(lab, host).join(backing);
            }
        }
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        self.host_state_dir(lab, host).join("dirs").join(rel)
    }
    pub fn lab_run_dir(&self, lab: &str) -> PathBuf {
        self.run_root.join(lab)
    }
    /// Bind mount of the host's persistent mount namespace.
    pub fn mnt_file(&self, lab: &str, host: Host) -> PathBuf {
        self.lab_run_dir(lab).join(format!("{}.mnt", host.name()))
    }
    /// Bind mount of the host's persistent UTS namespace (its hostname).
    pub fn uts_file(&self, lab: &str, host: Host) -> PathBuf {
        self.lab_run_dir(lab).join(format!("{}.uts", host.name()))
    }
    /// `ip netns` file of a host.
    pub fn netns_file(&self, lab: &str, host: Host) -> PathBuf {
        self.netns_dir.join(names::netns_name(lab, host))
    }
    pub fn switch_netns_file(&self, lab: &str) -> PathBuf {
        self.netns_dir.join(names::switch_netns(lab))
    }
    /// `<cgroup2>/tandem-lab`.
    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup_mount.join(CGROUP_DIR)
    }
    pub fn cgroup_lab(&self, lab: &str) -> PathBuf {
        self.cgroup_root().join(lab)
    }
    pub fn cgroup_host(&self, lab: &str, host: Host) -> PathBuf {
        self.cgroup_lab(lab).join(host.name())
    }
    /// Lock serialising lab changes on this machine (never removed: removing a lock file others
    /// may be waiting on would let two holders in).
    pub fn lock_file(&self) -> PathBuf {
        PathBuf::from(LOCK_FILE)
    }
    /// Mount points the labs created on the machine (removed when the last lab goes).
    pub fn created_registry(&self) -> PathBuf {
        self.state_root.join(".created-mountpoints")
    }
}

/// Every private directory of a host: the fixed ones, then the spec's, as (mount point, backing dir).
pub fn private_binds(spec: &LabSpec, paths: &Paths, host: Host) -> Vec<(PathBuf, PathBuf)> {
    FIXED_PRIVATE_DIRS
        .iter()
        .map(|(d, _)| PathBuf::from(d))
        .chain(spec.private_dirs.iter().cloned())
        .map(|d| {
            let src = paths.private_dir_source(&spec.name, host, &d);
            (d, src)
        })
        .collect()
}

/// One command of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
}

impl Cmd {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd { argv: argv.into_iter().map(Into::into).collect() }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.argv.iter().map(|a| shell_quote(a)).collect();
        f.write_str(&parts.join(" "))
    }
}

/// Quotes a word for sh when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn ip(netns: &str, args: &[&str]) -> Cmd {
    let mut argv = vec!["ip".to_string(), "-n".into(), netns.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Cmd { argv }
}

/// Commands creating the switch namespace and its bridges.
pub fn switch_steps(spec: &LabSpec) -> Vec<Cmd> {
    let sw = names::switch_netns(&spec.name);
    let mut v = vec![Cmd::new(["ip", "netns", "add", sw.as_str()]), ip(&sw, &["link", "set", "lo", "up"])];
    for k in 0..spec.networks {
        let br = names::bridge_name(k);
        v.push(ip(&sw, &["link", "add", &br, "type", "bridge"]));
        v.push(ip(&sw, &["link", "set", &br, "up"]));
    }
    v
}

/// Commands creating a host's network namespace and its links. `link_up(k)` tells whether the
/// switch-side end of network k starts up (false for a cut link).
pub fn host_net_steps(spec: &LabSpec, host: Host, link_up: impl Fn(u8) -> bool) -> Vec<Cmd> {
    let lab = &spec.name;
    let sw = names::switch_netns(lab);
    let ns = names::netns_name(lab, host);
    let mut v = vec![Cmd::new(["ip", "netns", "add", ns.as_str()]), ip(&ns, &["link", "set", "lo", "up"])];
    for k in host.networks(spec.networks) {
        let port = names::switch_port(host, k);
        let eth = names::host_iface(k);
        let addr = format!("{}/{}", host.addr(k, spec.networks).expect("host on network"), names::PREFIX_LEN);
        v.push(ip(&sw, &["link", "add", &port, "type", "veth", "peer", "name", &eth, "netns", &ns]));
        v.push(ip(&sw, &["link", "set", &port, "master", &names::bridge_name(k)]));
        v.push(ip(&ns, &["link", "set", &eth, "address", &names::host_mac(host, k)]));
        v.push(ip(&ns, &["addr", "add", &addr, "dev", &eth]));
        v.push(ip(&ns, &["link", "set", &eth, "up"]));
        if link_up(k) {
            v.push(ip(&sw, &["link", "set", &port, "up"]));
        }
    }
    v
}

/// Command setting the switch-side ends of a host's links up or down.
pub fn link_cmd(lab: &str, host: Host, network: u8, up: bool) -> Cmd {
    ip(&names::switch_netns(lab), &["link", "set", &names::switch_port(host, network), if up { "up" } else { "down" }])
}

/// Script lines mounting a fresh /sys (of the current network namespace), cgroup2 and bpffs.
fn sys_lines(out: &mut Vec<String>) {
    out.push("if mountpoint -q /sys; then umount -l /sys; fi".into());
    out.push("mount -t sysfs -o nosuid,nodev,noexec sysfs /sys".into());
    out.push("mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup".into());
    out.push("mount -t bpf -o mode=0700 bpf /sys/fs/bpf 2>/dev/null || true".into());
}

/// Script lines giving a fresh /run (with /run/tandem).
fn run_lines(lab: &str, out: &mut Vec<String>) {
    out.push(format!("mount -t tmpfs -o mode=0755,nosuid,nodev tl-{lab}-run /run"));
    out.push("mkdir -p /run/tandem /run/lock".into());
    out.push("chmod 1777 /run/lock".into());
}

/// The script run (by `sh -c`) in a host's new mount and UTS namespaces, inside its network
/// namespace, when the lab is built.
pub fn setup_script(spec: &LabSpec, paths: &Paths, host: Host) -> String {
    let mut l = vec!["set -e".to_string()];
    l.push(format!("echo {} > /proc/sys/kernel/hostname", host.name()));
    // The machine's mounts under /run (other namespaces' files, other labs' files) were copied
    // into this namespace: detach them so they do not keep those namespaces alive.
    l.push(
        "for m in $(awk '$5 == \"/run\" || index($5, \"/run/\") == 1 { print $5 }' /proc/self/mountinfo | sort -r); \
         do umount -l \"$m\" 2>/dev/null || true; done"
            .into(),
    );
    run_lines(&spec.name, &mut l);
    sys_lines(&mut l);
    for (target, src) in private_binds(spec, paths, host) {
        l.push(format!(
            "mount --bind {} {}",
            shell_quote(&src.to_string_lossy()),
            shell_quote(&target.to_string_lossy())
        ));
    }
    l.push(format!(
        "if [ -e /etc/hosts ]; then mount --bind {} /etc/hosts; fi",
        shell_quote(&paths.hosts_file(&spec.name).to_string_lossy())
    ));
    l.join("\n")
}

/// The command creating a host's persistent mount and UTS namespaces (run after its network
/// namespace exists). The namespace files are bind-mounted by `unshare` from the machine's mount
/// namespace, which `ip netns exec` would not allow (it makes its own mount namespace).
pub fn mountns_cmd(spec: &LabSpec, paths: &Paths, host: Host) -> Cmd {
    Cmd::new([
        "nsenter".to_string(),
        format!("--net={}", paths.netns_file(&spec.name, host).display()),
        "--".into(),
        "unshare".into(),
        format!("--mount={}", paths.mnt_file(&spec.name, host).display()),
        format!("--uts={}", paths.uts_file(&spec.name, host).display()),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        setup_script(spec, paths, host),
    ])
}

/// The command run at power-on (`restart`), in the host's mount namespace and its new network
/// namespace: a fresh /sys for the new network namespace and a fresh /run.
pub fn restart_cmd(spec: &LabSpec, paths: &Paths, host: Host) -> Cmd {
    let mut l = vec!["set -e".to_string()];
    sys_lines(&mut l);
    l.push("umount -l /run".into());
    run_lines(&spec.name, &mut l);
    Cmd::new([
        "nsenter".to_string(),
        format!("--net={}", paths.netns_file(&spec.name, host).display()),
        format!("--mount={}", paths.mnt_file(&spec.name, host).display()),
        "--".into(),
        "sh".into(),
        "-c".into(),
        l.join("\n"),
    ])
}

/// The /etc/hosts of every host of the lab: `n<i>` (network 0), `n<i>-net<k>`, `client`, `witness`.
pub fn hosts_file_content(spec: &LabSpec) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in spec.hosts() {
        for k in h.networks(spec.networks) {
            let addr = h.addr(k, spec.networks).expect("host on network");
            if k == 0 {
                s.push_str(&format!("{addr}\t{} {}-net0\n", h.name(), h.name()));
            } else {
                s.push_str(&format!("{addr}\t{}-net{k}\n", h.name()));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths::system("/sys/fs/cgroup/unified".into())
    }

    #[test]
    fn spec_validation() {
        LabSpec::new("t1", 3).networks(2).validate().unwrap();
        LabSpec::new("t1", 16).networks(4).private_dir("/srv/data").validate().unwrap();
        assert!(LabSpec::new("t1", 0).validate().is_err());
        assert!(LabSpec::new("t1", 17).validate().is_err());
        assert!(LabSpec::new("t1", 2).networks(0).validate().is_err());
        assert!(LabSpec::new("t1", 2).networks(5).validate().is_err());
        assert!(LabSpec::new("Bad", 2).validate().is_err());
        for bad in [
            "relative",
            "/",
            "/tmp",
            "/srv/../etc",
            "/proc/x",
            "/run/x",
            "/etc/tandem",
            "/etc/tandem/x",
            "/var/lib",
            "/etc",
        ] {
            assert!(LabSpec::new("t1", 2).private_dir(bad).validate().is_err(), "{bad} accepted");
        }
        assert!(LabSpec::new("t1", 2).private_dir("/srv/a").private_dir("/srv/a").validate().is_err());
        assert!(LabSpec::new("t1", 2).private_dir("/srv").private_dir("/srv/a").validate().is_err());
        LabSpec::new("t1", 2).private_dir("/srv/a").private_dir("/srv/ab").validate().unwrap();
        LabSpec::new("t1", 2).private_dir("/tmp/.tmpXYZ/data").validate().unwrap();
    }

    #[test]
    fn hosts_of_a_spec() {
        let s = LabSpec::new("t1", 3).networks(2);
        assert_eq!(s.hosts(), vec![Host::Node(1), Host::Node(2), Host::Node(3), Host::Client, Host::Witness]);
        assert_eq!(s.host("n3").unwrap(), Host::Node(3));
        assert!(matches!(s.host("n4"), Err(LabError::UnknownHost { .. })));
        assert!(s.host("bogus").unwrap_err().to_string().contains("n1..n3, client, witness"));
        assert_eq!(s.host_networks(Host::Node(1), None).unwrap(), vec![0, 1]);
        assert_eq!(s.host_networks(Host::Node(1), Some(1)).unwrap(), vec![1]);
        assert!(s.host_networks(Host::Client, Some(1)).is_err());
        assert!(s.host_networks(Host::Node(1), Some(2)).is_err());
    }

    #[test]
    fn paths_of_a_lab() {
        let p = paths();
        assert_eq!(p.state_file("x"), PathBuf::from("/var/lib/tandem-lab/x/lab.toml"));
        assert_eq!(p.mnt_file("x", Host::Node(2)), PathBuf::from("/run/tandem-lab/x/n2.mnt"));
        assert_eq!(p.netns_file("x", Host::Client), PathBuf::from("/run/netns/tl-x-client"));
        assert_eq!(p.cgroup_host("x", Host::Witness), PathBuf::from("/sys/fs/cgroup/unified/tandem-lab/x/witness"));
        assert_eq!(
            p.private_dir_source("x", Host::Node(1), Path::new("/etc/tandem")),
            PathBuf::from("/var/lib/tandem-lab/x/n1/etc-tandem")
        );
        assert_eq!(
            p.private_dir_source("x", Host::Node(1), Path::new("/srv/app data")),
            PathBuf::from("/var/lib/tandem-lab/x/n1/dirs/srv/app data")
        );
    }

    #[test]
    fn plan_of_links() {
        let s = LabSpec::new("lab", 2).networks(2);
        let sw: Vec<String> = switch_steps(&s).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            sw,
            [
                "ip netns add tl-lab-sw",
                "ip -n tl-lab-sw link set lo up",
                "ip -n tl-lab-sw link add br0 type bridge",
                "ip -n tl-lab-sw link set br0 up",
                "ip -n tl-lab-sw link add br1 type bridge",
                "ip -n tl-lab-sw link set br1 up",
            ]
        );
        let n2: Vec<String> = host_net_steps(&s, Host::Node(2), |k| k != 1).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            n2,
            [
                "ip netns add tl-lab-n2",
                "ip -n tl-lab-n2 link set lo up",
                "ip -n tl-lab-sw link add n2e0 type veth peer name eth0 netns tl-lab-n2",
                "ip -n tl-lab-sw link set n2e0 master br0",
                "ip -n tl-lab-n2 link set eth0 address 02:74:6c:00:00:02",
                "ip -n tl-lab-n2 addr add 198.18.0.2/24 dev eth0",
                "ip -n tl-lab-n2 link set eth0 up",
                "ip -n tl-lab-sw link set n2e0 up",
                "ip -n tl-lab-sw link add n2e1 type veth peer name eth1 netns tl-lab-n2",
                "ip -n tl-lab-sw link set n2e1 master br1",
                "ip -n tl-lab-n2 link set eth1 address 02:74:6c:01:00:02",
                "ip -n tl-lab-n2 addr add 198.18.1.2/24 dev eth1",
                "ip -n tl-lab-n2 link set eth1 up",
            ]
        );
        let c = host_net_steps(&s, Host::Client, |_| true);
        assert_eq!(c.len(), 2 + 6, "client is on network 0 only");
        assert!(c.iter().any(|c| c.to_string() == "ip -n tl-lab-client addr add 198.18.0.200/24 dev eth0"));
        assert_eq!(link_cmd("lab", Host::Witness, 0, false).to_string(), "ip -n tl-lab-sw link set we0 down");
    }

    #[test]
    fn mount_namespace_plan() {
        let s = LabSpec::new("lab", 2).private_dir("/srv/my app");
        let p = paths();
        let cmd = mountns_cmd(&s, &p, Host::Node(1));
        assert_eq!(&cmd.argv[..3], ["nsenter", "--net=/run/netns/tl-lab-n1", "--"]);
        assert_eq!(cmd.argv[4], "--mount=/run/tandem-lab/lab/n1.mnt");
        assert_eq!(cmd.argv[5], "--uts=/run/tandem-lab/lab/n1.uts");
        let script = cmd.argv.last().unwrap();
        assert!(script.starts_with("set -e\necho n1 > /proc/sys/kernel/hostname\n"));
        assert!(script.contains("mount -t tmpfs -o mode=0755,nosuid,nodev tl-lab-run /run\nmkdir -p /run/tandem"));
        assert!(script.contains("mount -t sysfs"));
        assert!(script.contains("mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup"));
        assert!(script.contains("mount --bind /var/lib/tandem-lab/lab/n1/etc-tandem /etc/tandem\n"));
        assert!(script.contains("mount --bind /var/lib/tandem-lab/lab/n1/var-lib-tandem /var/lib/tandem\n"));
        assert!(script.contains("mount --bind '/var/lib/tandem-lab/lab/n1/dirs/srv/my app' '/srv/my app'\n"));
        assert!(script.ends_with("then mount --bind /var/lib/tandem-lab/lab/hosts /etc/hosts; fi"));
        // /run is replaced before /sys is touched, and binds come last.
        assert!(script.find("/run\n").unwrap() < script.find("sysfs").unwrap());
        let r = restart_cmd(&s, &p, Host::Node(1));
        assert_eq!(&r.argv[..3], ["nsenter", "--net=/run/netns/tl-lab-n1", "--mount=/run/tandem-lab/lab/n1.mnt"]);
        assert!(r.argv.last().unwrap().contains("umount -l /run\nmount -t tmpfs"));
    }

    #[test]
    fn hosts_file() {
        let h = hosts_file_content(&LabSpec::new("lab", 2).networks(2));
        assert!(h.contains("198.18.0.1\tn1 n1-net0\n"));
        assert!(h.contains("198.18.1.2\tn2-net1\n"));
        assert!(h.contains("198.18.0.200\tclient client-net0\n"));
        assert!(h.contains("198.18.0.201\twitness witness-net0\n"));
        assert!(!h.contains("198.18.1.200"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc/d-e"), "abc/d-e");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
