//! The replication stream of one module: the primary's `Sender` and the secondary's `Receiver`,
//! over the authenticated channel (`channel.rs`), carrying frames (`frame.rs`).
//!
//! Plain threads, no async runtime: the FUSE layer that feeds the sender is threads too, and each
//! call here blocks at most for its own timeout.
//!
//! ```text
//!  primary                                          secondary
//!  submit(op) -> seq ─┐                             reader thread ─ Ack Received ─┐
//!  (queue, in order)  │  Ops{first_seq, ops} ─────>   │ (bounded queue)            │
//!  writer thread ─────┘  Flush ──────────────────>   applier thread ─ Ack Written ─┤
//!  ack reader thread <───────────────── Ack{seq, level}, Error{message} <─ Durable ┘
//!  wait(seq, level, timeout)
//! ```
//!
//! Batching: `submit` only enqueues; the writer thread takes everything queued (up to
//! `MAX_BATCH_BYTES`) into one `Ops` frame, so while one batch is on the wire the next one
//! accumulates, and throughput is not one round trip per operation.
//!
//! Acknowledgements are cumulative: `Ack{seq, level}` says every operation up to `seq` reached
//! `level`; a higher level implies the lower ones. `Received` is sent when a batch is read (it is in
//! the secondary's memory), `Written` once the batch is applied, `Durable` right after an
//! `Op::Fsync` returned (the applier makes everything before an fsync durable: see `apply.rs`) or
//! after a `Flush` frame, which the sender adds when someone waits for `Durable` on operations
//! that no fsync covers.
//!
//! Failure: a wait that times out marks the stream broken, shuts the connection down and releases
//! every other waiter with `ReplError::Broken`; so does any error on either side. The daemon then
//! reports the break to the machine (the primary goes ALONE) and the application is unblocked.
//! A malformed, unauthenticated or out-of-sequence frame on the secondary closes the connection and
//! is logged; it is never applied.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::apply::{op_name, Applier, ApplyError};
use crate::channel::{Channel, ChannelError, ChannelReader, ChannelWriter};
use crate::frame::{Frame, FrameError, Hello, WIRE_VERSION};
use crate::op::{AckLevel, Op};

/// Upper bound of one `Ops` frame's payload (well under `frame::MAX_FRAME_LEN`).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches the secondary holds in memory between reading and applying them.
const APPLY_QUEUE: usize = 8;
/// How long `close` lets the writer send what is queued before cutting the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("accept: {0}")]
    Accept(io::Error),
    #[error("frame from {peer}: {source}")]
    Frame { peer: SocketAddr, source: FrameError },
    #[error("hello from {peer} refused: {reason}")]
    Hello { peer: SocketAddr, reason: String },
    #[error("protocol violation by {peer}: {detail}")]
    Protocol { peer: SocketAddr, detail: String },
    #[error("{peer} reported: {message}")]
    Peer { peer: SocketAddr, message: String },
    #[error("{peer} closed the stream")]
    PeerClosed { peer: SocketAddr },
    #[error("no {level:?} acknowledgement of operation {seq} from {peer} within {timeout:?}")]
    Timeout { peer: SocketAddr, seq: u64, level: AckLevel, timeout: Duration },
    #[error("operation {seq} ({op}) from {peer} failed on the secondary: {source}")]
    Apply { peer: SocketAddr, seq: u64, op: &'static str, source: ApplyError },
    #[error("operation {seq} was never submitted (last is {last})")]
    NotSubmitted { seq: u64, last: u64 },
    #[error("replication stream with {peer} is broken: {cause}")]
    Broken { peer: SocketAddr, cause: Arc<ReplError> },
    #[error("replication stream with {peer} was closed")]
    Closed { peer: SocketAddr },
}

impl ReplError {
    /// True if the stream ended because the connection was lost or cut (the peer died, the
    /// network failed, a timeout), rather than because a peer misbehaved or an operation failed.
    /// On the secondary, heartbeats then decide whether the primary is gone (failover) or the
    /// stream should be joined again.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            ReplError::PeerClosed { .. } | ReplError::Timeout { .. } | ReplError::Closed { .. } => true,
            // InvalidData: a record failed authentication, not a loss.
            ReplError::Frame { source: FrameError::Io(e), .. } => e.kind() != io::ErrorKind::InvalidData,
            ReplError::Channel(ChannelError::Io { .. } | ChannelError::Connect { .. }) => true,
            ReplError::Broken { cause, .. } => cause.is_connection_loss(),
            _ => false,
        }
    }
}

/// What a side expects of its peer's `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub cluster: String,
    pub module_id: u8,
    /// The peer's node name, if known.
    pub peer: Option<String>,
    /// The join number this stream is for, if it must match.
    pub join_seq: Option<u64>,
}

