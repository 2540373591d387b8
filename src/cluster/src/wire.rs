//! The heartbeat packet. Every packet is authenticated with a keyed blake3 MAC derived from the
//! cluster key and carries (epoch, counter) so that a replayed packet is rejected. A packet that
//! fails any check is dropped and counted by reason; decoding never panics on any input.
//!
//! Layout (version 1, big-endian integers):
//!
//! ```text
//! 0   4  magic "TDHB"
//! 4   1  version (1)
//! 5   1  module id (1..=64)
//! 6   1  network index the packet was sent on
//! 7   1  reserved (0)
//! 8   8  sender epoch (the sender's start time in ns: a restarted sender starts a new epoch)
//! 16  8  counter (increasing within an epoch)
//! 24  2  body length N
//! 26  N  body (postcard: cluster name, sender node, the module's view)
//! 26+N 32 MAC = blake3 keyed hash of bytes 0..26+N
//! ```
//!
//! The network index and module id are inside the MAC and must match the socket the packet
//! arrived on, so a packet captured on one network cannot be replayed on another.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tandem_machine::{FarmView, MirrorView};

pub const MAGIC: &[u8; 4] = b"TDHB";
pub const VERSION: u8 = 1;
const HEADER: usize = 26;
const MAC: usize = 32;
/// Largest packet we send or accept: one UDP datagram without IP fragmentation on common links.
pub const MAX_PACKET: usize = 1400;

/// Domain separation: the heartbeat MAC key is derived from the cluster key for this use only.
const KEY_CONTEXT: &str = "tandem 2026-11 heartbeat MAC v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleView {
    Mirror(MirrorView),
    Farm(FarmView),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub cluster: String,
    pub from: String,
    pub view: ModuleView,
    /// Primary only: the secondary's join whose full copy is applied on it (it may be Ready).
    pub synced_join: Option<u64>,
}

/// A heartbeat that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub module_id: u8,
    pub network: u8,
    pub epoch: u64,
    pub counter: u64,
    pub body: Body,
}

/// Why a packet was dropped; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Drop {
    #[error("truncated packet")]
    Truncated,
    #[error("bad magic")]
    Magic,
    #[error("unsupported version")]
    Version,
    #[error("bad MAC (wrong cluster key or altered packet)")]
    Mac,
    #[error("undecodable body")]
    Body,
    #[error("sent for another module")]
    Module,
    #[error("sent on another network")]
    Network,
    #[error("from another cluster")]
    Cluster,
    #[error("from an unknown node")]
    UnknownNode,
    #[error("replayed or out-of-order packet")]
    Replay,
}

impl Drop {
    pub const ALL: [Drop; 10] = [
        Drop::Truncated,
        Drop::Magic,
        Drop::Version,
        Drop::Mac,
        Drop::Body,
        Drop::Module,
        Drop::Network,
        Drop::Cluster,
        Drop::UnknownNode,
        Drop::Replay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::Magic => "magic",
            Drop::Version => "version",
            Drop::Mac => "mac",
            Drop::Body => "body",
            Drop::Module => "module",
            Drop::Network => "network",
            Drop::Cluster => "cluster",
            Drop::UnknownNode => "unknown_node",
            Drop::Replay => "replay",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("heartbeat body of {0} bytes exceeds the {MAX_PACKET}-byte packet limit")]
    TooLarge(usize),
    #[error("cannot encode heartbeat body: {0}")]
    Encode(String),
}

fn mac_key(cluster_key: &[u8]) -> [u8; 32] {
    blake3::derive_key(KEY_CONTEXT, cluster_key)
}

/// Seals heartbeats of one sender (one per daemon run).
pub struct Sealer {
    key: [u8; 32],
    epoch: u64,
    counter: u64,
}

impl Sealer {
    /// `epoch` must grow across restarts of the sender (its start time in ns does).
    pub fn new(cluster_key: &[u8], epoch: u64) -> Self {
        Sealer { key: mac_key(cluster_key), epoch, counter: 0 }
    }

    pub fn seal(&mut self, module_id: u8, network: u8, body: &Body) -> Result<Vec<u8>, SealError> {
        let encoded = postcard::to_stdvec(body).map_err(|e| SealError::Encode(e.to_string()))?;
        if HEADER + encoded.len() + MAC > MAX_PACKET {
            return Err(SealError::TooLarge(encoded.len()));
        }
        self.counter += 1;
        let mut p = Vec::with_capacity(HEADER + encoded.len() + MAC);
        p.extend_from_slice(MAGIC);
        p.push(VERSION);
        p.push(module_id);
        p.push(network);
        p.push(0);
        p.extend_from_slice(&self.epoch.to_be_bytes());
        p.extend_from_slice(&self.counter.to_be_bytes());
        p.extend_from_slice(&(encoded.len() as u16).to_be_bytes());
        p.extend_from_slice(&encoded);
        let mac = blake3::keyed_hash(&self.key, &p);
        p.extend_from_slice(mac.as_bytes());
        Ok(p)
    }
}

/// Opens heartbeats for one module on one node: checks, replay windows and drop counters.
pub struct Opener {
    key: [u8; 32],
    cluster: String,
    module_id: u8,
    nodes: Vec<String>,
    /// Newest (epoch, counter) accepted per (sender, network).
    last: HashMap<(String, u8), (u64, u64)>,
    drops: HashMap<Drop, u64>,
}

