//! The replicated directories of a mirror module, as the daemon drives them: the FUSE layer
//! mounted over each directory while this node is primary, one replication stream to the
//! secondary once it joins (first a full copy, then every change synchronously), and on the
//! secondary a receiver that applies the stream into the directories, which the application sees
//! read-only meanwhile.
//!
//! Several directories share the module's one stream, so their changes stay in one order: the
//! ops of directory `i` name their paths under `i/` and carry `i` in their handles
//! (`Op::in_dir`); the secondary applies the stream under `staging`, whose child `i` is a private
//! writable bind of directory `i`.
//!
//! The blocking parts (connecting, the full copy, the receiver) run on threads of their own and
//! report to the module's driver through `Msg::Repl`: the driver turns them into machine events
//! (ReplicationBroken, ResyncDone).

use crate::driver::Msg;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_replication::activity::ActivityLog;
use tandem_replication::fs::{clean_stale_mounts, MountOptions, OpSink, ReplicatedFs};
use tandem_replication::op::{dir_prefix, AckLevel, Op};
use tandem_replication::stream::{Expect, Receiver, Sender, Stopper};
use tandem_replication::zonelog::ZoneLog;
use tokio::sync::mpsc;

/// The activity log's zones are at least this large (DRBD's extent): a sequential writer costs
/// it one durable record per 4 MiB, and a crash re-sends at most that much per zone in use.
const AL_EXTENT: u64 = 4 << 20;

/// What the replication threads tell the driver.
#[derive(Debug)]
pub enum ReplEvent {
    /// The stream broke or could not be set up. `connection_loss`: the connection ended (the peer
    /// died, the network failed); heartbeats then decide between failover and joining again.
    /// `join`: the primary's stream of that join (its sender side), `None` for the secondary's
    /// receiver; an event of a stream that is no longer the current one is stale.
    Broken { reason: String, connection_loss: bool, join: Option<u64> },
    /// The full copy for this join is applied on the secondary.
    Synced { join_seq: u64 },
    /// A line for the module log.
    Note(String),
    /// How far the full copy is (shown by `tandem state`, logged every few seconds).
    Progress(String),
}

/// The outcome of `tandem verify`.
#[derive(Debug, Clone)]
pub struct Verified {
    pub entries: usize,
    pub bytes: u64,
    pub differences: Vec<String>,
}

pub struct ReplicaSpec {
    pub module: String,
    pub module_id: u8,
    pub cluster: String,
    pub node: String,
    pub peer: String,
    /// The replicated directories, in the module's order (the index is part of the wire paths).
    pub dirs: Vec<DirSpec>,
    pub key: Vec<u8>,
    /// This node's and the peer's addresses on the replication network, with the module's port.
    pub listen: SocketAddr,
    pub peer_addr: SocketAddr,
    /// How long a write waits for the secondary before the stream is declared broken.
    pub timeout: Duration,
    /// Where the secondary keeps a private writable view of the directories (`staging/<index>`).
    pub staging: PathBuf,
    /// `resync_bandwidth`: the cap of the full copy's and the catch-up's traffic.
    pub resync_bandwidth: Option<u64>,
    /// The zone log, kept while this node is primary without an in-sync secondary.
    pub zone_log: PathBuf,
    pub zone_size: u64,
    /// The activity log, kept while this node is primary with its secondary in sync, and after a
    /// crash then until this node is caught up as secondary.
    pub activity_log: PathBuf,
    /// `activity_log = false` in module.toml: none is kept.
    pub activity_enabled: bool,
}

#[derive(Debug, Clone)]
pub struct DirSpec {
    pub path: PathBuf,
    pub exclude: Vec<String>,
}

impl ReplicaSpec {
    /// Where the secondary's receiver writes directory `index`.
    fn staging_of(&self, index: usize) -> PathBuf {
        self.staging.join(index.to_string())
    }

    fn index(index: usize) -> u16 {
        u16::try_from(index).expect("at most 65536 directories per module")
    }
    /// What this node says and expects at the start of the stream of join `join_seq`: both ends
    /// check the cluster, the module, the peer's name and the join, so a stale stream is refused.
    fn greeting(&self, join_seq: u64) -> (tandem_replication::frame::Hello, Expect) {
        let hello = tandem_replication::frame::Hello {
            version: tandem_replication::frame::WIRE_VERSION,
            cluster: self.cluster.clone(),
            module_id: self.module_id,
            from: self.node.clone(),
            join_seq,
        };
        let expect = Expect {
            cluster: self.cluster.clone(),
            module_id: self.module_id,
            peer: Some(self.peer.clone()),
            join_seq: Some(join_seq),
        };
        (hello, expect)
    }
}

/// The sink the FUSE layer writes into: the replication stream, with the module's timeout. The
/// first failure is reported to the driver once; the application is never held longer.
struct StreamSink {
    sender: Arc<Sender>,
    timeout: Duration,
    tx: mpsc::Sender<Msg>,
    reported: AtomicBool,
    join: u64,
}

impl StreamSink {
    fn report(&self, e: String) {
        if !self.reported.swap(true, Ordering::SeqCst) {
            let _ = self.tx.try_send(Msg::Repl(ReplEvent::Broken {
                reason: e,
                connection_loss: false,
                join: Some(self.join),
            }));
        }
    }
}

/// One directory's face of the module's stream: its ops renamed into the stream's namespace.
struct DirSink {
    stream: Arc<StreamSink>,
    index: u16,
}

impl OpSink for DirSink {
    fn submit(&self, op: Op) -> u64 {
        self.stream.submit(op.in_dir(self.index))
    }

    fn wait(&self, seq: u64, level: AckLevel) -> Result<(), String> {
        self.stream.wait(seq, level)
    }
}