impl Expect {
    fn check(&self, h: &Hello) -> Result<(), String> {
        if h.version != WIRE_VERSION {
            return Err(format!("protocol version {} (this node speaks {WIRE_VERSION})", h.version));
        }
        if h.cluster != self.cluster {
            return Err(format!("cluster {:?}, expected {:?}", h.cluster, self.cluster));
        }
        if h.module_id != self.module_id {
            return Err(format!("module {}, expected {}", h.module_id, self.module_id));
        }
        if let Some(p) = &self.peer {
            if &h.from != p {
                return Err(format!("node {:?}, expected {p:?}", h.from));
            }
        }
        if let Some(j) = self.join_seq {
            if h.join_seq != j {
                return Err(format!("join {}, expected {j}", h.join_seq));
            }
        }
        Ok(())
    }
}

fn level_index(l: AckLevel) -> usize {
    match l {
        AckLevel::Received => 0,
        AckLevel::Written => 1,
        AckLevel::Durable => 2,
    }
}

/// Rough encoded size of an operation, for batching.
fn op_size(op: &Op) -> usize {
    let p = |r: &crate::op::RelPath| r.0.len();
    32 + match op {
        Op::Write { data, .. } => data.len(),
        Op::Open { path, .. } | Op::Create { path, .. } | Op::TruncatePath { path, .. } => p(path),
        Op::Mknod { path, .. } | Op::Mkdir { path, .. } | Op::Unlink { path } | Op::Rmdir { path } => p(path),
        Op::Chmod { path, .. } | Op::Chown { path, .. } | Op::SetTimes { path, .. } => p(path),
        Op::Symlink { path, target, .. } => p(path) + target.len(),
        Op::Link { from, to } | Op::Rename { from, to, .. } => p(from) + p(to),
        Op::SetXattr { path, name, value, .. } => p(path) + name.len() + value.len(),
        Op::RemoveXattr { path, name } => p(path) + name.len(),
        Op::Close { .. } | Op::Truncate { .. } | Op::Fallocate { .. } | Op::Fsync { .. } => 0,
    }
}

/// Exchanges hellos: sends ours, reads and checks the peer's. The initiator speaks first (its
/// first record also completes the Noise key confirmation for the responder).
fn exchange_hello(
    r: &mut ChannelReader,
    w: &mut ChannelWriter,
    ours: &Hello,
    expect: &Expect,
    initiator: bool,
) -> Result<Hello, ReplError> {
    let peer = r.peer();
    let fe = |source| ReplError::Frame { peer, source };
    if initiator {
        w.send_frame(&Frame::Hello(ours.clone())).map_err(fe)?;
    }
    let theirs = match r.read_frame().map_err(fe)? {
        Some(Frame::Hello(h)) => h,
        Some(Frame::Error { message }) => return Err(ReplError::Peer { peer, message }),
        Some(f) => return Err(ReplError::Protocol { peer, detail: format!("expected Hello, got {}", f.kind()) }),
        None => return Err(ReplError::PeerClosed { peer }),
    };
    if let Err(reason) = expect.check(&theirs) {
        let _ = w.send_frame(&Frame::Error { message: format!("hello refused by {}: {reason}", ours.from) });
        return Err(ReplError::Hello { peer, reason });
    }
    if !initiator {
        w.send_frame(&Frame::Hello(ours.clone())).map_err(fe)?;
    }
    Ok(theirs)
}

// ---------------------------------------------------------------------------------------------
// Sender (primary)

struct State {
    queue: VecDeque<Op>,
    /// Seq the next submitted operation gets.
    next_seq: u64,
    /// Last seq handed to the writer thread.
    sent: u64,
    /// Cumulative ack per level.
    acked: [u64; 3],
    /// Highest seq the secondary will ack Durable without a Flush (an `Op::Fsync`).
    fsync_upto: u64,
    /// A Flush must be sent once everything up to `flush_upto` is sent.
    flush_pending: bool,
    flush_upto: u64,
    broken: Option<Arc<ReplError>>,
    closing: bool,
    /// `Verify` (or `List`, with the files to hash) requests to send once everything up to their
    /// seq is sent: (id, upto, files to hash).
    verify_pending: VecDeque<(u64, u64, Ask)>,
    verify_results: std::collections::HashMap<u64, Result<crate::manifest::Manifest, String>>,
    /// Entries of manifests whose last frame has not come yet (`ManifestPart`).
    manifest_parts: std::collections::HashMap<u64, Vec<(crate::op::RelPath, crate::manifest::Entry)>>,
    next_verify: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Per level, signalled when the acknowledged seq of that level advances or the stream breaks:
    /// a `Written` waiter is not woken by the `Received` ack before it.
    acked: [Condvar; 3],
    /// Signalled when a manifest arrives or the stream breaks (`verify`, `wait_broken`).
    event: Condvar,
    /// Signalled when there is work for the writer thread.
    work: Condvar,
    peer: SocketAddr,
    sock: TcpStream,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the stream broken (the first cause wins), cuts the connection, wakes everyone.
    fn break_with(&self, st: &mut State, cause: ReplError) -> Arc<ReplError> {
        if st.broken.is_none() {
            if !st.closing {
                tracing::warn!(peer = %self.peer, "replication stream broken: {cause}");
            }
            st.broken = Some(Arc::new(cause));
        }
        let _ = self.sock.shutdown(Shutdown::Both);
        self.wake_all();
        st.broken.clone().expect("just set")
    }