impl Opener {
    pub fn new(cluster_key: &[u8], cluster: &str, module_id: u8, nodes: Vec<String>) -> Self {
        Opener {
            key: mac_key(cluster_key),
            cluster: cluster.into(),
            module_id,
            nodes,
            last: HashMap::new(),
            drops: HashMap::new(),
        }
    }

    /// Checks a packet received on `network`; on failure the reason is counted and returned.
    pub fn open(&mut self, packet: &[u8], network: u8) -> Result<Heartbeat, Drop> {
        let r = self.check(packet, network);
        if let Err(d) = r {
            *self.drops.entry(d).or_default() += 1;
        }
        r
    }

    pub fn drops(&self, reason: Drop) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }

    fn check(&mut self, p: &[u8], network: u8) -> Result<Heartbeat, Drop> {
        if p.len() < HEADER + MAC {
            return Err(Drop::Truncated);
        }
        if &p[0..4] != MAGIC {
            return Err(Drop::Magic);
        }
        if p[4] != VERSION {
            return Err(Drop::Version);
        }
        let len = u16::from_be_bytes([p[24], p[25]]) as usize;
        if p.len() != HEADER + len + MAC {
            return Err(Drop::Truncated);
        }
        let (signed, mac) = p.split_at(HEADER + len);
        // blake3::Hash equality is constant-time.
        if blake3::keyed_hash(&self.key, signed) != blake3::Hash::from_bytes(mac.try_into().expect("32 bytes")) {
            return Err(Drop::Mac);
        }
        let module_id = p[5];
        let net = p[6];
        let epoch = u64::from_be_bytes(p[8..16].try_into().unwrap());
        let counter = u64::from_be_bytes(p[16..24].try_into().unwrap());
        let body: Body = postcard::from_bytes(&p[HEADER..HEADER + len]).map_err(|_| Drop::Body)?;
        if module_id != self.module_id {
            return Err(Drop::Module);
        }
        if net != network {
            return Err(Drop::Network);
        }
        if body.cluster != self.cluster {
            return Err(Drop::Cluster);
        }
        if !self.nodes.contains(&body.from) {
            return Err(Drop::UnknownNode);
        }
        let slot = self.last.entry((body.from.clone(), net)).or_insert((0, 0));
        if (epoch, counter) <= *slot {
            return Err(Drop::Replay);
        }
        *slot = (epoch, counter);
        Ok(Heartbeat { module_id, network: net, epoch, counter, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_machine::State;

    fn body(from: &str) -> Body {
        Body {
            cluster: "c".into(),
            from: from.into(),
            view: ModuleView::Farm(FarmView { node: from.into(), state: State::Up }),
            synced_join: None,
        }
    }

    fn opener() -> Opener {
        Opener::new(b"key", "c", 3, vec!["n1".into(), "n2".into()])
    }

    #[test]
    fn round_trip_and_replay() {
        let mut s = Sealer::new(b"key", 10);
        let mut o = opener();
        let p1 = s.seal(3, 0, &body("n1")).unwrap();
        let p2 = s.seal(3, 0, &body("n1")).unwrap();
        assert_eq!(o.open(&p1, 0).unwrap().body, body("n1"));
        assert_eq!(o.open(&p2, 0).unwrap().counter, 2);
        assert_eq!(o.open(&p1, 0), Err(Drop::Replay));
        assert_eq!(o.open(&p2, 0), Err(Drop::Replay));
        // A restarted sender (newer epoch) is accepted from counter 1 again.
        let mut s2 = Sealer::new(b"key", 11);
        assert!(o.open(&s2.seal(3, 0, &body("n1")).unwrap(), 0).is_ok());
        assert_eq!(o.drops(Drop::Replay), 2);
    }

    #[test]
    fn forged_truncated_and_misrouted_packets_are_dropped() {
        let mut o = opener();
        let good = Sealer::new(b"key", 1).seal(3, 1, &body("n2")).unwrap();
        let wrong_key = Sealer::new(b"other", 1).seal(3, 1, &body("n2")).unwrap();
        assert_eq!(o.open(&wrong_key, 1), Err(Drop::Mac));
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        assert_eq!(o.open(&flipped, 1), Err(Drop::Mac));
        assert_eq!(o.open(&good[..good.len() - 1], 1), Err(Drop::Truncated));
        assert_eq!(o.open(&good[..10], 1), Err(Drop::Truncated));
        assert_eq!(o.open(&good, 0), Err(Drop::Network));
        let other_module = Sealer::new(b"key", 1).seal(4, 1, &body("n2")).unwrap();
        assert_eq!(o.open(&other_module, 1), Err(Drop::Module));
        let stranger = Sealer::new(b"key", 1).seal(3, 1, &body("n9")).unwrap();
        assert_eq!(o.open(&stranger, 1), Err(Drop::UnknownNode));
        assert_eq!(o.open(&good, 1).unwrap().body.from, "n2");
        assert_eq!(o.total_drops(), 7);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut o = opener();
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for len in 0..400 {
            let mut p = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push(x as u8);
            }
            if len >= 4 {
                p[..4].copy_from_slice(MAGIC);
            }
            assert!(o.open(&p, 0).is_err());
        }
    }
}
