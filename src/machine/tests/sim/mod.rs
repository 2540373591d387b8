//! A deterministic simulation of the nodes of one module, used by the scenario files and the
//! property tests. It plays the daemon's part: it delivers each node's view to its peers (as
//! heartbeats would) until nothing changes, turns a cut link or a killed node into `PeerLost`,
//! restores a powered-on node from what it last persisted, and keeps a ground truth of the
//! application's writes to check that no stale copy ever serves.

#![allow(dead_code)]

use std::collections::BTreeSet;
use tandem_machine::*;

/// Per-node bookkeeping of the effects, to check that runs of actions are well formed.
#[derive(Default, Debug, Clone)]
pub struct Effects {
    pub vip: bool,
    pub open: BTreeSet<Hook>,
}

impl Effects {
    /// Applies one action; returns a description of the defect if it is not well formed.
    pub fn apply(&mut self, a: &Action) -> Option<String> {
        match a {
            Action::TakeVip if self.vip => Some("VIP taken twice".into()),
            Action::TakeVip => {
                self.vip = true;
                None
            }
            Action::ReleaseVip if !self.vip => Some("VIP released while not held".into()),
            Action::ReleaseVip => {
                self.vip = false;
                None
            }
            Action::RunHook { hook, .. } if hook.is_start() => {
                if !self.open.insert(*hook) {
                    Some(format!("{hook} run twice without {}", hook.closing().unwrap()))
                } else {
                    None
                }
            }
            Action::RunHook { hook, .. } => {
                let opener = [Hook::Prestart, Hook::StartPrim, Hook::StartSecond, Hook::StartBoth]
                    .into_iter()
                    .find(|h| h.closing() == Some(*hook))
                    .unwrap();
                if !self.open.remove(&opener) {
                    Some(format!("{hook} without a preceding {opener}"))
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

pub fn short(actions: &[Action]) -> Vec<String> {
    actions.iter().filter(|a| !matches!(a, Action::Persist(_) | Action::Log { .. })).map(|a| a.to_string()).collect()
}

pub fn logs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

pub struct MirrorNode {
    pub name: String,
    pub policy: MirrorPolicy,
    /// None while powered off.
    pub machine: Option<MirrorMachine>,
    /// What the node last persisted: its disk survives a kill.
    pub disk: Option<MirrorPersist>,
    /// The peer's view this node last received (None: it has lost the peer).
    pub seen: Option<MirrorView>,
    pub effects: Effects,
    /// Ground truth: the application writes this node's copy holds.
    pub data: BTreeSet<u64>,
    /// This node lost its peer to a cut of the link and has not heard it since. A promotion then
    /// is a partition promotion even if the link healed meanwhile: a passive witness cannot tell
    /// "the peer died at the cut" from "the peer wrote ALONE, then died" (docs/algorithm.md).
    pub lost_by_cut: bool,
}

pub struct MirrorSim {
    pub nodes: [MirrorNode; 2],
    pub link: bool,
    pub now: Millis,
    pub actions: [Vec<Action>; 2],
    pub violations: Vec<String>,
    next_write: u64,
    /// Set when a node was promoted while partitioned, or forced: the copies may legitimately
    /// differ until a catch-up makes them identical again.
    diverged: bool,
    /// The simulation writes on every serving node after each step (the application at work).
    pub writes: bool,
}

impl MirrorSim {
    pub fn new(template: &MirrorPolicy) -> Self {
        let names = ["n1", "n2"];
        let node = |i: usize| {
            let mut policy = template.clone();
            policy.local = names[i].into();
            policy.peer = names[1 - i].into();
            MirrorNode {
                name: names[i].into(),
                machine: Some(MirrorMachine::new(policy.clone(), None)),
                policy,
                disk: None,
                seen: None,
                effects: Effects::default(),
                data: BTreeSet::new(),
                lost_by_cut: false,
            }
        };
        MirrorSim {
            nodes: [node(0), node(1)],
            link: true,
            now: 0,
            actions: [Vec::new(), Vec::new()],
            violations: Vec::new(),
            next_write: 1,
            diverged: false,
            writes: true,
        }
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("unknown node {name}"))
    }

    pub fn connected(&self) -> bool {
        self.link && self.nodes.iter().all(|n| n.machine.is_some())
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        self.nodes[i].machine.as_ref().map(|m| m.status())
    }

    pub fn serving(&self, i: usize) -> bool {
        self.status(i).is_some_and(|s| s.state.is_serving())
    }

    pub fn begin_step(&mut self) {
        self.actions = [Vec::new(), Vec::new()];
    }

    /// Delivers an event to node `i` (ignored if it is powered off), then lets views settle.
    pub fn event(&mut self, i: usize, ev: MirrorEvent) -> Result<(), Refused> {
        let forced = matches!(ev, MirrorEvent::Admin(Admin::PrimForce));
        let r = self.deliver(i, ev, forced);
        self.settle();
        r
    }

    fn deliver(&mut self, i: usize, ev: MirrorEvent, forced: bool) -> Result<(), Refused> {
        let now = self.now;
        let Some(m) = self.nodes[i].machine.as_mut() else { return Ok(()) };
        let was_serving = m.status().state.is_serving();
        let actions = m.handle(now, ev)?;
        for a in &actions {
            if let Some(defect) = self.nodes[i].effects.apply(a) {
                self.violations.push(format!("t={now} {}: {defect}", self.nodes[i].name));
            }
            if let Action::Persist(p) = a {
                if let Persisted::Mirror(p) = p.as_ref() {
                    self.nodes[i].disk = Some(p.clone());
                }
            }
            if matches!(a, Action::TakeVip) && !was_serving {
                self.on_promotion(i, forced);
            }
        }
        self.actions[i].extend(actions);
        Ok(())
    }

    fn on_promotion(&mut self, i: usize, forced: bool) {
        let j = 1 - i;
        if forced || !self.link || self.nodes[i].lost_by_cut {
            self.diverged = true;
            return;
        }
        if self.diverged {
            return;
        }
        let missing: Vec<u64> = self.nodes[j].data.difference(&self.nodes[i].data).copied().collect();
        if !missing.is_empty() {
            self.violations.push(format!(
                "t={} {} became primary without writes {:?} that {} holds (stale data served)",
                self.now, self.nodes[i].name, missing, self.nodes[j].name
            ));
        }
    }

    /// Exchanges views until neither node's view changes: heartbeats after a while.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            let mut changed = false;
            for i in 0..2 {
                let j = 1 - i;
                if !self.connected() {
                    if self.nodes[i].seen.take().is_some() && self.nodes[i].machine.is_some() {
                        self.nodes[i].lost_by_cut = !self.link;
                        let _ = self.deliver(i, MirrorEvent::PeerLost, false);
                        changed = true;
                    }
                    continue;
                }
                let v = self.nodes[j].machine.as_ref().unwrap().view();
                if self.nodes[i].seen.as_ref() != Some(&v) {
                    self.nodes[i].seen = Some(v.clone());
                    self.nodes[i].lost_by_cut = false;
                    let _ = self.deliver(i, MirrorEvent::PeerSeen(v), false);
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
        self.violations.push(format!("t={} the two machines never settled (oscillation)", self.now));
    }

    /// The application writes on every serving node; a PRIM replicates to its SECOND.
    pub fn write(&mut self) {
        if !self.writes {
            return;
        }
        for i in 0..2 {
            if !self.serving(i) {
                continue;
            }
            let j = 1 - i;
            // A PRIM acknowledges a write only once its SECOND has it: cut off from its
            // SECOND (before going ALONE) it holds the write, which is never acknowledged.
            let protected = self.connected() && self.status(j).is_some_and(|s| s.state == State::Second);
            if self.status(i).is_some_and(|s| s.state == State::Prim) && !protected {
                continue;
            }
            let w = self.next_write;
            self.next_write += 1;
            self.nodes[i].data.insert(w);
            let j = 1 - i;
            if self.connected() && self.status(j).is_some_and(|s| s.state == State::Second) {
                self.nodes[j].data.insert(w);
            }
        }
    }

    pub fn check_invariants(&mut self) {
        if self.connected() && self.serving(0) && self.serving(1) {
            self.violations.push(format!("t={} both nodes serve while they hear each other", self.now));
        }
    }

    pub fn cut(&mut self) {
        self.link = false;
        self.settle();
    }

    pub fn heal(&mut self) {
        self.link = true;
        self.settle();
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].machine = None;
        self.nodes[i].seen = None;
        self.nodes[i].effects = Effects::default();
        self.settle();
    }

    /// A power loss of both nodes at the same instant (a data-centre outage).
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.machine = None;
            n.seen = None;
            n.effects = Effects::default();
        }
    }

    pub fn power_on(&mut self, i: usize) {
        if self.nodes[i].machine.is_some() {
            return;
        }
        let n = &mut self.nodes[i];
        n.machine = Some(MirrorMachine::new(n.policy.clone(), n.disk.clone()));
        self.settle();
    }

    /// The catch-up of node `i` completes, if one can be running: it is SECOND (Transient) and
    /// connected to a serving primary. Its copy becomes the primary's.
    pub fn resync_done(&mut self, i: usize) {
        let j = 1 - i;
        let transient = self.status(i) == Some(Status { state: State::Second, readiness: Readiness::Transient });
        if !(transient && self.connected() && self.serving(j)) {
            return;
        }
        let was_ready = self.status(i).map(|s| s.readiness);
        self.nodes[i].data = self.nodes[j].data.clone();
        let _ = self.event(i, MirrorEvent::ResyncDone);
        if was_ready != self.status(i).map(|s| s.readiness) {
            self.diverged = false;
        }
    }

    /// The replication stream breaks: both ends notice.
    pub fn replication_broken(&mut self) {
        for i in 0..2 {
            let _ = self.deliver(i, MirrorEvent::ReplicationBroken { reason: "stream reset".into() }, false);
        }
        self.settle();
    }

    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
        for i in 0..2 {
            let _ = self.deliver(i, MirrorEvent::Tick, false);
        }
        self.settle();
    }
}

// ----- farm ----------------------------------------------------------------------------------

pub struct FarmNode {
    pub name: String,
    pub policy: FarmPolicy,
    pub machine: Option<FarmMachine>,
    pub disk: Option<FarmPersist>,
    pub connected: bool,
    pub seen: std::collections::BTreeMap<String, FarmView>,
    pub effects: Effects,
}

pub struct FarmSim {
    pub nodes: Vec<FarmNode>,
    pub now: Millis,
    pub actions: Vec<Vec<Action>>,
    pub violations: Vec<String>,
}

impl FarmSim {
    pub fn new(template: &FarmPolicy) -> Self {
        let nodes = template
            .nodes
            .iter()
            .map(|(n, _)| {
                let mut policy = template.clone();
                policy.local = n.clone();
                FarmNode {
                    name: n.clone(),
                    machine: Some(FarmMachine::new(policy.clone(), None)),
                    policy,
                    disk: None,
                    connected: true,
                    seen: Default::default(),
                    effects: Effects::default(),
                }
            })
            .collect::<Vec<_>>();
        let n = nodes.len();
        FarmSim { nodes, now: 0, actions: vec![Vec::new(); n], violations: Vec::new() }
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("unknown node {name}"))
    }

