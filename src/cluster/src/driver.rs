//! One task per module: it owns the module's machine and is the only one to feed it. Heartbeats
//! in (validated by `wire::Opener`), liveness timers, admin commands from the control socket and
//! the results of its own actions (a failed hook, a finished catch-up) become events; the machine's
//! actions are executed in order: persist, VIP, hooks, log. Heartbeats out are sent by a separate
//! task from the latest published view, so that a long hook never silences the node.

use crate::control::{ModuleStatus, PeerStatus, Response};
use crate::daemon::{VipOps, VipSpec};
use crate::hooks::{run_hook, run_plugin_hook, HookCall};
use crate::liveness::Liveness;
use crate::modlog::ModLog;
use crate::replica::{ReplEvent, Replica};
use crate::store::Store;
use crate::wire::{Body, Drop, ModuleView, Opener, Sealer};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_config::{HookPoint, ModuleConfig};
use tandem_machine::{
    Action, Admin, FarmEvent, FarmMachine, Hook, Level, MirrorEvent, MirrorMachine, ReplicationRole, ResyncMode, State,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Wall-clock milliseconds: machines compare `started_at` across nodes and keep the loop window
/// across restarts, so a monotonic clock local to this run would not do.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub enum Msg {
    Packet {
        data: Vec<u8>,
        network: u8,
    },
    /// From the replication threads of this module.
    Repl(ReplEvent),
    Admin {
        command: Admin,
        reply: oneshot::Sender<Response>,
    },
    Verify {
        reply: oneshot::Sender<Response>,
    },
    Diff {
        reply: oneshot::Sender<Response>,
    },
    /// A verdict of the splitbrain checker (every probe round, not only changes).
    Witness {
        reachable: bool,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

// One per module, created once and never moved on a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Machine {
    Mirror(MirrorMachine),
    Farm(FarmMachine),
}

/// Inputs of the machine, whichever kind it is.
enum In {
    Admin(Admin),
    Peer(ModuleView),
    PeerLost(String),
    HookFailed(Hook, String),
    ResyncDone,
    ReplicationBroken(String),
    Witness(bool),
    Tick,
    Shutdown,
}

/// Where one module's heartbeats go: a socket per network and the peers' addresses on it.
pub struct Link {
    pub network: u8,
    pub network_name: String,
    pub socket: Arc<UdpSocket>,
    pub peers: Vec<SocketAddr>,
}

pub struct Driver<V: VipOps> {
    pub cfg: ModuleConfig,
    pub node: String,
    pub cluster: String,
    pub networks: Vec<String>,
    pub machine: Machine,
    pub liveness: Liveness,
    pub opener: Opener,
    pub store: Store,
    pub log: ModLog,
    pub dir: PathBuf,
    pub vips: Arc<V>,
    pub body_tx: watch::Sender<Body>,
    pub status_tx: watch::Sender<ModuleStatus>,
    /// The replicated directory, for a mirror module that has one.
    pub replica: Option<Replica>,
    queue: VecDeque<In>,
    delivered: BTreeMap<String, ModuleView>,
    accepted: u64,
    last_drop_report: Option<Instant>,
    reported_drops: u64,
    /// The splitbrain checker's last verdict (logged when it changes).
    witness: Option<bool>,
    progress: Option<String>,
    /// Shown by `tandem state`: the last failed hook.
    last_failure: Option<String>,
    last_progress_log: Option<Instant>,
    /// Before the current step, this node was a Ready secondary: its copy was in sync, so a
    /// promotion may track changes from now on (the zone log).
    was_ready_second: bool,
}

impl<V: VipOps> Driver<V> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ModuleConfig,
        node: String,
        cluster: String,
        networks: Vec<String>,
        machine: Machine,
        opener: Opener,
        store: Store,
        log: ModLog,
        dir: PathBuf,
        vips: Arc<V>,
    ) -> (Self, watch::Receiver<Body>, watch::Receiver<ModuleStatus>) {
        let liveness = Liveness::new(cfg.heartbeat.timeout.as_millis() as u64);
        let body = Body { cluster: cluster.clone(), from: node.clone(), view: view_of(&machine), synced_join: None };
        let (body_tx, body_rx) = watch::channel(body);
        let status = ModuleStatus {
            module: cfg.name.clone(),
            kind: cfg.kind.as_str().to_string(),
            id: cfg.id,
            node: node.clone(),
            state: State::Stop,
            readiness: tandem_machine::Readiness::NotReady,
            failover: None,
            generation: None,
            freshness: None,
            last_primary: None,
            peers: Vec::new(),
            dropped: BTreeMap::new(),
            accepted: 0,
            replication: None,
            last_failure: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let d = Driver {
            cfg,
            node,
            cluster,
            networks,
            machine,
            liveness,
            opener,
            store,
            log,
            dir,
            vips,
            body_tx,
            status_tx,
            replica: None,
            queue: VecDeque::new(),
            delivered: BTreeMap::new(),
            accepted: 0,
            last_drop_report: None,
            reported_drops: 0,
            witness: None,
            progress: None,
            last_failure: None,
            last_progress_log: None,
            was_ready_second: false,
        };
        (d, body_rx, status_rx)
    }

    /// The module's event loop; returns after a shutdown.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>, autostart: bool) {
        self.publish();
        if autostart {
            self.log.append("INFO", "starting: the module was started when this node last stopped");
            self.queue.push_back(In::Admin(Admin::Start));
        }
        let tick_every = (self.cfg.heartbeat.pulse / 2).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(ev) = self.queue.pop_front() {
                let _ = self.step(ev).await;
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => return,
                    Some(Msg::Packet { data, network }) => self.packet(&data, network),
                    Some(Msg::Repl(ev)) => self.repl_event(ev),
                    Some(Msg::Verify { reply }) => self.verify(reply),
                    Some(Msg::Diff { reply }) => self.diff(reply),
                    Some(Msg::Witness { reachable }) => {
                        if self.witness != Some(reachable) {
                            let what = if reachable { "reachable" } else { "NOT reachable" };
                            let level = if reachable { "INFO" } else { "WARN" };
                            self.log.append(level, &format!("splitbrain checker: witness {what}"));
                            self.witness = Some(reachable);
                        }
                        self.queue.push_back(In::Witness(reachable));
                    }
                    Some(Msg::Admin { command, reply }) => {
                        let r = self.admin(command).await;
                        let _ = reply.send(r);
                    }
                    Some(Msg::Shutdown { reply }) => {
                        let _ = self.step(In::Shutdown).await;
                        while let Some(ev) = self.queue.pop_front() {
                            if matches!(ev, In::Admin(_) | In::Shutdown) { continue; }
                            let _ = self.step(ev).await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    for peer in self.liveness.expire(now) {
                        self.delivered.remove(&peer);
                        self.log.append("WARN", &format!("{peer} silent on every network for {} ms: lost", self.cfg.heartbeat.timeout.as_millis()));
                        self.queue.push_back(In::PeerLost(peer));
                    }
                    self.queue.push_back(In::Tick);
                }
            }
        }
    }

    async fn admin(&mut self, command: Admin) -> Response {
        let name = command.name();
        match self.step(In::Admin(command)).await {
            Ok(()) => {
                // Let the consequences (a failed hook, a finished catch-up) play out first.
                while let Some(ev) = self.queue.pop_front() {
                    let _ = self.step(ev).await;
                }
                let s = self.status_tx.borrow().clone();
                Response::Done {
                    state: s.state,
                    readiness: s.readiness,
                    message: format!("{name}: {} ({})", s.state, s.readiness),
                }
            }
            Err(refused) => {
                self.log.append("WARN", &refused.to_string());
                Response::Refused { message: refused.to_string() }
            }
        }
    }

    /// Hashes both copies on a blocking thread: the module keeps running meanwhile.
    fn verify(&mut self, reply: oneshot::Sender<Response>) {
        let name = self.cfg.name.clone();
        let job = match (&self.replica, &self.machine) {
            (Some(r), Machine::Mirror(m)) if m.status().state.is_serving() => r.verifier(),
            (Some(_), _) => Err(format!("this node is not primary: run `tandem verify` on the primary of {name}")),
            (None, _) => Err(format!("module {name} replicates no directory")),
        };
        let job = match job {
            Ok(j) => j,
            Err(message) => {
                let _ = reply.send(Response::Error { message });
                return;
            }
        };
        let log = ModLog::new(&self.dir, crate::modlog::DEFAULT_MAX_BYTES);
        tokio::task::spawn_blocking(move || {
            let r = match job() {
                Ok(v) => {
                    let line = match v.differences.first() {
                        None => {
                            format!("verify: the copies are identical ({} entries, {} MiB)", v.entries, v.bytes >> 20)
                        }
                        Some(first) => format!("verify: {} difference(s), first: {first}", v.differences.len()),
                    };
                    log.append(if v.differences.is_empty() { "INFO" } else { "WARN" }, &line);
                    Response::Verified { entries: v.entries as u64, bytes: v.bytes, differences: v.differences }
                }
                Err(message) => Response::Error { message: format!("verify of {name}: {message}") },
            };
            let _ = reply.send(r);
        });
    }

    /// `tandem diff`: walks the metadata on a blocking thread; nothing is read or sent.
    fn diff(&mut self, reply: oneshot::Sender<Response>) {
        let name = self.cfg.name.clone();
        let job = match (&self.replica, &self.machine) {
            (Some(r), Machine::Mirror(m)) if m.status().state.is_serving() => Ok((
                r.estimator(),
                m.status().state == State::Prim && m.status().readiness == tandem_machine::Readiness::Ready,
            )),
            (Some(_), _) => Err(format!("this node is not primary: run `tandem diff` on the primary of {name}")),
            (None, _) => Err(format!("module {name} replicates no directory")),
        };
        match job {
            Err(message) => {
                let _ = reply.send(Response::Error { message });
            }
            Ok((job, in_sync)) => {
                tokio::task::spawn_blocking(move || {
                    let (tracking_since, zones, rate) = job();
                    let _ =
                        reply.send(Response::Diff(crate::control::DiffReport { in_sync, tracking_since, zones, rate }));
                });
            }
        }
    }

    fn repl_event(&mut self, ev: ReplEvent) {
        match ev {
            ReplEvent::Note(line) => self.log.append("INFO", &line),
            ReplEvent::Progress(line) => {
                if self.last_progress_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    self.log.append("INFO", &line);
                    self.last_progress_log = Some(Instant::now());
                }
                self.progress = Some(line);
                self.update_status();
            }
            ReplEvent::Synced { join_seq } => {
                self.progress = None;
                if let Some(r) = self.replica.as_mut() {
                    r.synced(join_seq);
                }
                self.log.append("INFO", &format!("the secondary's copy is complete (join {join_seq})"));
                self.body_tx.send_modify(|b| b.synced_join = Some(join_seq));
            }
            ReplEvent::Broken { reason, connection_loss, join } => {
                let second = matches!(&self.machine, Machine::Mirror(m) if m.status().state == State::Second);
                // The end of a stream that is no longer ours (the receiver of a secondary that
                // was promoted meanwhile, the sender of an earlier join) says nothing of the
                // current one: breaking it would stop a replication that works.
                let stale = match join {
                    None => !second,
                    Some(j) => self.replica.as_ref().and_then(|r| r.current_join()) != Some(j),
                };
                if stale {
                    let which =
                        join.map_or("an earlier secondary stream".to_string(), |j| format!("the stream of join {j}"));
                    self.log.append("INFO", &format!("{which} ended ({reason}): no longer the current one, ignored"));
                    return;
                }
                self.progress = None;
                if second && connection_loss {
                    // The primary may be dead: heartbeats decide (failover), not the stream.
                    self.log.append("WARN", &format!("replication stream from the primary ended: {reason}"));
                } else {
                    self.queue.push_back(In::ReplicationBroken(reason));
                }
            }
        }
    }

    /// On a secondary catching up: the primary says (in its heartbeat) that the full copy of this
    /// join is applied here.
    fn check_synced(&mut self, synced_join: Option<u64>) {
        if let Machine::Mirror(m) = &self.machine {
            let st = m.status();
            if st.state == State::Second
                && st.readiness == tandem_machine::Readiness::Transient
                && synced_join == Some(m.persisted().join_seq)
                && self.replica.is_some()
                && !self.queue.iter().any(|e| matches!(e, In::ResyncDone))
            {
                self.queue.push_back(In::ResyncDone);
            }
        }
    }

    fn packet(&mut self, data: &[u8], network: u8) {
        let now = now_ms();
        match self.opener.open(data, network) {
            Ok(hb) => {
                if hb.body.from == self.node {
                    return;
                }
                self.accepted += 1;
                self.liveness.heard(now, &hb.body.from, network);
                self.check_synced(hb.body.synced_join);
                if self.delivered.get(&hb.body.from) != Some(&hb.body.view) {
                    self.delivered.insert(hb.body.from.clone(), hb.body.view.clone());
                    self.queue.push_back(In::Peer(hb.body.view));
                }
            }
            Err(reason) => self.report_drop(reason, network),
        }
        self.update_status();
    }

    /// Dropped packets are counted always and logged at most every 10 s per module.
    fn report_drop(&mut self, reason: Drop, network: u8) {
        let total = self.opener.total_drops();
        let due = self.last_drop_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            let net = self.networks.get(network as usize).cloned().unwrap_or_default();
            let msg = format!(
                "dropped heartbeat packets on {net}: {} since the last report (latest: {reason})",
                total - self.reported_drops
            );
            tracing::warn!(module = %self.cfg.name, "{msg}");
            self.log.append("WARN", &msg);
            self.last_drop_report = Some(Instant::now());
            self.reported_drops = total;
        }
    }

    async fn step(&mut self, ev: In) -> Result<(), tandem_machine::Refused> {
        let now = now_ms();
        let actions = match &mut self.machine {
            Machine::Mirror(m) => {
                let ev = match ev {
                    In::Admin(a) => MirrorEvent::Admin(a),
                    In::Peer(ModuleView::Mirror(v)) => MirrorEvent::PeerSeen(v),
                    In::Peer(ModuleView::Farm(v)) => {
                        self.log.append("ERROR", &format!("{} runs this module as a farm; ignored", v.node));
                        return Ok(());
                    }
                    In::PeerLost(_) => MirrorEvent::PeerLost,
                    In::HookFailed(hook, reason) => MirrorEvent::HookFailed { hook, reason },
                    In::ResyncDone => MirrorEvent::ResyncDone,
                    In::ReplicationBroken(reason) => MirrorEvent::ReplicationBroken { reason },
                    In::Witness(reachable) => MirrorEvent::Witness { reachable },
                    In::Tick => MirrorEvent::Tick,
                    In::Shutdown => MirrorEvent::Shutdown,
                };
                let before = m.status();
                self.was_ready_second =
                    before.state == State::Second && before.readiness == tandem_machine::Readiness::Ready;
                m.handle(now, ev)?
            }
            Machine::Farm(f) => {
                let ev = match ev {
                    In::Admin(a) => FarmEvent::Admin(a),
                    In::Peer(ModuleView::Farm(v)) => FarmEvent::PeerSeen(v),
                    In::Peer(ModuleView::Mirror(v)) => {
                        self.log.append("ERROR", &format!("{} runs this module as a mirror; ignored", v.node));
                        return Ok(());
                    }
                    In::PeerLost(node) => FarmEvent::PeerLost { node },
                    In::HookFailed(hook, reason) => FarmEvent::HookFailed { hook, reason },
                    In::ResyncDone | In::ReplicationBroken(_) | In::Witness(_) => return Ok(()),
                    In::Tick => FarmEvent::Tick,
                    In::Shutdown => FarmEvent::Shutdown,
                };
                f.handle(now, ev)?
            }
        };
        self.execute(actions).await;
        if let (Machine::Mirror(m), Some(r)) = (&self.machine, self.replica.as_mut()) {
            let st = m.status();
            if !self.was_ready_second && st.state == State::Second && st.readiness == tandem_machine::Readiness::Ready {
                // Caught up: an activity log this node left as primary is done with.
                r.caught_up();
            }
        }
        // Published after the actions: a node that stops serving says so only once its
        // application is stopped and its VIP released, so the peer never takes over too early.
        self.publish();
        Ok(())
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        let is_farm = matches!(self.machine, Machine::Farm(_));
        for action in actions {
            match action {
                Action::Persist(p) => {
                    if let Err(e) = self.store.save(&p) {
                        tracing::error!(module = %self.cfg.name, "{e}");
                        self.log.append("ERROR", &e.to_string());
                    }
                }
                Action::Log { level, message } => {
                    let lv = match level {
                        Level::Info => "INFO",
                        Level::Warn => "WARN",
                        Level::Error => "ERROR",
                    };
                    tracing::info!(module = %self.cfg.name, "{message}");
                    self.log.append(lv, &message);
                }
                Action::TakeVip if is_farm => {
                    if !self.cfg.vips.is_empty() {
                        self.log.append("WARN", "farm VIPs are shared through the farm filter, which this version does not have yet: VIP not added");
                    }
                }
                Action::ReleaseVip if is_farm => {}
                Action::TakeVip => {
                    // The replicated directory is intercepted before the application starts.
                    if let Some(r) = self.replica.as_mut() {
                        match r.take(self.was_ready_second) {
                            Ok(()) => self.log.append("INFO", "replicated directory mounted (FUSE)"),
                            Err(e) => {
                                self.log.append("ERROR", &format!("cannot mount the replicated directory: {e}"));
                                self.queue
                                    .push_back(In::HookFailed(Hook::StartPrim, format!("replicated directory: {e}")));
                            }
                        }
                    }
                    for vip in self.cfg.vips.clone() {
                        let spec = VipSpec {
                            address: vip.address,
                            prefix_len: vip.prefix_len,
                            interface: vip.interface.clone(),
                        };
                        match self.vips.add(&spec).await {
                            Ok(()) => {
                                self.log.append(
                                    "INFO",
                                    &format!("VIP {}/{} added on {}", vip.address, vip.prefix_len, vip.interface),
                                );
                                self.vips.announce_takeover(&spec);
                            }
                            Err(e) => {
                                self.log.append("ERROR", &format!("cannot take VIP: {e}"));
                                self.queue.push_back(In::HookFailed(Hook::StartPrim, format!("VIP not added: {e}")));
                            }
                        }
                    }
                }
                Action::ReleaseVip => {
                    for vip in self.cfg.vips.clone() {
                        let spec = VipSpec {
                            address: vip.address,
                            prefix_len: vip.prefix_len,
                            interface: vip.interface.clone(),
                        };
                        match self.vips.remove(&spec).await {
                            Ok(()) => self.log.append(
                                "INFO",
                                &format!("VIP {}/{} removed from {}", vip.address, vip.prefix_len, vip.interface),
                            ),
                            Err(e) => self.log.append("ERROR", &format!("cannot release VIP: {e}")),
                        }
                    }
                    if let Some(r) = self.replica.as_mut() {
                        for note in r.release() {
                            self.log.append("WARN", &note);
                        }
                        self.body_tx.send_modify(|b| b.synced_join = None);
                    }
                }
                Action::RunHook { hook, current, next, cause } => self.hook(hook, current, next, cause).await,
                Action::StartReplication(ReplicationRole::Receiver) => match (self.replica.as_mut(), &self.machine) {
                    (Some(r), Machine::Mirror(m)) => {
                        let join = m.persisted().join_seq;
                        match r.become_second(join) {
                            Ok(()) => self
                                .log
                                .append("INFO", "receiving the primary's stream; the directory is read-only here"),
                            Err(e) => {
                                self.log.append("ERROR", &format!("cannot receive the replication stream: {e}"));
                                self.queue.push_back(In::ReplicationBroken(e));
                            }
                        }
                    }
                    // A module without replicated directories has nothing to catch up.
                    _ => self.queue.push_back(In::ResyncDone),
                },
                Action::StartResync { mode } => {
                    let join = self.delivered.values().find_map(|v| match v {
                        ModuleView::Mirror(v) => Some(v.join_seq),
                        ModuleView::Farm(_) => None,
                    });
                    if let (Some(r), Some(join)) = (self.replica.as_mut(), join) {
                        self.body_tx.send_modify(|b| b.synced_join = None);
                        // The zone log counts only for a peer that left cleanly from this
                        // history; otherwise (a crash, a divergence) every file is compared.
                        let full = matches!(mode, ResyncMode::Full);
                        let zones = matches!(mode, ResyncMode::Zones { .. });
                        let dirty = matches!(mode, ResyncMode::Zones { peer_dirty: true, .. });
                        self.log.append("INFO", &format!("catch-up of the secondary ({mode})"));
                        r.peer_joined(join, full, zones, dirty);
                    }
                }
                Action::StopReplication => {
                    if let (Some(r), Machine::Mirror(m)) = (self.replica.as_mut(), &self.machine) {
                        let st = m.status().state;
                        if st != State::Second {
                            let was_receiving = r.is_second();
                            r.leave_second();
                            r.stop_sender();
                            // A clean stop of a secondary: its copy is made durable before the
                            // machine persists it clean (p.dirty), so that the primary may trust
                            // its zone log at the next catch-up.
                            if was_receiving && st == State::Stop {
                                if let Err(e) = r.sync_copy() {
                                    self.log.append("WARN", &format!("syncing the copy at stop: {e}"));
                                }
                            }
                        }
                    }
                }
                Action::StartReplication(ReplicationRole::Sender) => {}
                Action::SetMembers(m) => {
                    let list: Vec<String> = m.iter().map(|(n, p)| format!("{n} (power {p})")).collect();
                    self.log.append("INFO", &format!("farm members: {}", list.join(", ")));
                }
            }
        }
    }

    async fn hook(&mut self, hook: Hook, current: State, next: State, cause: tandem_machine::Cause) {
        let Some(point) = HookPoint::ALL.into_iter().find(|p| p.key() == hook.as_str()) else { return };
        // A command in [hooks] runs at its point; every other point calls the plugin, if any.
        let command = self.cfg.hooks.get(point).cloned();
        if command.is_none() && self.cfg.plugin.is_none() {
            return;
        }
        // Stop hooks run gracefully, then with `force` to make sure everything is down.
        let passes: &[bool] = if hook.is_start() || hook == Hook::Prestart { &[false] } else { &[false, true] };
        let mut last_ok = true;
        for &force in passes {
            let call = HookCall { module: &self.cfg.name, node: &self.node, hook, current, next, cause, force };
            let o = match &command {
                Some(cfg) => run_hook(&cfg.argv, cfg.timeout, &call, &self.dir.join("hooks")).await,
                None => run_plugin_hook(&self.cfg, &self.dir, self.cfg.hooks.timeout, &call).await,
            };
            let mode = if force { " (force)" } else { "" };
            let mut msg = format!("hook {hook}{mode} ({current} -> {next}, {cause}): {}", o.summary);
            if !o.output.is_empty() {
                msg.push_str(&format!("; output: {}", o.output));
            }
            self.log.append(if o.ok { "INFO" } else { "ERROR" }, &msg);
            if !o.ok {
                let at = crate::modlog::timestamp(std::time::SystemTime::now());
                self.last_failure = Some(format!("{at} hook {hook}{mode}: {}", o.summary));
            }
            last_ok = o.ok;
        }
        if !last_ok && (hook.is_start()) {
            self.queue.push_back(In::HookFailed(hook, format!("hook {hook} failed")));
        }
    }

    fn publish(&mut self) {
        let view = view_of(&self.machine);
        self.body_tx.send_if_modified(|b| {
            if b.view != view {
                b.view = view;
                true
            } else {
                false
            }
        });
        self.update_status();
    }

    fn update_status(&mut self) {
        let now = now_ms();
        let mut s = self.status_tx.borrow().clone();
        match &self.machine {
            Machine::Mirror(m) => {
                let st = m.status();
                s.state = st.state;
                s.readiness = st.readiness;
                let p = m.persisted();
                s.failover = Some(p.failover);
                s.generation = p.history.last().map(|g| g.to_string());
                s.last_primary = p.history.last().map(|g| g.node.clone());
                s.freshness = Some(format!("{:?}", p.freshness));
            }
            Machine::Farm(f) => {
                let st = f.status();
                s.state = st.state;
                s.readiness = st.readiness;
            }
        }
        s.peers = self
            .cfg
            .nodes
            .iter()
            .filter(|n| n.name != self.node)
            .map(|n| {
                let view = self.delivered.get(&n.name);
                let (state, readiness) = match view {
                    Some(ModuleView::Mirror(v)) => (Some(v.state), Some(v.readiness)),
                    Some(ModuleView::Farm(v)) => (Some(v.state), None),
                    None => (None, None),
                };
                let networks = self
                    .liveness
                    .networks(now, &n.name)
                    .into_iter()
                    .filter_map(|k| self.networks.get(k as usize).cloned())
                    .collect();
                PeerStatus { node: n.name.clone(), state, readiness, networks }
            })
            .collect();
        s.dropped = Drop::ALL
            .iter()
            .filter(|d| self.opener.drops(**d) > 0)
            .map(|d| (d.name().to_string(), self.opener.drops(*d)))
            .collect();
        s.accepted = self.accepted;
        s.replication = self.progress.clone();
        s.last_failure = self.last_failure.clone();
        self.status_tx.send_replace(s);
    }
}

