//! `tandem lab`: a cluster of simulated machines on one Linux machine, built from kernel primitives.
//!
//! Each host of a lab (`n1..nN`, `client`, `witness`) is a named network namespace
//! (`tl-<lab>-<host>`), a persistent mount namespace (own /run, /sys, /etc/tandem,
//! /var/lib/tandem and private directories), a UTS namespace (its hostname) and a cgroup v2 group
//! (so that a power loss kills all its processes at once). A switch namespace `tl-<lab>-sw` holds
//! one bridge per network; each host is cabled to it by veth pairs whose switch-side ends are
//! set down to cut a cable.
//!
//! ```no_run
//! use tandem_lab::{Lab, LabSpec};
//! let lab = Lab::up(LabSpec::new("demo", 2).networks(2))?;
//! let mut daemon = lab.command("n1", &["sleep", "1000"])?.spawn().unwrap();
//! lab.kill("n1")?;            // power loss: the sleep dies, n1's cables go dark
//! let _ = daemon.wait();
//! lab.restart("n1")?;         // power back: fresh /run and network stack, disks kept
//! lab.down()?;
//! # Ok::<(), tandem_lab::LabError>(())
//! ```
//!
//! The pure part (names, addressing, the commands that build a lab) is in [`names`] and [`plan`].

pub mod error;
pub mod names;
pub mod plan;
mod state;
mod status;
mod sys;

pub use error::{LabError, Result};
pub use names::{client_addr, node_addr, witness_addr, Host, DEFAULT_LAB};
pub use plan::LabSpec;
pub use state::{CutLink, LabState};
pub use status::{HostStatus, LabStatus, LabSummary, LinkState, LinkStatus, Power};
pub use sys::cgroup2_mount;

use plan::{Cmd, Paths};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a power loss may take to reap a host's processes.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A lab that exists on this machine. The handle is cheap: every operation re-reads the state
/// file, so several handles (and `tandem lab` commands) can work on the same lab.
#[derive(Debug, Clone)]
pub struct Lab {
    paths: Paths,
    spec: LabSpec,
}

