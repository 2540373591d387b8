//! Vocabulary shared by the mirror and farm machines.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds on the caller's clock. Machines never read a clock: the daemon passes `now`.
pub type Millis = u64;

/// A node name as written in cluster.toml.
pub type NodeName = String;

/// Module states, with SafeKit's names. Mirror modules use STOP, WAIT, ALONE, PRIM, SECOND;
/// farm modules use STOP, WAIT, UP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Stop,
    Wait,
    Alone,
    Prim,
    Second,
    Up,
}

impl State {
    /// The exit code of `tandem state`, as SafeKit's: STOP 0, WAIT 1, ALONE or UP 2, PRIM 3, SECOND 4.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Stop => 0,
            State::Wait => 1,
            State::Alone | State::Up => 2,
            State::Prim => 3,
            State::Second => 4,
        }
    }

    /// Whether a node in this state runs the application for clients (holds the VIP).
    pub fn is_serving(self) -> bool {
        matches!(self, State::Alone | State::Prim | State::Up)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Stop => "STOP",
            State::Wait => "WAIT",
            State::Alone => "ALONE",
            State::Prim => "PRIM",
            State::Second => "SECOND",
            State::Up => "UP",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a state is from normal service: the console shows red, orange, green.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Readiness {
    NotReady,
    Transient,
    Ready,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Readiness::NotReady => "NotReady",
            Readiness::Transient => "Transient",
            Readiness::Ready => "Ready",
        })
    }
}

/// A state and its readiness, e.g. `SECOND (Transient)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub readiness: Readiness,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.state, self.readiness)
    }
}

/// Admin commands, the same for CLI, REST and console (the daemon maps each to this enum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admin {
    Start,
    Stop,
    /// Run the stop and start hooks again on the same node.
    Restart,
    /// Stop then start: a primary hands over to its peer (fails over).
    StopStart,
    /// Exchange the roles of PRIM and SECOND (no data copied).
    Swap,
    /// Become primary, if this node's data is known to be up to date.
    Prim,
    /// Become secondary; `fullsync` asks for a full copy instead of a catch-up.
    Second {
        fullsync: bool,
    },
    /// Become primary even on stale or inconsistent data: the admin takes responsibility.
    PrimForce,
    /// Allow or forbid automatic failover.
    Failover(bool),
}

impl Admin {
    pub fn name(&self) -> &'static str {
        match self {
            Admin::Start => "start",
            Admin::Stop => "stop",
            Admin::Restart => "restart",
            Admin::StopStart => "stopstart",
            Admin::Swap => "swap",
            Admin::Prim => "prim",
            Admin::Second { .. } => "second",
            Admin::PrimForce => "primforce",
            Admin::Failover(_) => "failover",
        }
    }
}

/// What to do when a checker (a resource) goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailAction {
    /// Run the stop and start hooks again on this node.
    Restart,
    /// Stop and start the module on this node: a primary fails over to its peer.
    StopStart,
    /// Stop serving and wait in WAIT until the resource is up again.
    Wait,
    /// Stop the module on this node.
    Stop,
}

/// The hook points where module logic runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Prestart,
    StartPrim,
    StopPrim,
    StartSecond,
    StopSecond,
    StartBoth,
    StopBoth,
    Poststop,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prestart => "prestart",
            Hook::StartPrim => "start_prim",
            Hook::StopPrim => "stop_prim",
            Hook::StartSecond => "start_second",
            Hook::StopSecond => "stop_second",
            Hook::StartBoth => "start_both",
            Hook::StopBoth => "stop_both",
            Hook::Poststop => "poststop",
        }
    }

    /// The stop hook that must follow this start hook (prestart is closed by poststop).
    pub fn closing(self) -> Option<Hook> {
        match self {
            Hook::Prestart => Some(Hook::Poststop),
            Hook::StartPrim => Some(Hook::StopPrim),
            Hook::StartSecond => Some(Hook::StopSecond),
            Hook::StartBoth => Some(Hook::StopBoth),
            _ => None,
        }
    }

    pub fn is_start(self) -> bool {
        self.closing().is_some()
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happens; given to hooks and written in the module log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Start,
    Stop,
    Restart,
    StopStart,
    Swap,
    Prim,
    Second,
    PrimForce,
    /// The peer was lost or stopped serving and this node took over.
    Failover,
    /// Both nodes were waiting and this one was chosen.
    Election,
    /// Joining the primary as secondary, or joining again after a break.
    Join,
    Checker,
    SplitBrain,
    LoopLimit,
    Membership,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Stop => "stop",
            Cause::Restart => "restart",
            Cause::StopStart => "stopstart",
            Cause::Swap => "swap",
            Cause::Prim => "prim",
            Cause::Second => "second",
            Cause::PrimForce => "primforce",
            Cause::Failover => "failover",
            Cause::Election => "election",
            Cause::Join => "join",
            Cause::Checker => "checker",
            Cause::SplitBrain => "splitbrain",
            Cause::LoopLimit => "looplimit",
            Cause::Membership => "membership",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An admin command that the machine refused, with the reason the admin reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command} refused: {reason}")]
pub struct Refused {
    pub command: &'static str,
    pub reason: String,
}

impl Refused {
    pub fn new(command: &'static str, reason: impl Into<String>) -> Self {
        Refused { command, reason: reason.into() }
    }
}

/// The loop limit shared by both machines: records a recovery at `now` if fewer than `limit`
/// happened within `interval_ms`; otherwise returns the message to log before stopping the module.
pub(crate) fn admit_recovery(
    recoveries: &mut Vec<Millis>,
    now: Millis,
    limit: u32,
    interval_ms: Millis,
    what: &str,
) -> Result<(), String> {
    let window_start = now.saturating_sub(interval_ms);
    recoveries.retain(|&t| t >= window_start);
    if recoveries.len() as u32 >= limit {
        return Err(format!(
            "loop limit reached ({} recoveries in {} s) after {what} failed: module stopped; fix the cause, then start it",
            recoveries.len(),
            interval_ms / 1000
        ));
    }
    recoveries.push(now);
    Ok(())
}