pub fn view_of(m: &Machine) -> ModuleView {
    match m {
        Machine::Mirror(m) => ModuleView::Mirror(m.view()),
        Machine::Farm(f) => ModuleView::Farm(f.view()),
    }
}

/// Sends the module's heartbeat on every network to every peer: each pulse, and at once when the
/// view changes (a clean stop is known to the peer immediately).
pub async fn send_loop(
    module_id: u8,
    links: Arc<Vec<Link>>,
    mut body_rx: watch::Receiver<Body>,
    mut sealer: Sealer,
    pulse: Duration,
) {
    let mut tick = tokio::time::interval(pulse);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = body_rx.changed() => if changed.is_err() { return },
        }
        let body = body_rx.borrow_and_update().clone();
        for link in links.iter() {
            let packet = match sealer.seal(module_id, link.network, &body) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("heartbeat of module {module_id}: {e}");
                    continue;
                }
            };
            for peer in &link.peers {
                if let Err(e) = link.socket.send_to(&packet, peer).await {
                    // A cut network is expected: report it at most every 10 s.
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!("heartbeat to {peer} on {}: {e}", link.network_name);
                        last_error = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// Receives datagrams on one network and hands them to the module's driver.
pub async fn recv_loop(link_socket: Arc<UdpSocket>, network: u8, tx: mpsc::Sender<Msg>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match link_socket.recv_from(&mut buf).await {
            Ok((n, _from)) => {
                if tx.send(Msg::Packet { data: buf[..n].to_vec(), network }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("heartbeat socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