impl Lab {
    /// Builds a lab. Fails if a lab of that name (or any leftover of one) exists. If building
    /// fails half-way, what was built is removed before the error is returned.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        spec.validate()?;
        if !sys::is_root() {
            return Err(LabError::NotRoot);
        }
        let paths = Paths::system(sys::cgroup2_mount()?);
        let _lock = sys::lock_machine(&paths.lock_file())?;
        if let Some(evidence) = leftovers(&paths, &spec.name).first() {
            return Err(LabError::Exists { lab: spec.name.clone(), evidence: evidence.clone() });
        }
        match build(&paths, &spec) {
            Ok(()) => Ok(Lab { paths, spec }),
            Err(err) => {
                if let Err(e) = teardown(&paths, &spec.name) {
                    tracing::warn!("cleaning up the half-built lab {}: {e}", spec.name);
                }
                Err(err)
            }
        }
    }

    /// Opens an existing lab.
    pub fn open(name: &str) -> Result<Lab> {
        names::validate_lab_name(name)?;
        let probe = Paths::system(PathBuf::new());
        let state = state::LabState::load(name, &probe.state_file(name))?;
        Ok(Lab { paths: Paths::system(state.cgroup_mount.clone()), spec: state.spec })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What the lab is made of.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// All hosts: `n1..nN`, `client`, `witness`.
    pub fn hosts(&self) -> Vec<Host> {
        self.spec.hosts()
    }

    /// The current state (killed hosts, cut links), read from the state file.
    pub fn state(&self) -> Result<LabState> {
        LabState::load(self.name(), &self.paths.state_file(self.name()))
    }

    /// Name of a host's network namespace (`ip netns` name), e.g. for tools that take one.
    pub fn netns(&self, host: &str) -> Result<String> {
        Ok(names::netns_name(self.name(), self.spec.host(host)?))
    }

    /// Address of node `n<i>` on network `k` (198.18.k.i).
    pub fn node_addr(&self, i: u8, network: u8) -> Ipv4Addr {
        names::node_addr(i, network)
    }

    /// Address of the client (198.18.0.200).
    pub fn client_addr(&self) -> Ipv4Addr {
        names::client_addr()
    }

    /// Address of the witness (198.18.0.201).
    pub fn witness_addr(&self) -> Ipv4Addr {
        names::witness_addr()
    }

    /// Address of any host on network `k`, if it is on that network.
    pub fn host_addr(&self, host: &str, network: u8) -> Result<Ipv4Addr> {
        let h = self.spec.host(host)?;
        let nets = self.spec.host_networks(h, Some(network))?;
        Ok(h.addr(nets[0], self.spec.networks).expect("host on network"))
    }

    /// A command that, when spawned (or `exec`ed), runs `argv` inside `host`: in its cgroup, its
    /// network, UTS and mount namespaces, with `/` as working directory. Stdio and environment are
    /// inherited unless the caller changes them. Fails if the host is powered off.
    pub fn command<S: AsRef<OsStr>>(&self, host: &str, argv: &[S]) -> Result<Command> {
        let h = self.spec.host(host)?;
        let lab = self.name();
        let Some((program, args)) = argv.split_first() else {
            return Err(LabError::InvalidSpec {
                lab: lab.to_string(),
                reason: format!("empty command for host {host}"),
            });
        };
        if self.state()?.is_killed(host) {
            return Err(LabError::HostKilled { lab: lab.to_string(), host: host.to_string() });
        }
        let open =
            |p: &Path| File::open(p).map_err(|e| LabError::io(lab, format!("host {host}: opening {}", p.display()), e));
        let net = open(&self.paths.netns_file(lab, h))?;
        let uts = open(&self.paths.uts_file(lab, h))?;
        let mnt = open(&self.paths.mnt_file(lab, h))?;
        let procs_path = self.paths.cgroup_host(lab, h).join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| LabError::io(lab, format!("host {host}: opening {}", procs_path.display()), e))?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: the closure only makes system calls (getpid, write, setns, chdir) on file
        // descriptors opened beforehand, with a stack buffer: it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || enter(&procs, &net, &uts, &mnt));
        }
        Ok(cmd)
    }

    /// Power loss: every process of the host is killed at once (SIGKILL through `cgroup.kill`, no
    /// cleanup) and its cables go dark. Killing a killed host does nothing more.
    pub fn kill(&self, host: &str) -> Result<()> {
        let h = self.spec.host(host)?;
        let _lock = sys::lock_machine(&self.paths.lock_file())?;
        let mut st = self.state()?;
        sys::cgroup_kill(self.name(), host, &self.paths.cgroup_host(self.name(), h), KILL_TIMEOUT)?;
        for k in h.networks(self.spec.networks) {
            sys::run(self.name(), &format!("power loss of {host}"), &plan::link_cmd(self.name(), h, k, false))?;
        }
        if !st.is_killed(host) {
            st.killed.push(host.to_string());
            st.save(&self.paths.state_file(self.name()))?;
        }
        Ok(())
    }

    /// Power back after [`Lab::kill`]: a fresh network stack (addresses added at run time,
    /// firewall rules and sysctls are gone, as after a reboot) with its cables plugged back
    /// (except those still cut), a fresh /run (and /run/tandem); the disks (/etc/tandem,
    /// /var/lib/tandem, private directories) are kept. Restarting a running host is an error.
    pub fn restart(&self, host: &str) -> Result<()> {
        let h = self.spec.host(host)?;
        let lab = self.name();
        let _lock = sys::lock_machine(&self.paths.lock_file())?;
        let mut st = self.state()?;
        if !st.is_killed(host) {
            return Err(LabError::HostRunning { lab: lab.to_string(), host: host.to_string() });
        }
        sys::cgroup_kill(lab, host, &self.paths.cgroup_host(lab, h), KILL_TIMEOUT)?;
        let what = format!("power-on of {host}");
        for k in h.networks(self.spec.networks) {
            let port = names::switch_port(h, k);
            let del = Cmd::new(["ip", "-n", &names::switch_netns(lab), "link", "del", &port]);
            sys::run(lab, &what, &del)?;
        }
        sys::run(lab, &what, &Cmd::new(["ip", "netns", "del", &names::netns_name(lab, h)]))?;
        for cmd in plan::host_net_steps(&self.spec, h, |k| !st.is_cut(host, k)) {
            sys::run(lab, &what, &cmd)?;
        }
        sys::run(lab, &what, &plan::restart_cmd(&self.spec, &self.paths, h))?;
        st.killed.retain(|x| x != host);
        st.save(&self.paths.state_file(lab))
    }

    /// Pulls the host's cable to `network` (all its networks when None): the host sees NO-CARRIER.
    pub fn cut(&self, host: &str, network: Option<u8>) -> Result<()> {
        self.set_cut(host, network, true)
    }

    /// Plugs back what [`Lab::cut`] pulled. On a powered-off host the cable is plugged but stays
    /// dark until [`Lab::restart`].
    pub fn heal(&self, host: &str, network: Option<u8>) -> Result<()> {
        self.set_cut(host, network, false)
    }

    fn set_cut(&self, host: &str, network: Option<u8>, cut: bool) -> Result<()> {
        let h = self.spec.host(host)?;
        let nets = self.spec.host_networks(h, network)?;
        let _lock = sys::lock_machine(&self.paths.lock_file())?;
        let mut st = self.state()?;
        let killed = st.is_killed(host);
        for k in nets {
            if !killed {
                let what = format!("{} of {host} on network {k}", if cut { "cut" } else { "heal" });
                sys::run(self.name(), &what, &plan::link_cmd(self.name(), h, k, !cut))?;
            }
            st.cut.retain(|c| !(c.host == host && c.network == k));
            if cut {
                st.cut.push(CutLink { host: host.to_string(), network: k });
            }
        }
        st.cut.sort();
        st.save(&self.paths.state_file(self.name()))
    }

    /// Hosts, addresses, link and power states, process counts.
    pub fn status(&self) -> Result<LabStatus> {
        let st = self.state()?;
        let flags = sys::link_flags(self.name(), &names::switch_netns(self.name()))?;
        let hosts = self
            .hosts()
            .into_iter()
            .map(|h| {
                let name = h.name();
                let killed = st.is_killed(&name);
                let links = h
                    .networks(self.spec.networks)
                    .map(|k| {
                        let state = match flags.get(&names::switch_port(h, k)) {
                            None => LinkState::Missing,
                            Some(true) => LinkState::Up,
                            Some(false) if killed => LinkState::Off,
                            Some(false) => LinkState::Cut,
                        };
                        LinkStatus {
                            network: k,
                            iface: names::host_iface(k),
                            addr: h.addr(k, self.spec.networks).expect("host on network"),
                            state,
                        }
                    })
                    .collect();
                HostStatus {
                    processes: sys::cgroup_pids(&self.paths.cgroup_host(self.name(), h)).len(),
                    power: if killed { Power::Killed } else { Power::Running },
                    host: name,
                    links,
                }
            })
            .collect();
        Ok(LabStatus {
            name: self.name().to_string(),
            nodes: self.spec.nodes,
            networks: self.spec.networks,
            created_unix: st.created_unix,
            private_dirs: self.spec.private_dirs.clone(),
            hosts,
        })
    }

    /// Removes the lab (see [`down`]).
    pub fn down(self) -> Result<()> {
        down(&self.spec.name)
    }
}

