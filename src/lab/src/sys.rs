//! System part: running the topology commands, reading mounts, cgroup v2 operations.

use crate::error::{LabError, Result};
use crate::plan::Cmd;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command of the plan; on failure the error carries the command and its stderr.
pub(crate) fn run(lab: &str, what: &str, cmd: &Cmd) -> Result<String> {
    tracing::debug!(lab, "run: {cmd}");
    let out = Command::new(&cmd.argv[0]).args(&cmd.argv[1..]).stdin(Stdio::null()).output().map_err(|e| {
        LabError::Command {
            lab: lab.to_string(),
            what: what.to_string(),
            command: cmd.to_string(),
            status: format!("could not be started ({e}; is {} installed?)", cmd.argv[0]),
            stderr: String::new(),
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            lab: lab.to_string(),
            what: what.to_string(),
            command: cmd.to_string(),
            status: format!("exited with {}", out.status),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Runs a command whose failure is tolerated (teardown); returns the error message when it failed.
pub(crate) fn run_tolerant(lab: &str, what: &str, cmd: &Cmd) -> Option<String> {
    run(lab, what, cmd).err().map(|e| e.to_string())
}

/// Is the process root (effective uid 0)?
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { nix::libc::geteuid() == 0 }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub(crate) struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            Some(MountEntry { mount_point: PathBuf::from(unescape_mountinfo(mount_point)), fstype: fstype.to_string() })
        })
        .collect()
}

pub(crate) fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo")?))
}

/// Mount point of the cgroup v2 hierarchy (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid system).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let m = mounts().map_err(|e| LabError::io("-", "reading /proc/self/mountinfo", e))?;
    m.into_iter().find(|e| e.fstype == "cgroup2").map(|e| e.mount_point).ok_or(LabError::NoCgroup2)
}

/// Names of the network namespaces in the `ip netns` directory.
pub(crate) fn list_netns(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Pids of a cgroup and of its descendants.
pub(crate) fn cgroup_pids(cg: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(text) = fs::read_to_string(cg.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(cg) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

fn cgroup_populated(cg: &Path) -> bool {
    match fs::read_to_string(cg.join("cgroup.events")) {
        Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => !cgroup_pids(cg).is_empty(),
    }
}

/// Kills every process of a cgroup and its descendants at once (`cgroup.kill`, SIGKILL, no
/// cleanup), and waits until none is left. Tolerates a missing cgroup.
pub(crate) fn cgroup_kill(lab: &str, host: &str, cg: &Path, timeout: Duration) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    let kill_file = cg.join("cgroup.kill");
    let have_kill = kill_file.exists();
    if have_kill {
        fs::write(&kill_file, "1")
            .map_err(|e| LabError::io(lab, format!("writing 1 to {}", kill_file.display()), e))?;
    }
    let start = Instant::now();
    loop {
        if !cgroup_populated(cg) {
            return Ok(());
        }
        if !have_kill {
            // Kernels before 5.14: kill what is there until nothing is left.
            for pid in cgroup_pids(cg) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        if start.elapsed() > timeout {
            return Err(LabError::KillTimeout {
                lab: lab.to_string(),
                host: host.to_string(),
                cgroup: cg.to_path_buf(),
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes a cgroup directory and its descendants (they must be empty of processes).
pub(crate) fn remove_cgroup_tree(cg: &Path) -> io::Result<()> {
    let rd = match fs::read_dir(cg) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    // A cgroup may stay busy for a moment after its last process died.
    let mut last = None;
    for _ in 0..200 {
        match fs::remove_dir(cg) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last.unwrap())
}

/// Administrative state (flag UP) of every interface of a network namespace, from `ip -o link show`.
pub(crate) fn link_flags(lab: &str, netns: &str) -> Result<BTreeMap<String, bool>> {
    let out = run(lab, "reading the switch's links", &Cmd::new(["ip", "-n", netns, "-o", "link", "show"]))?;
    Ok(parse_link_flags(&out))
}

pub(crate) fn parse_link_flags(out: &str) -> BTreeMap<String, bool> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        // "5: n1e0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 ..."
        let mut parts = line.splitn(3, ": ");
        let _index = parts.next();
        let (Some(name), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name).to_string();
        let flags = rest.strip_prefix('<').and_then(|r| r.split_once('>')).map(|(f, _)| f).unwrap_or("");
        m.insert(name, flags.split(',').any(|f| f == "UP"));
    }
    m
}

/// Exclusive lock serialising the labs' changes on this machine (released on drop).
pub(crate) struct MachineLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

pub(crate) fn lock_machine(path: &Path) -> Result<MachineLock> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| LabError::io("-", format!("creating {}", dir.display()), e))?;
    }
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| LabError::io("-", format!("opening lock {}", path.display()), e))?;
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| LabError::sys("-", format!("locking {}", path.display()), e))?;
    Ok(MachineLock(lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo() {
        let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 23 0:40 / /srv/a\\040b rw shared:1 - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[1].mount_point, PathBuf::from("/srv/a b"));
    }

    #[test]
    fn link_flags_parse() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                   3: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n\
                   5: n1e0@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noop master br0 state DOWN\n\
                   6: n2e0@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500\n";
        let m = parse_link_flags(out);
        assert_eq!(m.get("n1e0"), Some(&false));
        assert_eq!(m.get("n2e0"), Some(&true));
        assert_eq!(m.get("br0"), Some(&true));
    }
}
