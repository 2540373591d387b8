//! What the lab benches share: root check, orphan reaping, the lab guard, the two-node cluster
//! file and key, the median, commands inside nodes (`labcmd`). (`benches/common/` is not a bench
//! target of its own.)

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Read;

use anyhow::{anyhow, bail, Result};

/// Commands inside lab nodes, with a timeout.
pub mod labcmd;

/// A lab that is taken down when dropped, with the processes the bench started in it.
pub struct LabGuard {
    /// The bench's name, for messages.
    pub bench: &'static str,
    pub name: String,
    pub children: Vec<std::process::Child>,
}

impl LabGuard {
    pub fn new(bench: &'static str, name: impl Into<String>) -> LabGuard {
        LabGuard { bench, name: name.into(), children: Vec::new() }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = tandem_lab::down(&self.name) {
            eprintln!("bench {}: taking lab {} down: {e}", self.bench, self.name);
        }
        // Every process of the lab is dead now (cgroup kill); reap our children, then the
        // orphans (daemons' children, hooks) that were reparented to us.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        reap_orphans();
    }
}

pub mod sys {
    use std::os::raw::{c_int, c_ulong};
    extern "C" {
        pub fn setns(fd: c_int, nstype: c_int) -> c_int;
        pub fn prctl(option: c_int, arg2: c_ulong, arg3: c_ulong, arg4: c_ulong, arg5: c_ulong) -> c_int;
        pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    }
    pub const CLONE_NEWNET: c_int = 0x4000_0000;
    pub const PR_SET_CHILD_SUBREAPER: c_int = 36;
    pub const WNOHANG: c_int = 1;
}

/// Orphans of the lab (processes whose parent died in a kill or in the lab's teardown, e.g.
/// keepalived's VRRP child) are reparented to the bench, which reaps them, instead of to an init
/// that might not.
pub fn set_child_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        sys::prctl(sys::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Reaps every exited child (called once ours were waited for).
pub fn reap_orphans() {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG and a valid pointer.
    while unsafe { sys::waitpid(-1, &mut status, sys::WNOHANG) } > 0 {}
}

/// The benches build labs: namespaces, mounts, cgroups.
pub fn require_root(bench: &str) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")?;
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("");
    if euid != "0" {
        bail!("the {bench} bench needs root (it builds labs: namespaces, mounts, cgroups)");
    }
    Ok(())
}

/// The cluster of the benches' labs: n1 and n2 on network 0.
pub fn cluster_toml() -> String {
    "name = \"bench\"
key_file = \"/etc/tandem/cluster.key\"

[[network]]
name = \"net0\"
replication = true

[[node]]
name = \"n1\"
addresses = { net0 = \"198.18.0.1\" }

[[node]]
name = \"n2\"
addresses = { net0 = \"198.18.0.2\" }
"
    .to_string()
}

/// 64 hexadecimal characters: a 256-bit key.
pub fn random_key() -> Result<String> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect::<String>() + "\n")
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The entry point of a bench `name` whose work is `bench`: run only under `cargo bench`
/// (`--bench`); started as a test (`cargo test --all-targets`) it says how to run it. Exit code 1
/// when `bench` fails or says something could not be measured (`Ok(false)`).
pub fn bench_main(name: &str, bench: impl FnOnce() -> Result<bool>) -> std::process::ExitCode {
    use std::process::ExitCode;
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        eprintln!(
            "bench {name}: not run (no --bench): use `cargo bench -p tandem --bench {name}` or scripts/bench-{name}.sh"
        );
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench {name}: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The environment variable `name`, or `default` when unset or blank.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string())
}

/// The environment variable `name` (or `default`) as an integer of at least `min`.
pub fn env_num(name: &str, default: &str, min: u64) -> Result<u64> {
    let s = env_or(name, default);
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| anyhow!("{name}={s:?}: expected an integer ≥ {min}"))
}
