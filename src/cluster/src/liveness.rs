//! When a peer counts as lost: silent on every network for the module's timeout. Pure: the caller
//! passes the time.

use std::collections::BTreeMap;
use tandem_machine::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First heartbeat from this peer, or the first after it was lost.
    Seen,
    Lost,
}

/// Tracks the last heartbeat time of each peer on each network.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    timeout_ms: Millis,
    last: BTreeMap<String, BTreeMap<u8, Millis>>,
    alive: BTreeMap<String, bool>,
}

impl Liveness {
    pub fn new(timeout_ms: Millis) -> Self {
        Liveness { timeout_ms, ..Default::default() }
    }

    /// Records a valid heartbeat; returns `Seen` when the peer (re)appears.
    pub fn heard(&mut self, now: Millis, peer: &str, network: u8) -> Option<Change> {
        self.last.entry(peer.to_string()).or_default().insert(network, now);
        let was = self.alive.insert(peer.to_string(), true).unwrap_or(false);
        (!was).then_some(Change::Seen)
    }

    /// Peers lost at `now`: silent on every network for longer than the timeout.
    pub fn expire(&mut self, now: Millis) -> Vec<String> {
        let mut lost = Vec::new();
        for (peer, nets) in &self.last {
            let newest = nets.values().copied().max().unwrap_or(0);
            if self.alive.get(peer) == Some(&true) && now.saturating_sub(newest) > self.timeout_ms {
                lost.push(peer.clone());
            }
        }
        for p in &lost {
            self.alive.insert(p.clone(), false);
        }
        lost
    }

    /// Networks on which `peer` was heard within the timeout (for `state` and the log).
    pub fn networks(&self, now: Millis, peer: &str) -> Vec<u8> {
        self.last
            .get(peer)
            .map(|n| n.iter().filter(|(_, t)| now.saturating_sub(**t) <= self.timeout_ms).map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_only_when_silent_on_every_network() {
        let mut l = Liveness::new(1000);
        assert_eq!(l.heard(0, "n2", 0), Some(Change::Seen));
        assert_eq!(l.heard(0, "n2", 1), None);
        // Network 0 goes silent; network 1 still carries heartbeats.
        for t in (200..3000).step_by(200) {
            l.heard(t, "n2", 1);
            assert!(l.expire(t).is_empty());
        }
        assert_eq!(l.networks(2900, "n2"), vec![1]);
        assert_eq!(l.expire(3900), vec!["n2".to_string()]);
        assert!(l.expire(5000).is_empty(), "reported once");
        assert_eq!(l.heard(5100, "n2", 0), Some(Change::Seen));
    }
}
