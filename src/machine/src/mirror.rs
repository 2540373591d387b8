//! The mirror machine: one per mirror module per node. Events in, state and actions out.
//!
//! The two nodes of a mirror never exchange anything but their [`MirrorView`]s (carried by
//! heartbeats) and the replication stream. Every decision that involves both nodes is computed by a
//! function that both evaluate the same way on the same two views ([`elect`], [`relate`]), so two
//! nodes that hear each other agree on who serves. See docs/algorithm.md for the rules and their
//! invariants; the scenario files under tests/scenarios/ show each rule at work.

use crate::action::{Action, Level, ReplicationRole, ResyncMode};
use crate::history::{push_generation, relate, GenId, History, Relation};
use crate::types::{Admin, Cause, FailAction, Hook, Millis, NodeName, Readiness, Refused, State, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Who becomes primary when both nodes could, and whether the role moves back automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preferred {
    /// No preference: the role stays where it is; at a joint start the node started first wins.
    Alone,
    /// At a joint start, the node that was primary last is primary again.
    Last,
    /// This node is primary whenever its data allows: when it returns and has caught up, the
    /// role is swapped back to it automatically.
    Node(NodeName),
}

/// The module's rules as this machine needs them (the daemon builds it from module.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    pub local: NodeName,
    pub peer: NodeName,
    pub preferred: Preferred,
    /// Failover allowed when the machine has no persisted choice yet (`tandem failover on|off`).
    pub failover_default: bool,
    /// A splitbrain checker is configured: after losing the peer, only a node that reaches a
    /// witness may serve.
    pub witness: bool,
    /// With a witness, how long after losing its peer a primary may serve without a witness
    /// verdict newer than the loss (it steps down then); a secondary takes over only with such a
    /// verdict and no earlier than twice this, so an isolated primary has stepped down first.
    /// The daemon sets it above one probe interval plus one probe timeout plus the heartbeat timeout.
    pub witness_deadline_ms: Millis,
    /// How long a node started alone waits for its peer before serving on data it knows is newest.
    pub start_grace_ms: Millis,
    /// Recoveries (restart, stopstart) allowed in `loop_interval_ms` before the module is stopped.
    pub loop_limit: u32,
    pub loop_interval_ms: Millis,
    /// The action of each resource (checker) when it goes down.
    pub resources: BTreeMap<String, FailAction>,
    /// Delay before joining again as secondary after a failed catch-up or a broken replication.
    pub rejoin_backoff_ms: Millis,
}

impl MirrorPolicy {
    /// A policy with the documented defaults, for the two named nodes.
    pub fn new(local: &str, peer: &str) -> Self {
        MirrorPolicy {
            local: local.into(),
            peer: peer.into(),
            preferred: Preferred::Alone,
            failover_default: true,
            witness: false,
            witness_deadline_ms: 3_000,
            start_grace_ms: 1_000,
            loop_limit: 3,
            loop_interval_ms: 24 * 3600 * 1000,
            resources: BTreeMap::new(),
            rejoin_backoff_ms: 10_000,
        }
    }
}

/// What this node believes of its own copy when it cannot see its peer. Persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Freshness {
    /// Never held data for this module.
    Unknown,
    /// Served alone last: no other node can have newer data. May start alone.
    Latest,
    /// Identical to the peer when last seen, and the peer may have gone on without us.
    Shared,
    /// Known older than the peer's copy.
    Outdated,
    /// A catch-up into this copy was interrupted: files are partly old, partly new.
    Inconsistent,
}

/// What a node tells its peer about one mirror module (carried by every heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorView {
    pub node: NodeName,
    pub state: State,
    pub readiness: Readiness,
    pub history: History,
    pub freshness: Freshness,
    pub failover: bool,
    /// When this node last entered WAIT from STOP (its own clock).
    pub started_at: Millis,
    /// Incremented each time this node joins as secondary: the primary starts one catch-up per join.
    pub join_seq: u64,
    /// This node hands the primary role over (swap, stopstart): the peer should take it.
    pub yields: bool,
    /// The admin asked this secondary to become primary (`swap` typed on the secondary).
    pub want_prim: bool,
    /// The admin asked this node to be secondary (`second`): it is never elected.
    pub want_second: bool,
    /// A full copy was asked (`second --fullsync`).
    pub want_full: bool,
    /// A checker with the `wait` action holds this node in WAIT.
    pub held: bool,
    /// This node's copy may differ from the peer's beyond what the histories show (it crashed
    /// while serving or receiving, and has not caught up since): its next catch-up compares
    /// every file.
    pub unclean: bool,
}

/// The durable part of the machine; every change is emitted as [`Action::Persist`] before the
/// actions that depend on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorPersist {
    pub history: History,
    pub freshness: Freshness,
    pub failover: bool,
    /// The module was started by the admin and not stopped: the daemon starts it at boot.
    pub started: bool,
    /// This node was serving and has not stopped cleanly since.
    pub serving: bool,
    /// This node's copy may differ from the peer's in ways the histories do not show: it was
    /// receiving (writes acknowledged from the page cache, lost by a power loss) and has not
    /// stopped cleanly since, or it stopped during a catch-up that had such differences to undo.
    /// The peer then compares every file at the next catch-up. Absent in older state files.
    #[serde(default)]
    pub dirty: bool,
    pub join_seq: u64,
    pub max_seq_seen: u64,
    /// Times of recent recoveries, for the loop limit.
    pub recoveries: Vec<Millis>,
}

