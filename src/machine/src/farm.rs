//! The farm machine: one per farm module per node. Every node that is UP serves its share of the
//! clients; the machine tells the filter which nodes are UP and their power ([`Action::SetMembers`]).

use crate::action::{Action, Level, Persisted};
use crate::types::{Admin, Cause, FailAction, Hook, Millis, NodeName, Readiness, Refused, State, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmPolicy {
    pub local: NodeName,
    /// Every node of the farm with its `power` weight, in module.toml order.
    pub nodes: Vec<(NodeName, u32)>,
    pub loop_limit: u32,
    pub loop_interval_ms: Millis,
    pub resources: BTreeMap<String, FailAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FarmPersist {
    pub started: bool,
    pub recoveries: Vec<Millis>,
}

/// What a farm node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmView {
    pub node: NodeName,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FarmEvent {
    Admin(Admin),
    PeerSeen(FarmView),
    PeerLost {
        node: NodeName,
    },
    Resource {
        name: String,
        up: bool,
    },
    HookFailed {
        hook: Hook,
        reason: String,
    },
    Tick,
    /// The daemon is shutting down: stop, but start again with the daemon.
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct FarmMachine {
    policy: FarmPolicy,
    p: FarmPersist,
    emitted: FarmPersist,
    state: State,
    peers: BTreeMap<NodeName, State>,
    down: BTreeSet<String>,
    held: BTreeSet<String>,
    members: Option<Vec<(NodeName, u32)>>,
}

impl FarmMachine {
    pub fn new(policy: FarmPolicy, persisted: Option<FarmPersist>) -> Self {
        let p = persisted.unwrap_or_default();
        FarmMachine {
            policy,
            emitted: p.clone(),
            p,
            state: State::Stop,
            peers: BTreeMap::new(),
            down: BTreeSet::new(),
            held: BTreeSet::new(),
            members: None,
        }
    }

    pub fn status(&self) -> Status {
        let readiness = if self.state == State::Up { Readiness::Ready } else { Readiness::NotReady };
        Status { state: self.state, readiness }
    }

    pub fn view(&self) -> FarmView {
        FarmView { node: self.policy.local.clone(), state: self.state }
    }

    pub fn persisted(&self) -> &FarmPersist {
        &self.p
    }

    pub fn handle(&mut self, now: Millis, event: FarmEvent) -> Result<Vec<Action>, Refused> {
        let mut out = Vec::new();
        match event {
            FarmEvent::Admin(cmd) => self.admin(now, cmd, &mut out)?,
            FarmEvent::PeerSeen(v) => {
                if self.policy.nodes.iter().any(|(n, _)| *n == v.node) && v.node != self.policy.local {
                    self.peers.insert(v.node, v.state);
                } else {
                    out.push(log(Level::Warn, format!("ignored a view from `{}`, not a node of this farm", v.node)));
                }
            }
            FarmEvent::PeerLost { node } => {
                self.peers.remove(&node);
            }
            FarmEvent::Resource { name, up } => self.resource(now, name, up, &mut out),
            FarmEvent::HookFailed { hook, reason } => {
                out.push(log(Level::Error, format!("hook {hook} failed: {reason}")));
                if hook.is_start() && self.state != State::Stop {
                    self.recover(now, FailAction::StopStart, &format!("hook {hook}"), &mut out);
                }
            }
            FarmEvent::Tick => {}
            FarmEvent::Shutdown => {
                if self.state != State::Stop {
                    self.stop(Cause::Stop, &mut out);
                    self.p.started = true;
                }
            }
        }
        if self.state == State::Wait && self.held.is_empty() {
            self.set_state(State::Up, Cause::Start, &mut out);
        }
        self.update_members(&mut out);
        if self.p != self.emitted {
            self.emitted = self.p.clone();
            out.push(Action::Persist(Box::new(Persisted::Farm(self.p.clone()))));
        }
        Ok(out)
    }

    fn admin(&mut self, now: Millis, cmd: Admin, out: &mut Vec<Action>) -> Result<(), Refused> {
        let name = cmd.name();
        match cmd {
            Admin::Start => {
                if self.state != State::Stop {
                    return Err(Refused::new(name, format!("the module is already started ({})", self.state)));
                }
                self.p.started = true;
                self.set_state(State::Wait, Cause::Start, out);
            }
            Admin::Stop => {
                if self.state == State::Stop {
                    return Err(Refused::new(name, "the module is already stopped"));
                }
                self.stop(Cause::Stop, out);
            }
            Admin::Restart => {
                if self.state != State::Up {
                    return Err(Refused::new(
                        name,
                        format!("the module is {}: no application runs here to restart", self.state),
                    ));
                }
                out.push(self.hook(Hook::StopBoth, State::Up, Cause::Restart));
                out.push(self.hook(Hook::StartBoth, State::Up, Cause::Restart));
            }
            Admin::StopStart => {
                if self.state == State::Stop {
                    return Err(Refused::new(name, "the module is stopped; use start"));
                }
                self.stop(Cause::StopStart, out);
                self.p.started = true;
                self.set_state(State::Wait, Cause::StopStart, out);
            }
            Admin::Swap | Admin::Prim | Admin::Second { .. } | Admin::PrimForce | Admin::Failover(_) => {
                return Err(Refused::new(
                    name,
                    "this is a farm module: every UP node serves; the command is for mirror modules",
                ));
            }
        }
        let _ = now;
        Ok(())
    }

    fn resource(&mut self, now: Millis, name: String, up: bool, out: &mut Vec<Action>) {
        let Some(&action) = self.policy.resources.get(&name) else {
            out.push(log(Level::Warn, format!("resource `{name}` has no checker in this module; ignored")));
            return;
        };
        if up {
            self.down.remove(&name);
            if self.held.remove(&name) {
                out.push(log(Level::Info, format!("checker `{name}` is up again")));
            }
            return;
        }
        if self.state == State::Stop || !self.down.insert(name.clone()) {
            return;
        }
        out.push(log(Level::Warn, format!("checker `{name}` is down: action {action:?}")));
        if action == FailAction::Wait {
            self.held.insert(name);
            if self.state == State::Up {
                self.set_state(State::Wait, Cause::Checker, out);
            }
        } else {
            self.recover(now, action, &format!("checker `{name}`"), out);
        }
    }

    fn recover(&mut self, now: Millis, action: FailAction, what: &str, out: &mut Vec<Action>) {
        if action == FailAction::Stop {
            self.stop(Cause::Checker, out);
            return;
        }
        let (limit, interval) = (self.policy.loop_limit, self.policy.loop_interval_ms);
        if let Err(message) = crate::types::admit_recovery(&mut self.p.recoveries, now, limit, interval, what) {
            out.push(log(Level::Error, message));
            self.stop(Cause::LoopLimit, out);
            return;
        }
        match (action, self.state) {
            (FailAction::Restart, State::Up) => {
                out.push(self.hook(Hook::StopBoth, State::Up, Cause::Checker));
                out.push(self.hook(Hook::StartBoth, State::Up, Cause::Checker));
            }
            (FailAction::StopStart, _) => {
                self.stop(Cause::StopStart, out);
                self.p.started = true;
                self.set_state(State::Wait, Cause::StopStart, out);
            }
            _ => {}
        }
    }

    fn stop(&mut self, cause: Cause, out: &mut Vec<Action>) {
        self.p.started = false;
        self.held.clear();
        self.down.clear();
        self.set_state(State::Stop, cause, out);
    }

    fn set_state(&mut self, to: State, cause: Cause, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        out.push(log(Level::Info, format!("{from} -> {to} ({cause})")));
        if from == State::Up {
            out.push(self.hook(Hook::StopBoth, to, cause));
            out.push(Action::ReleaseVip);
            self.members = None;
        }
        if to == State::Stop {
            out.push(self.hook(Hook::Poststop, to, cause));
        }
        if from == State::Stop {
            out.push(self.hook(Hook::Prestart, to, cause));
        }
        if to == State::Up {
            out.push(Action::TakeVip);
            out.push(self.hook(Hook::StartBoth, to, cause));
        }
        self.state = to;
    }

    /// The filter's membership: this node and every peer seen UP, with their power.
    fn update_members(&mut self, out: &mut Vec<Action>) {
        if self.state != State::Up {
            return;
        }
        let members: Vec<(NodeName, u32)> = self
            .policy
            .nodes
            .iter()
            .filter(|(n, _)| *n == self.policy.local || self.peers.get(n) == Some(&State::Up))
            .cloned()
            .collect();
        if self.members.as_ref() != Some(&members) {
            out.push(Action::SetMembers(members.clone()));
            self.members = Some(members);
        }
    }

    fn hook(&self, hook: Hook, next: State, cause: Cause) -> Action {
        Action::RunHook { hook, current: self.state, next, cause }
    }
}

fn log(level: Level, message: impl Into<String>) -> Action {
    Action::Log { level, message: message.into() }
}
