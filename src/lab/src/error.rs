//! Errors of the lab. Every message names the lab (and the host, the command and its stderr when
//! there is one) so that a failed integration test explains itself.

use std::path::PathBuf;

/// Result of the lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("invalid lab spec for lab {lab:?}: {reason}")]
    InvalidSpec { lab: String, reason: String },

    #[error("lab {lab:?} already exists ({evidence}); run `tandem lab down --name {lab}` first")]
    Exists { lab: String, evidence: String },

    #[error("lab {lab:?} does not exist (no {path}); create it with `tandem lab up --name {lab} --nodes N`")]
    NotFound { lab: String, path: PathBuf },

    #[error("lab {lab:?} has no host {host:?} (hosts: {known})")]
    UnknownHost { lab: String, host: String, known: String },

    #[error("lab {lab:?} has no network {network} (it has {networks} network(s), numbered from 0; host {host} is on {host_networks})")]
    UnknownNetwork { lab: String, host: String, network: u8, networks: u8, host_networks: String },

    #[error("lab {lab:?}: host {host} is running; `restart` is power-on after `tandem lab kill --name {lab} {host}`")]
    HostRunning { lab: String, host: String },

    #[error("lab {lab:?}: host {host} is powered off (killed); run `tandem lab restart --name {lab} {host}` first")]
    HostKilled { lab: String, host: String },

    #[error("lab {lab:?}: {what} failed: `{command}` {status}{}", fmt_stderr(.stderr))]
    Command { lab: String, what: String, command: String, status: String, stderr: String },

    #[error("lab {lab:?}: {context}: {source}")]
    Io {
        lab: String,
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("lab {lab:?}: {context}: {source}")]
    Sys {
        lab: String,
        context: String,
        #[source]
        source: nix::Error,
    },

    #[error("lab {lab:?}: state file {path}: {reason}")]
    State { lab: String, path: PathBuf, reason: String },

    #[error("no cgroup v2 hierarchy is mounted on this machine (none in /proc/self/mountinfo); the lab needs one to group and kill a node's processes: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot with systemd.unified_cgroup_hierarchy=1)")]
    NoCgroup2,

    #[error("lab {lab:?}: processes of host {host} still alive {waited_ms} ms after cgroup.kill ({cgroup})")]
    KillTimeout { lab: String, host: String, cgroup: PathBuf, waited_ms: u64 },

    #[error("the lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create namespaces, mounts and cgroups")]
    NotRoot,

    #[error("lab {lab:?}: teardown left pieces behind: {}", .problems.join("; "))]
    Teardown { lab: String, problems: Vec<String> },
}

fn fmt_stderr(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl LabError {
    pub(crate) fn io(lab: &str, context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io { lab: lab.to_string(), context: context.into(), source }
    }
    pub(crate) fn sys(lab: &str, context: impl Into<String>, source: nix::Error) -> Self {
        LabError::Sys { lab: lab.to_string(), context: context.into(), source }
    }
}