impl MirrorPersist {
    pub fn fresh(failover: bool) -> Self {
        MirrorPersist {
            history: History::new(),
            freshness: Freshness::Unknown,
            failover,
            started: false,
            serving: false,
            dirty: false,
            join_seq: 0,
            max_seq_seen: 0,
            recoveries: Vec::new(),
        }
    }
}

/// Inputs of the mirror machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorEvent {
    Admin(Admin),
    /// A heartbeat from the peer (or a change in what it says).
    PeerSeen(MirrorView),
    /// The peer was silent on every network for the module's timeout.
    PeerLost,
    /// A checker's resource went up or down (edges only).
    Resource {
        name: String,
        up: bool,
    },
    /// The splitbrain checker's verdict: a witness is reachable or not.
    Witness {
        reachable: bool,
    },
    /// The catch-up into this secondary completed: the copies are identical.
    ResyncDone,
    ResyncFailed {
        reason: String,
    },
    /// The replication stream failed (peer unreachable within the timeout, its disk full, ...).
    ReplicationBroken {
        reason: String,
    },
    /// A hook failed or timed out.
    HookFailed {
        hook: Hook,
        reason: String,
    },
    /// Time passed (timers: start grace, rejoin backoff, loop window).
    Tick,
    /// The daemon is shutting down (SIGTERM): stop like `stop`, but remember that the module was
    /// started so that it starts again with the daemon.
    Shutdown,
}

/// The mirror state machine of one module on one node.
#[derive(Debug, Clone)]
pub struct MirrorMachine {
    policy: MirrorPolicy,
    p: MirrorPersist,
    emitted: MirrorPersist,
    state: State,
    readiness: Readiness,
    peer: Option<MirrorView>,
    started_at: Millis,
    /// Resources currently down, and those among them that hold the node in WAIT.
    down: BTreeSet<String>,
    held: BTreeSet<String>,
    yields: bool,
    want_prim: bool,
    want_second: bool,
    want_full: bool,
    unclean: bool,
    witness_ok: Option<bool>,
    /// When the peer was lost (with a witness policy), and the last witness verdict since then.
    lost_at: Option<Millis>,
    witness_since_loss: Option<bool>,
    /// When the last verdict (`witness_ok`) came.
    witness_at: Millis,
    sender: bool,
    receiver: bool,
    /// The highest join of the peer this primary has answered with a catch-up.
    last_join: Option<u64>,
    rejoin_after: Option<Millis>,
    /// The divergence this node already reported, so the log says it once.
    reported: Option<String>,
}

impl MirrorMachine {
    /// A machine in STOP, from what was persisted (None on first install).
    pub fn new(policy: MirrorPolicy, persisted: Option<MirrorPersist>) -> Self {
        let p = persisted.unwrap_or_else(|| MirrorPersist::fresh(policy.failover_default));
        let unclean = p.serving || p.dirty;
        MirrorMachine {
            policy,
            emitted: p.clone(),
            p,
            state: State::Stop,
            readiness: Readiness::NotReady,
            peer: None,
            started_at: 0,
            down: BTreeSet::new(),
            held: BTreeSet::new(),
            yields: false,
            want_prim: false,
            want_second: false,
            want_full: false,
            unclean,
            witness_ok: None,
            lost_at: None,
            witness_since_loss: None,
            witness_at: 0,
            sender: false,
            receiver: false,
            last_join: None,
            rejoin_after: None,
            reported: None,
        }
    }

    pub fn status(&self) -> Status {
        Status { state: self.state, readiness: self.readiness }
    }

    pub fn persisted(&self) -> &MirrorPersist {
        &self.p
    }

    pub fn policy(&self) -> &MirrorPolicy {
        &self.policy
    }

    /// What this node tells its peer.
    pub fn view(&self) -> MirrorView {
        MirrorView {
            node: self.policy.local.clone(),
            state: self.state,
            readiness: self.readiness,
            history: self.p.history.clone(),
            freshness: self.p.freshness,
            failover: self.p.failover,
            started_at: self.started_at,
            join_seq: self.p.join_seq,
            yields: self.yields,
            want_prim: self.want_prim,
            want_second: self.want_second,
            want_full: self.want_full,
            held: !self.held.is_empty(),
            unclean: self.unclean,
        }
    }

    /// Feeds one event. An admin command that cannot be obeyed is refused with the reason and
    /// changes nothing.
    pub fn handle(&mut self, now: Millis, event: MirrorEvent) -> Result<Vec<Action>, Refused> {
        let mut out = Vec::new();
        match event {
            MirrorEvent::Admin(cmd) => self.admin(now, cmd, &mut out)?,
            MirrorEvent::PeerSeen(view) => self.peer_seen(view, &mut out),
            MirrorEvent::PeerLost => self.peer_lost(now, &mut out),
            MirrorEvent::Resource { name, up } => self.resource(now, name, up, &mut out),
            MirrorEvent::Witness { reachable } => {
                self.witness_ok = Some(reachable);
                self.witness_at = now;
                if self.lost_at.is_some() {
                    self.witness_since_loss = Some(reachable);
                }
            }
            MirrorEvent::ResyncDone => self.resync_done(&mut out),
            MirrorEvent::ResyncFailed { reason } => self.broken(now, "catch-up failed", &reason, &mut out),
            MirrorEvent::ReplicationBroken { reason } => self.broken(now, "replication broken", &reason, &mut out),
            MirrorEvent::HookFailed { hook, reason } => self.hook_failed(now, hook, &reason, &mut out),
            MirrorEvent::Tick => {}
            MirrorEvent::Shutdown => {
                if self.state != State::Stop {
                    self.stop(Cause::Stop, &mut out);
                    self.p.started = true;
                }
            }
        }
        self.reconcile(now, &mut out);
        self.persist(&mut out);
        Ok(out)
    }