impl OpSink for StreamSink {
    fn submit(&self, op: Op) -> u64 {
        match self.sender.submit(op) {
            Ok(seq) => seq,
            Err(e) => {
                self.report(e.to_string());
                u64::MAX
            }
        }
    }

    fn wait(&self, seq: u64, level: AckLevel) -> Result<(), String> {
        if seq == u64::MAX {
            return Err("replication stream broken".into());
        }
        self.sender.wait(seq, level, self.timeout).map_err(|e| {
            let msg = e.to_string();
            self.report(msg.clone());
            msg
        })
    }
}

struct SecondarySide {
    stopper: Arc<Mutex<Option<Stopper>>>,
    quit: Arc<AtomicBool>,
}

pub struct Replica {
    spec: ReplicaSpec,
    tx: mpsc::Sender<Msg>,
    /// The FUSE layers of the directories, in order, while this node is primary (else empty).
    fs: Vec<Arc<ReplicatedFs>>,
    /// The stream of the current join, once connected (the copy thread fills it).
    sender_slot: Option<Arc<Mutex<Option<Arc<Sender>>>>>,
    secondary: Option<SecondarySide>,
    /// The zone log, while tracking (primary, no in-sync secondary).
    zones: Option<Arc<ZoneLog>>,
    /// The activity log, while primary with the secondary in sync.
    activity: Option<Arc<ActivityLog>>,
    /// The join whose stream is up (or being set up).
    join: Option<u64>,
    /// Bytes checked per second by the last catch-up (for `tandem diff`).
    last_rate: Arc<Mutex<Option<f64>>>,
    /// The activity log of this node as a Ready secondary, shared with its applier.
    recv_activity: tandem_replication::apply::ActivitySlot,
}

impl Replica {
    pub fn new(spec: ReplicaSpec, tx: mpsc::Sender<Msg>) -> Replica {
        Replica {
            spec,
            tx,
            fs: Vec::new(),
            sender_slot: None,
            secondary: None,
            zones: None,
            activity: None,
            join: None,
            last_rate: Arc::new(Mutex::new(None)),
            recv_activity: Arc::new(std::sync::RwLock::new(None)),
        }
    }

    /// At daemon start: a FUSE mount or a read-only protection left by a crashed daemon.
    pub fn clean_leftovers(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (i, d) in self.spec.dirs.iter().enumerate() {
            match clean_stale_mounts(&d.path) {
                Ok(0) => {}
                Ok(n) => notes.push(format!("removed {n} stale mount(s) of {}", d.path.display())),
                Err(e) => notes.push(format!("stale mounts of {}: {e}", d.path.display())),
            }
            unprotect(&d.path, &self.spec.staging_of(i));
        }
        let _ = std::fs::remove_dir(&self.spec.staging);
        notes
    }

    /// Becoming primary: mount the FUSE layer over each directory (before the application
    /// starts). All or none: a directory that cannot be mounted unmounts the others.
    /// `was_ready_second`: this node was a Ready secondary until now (its copy in sync), so
    /// changes are tracked from here; a node that starts as primary cold cannot vouch for what
    /// changed while it was down, unless it was tracking already (the log survives restarts).
    pub fn take(&mut self, was_ready_second: bool) -> Result<(), String> {
        self.leave_second();
        if !self.fs.is_empty() {
            return Ok(());
        }
        // An activity log left by a crash: this copy is the reference now, nothing to re-send.
        let _ = ZoneLog::remove(&self.spec.activity_log);
        for d in &self.spec.dirs {
            let mounted =
                std::fs::create_dir_all(&d.path).map_err(|e| format!("{}: {e}", d.path.display())).and_then(|()| {
                    let _ = clean_stale_mounts(&d.path);
                    let opts = MountOptions::new(self.spec.module.clone()).exclude(d.exclude.clone());
                    ReplicatedFs::mount(&d.path, opts, None).map_err(|e| e.to_string())
                });
            match mounted {
                Ok(fs) => {
                    fs.set_resync_bandwidth(self.spec.resync_bandwidth);
                    self.fs.push(Arc::new(fs))
                }
                Err(e) => {
                    self.release();
                    return Err(e);
                }
            }
        }
        let new = self.start_tracking(!was_ready_second);
        if new && was_ready_second {
            // This node's copy was the primary's, operation for operation: a log started now
            // misses nothing (what the old primary had in flight is in its own activity log).
            if let Some(log) = &self.zones {
                log.vouch_names();
            }
        }
        Ok(())
    }