/// What runs in the child between fork and exec: join the host's cgroup, then its namespaces.
/// Only system calls on already-open descriptors: safe after fork in a multithreaded process.
fn enter(procs: &File, net: &File, uts: &File, mnt: &File) -> io::Result<()> {
    use nix::sched::{setns, CloneFlags};
    let mut buf = [0u8; 20];
    let pid = nix::unistd::getpid().as_raw();
    let digits = format_u32(pid as u32, &mut buf);
    nix::unistd::write(procs, digits)?;
    setns(net, CloneFlags::CLONE_NEWNET)?;
    setns(uts, CloneFlags::CLONE_NEWUTS)?;
    setns(mnt, CloneFlags::CLONE_NEWNS)?;
    // SAFETY: a NUL-terminated literal.
    if unsafe { nix::libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Decimal digits of `v` in `buf`, without allocating.
fn format_u32(mut v: u32, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Builds the lab (the lock is held, nothing of it exists).
fn build(paths: &Paths, spec: &LabSpec) -> Result<()> {
    let lab = spec.name.as_str();
    let io_err = |what: String| move |e: io::Error| LabError::io(lab, what, e);
    let state_dir = paths.lab_state_dir(lab);
    fs::create_dir_all(&state_dir).map_err(io_err(format!("creating {}", state_dir.display())))?;
    let mut st = LabState {
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        cgroup_mount: paths.cgroup_mount.clone(),
        built: false,
        created_mountpoints: Vec::new(),
        killed: Vec::new(),
        cut: Vec::new(),
        spec: spec.clone(),
    };
    // Written first, so that `down` knows the lab even if building stops half-way.
    st.save(&paths.state_file(lab))?;
    let hosts_file = paths.hosts_file(lab);
    fs::write(&hosts_file, plan::hosts_file_content(spec))
        .map_err(io_err(format!("writing {}", hosts_file.display())))?;

    // Disks: per-host backing directories, private directories copied from the machine.
    for h in spec.hosts() {
        for (target, src) in plan::private_binds(spec, paths, h) {
            fs::create_dir_all(&src).map_err(io_err(format!("creating {}", src.display())))?;
            let is_extra = spec.private_dirs.contains(&target);
            if is_extra && target.is_dir() {
                let cp = Cmd::new(["cp", "-a", &format!("{}/.", target.display()), &format!("{}/", src.display())]);
                sys::run(lab, &format!("copying {} for host {h}", target.display()), &cp)?;
            }
        }
    }

    // Mount points on the machine.
    let mut targets: Vec<PathBuf> = plan::FIXED_PRIVATE_DIRS.iter().map(|(d, _)| PathBuf::from(d)).collect();
    targets.extend(spec.private_dirs.iter().cloned());
    for t in &targets {
        if t.exists() {
            if !t.is_dir() {
                return Err(LabError::InvalidSpec {
                    lab: lab.to_string(),
                    reason: format!("private directory {} exists and is not a directory", t.display()),
                });
            }
            continue;
        }
        let missing: Vec<PathBuf> = t.ancestors().take_while(|a| !a.exists()).map(Path::to_path_buf).collect();
        fs::create_dir_all(t).map_err(io_err(format!("creating mount point {}", t.display())))?;
        // Outermost first, as created.
        for m in missing.into_iter().rev() {
            register_created(paths, &m).map_err(io_err(format!("recording {}", paths.created_registry().display())))?;
            st.created_mountpoints.push(m);
        }
    }
    st.save(&paths.state_file(lab))?;

    // Runtime directory of the namespace files: a private mount, as `ip netns` does for /run/netns.
    let run_dir = paths.lab_run_dir(lab);
    fs::create_dir_all(&run_dir).map_err(io_err(format!("creating {}", run_dir.display())))?;
    let rd = run_dir.display().to_string();
    sys::run(lab, "making the runtime directory a mount", &Cmd::new(["mount", "--bind", &rd, &rd]))?;
    sys::run(lab, "making the runtime directory private", &Cmd::new(["mount", "--make-private", &rd]))?;

    // cgroups.
    for h in spec.hosts() {
        let cg = paths.cgroup_host(lab, h);
        fs::create_dir_all(&cg).map_err(io_err(format!("creating cgroup {}", cg.display())))?;
    }

    // Network: switch, then each host and its mount namespace.
    for cmd in plan::switch_steps(spec) {
        sys::run(lab, "building the switch", &cmd)?;
    }
    for h in spec.hosts() {
        let what = format!("building host {h}");
        for cmd in plan::host_net_steps(spec, h, |_| true) {
            sys::run(lab, &what, &cmd)?;
        }
        for f in [paths.mnt_file(lab, h), paths.uts_file(lab, h)] {
            File::create(&f).map_err(io_err(format!("creating {}", f.display())))?;
        }
        sys::run(lab, &format!("creating the mount namespace of host {h}"), &plan::mountns_cmd(spec, paths, h))?;
    }
    st.built = true;
    st.save(&paths.state_file(lab))
}

fn register_created(paths: &Paths, dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let reg = paths.created_registry();
    let known = fs::read_to_string(&reg).unwrap_or_default();
    if known.lines().any(|l| Path::new(l) == dir) {
        return Ok(());
    }
    let mut f = OpenOptions::new().create(true).append(true).open(&reg)?;
    writeln!(f, "{}", dir.display())
}

/// Evidence that something of lab `lab` exists on the machine.
fn leftovers(paths: &Paths, lab: &str) -> Vec<String> {
    let mut v = Vec::new();
    for p in [paths.lab_state_dir(lab), paths.lab_run_dir(lab), paths.cgroup_lab(lab)] {
        if p.exists() {
            v.push(p.display().to_string());
        }
    }
    for ns in sys::list_netns(&paths.netns_dir) {
        if names::parse_netns_name(&ns).is_some_and(|(l, _)| l == lab) {
            v.push(format!("network namespace {ns}"));
        }
    }
    v
}

/// Names of the labs (built or half-built) on this machine.
fn lab_names(paths: &Paths) -> Vec<String> {
    let mut set = std::collections::BTreeSet::new();
    let mut dirs = vec![paths.state_root.clone(), paths.run_root.clone()];
    if !paths.cgroup_mount.as_os_str().is_empty() {
        dirs.push(paths.cgroup_root());
    }
    for d in dirs {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(name) = e.file_name().into_string() {
                    if e.path().is_dir() && names::validate_lab_name(&name).is_ok() {
                        set.insert(name);
                    }
                }
            }
        }
    }
    for ns in sys::list_netns(&paths.netns_dir) {
        if let Some((lab, _)) = names::parse_netns_name(&ns) {
            set.insert(lab);
        }
    }
    set.into_iter().collect()
}

fn machine_paths() -> Paths {
    Paths::system(sys::cgroup2_mount().unwrap_or_default())
}

/// The labs on this machine, including half-built or half-removed ones (`complete == false`).
pub fn list() -> Result<Vec<LabSummary>> {
    let paths = machine_paths();
    Ok(lab_names(&paths)
        .into_iter()
        .map(|name| match LabState::load(&name, &paths.state_file(&name)) {
            Ok(st) => LabSummary {
                complete: st.built,
                nodes: Some(st.spec.nodes),
                networks: Some(st.spec.networks),
                created_unix: Some(st.created_unix),
                killed: st.killed,
                name,
            },
            Err(_) => LabSummary {
                name,
                complete: false,
                nodes: None,
                networks: None,
                created_unix: None,
                killed: Vec::new(),
            },
        })
        .collect())
}

/// Removes every piece of a lab: processes, namespaces, mounts, links, cgroups, state. Works on a
/// half-built lab or after a crash (pieces are found by name, not only from the state file), and
/// succeeds when the lab does not exist.
pub fn down(name: &str) -> Result<()> {
    names::validate_lab_name(name)?;
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let paths = machine_paths();
    let _lock = sys::lock_machine(&paths.lock_file())?;
    teardown(&paths, name)
}

/// Removes every lab on this machine; returns the names of those removed.
pub fn down_all() -> Result<Vec<String>> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let paths = machine_paths();
    let _lock = sys::lock_machine(&paths.lock_file())?;
    let labs = lab_names(&paths);
    let mut problems = Vec::new();
    for lab in &labs {
        if let Err(e) = teardown(&paths, lab) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(labs)
    } else {
        Err(LabError::Teardown { lab: "*".into(), problems })
    }
}