    // ----- admin commands -------------------------------------------------------------------

    fn admin(&mut self, now: Millis, cmd: Admin, out: &mut Vec<Action>) -> Result<(), Refused> {
        let name = cmd.name();
        let peer_name = self.policy.peer.clone();
        let peer_serving = self.peer.as_ref().filter(|v| v.state.is_serving()).map(|v| v.state);
        match cmd {
            Admin::Start => {
                if self.state != State::Stop {
                    return Err(Refused::new(name, format!("the module is already started ({})", self.state)));
                }
                self.start(now, Cause::Start, out);
            }
            Admin::Stop => {
                if self.state == State::Stop {
                    return Err(Refused::new(name, "the module is already stopped"));
                }
                self.stop(Cause::Stop, out);
            }
            Admin::Restart => match self.state {
                State::Alone | State::Prim => {
                    out.push(self.hook(Hook::StopPrim, self.state, Cause::Restart));
                    out.push(self.hook(Hook::StartPrim, self.state, Cause::Restart));
                }
                State::Second => {
                    out.push(self.hook(Hook::StopSecond, self.state, Cause::Restart));
                    out.push(self.hook(Hook::StartSecond, self.state, Cause::Restart));
                }
                s => return Err(Refused::new(name, format!("the module is {s}: no application runs here to restart"))),
            },
            Admin::StopStart => {
                if self.state == State::Stop {
                    return Err(Refused::new(name, "the module is stopped; use start"));
                }
                let was_serving = self.state.is_serving();
                self.stop(Cause::StopStart, out);
                self.start(now, Cause::StopStart, out);
                self.yields = was_serving;
            }
            Admin::Swap => match (self.state, self.peer.as_ref()) {
                (State::Prim, Some(v)) if v.state == State::Second && v.readiness == Readiness::Ready => {
                    self.handover(Cause::Swap, out);
                }
                (State::Second, Some(v)) if v.state == State::Prim && self.readiness == Readiness::Ready => {
                    self.want_prim = true;
                    out.push(log(
                        Level::Info,
                        format!("swap requested: {peer_name} hands the primary role to this node"),
                    ));
                }
                (s, v) => {
                    let ps = v.map_or("not visible".to_string(), |v| format!("{} ({})", v.state, v.readiness));
                    return Err(Refused::new(
                        name,
                        format!(
                            "swap needs PRIM and SECOND (Ready); this node is {} ({}), {peer_name} is {ps}",
                            s, self.readiness
                        ),
                    ));
                }
            },
            Admin::Prim => {
                if self.state.is_serving() {
                    return Err(Refused::new(name, format!("this node is already primary ({})", self.state)));
                }
                if let Some(s) = peer_serving {
                    return Err(Refused::new(name, format!("{peer_name} is primary ({s}); use swap")));
                }
                if let Some(h) = self.held.iter().next() {
                    return Err(Refused::new(name, format!("checker `{h}` holds this node in WAIT")));
                }
                self.may_prim(now).map_err(|reason| Refused::new(name, reason))?;
                if self.state == State::Stop {
                    self.start(now, Cause::Prim, out);
                }
                self.promote(Cause::Prim, false, out);
            }
            Admin::Second { fullsync } => {
                if self.state.is_serving() {
                    return Err(Refused::new(name, "this node is primary; use swap, or stopstart to fail over"));
                }
                if self.state == State::Stop {
                    self.start(now, Cause::Second, out);
                }
                self.want_second = true;
                self.rejoin_after = None;
                if fullsync {
                    self.want_full = true;
                    if self.state == State::Second {
                        // Join again so that the primary starts a full copy.
                        self.set_state(State::Wait, Readiness::NotReady, Cause::Second, out);
                    }
                }
                out.push(log(
                    Level::Info,
                    format!("this node will be secondary{}", if fullsync { " (full copy)" } else { "" }),
                ));
            }
            Admin::PrimForce => {
                if self.state.is_serving() {
                    return Err(Refused::new(name, format!("this node is already primary ({})", self.state)));
                }
                if let Some(s) = peer_serving {
                    return Err(Refused::new(
                        name,
                        format!("{peer_name} is primary ({s}); stop it first: primforce never makes two primaries"),
                    ));
                }
                if self.state == State::Stop {
                    self.start(now, Cause::PrimForce, out);
                }
                out.push(log(
                    Level::Warn,
                    format!(
                        "primforce: serving this node's data ({:?}) as it is; {peer_name} will resynchronise from it by block hashes",
                        self.p.freshness
                    ),
                ));
                self.promote(Cause::PrimForce, true, out);
            }
            Admin::Failover(on) => {
                self.p.failover = on;
                out.push(log(Level::Info, format!("failover {}", if on { "on" } else { "off" })));
            }
        }
        Ok(())
    }