    /// Records changes in the zone log from now on (before the application may write), going on
    /// with the one on disk if there is one. `cold`: a new log cannot vouch for earlier changes
    /// and is marked lost at once (the next catch-up compares everything). Returns whether a new
    /// log was started.
    fn start_tracking(&mut self, cold: bool) -> bool {
        let mut new = false;
        if self.zones.is_none() {
            let existed = self.spec.zone_log.exists();
            let opened = self
                .spec
                .zone_log
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    // Files whose ctime is this recent when tracking starts are compared whole: a
                    // write may have failed its acknowledgement (up to the timeout) and the
                    // daemon took a moment to start the log.
                    let margin = self.spec.timeout + Duration::from_secs(5);
                    ZoneLog::open_with_margin(&self.spec.zone_log, self.spec.zone_size, margin)
                        .map_err(|e| e.to_string())
                });
            match opened {
                Ok(log) => {
                    if cold && !existed {
                        log.mark_lost();
                    }
                    new = !existed && !cold;
                    self.zones = Some(Arc::new(log));
                }
                Err(e) => {
                    let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!(
                        "zone log unavailable ({e}): the next catch-up compares every file"
                    ))));
                    return false;
                }
            }
        }
        for fs in &self.fs {
            fs.set_zone_log(self.zones.clone());
        }
        new
    }

    /// The secondary's copy of join `join_seq` is complete and replicated synchronously: nothing
    /// to track (unless that stream already ended).
    pub fn synced(&mut self, join_seq: u64) {
        if self.join != Some(join_seq) {
            return;
        }
        // The activity log first: a change made while neither records could be in flight
        // unacknowledged, and no log would name it.
        self.start_activity();
        for fs in &self.fs {
            fs.set_zone_log(None);
        }
        self.zones = None;
        if let Err(e) = ZoneLog::remove(&self.spec.zone_log) {
            let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!("removing the zone log: {e}"))));
        }
    }

    /// The secondary is in sync: from now on the zones being written are recorded in the
    /// activity log first, so that a crash of this node costs its catch-up only those zones.
    fn start_activity(&mut self) {
        self.stop_activity(false);
        if !self.spec.activity_enabled {
            return;
        }
        let dirs: Result<Vec<_>, _> = self.fs.iter().map(|fs| fs.backing_dir()).collect();
        // A write is acknowledged by the secondary within the replication timeout, or the stream
        // breaks: a zone idle for longer (plus a margin) holds nothing the secondary lacks.
        let window = self.spec.timeout + Duration::from_secs(5);
        let started = dirs
            .map_err(|e| e.to_string())
            .and_then(|d| ActivityLog::start(&self.spec.activity_log, self.spec.zone_size.max(AL_EXTENT), window, d));
        match started {
            Ok(al) => {
                for fs in &self.fs {
                    fs.set_activity_log(Some(al.clone()));
                }
                self.activity = Some(al);
            }
            Err(e) => {
                let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!(
                    "activity log unavailable ({e}): after a crash of this node, its catch-up compares every file"
                ))));
            }
        }
    }

    /// Stops recording into the activity log and removes it: the secondary left (the zone log
    /// took over), or this node stops being primary. `sync`: make the directories durable first
    /// (a clean stop: what the secondary acknowledged must not be lost here by a power loss).
    fn stop_activity(&mut self, sync: bool) {
        let Some(al) = self.activity.take() else { return };
        for fs in &self.fs {
            fs.set_activity_log(None);
        }
        if sync {
            if let Err(e) = al.sync_dirs() {
                let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!(
                    "activity log kept: syncing the directories failed ({e})"
                ))));
                return;
            }
        }
        if let Err(e) = al.remove() {
            let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!("removing the activity log: {e}"))));
        }
    }

    /// This node, secondary, is caught up: an activity log it left by a crash is done with. A
    /// new one records, from now on, the zones it applies: it acknowledges them from its page
    /// cache, so a power loss may lose them, and its next catch-up then re-sends only those.
    pub fn caught_up(&mut self) {
        if let Err(e) = ZoneLog::remove(&self.spec.activity_log) {
            let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!("removing the activity log: {e}"))));
        }
        let Some(side) = self.secondary.as_ref().filter(|_| self.spec.activity_enabled) else { return };
        let (slot, quit, tx) = (self.recv_activity.clone(), side.quit.clone(), self.tx.clone());
        let paths: Vec<PathBuf> = self.spec.dirs.iter().map(|d| d.path.clone()).collect();
        let (log, zone, timeout) =
            (self.spec.activity_log.clone(), self.spec.zone_size.max(AL_EXTENT), self.spec.timeout);
        // Off the driver's task: creating the log syncs a file, which can take a while behind
        // the writeback of a busy disk. Until it is installed, nothing is recorded: the node is
        // `dirty` since its join, so a crash meanwhile costs a comparison of every file.
        let _ = std::thread::Builder::new().name("secondary-activity-log".into()).spawn(move || {
            let dirs: Result<Vec<std::os::fd::OwnedFd>, String> = paths
                .iter()
                .map(|p| std::fs::File::open(p).map(Into::into).map_err(|e| format!("{}: {e}", p.display())))
                .collect();
            // A zone applied is acknowledged within the replication timeout; idle for longer
            // (plus a margin), and synced, it holds nothing a power loss could take.
            let window = timeout + Duration::from_secs(5);
            let started = dirs.and_then(|d| ActivityLog::start(&log, zone, window, d));
            match started {
                Ok(al) => {
                    // `leave_second` raises `quit` before it empties the slot: checked under the
                    // slot's lock, a log started too late is removed rather than left installed.
                    let mut s = slot.write().unwrap_or_else(|p| p.into_inner());
                    if quit.load(Ordering::SeqCst) {
                        let _ = al.remove();
                    } else {
                        *s = Some(al);
                    }
                }
                Err(e) => {
                    let _ = tx.try_send(Msg::Repl(ReplEvent::Note(format!(
                        "activity log unavailable ({e}): after a crash of this node, its catch-up compares every file"
                    ))));
                }
            }
        });
    }

    /// Leaving primary (after the application stopped): fence, close the stream, unmount.
    /// Fencing first: a write still waiting for the secondary's acknowledgement (a primary that
    /// lost its peer holds writes until the witness decides) fails instead of being answered
    /// when the stream closes, so a primary that steps down never acknowledges what its successor
    /// lacks. With the application stopped there is nothing in flight and fencing changes nothing.
    pub fn release(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for fs in &self.fs {
            if !fs.fence() {
                notes.push(format!("could not abort the FUSE connection of {}", fs.mountpoint().display()));
            }
        }
        self.stop_sender_only();
        self.zones = None;
        self.stop_activity(true);
        for fs in self.fs.drain(..) {
            let dir = fs.mountpoint().to_owned();
            match Arc::try_unwrap(fs) {
                Ok(fs) => {
                    if let Err(e) = fs.unmount() {
                        notes.push(format!("unmount of {}: {e}", dir.display()));
                    }
                }
                // A copy thread still holds it: dropping the last reference unmounts.
                Err(_) => notes.push(format!("the full copy still runs: {} is unmounted when it stops", dir.display())),
            }
        }
        notes
    }

    /// The secondary joined (join number `join_seq`): connect, bring its copy up to date, then
    /// replicate. The secondary keeps its copy: its manifest (blake3 per 1 MiB block), taken at
    /// the start of the stream, is the basis of a catch-up that removes what it alone holds and
    /// sends only the blocks that differ. `full` (`second --fullsync`, or a secondary that never
    /// held this data): everything it holds is removed and all is sent.
    ///
    /// `trust_zones`: the secondary left from this history, so the zone log may be trusted;
    /// `peer_dirty`: it crashed (as primary, as secondary, or during a catch-up), so only with its own
    /// activity log, found sound in its listing, whose zones are then sent too; otherwise every
    /// file is compared.
    pub fn peer_joined(&mut self, join_seq: u64, full: bool, trust_zones: bool, peer_dirty: bool) {
        self.stop_sender();
        self.join = Some(join_seq);
        let mut zones = if trust_zones && !full { self.zones.clone() } else { None };
        let last_rate = self.last_rate.clone();
        if self.fs.is_empty() {
            let reason = "not primary: nothing to replicate".to_string();
            let join = Some(join_seq);
            let _ = self.tx.try_send(Msg::Repl(ReplEvent::Broken { reason, connection_loss: false, join }));
            return;
        }
        let fss = self.fs.clone();
        let spec = &self.spec;
        let (peer_addr, key, timeout, tx) = (spec.peer_addr, spec.key.clone(), spec.timeout, self.tx.clone());
        let (hello, expect) = spec.greeting(join_seq);
        let slot: Arc<Mutex<Option<Arc<Sender>>>> = Arc::new(Mutex::new(None));
        let slot2 = slot.clone();
        let module = spec.module.clone();
        std::thread::Builder::new()
            .name(format!("repl-sync-{module}"))
            .spawn(move || {
                let report = |reason: String| {
                    let join = Some(join_seq);
                    let _ = tx.blocking_send(Msg::Repl(ReplEvent::Broken { reason, connection_loss: false, join }));
                };
                if zones.as_ref().is_some_and(|l| !peer_dirty && l.usable() && l.names_complete()) {
                    // A names catch-up: the walk stats every name of our tree; its inodes come
                    // into the cache from now, while the secondary connects and lists.
                    for fs in fss.iter() {
                        if let Ok(fd) = fs.backing_dir() {
                            std::thread::spawn(move || {
                                let root = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                                tandem_replication::manifest::prewarm(Path::new(&root))
                            });
                        }
                    }
                }
                // The secondary starts its receiver when it joins; give it a moment.
                let deadline = Instant::now() + timeout.max(Duration::from_secs(5));
                let mut pause = Duration::from_millis(5);
                let sender = loop {
                    match Sender::connect(peer_addr, &key, hello.clone(), &expect) {
                        Ok(s) => break Arc::new(s),
                        Err(e) if Instant::now() < deadline => {
                            tracing::debug!("replication connect to {peer_addr}: {e}");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(100));
                        }
                        Err(e) => return report(format!("cannot connect to {peer_addr}: {e}")),
                    }
                };
                *slot2.lock().unwrap() = Some(sender.clone());
                let stream = Arc::new(StreamSink {
                    sender: sender.clone(),
                    timeout,
                    tx: tx.clone(),
                    reported: AtomicBool::new(false),
                    join: join_seq,
                });
                // Every directory replicates its new changes from now on, as far as the walk
                // has brought the secondary's copy; nothing is sent before that.
                for (i, fs) in fss.iter().enumerate() {
                    fs.attach_empty_secondary(Arc::new(DirSink {
                        stream: stream.clone(),
                        index: ReplicaSpec::index(i),
                    }));
                }
                let what = if full { "full copy" } else { "catch-up by block hashes" };
                let _ = tx.blocking_send(Msg::Repl(ReplEvent::Note(format!(
                    "replication to {peer_addr}: {what} started; the secondary lists what it holds"
                ))));
                // Shown by `tandem state` until the first progress line of the copy replaces it.
                let _ = tx.try_send(Msg::Repl(ReplEvent::Progress(format!(
                    "{what}: the secondary is listing (and hashing where needed) what it holds"
                ))));
                let started = Instant::now();
                // A zone log that vouches for every namespace change, and a secondary that left
                // cleanly: it lists by name only what the log records no change in.
                let names: Option<Vec<tandem_replication::fs::NamesPlan>> = zones
                    .as_ref()
                    .filter(|l| !peer_dirty && l.usable() && l.names_complete())
                    .and_then(|log| fss.iter().map(|fs| fs.names_plan(log)).collect());
                // What the secondary holds, at this point of the stream (before any op). With a
                // usable zone log it hashes only the files the catch-up will compare.
                let listing = match (zones.as_ref().filter(|l| l.usable()), &names) {
                    (Some(_), Some(plans)) => {
                        let (mut hash, mut whole) = (Vec::new(), Vec::new());
                        for (i, plan) in plans.iter().enumerate() {
                            let index = ReplicaSpec::index(i);
                            let prefixed = |p: &Vec<u8>| dir_prefix(index, &tandem_replication::op::RelPath(p.clone()));
                            hash.extend(plan.hash.iter().map(prefixed));
                            whole.extend(plan.full.iter().map(prefixed));
                        }
                        let _ = tx.blocking_send(Msg::Repl(ReplEvent::Note(format!(
                            "the zone log records every name changed: the secondary lists whole only the {} \
                             director{} with changes (and hashes {} file(s)); the rest by name",
                            whole.len(),
                            if whole.len() == 1 { "y" } else { "ies" },
                            hash.len()
                        ))));
                        let scope = tandem_replication::frame::ListScope::Names { hash, full: whole };
                        sender.list_scoped(Duration::from_secs(3600), scope)
                    }
                    (Some(log), None) => {
                        let mut hash = Vec::new();
                        for (i, fs) in fss.iter().enumerate() {
                            let index = ReplicaSpec::index(i);
                            for p in fs.files_to_hash(log) {
                                hash.push(dir_prefix(index, &tandem_replication::op::RelPath(p)));
                            }
                        }
                        sender.list(Duration::from_secs(3600), hash)
                    }
                    (None, _) => sender.verify(Duration::from_secs(3600)),
                };
                let note = |m: &tandem_replication::manifest::Manifest| {
                    let _ = tx.blocking_send(Msg::Repl(ReplEvent::Note(format!(
                        "the secondary listed its copy ({} entries) in {:.2} s",
                        m.entries.len(),
                        started.elapsed().as_secs_f64()
                    ))));
                };
                let mut manifest = match listing {
                    Ok(Ok(m)) => {
                        note(&m);
                        m
                    }
                    Ok(Err(e)) => return report(format!("the secondary cannot list its copy: {e}")),
                    Err(e) => return report(format!("the secondary's list of its copy: {e}")),
                };
                if zones.is_some() && peer_dirty {
                    if manifest.activity_log {
                        let (files, bytes) = suspects(&manifest);
                        let _ = tx.blocking_send(Msg::Repl(ReplEvent::Note(format!(
                            "the secondary's activity log (it crashed) names {files} file(s) that may \
                             differ here: {bytes} bytes of zones sent with the catch-up"
                        ))));
                    } else {
                        // It crashed with no sound activity log: what it holds is unknown.
                        let _ = tx.blocking_send(Msg::Repl(ReplEvent::Note(
                            "the secondary has no activity log it can trust: every file is compared".into(),
                        )));
                        zones = None;
                        manifest = match sender.verify(Duration::from_secs(3600)) {
                            Ok(Ok(m)) => {
                                note(&m);
                                m
                            }
                            Ok(Err(e)) => return report(format!("the secondary cannot list its copy: {e}")),
                            Err(e) => return report(format!("the secondary's list of its copy: {e}")),
                        };
                    }
                }
                let mut bases = split_manifest(manifest, fss.len());
                let n = fss.len();
                for (i, fs) in fss.iter().enumerate() {
                    let entries = std::mem::take(&mut bases[i]);
                    let names = names.as_ref().map(|plans| {
                        let sender = sender.clone();
                        let index = ReplicaSpec::index(i);
                        let fetch: tandem_replication::fs::Fetch = Arc::new(move |dir: &[u8]| {
                            let d = dir_prefix(index, &tandem_replication::op::RelPath(dir.to_vec()));
                            let scope = tandem_replication::frame::ListScope::Dir(d);
                            match sender.list_scoped(Duration::from_secs(3600), scope) {
                                Ok(Ok(m)) => Ok(std::mem::take(&mut split_manifest(m, n)[i])),
                                Ok(Err(e)) => Err(format!("the secondary cannot list a directory: {e}")),
                                Err(e) => Err(e.to_string()),
                            }
                        });
                        tandem_replication::fs::NamesBasis { full: plans[i].full.clone(), fetch }
                    });
                    let basis = tandem_replication::fs::Basis { entries, reuse: !full, zones: zones.clone(), names };
                    if let Err(e) = fs.set_basis(basis) {
                        return report(format!("{what} of {}: {e}", fs.mountpoint().display()));
                    }
                }
                let mut last_note = Instant::now();
                let mut sum = tandem_replication::fs::SyncProgress::default();
                for (i, fs) in fss.iter().enumerate() {
                    let result = fs.full_sync(&mut |p| {
                        if last_note.elapsed() >= Duration::from_millis(500) {
                            last_note = Instant::now();
                            let mut line = progress_line(p, full);
                            if n > 1 {
                                line = format!("{line} ({}, directory {} of {n})", fs.mountpoint().display(), i + 1);
                            }
                            let _ = tx.try_send(Msg::Repl(ReplEvent::Progress(line)));
                        }
                    });
                    match result {
                        Ok(t) => {
                            sum.files += t.files;
                            sum.dirs += t.dirs;
                            sum.bytes += t.bytes;
                            sum.matched += t.matched;
                            sum.compared += t.compared;
                            sum.removed += t.removed;
                            sum.unread += t.unread;
                        }
                        Err(e) => return report(format!("{what} of {} failed: {e}", fs.mountpoint().display())),
                    }
                }
                // Everything queued so far must be applied on the secondary before it is Ready.
                let last = match sender.submit(Op::Fsync { fh: None, datasync: false }) {
                    Ok(s) => s,
                    Err(e) => return report(e.to_string()),
                };
                if let Err(e) = sender.wait(last, AckLevel::Durable, timeout.max(Duration::from_secs(60))) {
                    return report(format!("{what} not acknowledged: {e}"));
                }
                sum.elapsed = started.elapsed();
                let checked = (sum.bytes + sum.matched) as f64;
                if checked > 0.0 {
                    *last_rate.lock().unwrap() = Some(checked / sum.elapsed.as_secs_f64().max(0.001));
                }
                let how = match (&zones, &names) {
                    (None, _) => How::Hashes,
                    (Some(_), None) => How::Zones,
                    (Some(_), Some(_)) => How::Names,
                };
                let _ = tx.blocking_send(Msg::Repl(ReplEvent::Note(done_line(&sum, full, how))));
                let _ = tx.blocking_send(Msg::Repl(ReplEvent::Synced { join_seq }));
            })
            .expect("spawn replication thread");
        self.sender_slot = Some(slot);
    }

    /// The secondary left (or was lost): stop replicating and track changes for its catch-up;
    /// the FUSE layer keeps working locally.
    pub fn stop_sender(&mut self) {
        self.stop_sender_only();
        if !self.fs.is_empty() {
            let new = self.start_tracking(false);
            // The zone log records from here. What was in flight is in the activity log (its
            // zones and directories): imported, the zone log vouches for every change since it
            // started, names included, with no margin. Without one, the zone log's margin
            // covers the writes in flight, and names are compared.
            if let (true, Some(log), Some(al)) = (new, &self.zones, &self.activity) {
                if let Some((files, dirs)) = al.live() {
                    log.import(&files, &dirs);
                    log.vouch_names();
                }
            }
            self.stop_activity(false);
        }
    }

    fn stop_sender_only(&mut self) {
        self.join = None;
        for fs in &self.fs {
            fs.set_sink(None);
        }
        if let Some(slot) = self.sender_slot.take() {
            if let Some(s) = slot.lock().unwrap().take() {
                std::thread::spawn(move || s.close());
            }
        }
    }

    /// Joining as secondary: empty the directories (a full copy follows), make them read-only for
    /// the application, and apply the primary's stream into the private writable views.
    pub fn become_second(&mut self, join_seq: u64) -> Result<(), String> {
        self.release();
        self.leave_second();
        // This copy is about to be brought in line with the primary's: nothing to track.
        if let Err(e) = ZoneLog::remove(&self.spec.zone_log) {
            return Err(format!("removing the zone log {}: {e}", self.spec.zone_log.display()));
        }
        if let Err(e) = self.prepare_second() {
            self.unprotect_all();
            return Err(e);
        }
        let spec = &self.spec;
        let listener = TcpListener::bind(spec.listen).map_err(|e| format!("replication port {}: {e}", spec.listen))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let quit = Arc::new(AtomicBool::new(false));
        let stopper: Arc<Mutex<Option<Stopper>>> = Arc::new(Mutex::new(None));
        let (quit2, stopper2, tx) = (quit.clone(), stopper.clone(), self.tx.clone());
        let (hello, expect) = spec.greeting(join_seq);
        let (key, root) = (spec.key.clone(), spec.staging.clone());
        let slot = self.recv_activity.clone();
        // What this node may hold differently, if it crashed (as primary, or as a Ready
        // secondary): named in its listings.
        let activity = ActivityLog::read(&spec.activity_log).map(Arc::new);
        if let Some(a) = &activity {
            let zones: usize = a.files.len();
            let _ = self.tx.try_send(Msg::Repl(ReplEvent::Note(format!(
                "activity log from before a crash: {zones} file(s) with zones that may differ from the primary's"
            ))));
        }
        std::thread::Builder::new()
            .name(format!("repl-recv-{}", spec.module))
            .spawn(move || {
                while !quit2.load(Ordering::SeqCst) {
                    let stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            // Wakes at once on a connection (a catch-up starts without a polling
                            // delay), and every 50 ms to see `quit`.
                            wait_readable(&listener, 50);
                            continue;
                        }
                        Err(e) => {
                            let reason = format!("accept: {e}");
                            let _ = tx.blocking_send(Msg::Repl(ReplEvent::Broken {
                                reason,
                                connection_loss: false,
                                join: None,
                            }));
                            return;
                        }
                    };
                    let _ = stream.set_nonblocking(false);
                    let receiver = match Receiver::handshake(stream, &key, &root, hello.clone(), &expect) {
                        Ok(r) => r.with_activity(activity.clone()).with_activity_slot(slot.clone()),
                        // A stranger or a stale primary: refused and logged; keep listening.
                        Err(e) => {
                            tracing::warn!("replication connection refused: {e}");
                            continue;
                        }
                    };
                    if let Ok(s) = receiver.stopper() {
                        *stopper2.lock().unwrap() = Some(s);
                    }
                    let outcome = receiver.run();
                    if quit2.load(Ordering::SeqCst) {
                        return;
                    }
                    let (reason, connection_loss) = match outcome {
                        Ok(_) => ("the primary closed the replication stream".to_string(), true),
                        Err(e) => (e.to_string(), e.is_connection_loss()),
                    };
                    let _ = tx.blocking_send(Msg::Repl(ReplEvent::Broken { reason, connection_loss, join: None }));
                    return;
                }
            })
            .map_err(|e| e.to_string())?;
        self.secondary = Some(SecondarySide { stopper, quit });
        Ok(())
    }

    fn prepare_second(&self) -> Result<(), String> {
        let spec = &self.spec;
        std::fs::create_dir_all(&spec.staging).map_err(|e| format!("{}: {e}", spec.staging.display()))?;
        for (i, d) in spec.dirs.iter().enumerate() {
            // Its copy stays: the primary's catch-up compares it and replaces what differs.
            std::fs::create_dir_all(&d.path).map_err(|e| format!("{}: {e}", d.path.display()))?;
            protect(&d.path, &spec.staging_of(i))?;
        }
        Ok(())
    }

    fn unprotect_all(&self) {
        for (i, d) in self.spec.dirs.iter().enumerate() {
            unprotect(&d.path, &self.spec.staging_of(i));
        }
        let _ = std::fs::remove_dir(&self.spec.staging);
    }

    /// Leaving SECOND: stop the receiver, give the directory back (writable) to this node.
    /// `tandem verify`, on the primary: blake3 manifests of both copies (the secondary's once every
    /// change made before the call is applied there) and their differences, excluded names aside.
    /// Blocking: run it off the driver's task.
    pub fn verifier(&self) -> Result<impl FnOnce() -> Result<Verified, String> + Send + 'static, String> {
        let sender = self
            .sender_slot
            .as_ref()
            .and_then(|s| s.lock().unwrap().clone())
            .ok_or_else(|| "no secondary is connected: verify needs PRIM (or a SECOND catching up)".to_string())?;
        let mut dirs = Vec::new();
        for d in &self.spec.dirs {
            let exclusions =
                tandem_replication::fs::Exclusions::new(&d.exclude).map_err(|e| format!("exclusions: {e}"))?;
            dirs.push((d.path.clone(), exclusions));
        }
        Ok(move || {
            let mut remote = sender
                .verify(Duration::from_secs(600))
                .map_err(|e| format!("secondary: {e}"))?
                .map_err(|e| format!("secondary's manifest: {e}"))?;
            // The secondary's root is its staging directory, not replicated data.
            remote.entries.remove(&tandem_replication::op::RelPath(Vec::new()));
            let mut local = tandem_replication::manifest::Manifest {
                block_size: remote.block_size,
                entries: Default::default(),
                activity_log: false,
            };
            for (i, (dir, exclusions)) in dirs.iter().enumerate() {
                let m = tandem_replication::manifest::build(dir)
                    .map_err(|e| format!("primary's manifest of {}: {e}", dir.display()))?;
                let index = ReplicaSpec::index(i);
                for (path, mut entry) in m.entries {
                    if !exclusions.is_excluded(&path.0) {
                        entry.link_group = entry.link_group.map(|g| dir_prefix(index, &g));
                        local.entries.insert(dir_prefix(index, &path), entry);
                    }
                }
            }
            let differences: Vec<String> =
                tandem_replication::manifest::diff(&local, &remote).iter().map(|d| d.to_string()).collect();
            let bytes = local.entries.values().map(|e| e.size).sum();
            Ok(Verified { entries: local.entries.len(), bytes, differences })
        })
    }

    /// `tandem diff`: a job (blocking: it walks the metadata) that returns the start of
    /// tracking (if the zone log can be trusted), the estimate, and the last catch-up's rate.
    pub fn estimator(
        &self,
    ) -> impl FnOnce() -> (Option<u64>, tandem_replication::fs::CatchUpEstimate, Option<f64>) + Send + 'static {
        let fss = self.fs.clone();
        let zones = self.zones.clone();
        let rate = *self.last_rate.lock().unwrap();
        move || {
            let log = zones.filter(|l| !l.lost());
            let since = log
                .as_ref()
                .map(|l| l.started().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
            let mut sum = tandem_replication::fs::CatchUpEstimate::default();
            for fs in &fss {
                let e = fs.catch_up_estimate(log.as_deref());
                sum.files += e.files;
                sum.bytes += e.bytes;
                sum.compare += e.compare;
                sum.unread += e.unread;
            }
            (since, sum, rate)
        }
    }

    /// The join whose stream this primary runs (or sets up), if any.
    pub fn current_join(&self) -> Option<u64> {
        self.join
    }

    pub fn is_second(&self) -> bool {
        self.secondary.is_some()
    }

    pub fn is_mounted(&self) -> bool {
        !self.fs.is_empty()
    }

    /// Makes every replicated directory's filesystem durable (`syncfs`): what was applied from
    /// the page cache survives a power loss from now on.
    pub fn sync_copy(&self) -> Result<(), String> {
        for d in &self.spec.dirs {
            let f = std::fs::File::open(&d.path).map_err(|e| format!("{}: {e}", d.path.display()))?;
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs on a descriptor we own for the duration of the call.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(format!("{}: syncfs: {}", d.path.display(), std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    pub fn leave_second(&mut self) {
        if let Some(side) = self.secondary.take() {
            side.quit.store(true, Ordering::SeqCst);
            if let Some(s) = side.stopper.lock().unwrap().take() {
                s.stop();
            }
            // Its activity log stops recording, and its file stays: what it applied may still
            // be only in the page cache (no sync here, on the driver's task: it can take seconds
            // behind a busy disk). A rejoin without a clean stop then re-sends those zones; the
            // next Ready replaces the file, a promotion removes it.
            drop(self.recv_activity.write().unwrap_or_else(|p| p.into_inner()).take());
            self.unprotect_all();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.leave_second();
        let _ = self.release();
    }
}

/// "full copy: 120 files, 40 of about 64 MiB (62 %), 35 MiB/s, about 1 s left", or for a
/// catch-up "catch-up: 120 files, 40 of about 64 MiB checked (62 %), 3 MiB sent, 35 MiB/s,
/// about 1 s left" (checked: compared by hash or sent).
pub fn progress_line(p: &tandem_replication::fs::SyncProgress, full: bool) -> String {
    let secs = p.elapsed.as_secs_f64().max(0.001);
    let done = p.bytes + p.matched + p.unread;
    let rate = done as f64 / secs;
    let total = p.total_bytes_estimate.max(done);
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let left = if rate > 0.0 { (total - done) as f64 / rate } else { 0.0 };
    let (what, checked, sent) = if full {
        ("full copy", "", String::new())
    } else {
        ("catch-up", " checked", format!(", {} MiB sent", p.bytes >> 20))
    };
    format!(
        "{what}: {} files, {} of about {} MiB{checked} ({pct} %){sent}, {:.0} MiB/s, about {:.0} s left",
        p.files,
        done >> 20,
        total >> 20,
        rate / 1048576.0,
        left.ceil()
    )
}

/// What a catch-up trusted (for its log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Nothing: every file compared by block hash.
    Hashes,
    /// The zone log, for the data of the files.
    Zones,
    /// The zone log for names too: unchanged directories listed by name only.
    Names,
}

/// The module log's line at the end of a full copy or catch-up. The catch-up's byte counts are
/// exact (tests and benchmarks read them).
pub fn done_line(p: &tandem_replication::fs::SyncProgress, full: bool, how: How) -> String {
    let secs = p.elapsed.as_secs_f64().max(0.001);
    if full {
        return format!(
            "full copy done: {} files, {} directories, {} MiB in {:.1} s ({:.0} MiB/s)",
            p.files,
            p.dirs,
            p.bytes >> 20,
            secs,
            (p.bytes as f64 / 1048576.0) / secs
        );
    }
    let how = match how {
        How::Hashes => "block hashes",
        How::Zones => "zones and block hashes",
        How::Names => "names, zones and block hashes",
    };
    format!(
        "catch-up done ({how}): {} files, {} directories, {} files compared, {} bytes identical, \
         {} bytes sent, {} bytes not read (zone log), {} stale names removed, in {secs:.2} s",
        p.files, p.dirs, p.compared, p.matched, p.bytes, p.unread, p.removed
    )
}

/// Files of a listing its activity log names, and their bytes to re-send (a whole file: its size).
fn suspects(m: &tandem_replication::manifest::Manifest) -> (usize, u64) {
    use tandem_replication::manifest::Suspect;
    m.entries.values().fold((0, 0), |(n, b), e| match &e.suspect {
        None => (n, b),
        Some(Suspect::Whole) => (n + 1, b + e.size),
        Some(Suspect::Ranges(r)) => {
            (n + 1, b + r.iter().map(|(s, l)| (s + l).min(e.size).saturating_sub(*s)).sum::<u64>())
        }
    })
}

/// Waits until `listener` has a connection to accept, or `ms` milliseconds.
fn wait_readable(listener: &TcpListener, ms: i32) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let _ = unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// The secondary's manifest (paths `<index>/...` under its staging root) split per directory,
/// with paths relative to each (the directory itself is the empty path).
fn split_manifest(
    m: tandem_replication::manifest::Manifest,
    dirs: usize,
) -> Vec<std::collections::BTreeMap<tandem_replication::op::RelPath, tandem_replication::manifest::Entry>> {
    let mut out = vec![std::collections::BTreeMap::new(); dirs];
    for (path, entry) in m.entries {
        let p = &path.0;
        let (head, rest) = match p.iter().position(|b| *b == b'/') {
            Some(i) => (&p[..i], p[i + 1..].to_vec()),
            None => (&p[..], Vec::new()),
        };
        let index = std::str::from_utf8(head).ok().and_then(|h| h.parse::<usize>().ok());
        if let Some(i) = index.filter(|i| *i < dirs) {
            out[i].insert(tandem_replication::op::RelPath(rest), entry);
        }
    }
    out
}

/// The application must not write the secondary's copy: a private writable bind of the directory
/// at `staging` for the receiver, and the directory itself remounted read-only over itself.
fn protect(dir: &Path, staging: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let none: Option<&str> = None;
    mount(Some(dir), staging, none, MsFlags::MS_BIND, none)
        .map_err(|e| format!("bind {} at {}: {e}", dir.display(), staging.display()))?;
    mount(Some(dir), dir, none, MsFlags::MS_BIND, none)
        .map_err(|e| format!("bind {} over itself: {e}", dir.display()))?;
    mount(none, dir, none, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, none)
        .map_err(|e| format!("read-only remount of {}: {e}", dir.display()))?;
    Ok(())
}

/// Undoes `protect` (and cleans what a crashed daemon left): idempotent.
fn unprotect(dir: &Path, staging: &Path) {
    use nix::mount::{umount2, MntFlags};
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_mounted = |p: &Path| {
        let p = p.to_string_lossy();
        mounts.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| m == p)
    };
    if is_mounted(staging) {
        let _ = umount2(staging, MntFlags::MNT_DETACH);
        // Only our read-only bind sits on `dir` while `staging` exists.
        if is_mounted(dir) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_dir(staging);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_replication::fs::SyncProgress;

    #[test]
    fn progress_line_says_files_bytes_rate_and_time_left() {
        let p = SyncProgress {
            files: 120,
            dirs: 4,
            bytes: 40 << 20,
            total_bytes_estimate: 80 << 20,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(
            progress_line(&p, true),
            "full copy: 120 files, 40 of about 80 MiB (50 %), 20 MiB/s, about 2 s left"
        );
        let c = SyncProgress { bytes: 2 << 20, matched: 38 << 20, compared: 100, ..p };
        assert_eq!(
            progress_line(&c, false),
            "catch-up: 120 files, 40 of about 80 MiB checked (50 %), 2 MiB sent, 20 MiB/s, about 2 s left"
        );
        let c = SyncProgress { removed: 3, unread: 5, ..c };
        assert_eq!(
            done_line(&c, false, How::Zones),
            "catch-up done (zones and block hashes): 120 files, 4 directories, 100 files compared, 39845888 \
             bytes identical, 2097152 bytes sent, 5 bytes not read (zone log), 3 stale names removed, in 2.00 s"
        );
        assert!(
            done_line(&c, false, How::Names).starts_with("catch-up done (names, zones and block hashes): 120 files")
        );
        assert!(done_line(&c, false, How::Hashes).starts_with("catch-up done (block hashes): 120 files"));
    }

    #[test]
    fn the_secondary_manifest_is_split_per_directory() {
        use tandem_replication::manifest::{Entry, Kind, Manifest};
        use tandem_replication::op::RelPath;
        let e = Entry::bare(Kind::Dir);
        let m = Manifest {
            block_size: 1 << 20,
            entries: ["", "0", "0/a", "0/a/b", "1", "1/c", "7/stray", "x"]
                .iter()
                .map(|p| (RelPath(p.as_bytes().to_vec()), e.clone()))
                .collect(),
            activity_log: false,
        };
        let parts = split_manifest(m, 2);
        let keys =
            |i: usize| -> Vec<String> { parts[i].keys().map(|k| String::from_utf8_lossy(&k.0).into_owned()).collect() };
        assert_eq!(keys(0), ["", "a", "a/b"]);
        assert_eq!(keys(1), ["", "c"]);
    }
}