    pub fn begin_step(&mut self) {
        self.actions = vec![Vec::new(); self.nodes.len()];
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        self.nodes[i].machine.as_ref().map(|m| m.status())
    }

    fn reach(&self, i: usize, j: usize) -> bool {
        let (a, b) = (&self.nodes[i], &self.nodes[j]);
        a.machine.is_some() && b.machine.is_some() && a.connected && b.connected
    }

    pub fn event(&mut self, i: usize, ev: FarmEvent) -> Result<(), Refused> {
        let r = self.deliver(i, ev);
        self.settle();
        r
    }

    fn deliver(&mut self, i: usize, ev: FarmEvent) -> Result<(), Refused> {
        let now = self.now;
        let Some(m) = self.nodes[i].machine.as_mut() else { return Ok(()) };
        let actions = m.handle(now, ev)?;
        for a in &actions {
            if let Some(defect) = self.nodes[i].effects.apply(a) {
                self.violations.push(format!("t={now} {}: {defect}", self.nodes[i].name));
            }
            if let Action::Persist(p) = a {
                if let Persisted::Farm(p) = p.as_ref() {
                    self.nodes[i].disk = Some(p.clone());
                }
            }
        }
        self.actions[i].extend(actions);
        Ok(())
    }

    pub fn settle(&mut self) {
        for _ in 0..100 {
            let mut changed = false;
            for i in 0..self.nodes.len() {
                for j in 0..self.nodes.len() {
                    if i == j {
                        continue;
                    }
                    let name = self.nodes[j].name.clone();
                    if !self.reach(i, j) {
                        if self.nodes[i].seen.remove(&name).is_some() {
                            let _ = self.deliver(i, FarmEvent::PeerLost { node: name });
                            changed = true;
                        }
                        continue;
                    }
                    let v = self.nodes[j].machine.as_ref().unwrap().view();
                    if self.nodes[i].seen.get(&name) != Some(&v) {
                        self.nodes[i].seen.insert(name, v.clone());
                        let _ = self.deliver(i, FarmEvent::PeerSeen(v));
                        changed = true;
                    }
                }
            }
            if !changed {
                return;
            }
        }
        self.violations.push("farm machines never settled".into());
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].machine = None;
        self.nodes[i].seen.clear();
        self.nodes[i].effects = Effects::default();
        self.settle();
    }

    pub fn power_on(&mut self, i: usize) {
        if self.nodes[i].machine.is_none() {
            let n = &mut self.nodes[i];
            n.machine = Some(FarmMachine::new(n.policy.clone(), n.disk.clone()));
            self.settle();
        }
    }

    pub fn set_connected(&mut self, i: usize, up: bool) {
        self.nodes[i].connected = up;
        self.settle();
    }

    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
        for i in 0..self.nodes.len() {
            let _ = self.deliver(i, FarmEvent::Tick);
        }
        self.settle();
    }
}