    /// Whether `prim` may promote this node: only on data known to be at least as new as the peer's.
    fn may_prim(&self, now: Millis) -> Result<(), String> {
        let peer = &self.policy.peer;
        if self.p.freshness == Freshness::Inconsistent {
            return Err(format!(
                "this node's data is inconsistent: its catch-up from {peer} was interrupted; use primforce to serve it anyway"
            ));
        }
        match &self.peer {
            Some(v) => match self.relation(v) {
                Relation::BothEmpty | Relation::Same | Relation::LocalNewer | Relation::PeerEmpty => Ok(()),
                Relation::Diverged { local_wins: true, .. } => Ok(()),
                Relation::PeerNewer | Relation::LocalEmpty | Relation::Diverged { local_wins: false, .. } => {
                    Err(format!("this node's data is older than {peer}'s; use primforce"))
                }
                Relation::Unrelated => Err(format!(
                    "this node's data and {peer}'s share no generation (not copies of each other); use primforce on the one to keep"
                )),
            },
            // With a witness, a node that cannot see its peer serves only if it reaches a witness
            // now: else it may be the cut-off side of a split while the peer serves.
            None if self.policy.witness
                && !(self.witness_ok == Some(true)
                    && now.saturating_sub(self.witness_at) <= self.policy.witness_deadline_ms) =>
            {
                Err(format!(
                    "{peer} is not visible and no witness answered lately: this node may be cut off while {peer} serves"
                ))
            }
            None => match self.p.freshness {
                Freshness::Latest => Ok(()),
                Freshness::Unknown => Err(format!(
                    "this node has no data history and {peer} is not visible; start {peer} too, or use primforce"
                )),
                _ => Err(format!(
                    "{peer} is not visible and may have newer data (this node was not primary alone when it stopped); use primforce if {peer} is lost"
                )),
            },
        }
    }

    // ----- events ---------------------------------------------------------------------------

    fn peer_seen(&mut self, view: MirrorView, out: &mut Vec<Action>) {
        if view.node != self.policy.peer {
            out.push(log(Level::Warn, format!("ignored a view from `{}`, not this module's peer", view.node)));
            return;
        }
        if let Some(max) = view.history.iter().map(|g| g.seq).max() {
            self.p.max_seq_seen = self.p.max_seq_seen.max(max);
        }
        if view.state.is_serving() {
            // The handover or the swap request has been honoured.
            self.yields = false;
            if view.state != State::Prim {
                self.want_prim = false;
            }
        }
        self.lost_at = None;
        self.witness_since_loss = None;
        self.peer = Some(view);
    }

    fn peer_lost(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.peer.take().is_none() {
            return;
        }
        let peer = self.policy.peer.clone();
        self.want_prim = false;
        self.yields = false;
        self.reported = None;
        if self.policy.witness {
            // A verdict from before the loss says nothing about which side was cut off.
            self.lost_at = Some(now);
            self.witness_since_loss = None;
        }
        if self.state.is_serving() && self.policy.witness {
            // Writes stay unacknowledged (the stream is kept, so they wait for the lost peer) until
            // a witness says this side may go on: if it may not, nothing it acknowledged is lost.
            out.push(log(
                Level::Warn,
                format!(
                    "lost {peer}: holding the application's writes until a witness confirms this node may serve (within {} ms)",
                    self.policy.witness_deadline_ms
                ),
            ));
        } else if self.state == State::Prim {
            out.push(log(Level::Warn, format!("lost {peer}: continuing ALONE; changes are tracked for its catch-up")));
            self.go_alone_from_prim(out);
        }
    }

    /// With a witness policy and the peer lost: `Some(true)` once this node may serve (a witness
    /// answered after the loss and, for a node not serving yet, the isolated side had time to
    /// step down), `Some(false)` when it must not, `None` while the verdict is pending.
    fn witness_verdict(&self, now: Millis, serving: bool) -> Option<bool> {
        let lost_at = self.lost_at?;
        let deadline = self.policy.witness_deadline_ms;
        match self.witness_since_loss {
            Some(false) => Some(false),
            Some(true) if serving => Some(true),
            Some(true) if now >= lost_at.saturating_add(2 * deadline) => Some(true),
            None if now >= lost_at.saturating_add(if serving { deadline } else { 2 * deadline }) => Some(false),
            _ => None,
        }
    }

    fn resync_done(&mut self, out: &mut Vec<Action>) {
        if self.state != State::Second || self.readiness != Readiness::Transient {
            return;
        }
        let Some(v) = self.peer.as_ref().filter(|v| v.state.is_serving()) else {
            out.push(log(Level::Warn, "catch-up reported done but the primary is not visible; ignored"));
            return;
        };
        self.p.history = v.history.clone();
        self.p.freshness = Freshness::Shared;
        self.readiness = Readiness::Ready;
        // Whatever this copy held of its own is undone: a later crash is judged anew (p.dirty).
        self.unclean = false;
        self.want_full = false;
        self.want_second = false;
        self.rejoin_after = None;
        out.push(log(Level::Info, format!("caught up with {}: SECOND (Ready)", self.policy.peer)));
    }

