//! Outputs of the machines. The daemon executes them in order and does nothing else on its own.

use crate::history::GenId;
use crate::types::{Cause, Hook, NodeName, State};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationRole {
    /// Primary side: send every write to the secondary.
    Sender,
    /// Secondary side: apply the primary's writes.
    Receiver,
}

/// How a joining secondary is brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResyncMode {
    /// Copy the zones the primary tracked since generation `since` ended. With `peer_dirty`, the
    /// secondary crashed while primary and also sends the zones its activity log names.
    Zones { since: GenId, peer_dirty: bool },
    /// Both sides hash blocks (blake3) and only differing blocks are sent: after a divergence, a
    /// primforce, or when tracking is unavailable.
    BlockHash,
    /// Copy everything: the secondary has no data, or the admin asked (`second --fullsync`).
    Full,
}

impl fmt::Display for ResyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResyncMode::Zones { since, peer_dirty } => {
                write!(f, "zones since {since}{}", if *peer_dirty { " +peer-dirty" } else { "" })
            }
            ResyncMode::BlockHash => f.write_str("blockhash"),
            ResyncMode::Full => f.write_str("full"),
        }
    }
}

/// The durable state of one module's machine, written atomically by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persisted {
    Mirror(crate::mirror::MirrorPersist),
    Farm(crate::farm::FarmPersist),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Add the module's virtual IPs on this node (and announce them).
    TakeVip,
    /// Remove the module's virtual IPs from this node.
    ReleaseVip,
    /// Run a hook; `current` and `next` are the states around the transition, `cause` its reason.
    RunHook {
        hook: Hook,
        current: State,
        next: State,
        cause: Cause,
    },
    StartReplication(ReplicationRole),
    StopReplication,
    /// Primary side: bring the joining secondary up to date while new writes are replicated.
    StartResync {
        mode: ResyncMode,
    },
    /// Farm: the nodes that are UP and their power, for the bucket assignment of the filter.
    SetMembers(Vec<(NodeName, u32)>),
    /// Write this state durably before executing the actions that follow.
    Persist(Box<Persisted>),
    /// An event for the admin's module log.
    Log {
        level: Level,
        message: String,
    },
}

impl fmt::Display for Action {
    /// The compact form used by scenario files and the module log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::TakeVip => f.write_str("vip take"),
            Action::ReleaseVip => f.write_str("vip release"),
            Action::RunHook { hook, .. } => write!(f, "hook {hook}"),
            Action::StartReplication(ReplicationRole::Sender) => f.write_str("replication sender"),
            Action::StartReplication(ReplicationRole::Receiver) => f.write_str("replication receiver"),
            Action::StopReplication => f.write_str("replication stop"),
            Action::StartResync { mode } => write!(f, "resync {mode}"),
            Action::SetMembers(m) => {
                let list: Vec<String> = m.iter().map(|(n, p)| format!("{n}:{p}")).collect();
                write!(f, "members {}", list.join(","))
            }
            Action::Persist(_) => f.write_str("persist"),
            Action::Log { level, message } => write!(f, "log {level:?}: {message}"),
        }
    }
}