/// The teardown proper (the machine lock is held). Every step tolerates its piece being gone.
fn teardown(paths: &Paths, lab: &str) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();
    let state = LabState::load(lab, &paths.state_file(lab)).ok();
    let cgroup_mount = state.as_ref().map(|s| s.cgroup_mount.clone()).unwrap_or_else(|| paths.cgroup_mount.clone());
    let paths = Paths { cgroup_mount, ..paths.clone() };

    // 1. Processes: the whole lab's cgroup tree at once.
    if !paths.cgroup_mount.as_os_str().is_empty() {
        if let Err(e) = sys::cgroup_kill(lab, "*", &paths.cgroup_lab(lab), KILL_TIMEOUT) {
            problems.push(e.to_string());
        }
    }

    // 2. Network namespaces (this drops the switch, its bridges and every veth).
    for ns in sys::list_netns(&paths.netns_dir) {
        if names::parse_netns_name(&ns).is_some_and(|(l, _)| l == lab) {
            if let Some(err) =
                sys::run_tolerant(lab, "deleting a network namespace", &Cmd::new(["ip", "netns", "del", &ns]))
            {
                if paths.netns_dir.join(&ns).exists() {
                    problems.push(err);
                }
            }
        }
    }

    // 3. Namespace files and the runtime directory's own mount.
    let run_dir = paths.lab_run_dir(lab);
    match sys::mounts() {
        Ok(mounts) => {
            let mut ours: Vec<PathBuf> =
                mounts.into_iter().map(|m| m.mount_point).filter(|m| m.starts_with(&run_dir)).collect();
            ours.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for m in ours {
                match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                    Err(e) => problems.push(format!("unmounting {}: {e}", m.display())),
                }
            }
        }
        Err(e) => problems.push(format!("reading /proc/self/mountinfo: {e}")),
    }
    remove_tree(&run_dir, &mut problems);

    // 4. cgroups.
    if !paths.cgroup_mount.as_os_str().is_empty() {
        if let Err(e) = sys::remove_cgroup_tree(&paths.cgroup_lab(lab)) {
            problems.push(format!("removing cgroup {}: {e}", paths.cgroup_lab(lab).display()));
        }
        let _ = fs::remove_dir(paths.cgroup_root()); // only when no other lab uses it
    }

    // 5. State ("disks").
    remove_tree(&paths.lab_state_dir(lab), &mut problems);

    // 6. Mount points created on the machine, once no lab is left to use them.
    if problems.is_empty() && lab_names(&paths).is_empty() {
        let reg = paths.created_registry();
        if let Ok(text) = fs::read_to_string(&reg) {
            let mut dirs: Vec<PathBuf> = text.lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect();
            dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for d in dirs {
                let _ = fs::remove_dir(&d); // only if empty: never remove what someone put there
            }
        }
        let _ = fs::remove_file(&reg);
        let _ = fs::remove_dir(&paths.state_root);
        let _ = fs::remove_dir(&paths.run_root);
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown { lab: lab.to_string(), problems })
    }
}

fn remove_tree(p: &Path, problems: &mut Vec<String>) {
    match fs::remove_dir_all(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("removing {}: {e}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        let mut b = [0u8; 20];
        assert_eq!(format_u32(0, &mut b), b"0");
        assert_eq!(format_u32(7, &mut b), b"7");
        assert_eq!(format_u32(4194304, &mut b), b"4194304");
        assert_eq!(format_u32(u32::MAX, &mut b), b"4294967295");
    }
}