    fn broken(&mut self, now: Millis, what: &str, reason: &str, out: &mut Vec<Action>) {
        let peer = self.policy.peer.clone();
        match self.state {
            State::Alone | State::Prim if self.sender => {
                out.push(log(Level::Warn, format!("{what} to {peer}: {reason}; the application keeps running ALONE")));
                if self.state == State::Prim {
                    self.go_alone_from_prim(out);
                } else {
                    self.stop_sender(out);
                }
            }
            State::Second => {
                out.push(log(Level::Error, format!("{what} from {peer}: {reason}; waiting before joining again")));
                if self.readiness == Readiness::Ready {
                    self.p.freshness = Freshness::Outdated;
                }
                self.set_state(State::Wait, Readiness::NotReady, Cause::Join, out);
                self.rejoin_after = Some(now + self.policy.rejoin_backoff_ms);
            }
            _ => {}
        }
    }

    fn hook_failed(&mut self, now: Millis, hook: Hook, reason: &str, out: &mut Vec<Action>) {
        out.push(log(Level::Error, format!("hook {hook} failed: {reason}")));
        if hook.is_start() && self.state != State::Stop {
            self.recover(now, FailAction::StopStart, &format!("hook {hook}"), out);
        }
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
            if self.state != State::Wait {
                self.yields = self.state.is_serving() && self.p.failover;
                self.set_state(State::Wait, Readiness::NotReady, Cause::Checker, out);
            }
        } else {
            self.recover(now, action, &format!("checker `{name}`"), out);
        }
    }

    /// Restart, stopstart or stop after a failure, within the loop limit.
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
        // Without failover a stopstart could only restart here: do exactly that.
        let action = if action == FailAction::StopStart && !self.p.failover { FailAction::Restart } else { action };
        match (action, self.state) {
            (FailAction::Restart, State::Alone | State::Prim) => {
                out.push(self.hook(Hook::StopPrim, self.state, Cause::Checker));
                out.push(self.hook(Hook::StartPrim, self.state, Cause::Checker));
            }
            (FailAction::Restart, State::Second) => {
                out.push(self.hook(Hook::StopSecond, self.state, Cause::Checker));
                out.push(self.hook(Hook::StartSecond, self.state, Cause::Checker));
            }
            (FailAction::StopStart, _) => {
                let was_serving = self.state.is_serving();
                self.stop(Cause::StopStart, out);
                self.start(now, Cause::StopStart, out);
                self.yields = was_serving;
            }
            _ => {}
        }
    }

    // ----- the rules ------------------------------------------------------------------------

    fn reconcile(&mut self, now: Millis, out: &mut Vec<Action>) {
        if let Some(t) = self.rejoin_after {
            if now >= t {
                self.rejoin_after = None;
            }
        }
        for _ in 0..4 {
            let before = (self.state, self.readiness);
            match self.state {
                State::Wait => self.reconcile_wait(now, out),
                State::Second => self.reconcile_second(now, out),
                State::Alone | State::Prim => self.reconcile_primary(now, out),
                State::Stop | State::Up => {}
            }
            if before == (self.state, self.readiness) {
                break;
            }
        }
    }

    fn reconcile_wait(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.held.is_empty() {
            return;
        }
        let peer = self.policy.peer.clone();
        match self.peer.clone() {
            Some(v) if v.state.is_serving() => {
                if self.rejoin_after.is_some() {
                    return;
                }
                match self.relation(&v) {
                    Relation::Unrelated if !self.want_full => self.report(
                        Level::Error,
                        format!("this node's data and {peer}'s share no generation: not joining; use `second --fullsync` here or primforce"),
                        out,
                    ),
                    // A node that never held this module's data joins only when told: its
                    // directories will be overwritten by a full copy.
                    Relation::LocalEmpty if !self.want_second => self.report(
                        Level::Info,
                        format!("{peer} serves and this node has never held this module's data: waiting for `second` (a full copy)"),
                        out,
                    ),
                    Relation::Diverged { local_wins: true, .. } => {
                        self.report(
                            Level::Warn,
                            format!("{peer} serves while this node holds changes it lacks; they are discarded as this node resynchronises from {peer}"),
                            out,
                        );
                        self.join(out);
                    }
                    _ => self.join(out),
                }
            }
            Some(v) => {
                // A peer that is visibly stopped cannot take over, but it may be starting too (a
                // joint start at boot): give it the start grace before deciding alone.
                if v.state == State::Stop {
                    if now < self.started_at.saturating_add(self.policy.start_grace_ms) {
                        return;
                    }
                    // Taking the role from a stopped peer is a failover, unless we served last.
                    if !self.p.failover && self.p.freshness != Freshness::Latest {
                        return;
                    }
                }
                if elect(&self.view(), &v, &self.policy.preferred) == Some(self.policy.local.as_str()) {
                    let cause = if v.yields { Cause::Swap } else { Cause::Election };
                    self.promote(cause, false, out);
                }
            }
            None => {
                let grace_over = now >= self.started_at.saturating_add(self.policy.start_grace_ms);
                let witness_ok = !self.policy.witness || self.witness_ok == Some(true);
                if self.p.freshness == Freshness::Latest && grace_over && witness_ok && !self.want_second {
                    out.push(log(Level::Info, format!("{peer} not seen; this node served last: starting ALONE")));
                    self.promote(Cause::Start, false, out);
                }
            }
        }
    }

    fn reconcile_second(&mut self, now: Millis, out: &mut Vec<Action>) {
        let peer = self.policy.peer.clone();
        match self.peer.clone() {
            None => {
                let eligible = self.readiness == Readiness::Ready && self.p.failover;
                let witness_ok = if self.policy.witness && eligible {
                    match self.witness_verdict(now, false) {
                        Some(ok) => ok,
                        None => {
                            self.report(
                                Level::Info,
                                format!("{peer} lost: waiting for the witness verdict before taking over"),
                                out,
                            );
                            return;
                        }
                    }
                } else {
                    true
                };
                if eligible && witness_ok {
                    out.push(log(Level::Warn, format!("{peer} lost: failover, this node takes over")));
                    self.promote(Cause::Failover, false, out);
                } else {
                    let why = if self.readiness != Readiness::Ready {
                        "its catch-up was not complete".to_string()
                    } else if !self.p.failover {
                        "failover is off".to_string()
                    } else {
                        "no witness is reachable".to_string()
                    };
                    out.push(log(Level::Warn, format!("{peer} lost; not taking over: {why}")));
                    self.set_state(State::Wait, Readiness::NotReady, Cause::Failover, out);
                }
            }
            Some(v) if v.state.is_serving() => {
                // The primary started a new generation without us: it dropped this secondary.
                if self.readiness == Readiness::Ready && v.state == State::Alone && v.history != self.p.history {
                    out.push(log(Level::Info, format!("{peer} continued without this node: joining again")));
                    self.p.freshness = Freshness::Outdated;
                    self.set_state(State::Wait, Readiness::NotReady, Cause::Join, out);
                }
            }
            Some(v) => {
                if self.readiness == Readiness::Ready && !self.relation(&v).local_is_current() {
                    // The peer served without us (e.g. ALONE with the witness while we were cut
                    // off) and stopped since: our copy is stale. Staying "Ready" would let us take
                    // over with it as soon as the peer disappears again.
                    out.push(log(
                        Level::Warn,
                        format!("{peer} served without this node: this copy is outdated; waiting to catch up"),
                    ));
                    self.p.freshness = Freshness::Outdated;
                    self.set_state(State::Wait, Readiness::NotReady, Cause::Join, out);
                } else if self.yields {
                    // We handed over: the peer is about to take the role.
                } else if self.readiness != Readiness::Ready {
                    out.push(log(Level::Warn, format!("{peer} stopped serving during the catch-up")));
                    self.set_state(State::Wait, Readiness::NotReady, Cause::Join, out);
                } else if elect(&self.view(), &v, &self.policy.preferred) == Some(self.policy.local.as_str()) {
                    let cause = if v.yields { Cause::Swap } else { Cause::Failover };
                    self.promote(cause, false, out);
                }
            }
        }
    }

    fn reconcile_primary(&mut self, now: Millis, out: &mut Vec<Action>) {
        let peer = self.policy.peer.clone();
        let Some(v) = self.peer.clone() else {
            let verdict = if self.policy.witness && self.lost_at.is_some() {
                self.witness_verdict(now, true)
            } else {
                Some(true)
            };
            if verdict == Some(true) && self.state == State::Prim {
                out.push(log(
                    Level::Warn,
                    format!("lost {peer}: continuing ALONE; changes are tracked for its catch-up"),
                ));
                self.go_alone_from_prim(out);
            }
            if self.lost_at.is_some() {
                match verdict {
                    Some(false) => {
                        out.push(log(
                            Level::Warn,
                            format!("lost {peer} and no witness is reachable: stepping down so that two primaries never serve"),
                        ));
                        self.p.freshness = Freshness::Shared;
                        self.lost_at = None;
                        self.set_state(State::Wait, Readiness::NotReady, Cause::SplitBrain, out);
                    }
                    Some(true) => self.report(
                        Level::Info,
                        format!("lost {peer}; a witness is reachable: this node keeps serving"),
                        out,
                    ),
                    None => {}
                }
            }
            return;
        };
        if v.state.is_serving() {
            // Both serve: only after a split without witness (or a heal). Both nodes compute the
            // same winner from the two histories.
            let rel = self.relation(&v);
            let local_wins = match &rel {
                Relation::Diverged { local_wins, .. } => *local_wins,
                r if r.local_is_current() => true,
                Relation::PeerNewer | Relation::LocalEmpty => false,
                _ => self.policy.local < self.policy.peer,
            };
            if local_wins {
                self.report(
                    Level::Warn,
                    format!("split brain: {peer} also served; this node keeps serving and {peer} resynchronises from it (its changes during the split are discarded)"),
                    out,
                );
            } else {
                out.push(log(
                    Level::Warn,
                    format!("split brain: {peer} also served and its data wins; this node stops serving, discards its changes since the split and resynchronises from {peer}"),
                ));
                self.p.freshness = Freshness::Outdated;
                self.set_state(State::Wait, Readiness::NotReady, Cause::SplitBrain, out);
            }
            return;
        }
        if v.state != State::Second {
            if self.state == State::Prim {
                out.push(log(Level::Warn, format!("{peer} left SECOND ({}): continuing ALONE", v.state)));
                self.go_alone_from_prim(out);
            } else if self.sender {
                self.stop_sender(out);
            }
            return;
        }
        // The peer is SECOND.
        // A join is a SECOND (Transient) with a join number not answered yet.
        if v.readiness == Readiness::Transient && self.last_join.is_none_or(|j| v.join_seq > j) {
            self.last_join = Some(v.join_seq);
            let mode = self.resync_mode(&v);
            if self.state == State::Prim {
                // It joined again (e.g. a full copy was asked): we are no longer protected.
                self.state = State::Alone;
                self.p.serving = true;
            }
            if !self.sender {
                out.push(Action::StartReplication(ReplicationRole::Sender));
                self.sender = true;
            }
            out.push(log(Level::Info, format!("{peer} joins as secondary: catch-up {mode}")));
            out.push(Action::StartResync { mode });
            return;
        }
        if self.state == State::Alone && v.readiness == Readiness::Ready && v.history == self.p.history {
            self.state = State::Prim;
            self.readiness = Readiness::Ready;
            self.p.freshness = Freshness::Shared;
            out.push(log(Level::Info, format!("{peer} is up to date: PRIM, every write is replicated synchronously")));
            return;
        }
        if self.state == State::Prim && v.readiness == Readiness::Ready {
            let to_preferred = self.policy.preferred == Preferred::Node(peer.clone());
            if v.want_prim || to_preferred {
                let cause = if v.want_prim { Cause::Swap } else { Cause::Election };
                if to_preferred && !v.want_prim {
                    out.push(log(
                        Level::Info,
                        format!("{peer} is the preferred primary and has caught up: automatic swap"),
                    ));
                }
                self.handover(cause, out);
            }
        }
    }

    // ----- transitions ----------------------------------------------------------------------

    fn start(&mut self, now: Millis, cause: Cause, out: &mut Vec<Action>) {
        self.started_at = now;
        self.p.started = true;
        self.yields = false;
        self.want_prim = false;
        self.want_second = false;
        self.want_full = false;
        self.rejoin_after = None;
        self.reported = None;
        self.set_state(State::Wait, Readiness::NotReady, cause, out);
    }

    fn stop(&mut self, cause: Cause, out: &mut Vec<Action>) {
        match self.state {
            State::Alone => self.p.freshness = Freshness::Latest,
            // The peer holds the same data and may take over: it may be newer when we return.
            State::Prim => self.p.freshness = Freshness::Shared,
            _ => {}
        }
        // A clean stop makes a secondary's copy durable (the daemon syncs it before this is
        // persisted); a copy that was unclean and not caught up yet stays so.
        self.p.dirty = match self.state {
            State::Second if self.readiness == Readiness::Ready => false,
            State::Second => self.unclean,
            _ => self.p.dirty && self.unclean,
        };
        self.p.serving = false;
        self.p.started = false;
        self.yields = false;
        self.want_prim = false;
        self.want_second = false;
        self.want_full = false;
        self.held.clear();
        self.down.clear();
        self.set_state(State::Stop, Readiness::NotReady, cause, out);
    }

    /// Become primary: a new generation (made durable first), the VIP, the start hooks.
    fn promote(&mut self, cause: Cause, forced: bool, out: &mut Vec<Action>) {
        let id = push_generation(&mut self.p.history, &self.policy.local, forced, self.p.max_seq_seen);
        self.p.max_seq_seen = self.p.max_seq_seen.max(id.seq);
        self.p.freshness = Freshness::Latest;
        self.p.serving = true;
        // Its copy is the reference from now on.
        self.p.dirty = false;
        self.unclean = false;
        self.persist(out);
        self.yields = false;
        self.want_prim = false;
        self.want_second = false;
        self.want_full = false;
        self.last_join = None;
        self.reported = None;
        out.push(log(Level::Info, format!("ALONE ({cause}): serving, new data generation {id}")));
        self.set_state(State::Alone, Readiness::Ready, cause, out);
    }

    /// Join the serving peer as secondary; the primary answers with a catch-up.
    fn join(&mut self, out: &mut Vec<Action>) {
        self.p.join_seq += 1;
        self.p.freshness = Freshness::Inconsistent;
        // From now on `dirty` says whether this copy can be trusted after a crash; `unclean`
        // (in memory) keeps what was true before this join until the catch-up completes.
        self.p.serving = false;
        self.p.dirty = true;
        self.persist(out);
        self.set_state(State::Second, Readiness::Transient, Cause::Join, out);
    }

    /// Give the primary role to the up-to-date secondary: stop here first, then it takes over.
    fn handover(&mut self, cause: Cause, out: &mut Vec<Action>) {
        out.push(log(Level::Info, format!("{cause}: handing the primary role to {}", self.policy.peer)));
        self.p.serving = false;
        self.join(out);
        self.yields = true;
    }

    /// PRIM without its secondary: a new generation, so that the secondary's copy is known older
    /// and its catch-up copies what changed since.
    fn go_alone_from_prim(&mut self, out: &mut Vec<Action>) {
        let id = push_generation(&mut self.p.history, &self.policy.local, false, self.p.max_seq_seen);
        self.p.max_seq_seen = self.p.max_seq_seen.max(id.seq);
        self.p.freshness = Freshness::Latest;
        self.persist(out);
        self.state = State::Alone;
        self.readiness = Readiness::Ready;
        self.last_join = self.peer.as_ref().map(|v| v.join_seq).or(self.last_join);
        self.stop_sender(out);
    }

    fn stop_sender(&mut self, out: &mut Vec<Action>) {
        if self.sender {
            out.push(Action::StopReplication);
            self.sender = false;
        }
    }

    /// Moves to `to`, emitting the hooks, VIP and replication actions of leaving the old role and
    /// entering the new one, in the order the daemon must run them.
    fn set_state(&mut self, to: State, readiness: Readiness, cause: Cause, out: &mut Vec<Action>) {
        let from = self.state;
        self.readiness = readiness;
        if from == to {
            return;
        }
        out.push(Action::Log { level: Level::Info, message: format!("{from} -> {to} ({cause})") });
        let in_role = |s: State| matches!(s, State::Alone | State::Prim | State::Second);
        let serving = |s: State| matches!(s, State::Alone | State::Prim);
        if serving(from) && !serving(to) {
            out.push(self.hook(Hook::StopPrim, to, cause));
            if !in_role(to) {
                out.push(self.hook(Hook::StopBoth, to, cause));
            }
            out.push(Action::ReleaseVip);
            self.stop_sender(out);
            self.last_join = None;
        }
        if from == State::Second {
            if self.receiver {
                out.push(Action::StopReplication);
                self.receiver = false;
            }
            out.push(self.hook(Hook::StopSecond, to, cause));
            if !in_role(to) {
                out.push(self.hook(Hook::StopBoth, to, cause));
            }
        }
        if to == State::Stop {
            out.push(self.hook(Hook::Poststop, to, cause));
        }
        if from == State::Stop && to != State::Stop {
            out.push(self.hook(Hook::Prestart, to, cause));
        }
        if serving(to) && !serving(from) {
            out.push(Action::TakeVip);
            if !in_role(from) {
                out.push(self.hook(Hook::StartBoth, to, cause));
            }
            out.push(self.hook(Hook::StartPrim, to, cause));
        }
        if to == State::Second {
            out.push(Action::StartReplication(ReplicationRole::Receiver));
            self.receiver = true;
            if !in_role(from) {
                out.push(self.hook(Hook::StartBoth, to, cause));
            }
            out.push(self.hook(Hook::StartSecond, to, cause));
        }
        self.state = to;
    }

    fn hook(&self, hook: Hook, next: State, cause: Cause) -> Action {
        Action::RunHook { hook, current: self.state, next, cause }
    }

    fn relation(&self, v: &MirrorView) -> Relation {
        relate(&self.policy.local, &self.p.history, &v.node, &v.history)
    }

    /// How to bring a joining secondary up to date.
    fn resync_mode(&self, v: &MirrorView) -> ResyncMode {
        if v.want_full {
            return ResyncMode::Full;
        }
        match self.relation(v) {
            Relation::PeerEmpty | Relation::BothEmpty => ResyncMode::Full,
            // An interrupted zone catch-up is simply done again: the tracked zones are still there.
            Relation::Same | Relation::LocalNewer => match v.history.last() {
                Some(since) => ResyncMode::Zones { since: since.clone(), peer_dirty: v.unclean },
                None => ResyncMode::Full,
            },
            _ => ResyncMode::BlockHash,
        }
    }

    /// Logs `message` once per episode (a divergence seen on every heartbeat is reported once).
    fn report(&mut self, level: Level, message: String, out: &mut Vec<Action>) {
        if self.reported.as_deref() != Some(message.as_str()) {
            out.push(log(level, message.clone()));
            self.reported = Some(message);
        }
    }

    fn persist(&mut self, out: &mut Vec<Action>) {
        if self.p != self.emitted {
            self.emitted = self.p.clone();
            out.push(Action::Persist(Box::new(crate::action::Persisted::Mirror(self.p.clone()))));
        }
    }
}