    fn wake_all(&self) {
        for c in &self.acked {
            c.notify_all();
        }
        self.event.notify_all();
        self.work.notify_all();
    }
}

/// The primary's side of a stream.
pub struct Sender {
    shared: Arc<Shared>,
    peer_hello: Hello,
    threads: Mutex<Vec<JoinHandle<()>>>,
    writer_done: Mutex<Option<mpsc::Receiver<()>>>,
}

/// A snapshot of a sender's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderStatus {
    pub last_submitted: u64,
    pub sent: u64,
    pub received: u64,
    pub written: u64,
    pub durable: u64,
    pub queued_ops: usize,
    pub broken: Option<String>,
}

impl Sender {
    /// Connects to the secondary's replication port, runs the handshake and the hello exchange.
    pub fn connect(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        cluster_key: &[u8],
        hello: Hello,
        expect: &Expect,
    ) -> Result<Sender, ReplError> {
        let chan = Channel::connect(addr, cluster_key)?;
        let peer = chan.peer();
        let (mut r, mut w) = chan.split();
        let peer_hello = exchange_hello(&mut r, &mut w, &hello, expect, true)?;
        let sock = r.shutdown_handle().map_err(|source| ChannelError::Io { peer, source })?;
        tracing::info!(%peer, node = %peer_hello.from, module = hello.module_id, "replication stream connected");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                next_seq: 1,
                sent: 0,
                acked: [0; 3],
                fsync_upto: 0,
                flush_pending: false,
                flush_upto: 0,
                broken: None,
                closing: false,
                verify_pending: VecDeque::new(),
                verify_results: std::collections::HashMap::new(),
                manifest_parts: std::collections::HashMap::new(),
                next_verify: 1,
            }),
            acked: Default::default(),
            event: Condvar::new(),
            work: Condvar::new(),
            peer,
            sock,
        });
        let (done_tx, done_rx) = mpsc::channel();
        let s1 = shared.clone();
        let writer = thread::Builder::new()
            .name(format!("repl-send-{}", hello.module_id))
            .spawn(move || {
                send_loop(&s1, w);
                let _ = done_tx.send(());
            })
            .expect("spawn thread");
        let s2 = shared.clone();
        let reader = thread::Builder::new()
            .name(format!("repl-ack-{}", hello.module_id))
            .spawn(move || ack_loop(&s2, r))
            .expect("spawn thread");
        Ok(Sender {
            shared,
            peer_hello,
            threads: Mutex::new(vec![writer, reader]),
            writer_done: Mutex::new(Some(done_rx)),
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    pub fn peer_hello(&self) -> &Hello {
        &self.peer_hello
    }

    /// Enqueues an operation (never blocks on the network) and returns its sequence number.
    /// Operations are sent in the order of their `submit` calls.
    pub fn submit(&self, op: Op) -> Result<u64, ReplError> {
        let mut st = self.shared.lock();
        if let Some(cause) = &st.broken {
            return Err(ReplError::Broken { peer: self.shared.peer, cause: cause.clone() });
        }
        if st.closing {
            return Err(ReplError::Closed { peer: self.shared.peer });
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        if matches!(op, Op::Fsync { .. }) {
            st.fsync_upto = seq;
        }
        st.queue.push_back(op);
        self.shared.work.notify_one();
        Ok(seq)
    }

    /// Blocks until operation `seq` (and every one before it) reached `level` on the secondary.
    /// On timeout the stream is marked broken and every other waiter is released with an error:
    /// no call blocks longer than its timeout.
    pub fn wait(&self, seq: u64, level: AckLevel, timeout: Duration) -> Result<(), ReplError> {
        let deadline = Instant::now() + timeout;
        let peer = self.shared.peer;
        let mut st = self.shared.lock();
        if seq >= st.next_seq {
            return Err(ReplError::NotSubmitted { seq, last: st.next_seq - 1 });
        }
        loop {
            if st.acked[level_index(level)] >= seq {
                return Ok(());
            }
            if let Some(cause) = &st.broken {
                return Err(ReplError::Broken { peer, cause: cause.clone() });
            }
            if st.closing {
                return Err(ReplError::Closed { peer });
            }
            if level == AckLevel::Durable && st.fsync_upto < seq && st.flush_upto < seq {
                st.flush_pending = true;
                st.flush_upto = st.next_seq - 1;
                self.shared.work.notify_one();
            }
            let now = Instant::now();
            if now >= deadline {
                let cause = self.shared.break_with(&mut st, ReplError::Timeout { peer, seq, level, timeout });
                return Err(ReplError::Broken { peer, cause });
            }
            let cv = &self.shared.acked[level_index(level)];
            st = cv.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Blocks until the stream breaks or `timeout` passes; returns the cause if it broke. For the
    /// daemon, which reports the break to the machine.
    /// `tandem verify`: the manifest of the secondary's copy once every operation submitted before
    /// this call is applied there. A timeout does not break the stream.
    pub fn verify(&self, timeout: Duration) -> Result<Result<crate::manifest::Manifest, String>, ReplError> {
        self.manifest(timeout, Ask::Verify)
    }

    /// As [`Sender::verify`], listing what `scope` says (a catch-up that trusts a zone log
    /// vouching for every namespace change).
    pub fn list_scoped(
        &self,
        timeout: Duration,
        scope: crate::frame::ListScope,
    ) -> Result<Result<crate::manifest::Manifest, String>, ReplError> {
        self.manifest(timeout, Ask::Scoped(scope))
    }

    /// As [`Sender::verify`], with block hashes only for the files in `hash` (a catch-up that
    /// trusts the zone log).
    pub fn list(
        &self,
        timeout: Duration,
        hash: Vec<crate::op::RelPath>,
    ) -> Result<Result<crate::manifest::Manifest, String>, ReplError> {
        self.manifest(timeout, Ask::Hash(hash))
    }

    fn manifest(&self, timeout: Duration, ask: Ask) -> Result<Result<crate::manifest::Manifest, String>, ReplError> {
        let deadline = Instant::now() + timeout;
        let peer = self.shared.peer;
        let mut st = self.shared.lock();
        if let Some(cause) = &st.broken {
            return Err(ReplError::Broken { peer, cause: cause.clone() });
        }
        let id = st.next_verify;
        st.next_verify += 1;
        let upto = st.next_seq - 1;
        st.verify_pending.push_back((id, upto, ask));
        self.shared.work.notify_all();
        loop {
            if let Some(r) = st.verify_results.remove(&id) {
                return Ok(r);
            }
            if let Some(cause) = &st.broken {
                return Err(ReplError::Broken { peer, cause: cause.clone() });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReplError::Timeout { peer, seq: upto, level: AckLevel::Written, timeout });
            }
            st = self.shared.event.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    pub fn wait_broken(&self, timeout: Duration) -> Option<Arc<ReplError>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(c) = &st.broken {
                return Some(c.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self.shared.event.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    pub fn status(&self) -> SenderStatus {
        let st = self.shared.lock();
        SenderStatus {
            last_submitted: st.next_seq - 1,
            sent: st.sent,
            received: st.acked[0],
            written: st.acked[1],
            durable: st.acked[2],
            queued_ops: st.queue.len(),
            broken: st.broken.as_ref().map(|c| c.to_string()),
        }
    }

    /// Stops the stream: what is queued is sent if the connection takes it within a second, then
    /// the connection is closed. Queued operations may be lost: a caller that needs them applied
    /// waits for them first. Waiters are released with `Closed`. Idempotent.
    pub fn close(&self) {
        {
            let mut st = self.shared.lock();
            st.closing = true;
            self.shared.wake_all();
        }
        if let Some(rx) = self.writer_done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let start = Instant::now();
            if rx.recv_timeout(CLOSE_GRACE).is_ok() {
                // Let the secondary apply and acknowledge what it has, and close its side first,
                // so that it does not see its acknowledgements refused.
                self.wait_broken(CLOSE_GRACE.saturating_sub(start.elapsed()));
            }
        }
        {
            let mut st = self.shared.lock();
            self.shared.break_with(&mut st, ReplError::Closed { peer: self.shared.peer });
        }
        for t in self.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.close();
    }
}

fn send_loop(shared: &Shared, mut w: ChannelWriter) {
    let peer = shared.peer;
    loop {
        let (first_seq, ops, flush, verifies) = {
            let mut st = shared.lock();
            loop {
                if st.broken.is_some() {
                    return;
                }
                let verify_due = st.verify_pending.front().is_some_and(|(_, upto, _)| st.sent >= *upto);
                if !st.queue.is_empty() || (st.flush_pending && st.sent >= st.flush_upto) || verify_due {
                    break;
                }
                if st.closing {
                    // Everything queued is sent: say goodbye, so the secondary tells a clean stop
                    // from a primary that died.
                    drop(st);
                    let _ = w.write_frame(&Frame::Bye);
                    let _ = w.finish();
                    return;
                }
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            let mut ops = Vec::new();
            let mut bytes = 0;
            while let Some(op) = st.queue.front() {
                let n = op_size(op);
                if !ops.is_empty() && bytes + n > MAX_BATCH_BYTES {
                    break;
                }
                bytes += n;
                ops.push(st.queue.pop_front().expect("front exists"));
            }
            let first_seq = st.sent + 1;
            st.sent += ops.len() as u64;
            let flush = st.flush_pending && st.sent >= st.flush_upto;
            if flush {
                st.flush_pending = false;
            }
            let mut verifies = Vec::new();
            while let Some((_, upto, _)) = st.verify_pending.front() {
                if st.sent < *upto {
                    break;
                }
                let (id, _, ask) = st.verify_pending.pop_front().expect("non-empty");
                verifies.push(match ask {
                    Ask::Verify => Frame::Verify { id },
                    Ask::Hash(hash) => Frame::List { id, hash },
                    Ask::Scoped(scope) => Frame::ListScoped { id, scope },
                });
            }
            (first_seq, ops, flush, verifies)
        };
        let mut r = Ok(());
        if !ops.is_empty() {
            r = w.write_ops(first_seq, ops);
        }
        if r.is_ok() && flush {
            r = w.write_frame(&Frame::Flush);
        }
        for frame in verifies {
            if r.is_ok() {
                r = w.write_frame(&frame);
            }
        }
        let r = r.and_then(|_| w.flush().map_err(FrameError::Io));
        if let Err(source) = r {
            let mut st = shared.lock();
            shared.break_with(&mut st, ReplError::Frame { peer, source });
            return;
        }
    }
}

fn ack_loop(shared: &Shared, mut r: ChannelReader) {
    let peer = shared.peer;
    loop {
        let f = r.read_frame();
        let mut st = shared.lock();
        let cause = match f {
            Ok(Some(Frame::Ack { seq, level })) => {
                if seq > st.sent {
                    ReplError::Protocol { peer, detail: format!("ack of {seq}, only {} sent", st.sent) }
                } else {
                    for l in 0..=level_index(level) {
                        if seq > st.acked[l] {
                            st.acked[l] = seq;
                            shared.acked[l].notify_all();
                        }
                    }
                    continue;
                }
            }
            Ok(Some(Frame::ManifestPart { id, entries })) => {
                st.manifest_parts.entry(id).or_default().extend(entries);
                continue;
            }
            Ok(Some(Frame::Manifest { id, mut manifest })) => {
                let parts = st.manifest_parts.remove(&id).unwrap_or_default();
                if let Ok(m) = manifest.as_mut() {
                    m.entries.extend(parts);
                }
                st.verify_results.insert(id, manifest);
                shared.event.notify_all();
                continue;
            }
            Ok(Some(Frame::Error { message })) => ReplError::Peer { peer, message },
            Ok(Some(other)) => ReplError::Protocol { peer, detail: format!("unexpected {} frame", other.kind()) },
            Ok(None) => ReplError::PeerClosed { peer },
            Err(source) => ReplError::Frame { peer, source },
        };
        shared.break_with(&mut st, cause);
        return;
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver (secondary)

/// What a receiver did, returned when its stream ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub batches: u64,
    pub ops: u64,
    pub write_bytes: u64,
    pub last_applied: u64,
}

/// Cuts a receiver's connection from another thread (the daemon stopping replication).
#[derive(Debug)]
pub struct Stopper(TcpStream);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// The secondary's side of a stream.
pub struct Receiver {
    reader: ChannelReader,
    writer: ChannelWriter,
    applier: Applier,
    peer_hello: Hello,
    /// The replica root, for the manifests `Verify` asks for.
    root: std::path::PathBuf,
    /// The activity log this node left when it crashed (as primary or Ready secondary), named in
    /// its listings.
    activity: Option<Arc<crate::activity::Recorded>>,
}

enum Work {
    Batch { first_seq: u64, ops: Vec<Op> },
    Flush,
    Verify { id: u64, hash: Option<std::collections::HashSet<crate::op::RelPath>> },
    Scoped { id: u64, scope: crate::frame::ListScope },
}

/// What a listing request asks (see [`Frame::Verify`], [`Frame::List`], [`Frame::ListScoped`]).
#[derive(Debug)]
enum Ask {
    Verify,
    Hash(Vec<crate::op::RelPath>),
    Scoped(crate::frame::ListScope),
}

impl Receiver {
    /// Accepts one connection on `listener` and sets the stream up: handshake with the cluster
    /// key, hello exchange (checked against `expect`), replica root opened. A peer that fails any
    /// step gets an error (and an `Error` frame when the channel is up); the caller accepts again.
    pub fn accept(
        listener: &TcpListener,
        cluster_key: &[u8],
        root: &Path,
        hello: Hello,
        expect: &Expect,
    ) -> Result<Receiver, ReplError> {
        let (stream, _) = listener.accept().map_err(ReplError::Accept)?;
        Receiver::handshake(stream, cluster_key, root, hello, expect)
    }

    /// As `accept`, on a connection already accepted.
    pub fn handshake(
        stream: TcpStream,
        cluster_key: &[u8],
        root: &Path,
        hello: Hello,
        expect: &Expect,
    ) -> Result<Receiver, ReplError> {
        let chan = match Channel::accept(stream, cluster_key) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("replication connection refused: {e}");
                return Err(e.into());
            }
        };
        let peer = chan.peer();
        let (mut reader, mut writer) = chan.split();
        let peer_hello = exchange_hello(&mut reader, &mut writer, &hello, expect, false).inspect_err(|e| {
            tracing::warn!(%peer, "replication connection refused: {e}");
        })?;
        let applier = match Applier::open(root) {
            Ok(a) => a,
            Err(e) => {
                let _ = writer.send_frame(&Frame::Error { message: format!("secondary {}: {e}", hello.from) });
                return Err(ReplError::Apply { peer, seq: 0, op: "open-root", source: e });
            }
        };
        tracing::info!(%peer, node = %peer_hello.from, root = %root.display(), "replication stream accepted");
        Ok(Receiver { reader, writer, applier, peer_hello, root: root.to_path_buf(), activity: None })
    }

    pub fn peer(&self) -> SocketAddr {
        self.reader.peer()
    }

    /// Names what `log` (this node's activity log, left by a crash as primary) records in the
    /// listings of this stream (see [`crate::manifest::build_listing`]).
    pub fn with_activity(mut self, log: Option<Arc<crate::activity::Recorded>>) -> Receiver {
        self.activity = log;
        self
    }

    /// Records the zones this stream applies in the activity log `slot` holds, once one is
    /// installed (a Ready secondary: see [`crate::apply::ActivitySlot`]).
    pub fn with_activity_slot(mut self, slot: crate::apply::ActivitySlot) -> Receiver {
        self.applier.set_activity(slot);
        self
    }

    pub fn peer_hello(&self) -> &Hello {
        &self.peer_hello
    }

    pub fn stopper(&self) -> io::Result<Stopper> {
        self.reader.shutdown_handle().map(Stopper)
    }

    /// Receives, applies and acknowledges until the primary closes the stream (`Ok`) or anything
    /// goes wrong (`Err`, logged; the connection is closed and the rest is never applied).
    pub fn run(self) -> Result<ReceiverStats, ReplError> {
        let peer = self.peer();
        let Receiver { mut reader, writer, applier, root, activity, .. } = self;
        // A catch-up starts by asking for a listing of this copy; walk it now, while the primary
        // walks its own, so that both cold walks overlap instead of following each other. A copy
        // with no activity log left by a crash most likely gets a names catch-up (its listing
        // reads directories only): its inodes are not read ahead, which would only compete with
        // the directories for the disk.
        let warm_root = root.clone();
        let stat = activity.is_some();
        let _ = thread::Builder::new()
            .name("repl-prewarm".into())
            .spawn(move || crate::manifest::prewarm_with(&warm_root, stat));
        let sock = reader.shutdown_handle().map_err(|source| ChannelError::Io { peer, source })?;
        let writer = Arc::new(Mutex::new(writer));
        let (tx, rx) = mpsc::sync_channel::<Work>(APPLY_QUEUE);
        let w2 = writer.clone();
        let sock2 = sock.try_clone().map_err(|source| ChannelError::Io { peer, source })?;
        let applier_thread = thread::Builder::new()
            .name("repl-apply".into())
            .spawn(move || {
                let r = apply_loop(peer, applier, &root, activity.as_deref(), rx, &w2);
                if r.is_err() {
                    // Stop the reader too: nothing more will be applied.
                    let _ = sock2.shutdown(Shutdown::Both);
                }
                r
            })
            .expect("spawn thread");

        let mut next = 1u64;
        let read_result: Result<(), ReplError> = loop {
            let f = match reader.read_frame() {
                Ok(Some(f)) => f,
                // No Bye: the primary died or the network cut the connection.
                Ok(None) => break Err(ReplError::PeerClosed { peer }),
                Err(source) => break Err(ReplError::Frame { peer, source }),
            };
            match f {
                Frame::Ops { first_seq, ops } => {
                    if first_seq != next || ops.is_empty() {
                        break Err(ReplError::Protocol {
                            peer,
                            detail: format!("Ops from {first_seq} ({} ops), expected from {next}", ops.len()),
                        });
                    }
                    next += ops.len() as u64;
                    let ack = Frame::Ack { seq: next - 1, level: AckLevel::Received };
                    // Hand the batch to the applier before acknowledging it, so that the ack is
                    // sent while the applier works; if the queue is full, acknowledge first (the
                    // batch is in memory) and then wait for room.
                    let full = match tx.try_send(Work::Batch { first_seq, ops }) {
                        Ok(()) => None,
                        Err(mpsc::TrySendError::Full(work)) => Some(work),
                        Err(mpsc::TrySendError::Disconnected(_)) => break Ok(()), // the applier stopped: its error is the result
                    };
                    if let Err(source) = writer.lock().unwrap_or_else(|p| p.into_inner()).send_frame(&ack) {
                        break Err(ReplError::Frame { peer, source });
                    }
                    if let Some(work) = full {
                        if tx.send(work).is_err() {
                            break Ok(());
                        }
                    }
                }
                Frame::Flush => {
                    if tx.send(Work::Flush).is_err() {
                        break Ok(());
                    }
                }
                Frame::Verify { id } => {
                    if tx.send(Work::Verify { id, hash: None }).is_err() {
                        break Ok(());
                    }
                }
                Frame::List { id, hash } => {
                    if tx.send(Work::Verify { id, hash: Some(hash.into_iter().collect()) }).is_err() {
                        break Ok(());
                    }
                }
                Frame::ListScoped { id, scope } => {
                    if tx.send(Work::Scoped { id, scope }).is_err() {
                        break Ok(());
                    }
                }
                Frame::Error { message } => break Err(ReplError::Peer { peer, message }),
                Frame::Bye => match reader.read_frame() {
                    Ok(None) => break Ok(()),
                    Ok(Some(f)) => {
                        break Err(ReplError::Protocol { peer, detail: format!("{} frame after Bye", f.kind()) })
                    }
                    Err(source) => break Err(ReplError::Frame { peer, source }),
                },
                other => {
                    break Err(ReplError::Protocol { peer, detail: format!("unexpected {} frame", other.kind()) });
                }
            }
        };
        match &read_result {
            // A lost connection: what was received is still applied (it is a prefix of the
            // primary's order), as far as acknowledgements can be sent.
            Err(e @ ReplError::PeerClosed { .. }) => tracing::warn!(%peer, "replication stream lost: {e}"),
            // Nothing after a bad frame is applied: cut the connection now; the applier stops at
            // its next acknowledgement.
            Err(e) => {
                tracing::warn!(%peer, "replication stream closed: {e}");
                let _ = sock.shutdown(Shutdown::Both);
            }
            Ok(()) => {}
        }
        drop(tx);
        let applied = applier_thread
            .join()
            .unwrap_or_else(|_| Err(ReplError::Protocol { peer, detail: "applier thread panicked".into() }));
        let _ = sock.shutdown(Shutdown::Both);
        match (read_result, applied) {
            // The applier failed first: the connection loss that followed is its consequence.
            (Err(_), Err(e @ ReplError::Apply { .. })) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => {
                tracing::warn!(%peer, "replication stream closed: {e}");
                Err(e)
            }
            (Ok(()), Ok(stats)) => {
                tracing::info!(%peer, ops = stats.ops, "replication stream ended by the primary");
                Ok(stats)
            }
        }
    }
}

/// Entries a `ManifestPart` carries at most, by the bound below: well under a frame.
const MANIFEST_PART_BYTES: usize = 8 << 20;

/// An upper bound of the encoded size of one manifest entry (postcard: at most 10 bytes a
/// varint), so that a part never exceeds a frame whatever the entries hold.
fn entry_bound(path: &crate::op::RelPath, e: &crate::manifest::Entry) -> usize {
    let suspect = match &e.suspect {
        Some(crate::manifest::Suspect::Ranges(r)) => 20 * r.len(),
        _ => 0,
    };
    let xattrs: usize = e.xattrs.iter().map(|(k, v)| 20 + k.len() + v.len()).sum();
    160 + path.0.len()
        + e.symlink_target.as_ref().map_or(0, |t| t.len())
        + e.link_group.as_ref().map_or(0, |g| g.0.len())
        + xattrs
        + 33 * e.blocks.len()
        + suspect
}

/// Sends a listing's answer: a manifest larger than [`MANIFEST_PART_BYTES`] goes as
/// `ManifestPart` frames of its entries, then the `Manifest` frame with the rest.
fn send_manifest(
    id: u64,
    manifest: Result<crate::manifest::Manifest, String>,
    send: &dyn Fn(Frame) -> Result<(), ReplError>,
) -> Result<(), ReplError> {
    let mut m = match manifest {
        Ok(m) => m,
        Err(e) => return send(Frame::Manifest { id, manifest: Err(e) }),
    };
    // An entry alone larger than a frame cannot travel: say which, rather than break the stream.
    let too_big = m.entries.iter().find(|(p, e)| entry_bound(p, e) > crate::frame::MAX_FRAME_LEN - 4096);
    if let Some((p, e)) = too_big {
        let what = String::from_utf8_lossy(&p.0);
        let e = format!(
            "{what}: its listing ({} block hashes) exceeds a frame: a file over about 480 GiB cannot be \
             compared by block hash yet",
            e.blocks.len()
        );
        return send(Frame::Manifest { id, manifest: Err(e) });
    }
    let total: usize = m.entries.iter().map(|(p, e)| entry_bound(p, e)).sum();
    if total > MANIFEST_PART_BYTES {
        let mut part = Vec::new();
        let mut bytes = 0;
        for (p, e) in std::mem::take(&mut m.entries) {
            let n = entry_bound(&p, &e);
            if !part.is_empty() && bytes + n > MANIFEST_PART_BYTES {
                send(Frame::ManifestPart { id, entries: std::mem::take(&mut part) })?;
                bytes = 0;
            }
            bytes += n;
            part.push((p, e));
        }
        // The last part travels in the Manifest frame itself.
        m.entries = part.into_iter().collect();
    }
    send(Frame::Manifest { id, manifest: Ok(m) })
}

fn apply_loop(
    peer: SocketAddr,
    mut applier: Applier,
    root: &Path,
    activity: Option<&crate::activity::Recorded>,
    rx: mpsc::Receiver<Work>,
    writer: &Mutex<ChannelWriter>,
) -> Result<ReceiverStats, ReplError> {
    let mut stats = ReceiverStats::default();
    let send = |f: Frame| -> Result<(), ReplError> {
        writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_frame(&f)
            .map_err(|source| ReplError::Frame { peer, source })
    };
    for work in rx {
        match work {
            Work::Batch { first_seq, ops } => {
                stats.batches += 1;
                let mut durable_at_end = false;
                for (i, op) in ops.iter().enumerate() {
                    let seq = first_seq + i as u64;
                    if let Err(source) = applier.apply(op) {
                        let e = ReplError::Apply { peer, seq, op: op_name(op), source };
                        let _ = send(Frame::Error { message: e.to_string() });
                        return Err(e);
                    }
                    stats.ops += 1;
                    stats.last_applied = seq;
                    if let Op::Write { data, .. } = op {
                        stats.write_bytes += data.len() as u64;
                    }
                    // An fsync waiter must not wait for the rest of the batch.
                    durable_at_end = matches!(op, Op::Fsync { .. });
                    if durable_at_end {
                        send(Frame::Ack { seq, level: AckLevel::Durable })?;
                    }
                }
                if !durable_at_end {
                    send(Frame::Ack { seq: stats.last_applied, level: AckLevel::Written })?;
                }
            }
            Work::Verify { id, hash } => {
                let manifest = crate::manifest::build_listing(root, hash.as_ref(), activity).map_err(|e| e.to_string());
                send_manifest(id, manifest, &send)?;
            }
            Work::Scoped { id, scope } => {
                let manifest = match scope {
                    crate::frame::ListScope::Names { hash, full } => {
                        crate::manifest::build_names(root, &hash.into_iter().collect(), &full.into_iter().collect())
                    }
                    crate::frame::ListScope::Dir(dir) => crate::manifest::build_dir(root, &dir),
                }
                .map_err(|e| e.to_string());
                send_manifest(id, manifest, &send)?;
            }
            Work::Flush => {
                applier.sync().map_err(|source| {
                    let e = ReplError::Apply { peer, seq: stats.last_applied, op: "flush", source };
                    let _ = send(Frame::Error { message: e.to_string() });
                    e
                })?;
                send(Frame::Ack { seq: stats.last_applied, level: AckLevel::Durable })?;
            }
        }
    }
    // A clean end of stream: leave the copy durable before anyone relies on it.
    applier.close_all();
    applier.sync().map_err(|source| ReplError::Apply { peer, seq: stats.last_applied, op: "final sync", source })?;
    Ok(stats)
}