fn log(level: Level, message: impl Into<String>) -> Action {
    Action::Log { level, message: message.into() }
}

/// Whether `v` may be chosen as primary while `other` looks on. Both nodes evaluate it on both
/// views, so the outcome is the same on each side.
fn candidate(v: &MirrorView, other: &MirrorView) -> bool {
    let rel = relate(&v.node, &v.history, &other.node, &other.history);
    if !rel.local_is_current() || v.freshness == Freshness::Inconsistent || v.held || v.want_second {
        return false;
    }
    match v.state {
        State::Wait => true,
        // A secondary takes over only with failover on, unless the primary hands over itself.
        State::Second => v.readiness == Readiness::Ready && (v.failover || other.yields),
        _ => false,
    }
}

/// The node that should become primary when neither serves, or None (nobody may: the admin
/// decides, e.g. at first start when neither node has data). Symmetric in its two views.
pub fn elect<'a>(a: &'a MirrorView, b: &'a MirrorView, preferred: &Preferred) -> Option<&'a str> {
    if a.state.is_serving() || b.state.is_serving() {
        return None;
    }
    let (ca, cb) = (candidate(a, b), candidate(b, a));
    match (ca, cb) {
        (false, false) => None,
        (true, false) => Some(&a.node),
        (false, true) => Some(&b.node),
        (true, true) => {
            if a.yields != b.yields {
                return Some(if a.yields { &b.node } else { &a.node });
            }
            if let Preferred::Node(n) = preferred {
                if *n == a.node || *n == b.node {
                    return Some(if *n == a.node { &a.node } else { &b.node });
                }
            }
            if *preferred == Preferred::Alone && a.started_at != b.started_at {
                return Some(if a.started_at < b.started_at { &a.node } else { &b.node });
            }
            let last: Option<&GenId> = a.history.last().or(b.history.last());
            match last {
                Some(g) if g.node == a.node => Some(&a.node),
                Some(g) if g.node == b.node => Some(&b.node),
                _ => Some(if a.node < b.node { &a.node } else { &b.node }),
            }
        }
    }
}
