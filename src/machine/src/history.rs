//! Data generations: how two nodes tell whose copy of the data is newer without comparing bytes.
//!
//! As DRBD does with its UUIDs, each node keeps a short history of generation ids, newest last. A
//! node starts a new generation whenever it starts serving without a connected, up-to-date peer
//! (ALONE): from then on its data may contain writes the peer lacks. A secondary that finished its
//! catch-up adopts the primary's history, so two identical copies have identical histories.
//!
//! Comparing two histories then tells everything the machines need: same data, one is an ancestor
//! of the other (the older one catches up, incrementally since the common generation), or both
//! moved on from a common ancestor (a split brain: one side's changes must be discarded).

use crate::types::NodeName;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How many generations a node remembers. A peer further behind than that is caught up by block
/// hashes rather than by tracked zones, which is always correct, only slower.
pub const HISTORY_LEN: usize = 32;

/// One generation: started by `node` when it began serving alone. `seq` is a Lamport counter
/// (greater than every seq the node had seen), so ids are unique and roughly ordered in time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenId {
    pub seq: u64,
    pub node: NodeName,
    /// Started by `primforce`: the admin chose this data over the peer's.
    #[serde(default)]
    pub forced: bool,
}

impl fmt::Display for GenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}{}", self.seq, self.node, if self.forced { "!" } else { "" })
    }
}

/// A generation history, newest last.
pub type History = Vec<GenId>;

/// Appends a new generation started by `node`, with a seq above everything seen so far.
pub fn push_generation(history: &mut History, node: &str, forced: bool, max_seq_seen: u64) -> GenId {
    let seq = history.last().map_or(0, |g| g.seq).max(max_seq_seen) + 1;
    let id = GenId { seq, node: node.to_string(), forced };
    history.push(id.clone());
    if history.len() > HISTORY_LEN {
        let excess = history.len() - HISTORY_LEN;
        history.drain(..excess);
    }
    id
}

/// How the local copy relates to the peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// Neither node has ever held data for this module: the admin chooses (`prim`).
    BothEmpty,
    /// This node has never held data; the peer has.
    LocalEmpty,
    /// The peer has never held data; this node has.
    PeerEmpty,
    /// Identical histories: identical data.
    Same,
    /// The peer's newest generation is an ancestor of ours: the peer must catch up since it.
    LocalNewer,
    /// Our newest generation is an ancestor of the peer's: we must catch up.
    PeerNewer,
    /// Both moved on from `base` (a split brain, or `primforce`): one side's changes must go.
    /// `local_wins` is computed the same way on both nodes, so they agree.
    Diverged { base: GenId, local_wins: bool },
    /// No generation in common: these copies are not of the same data (admin decision).
    Unrelated,
}

impl Relation {
    /// Whether the local copy is at least as new as the peer's (it may serve while the peer looks on).
    pub fn local_is_current(&self) -> bool {
        matches!(
            self,
            Relation::Same | Relation::LocalNewer | Relation::PeerEmpty | Relation::Diverged { local_wins: true, .. }
        )
    }
}

/// Compares two histories. Symmetric: `relate(a, b)` and `relate(b, a)` agree on who is newer and,
/// after a divergence, on who wins.
pub fn relate(local_node: &str, local: &[GenId], peer_node: &str, peer: &[GenId]) -> Relation {
    match (local.last(), peer.last()) {
        (None, None) => Relation::BothEmpty,
        (None, Some(_)) => Relation::LocalEmpty,
        (Some(_), None) => Relation::PeerEmpty,
        (Some(l), Some(p)) => {
            if l == p {
                return Relation::Same;
            }
            if peer.contains(l) {
                return Relation::PeerNewer;
            }
            if local.contains(p) {
                return Relation::LocalNewer;
            }
            // Newest common generation, if any.
            let Some((li, base)) = local.iter().enumerate().rev().find(|(_, g)| peer.contains(g)) else {
                return Relation::Unrelated;
            };
            let pi = peer.iter().position(|g| g == base).expect("base is in peer");
            let local_branch = &local[li + 1..];
            let peer_branch = &peer[pi + 1..];
            let local_wins = diverged_winner_is_local(local_node, local_branch, peer_node, peer_branch, base);
            Relation::Diverged { base: base.clone(), local_wins }
        }
    }
}

/// The rule after a divergence, in order (documented in docs/algorithm.md):
/// 1. a branch that holds a `primforce` generation wins over one that does not (the admin chose it);
/// 2. otherwise the branch whose newest generation has the higher seq wins (more recent data);
/// 3. on a tie, the node that was primary before the split (it started the common generation)
///    keeps its data and the node that promoted itself during the split is discarded (DRBD's
///    `discard-younger-primary`);
/// 4. if neither started it, the lower node name wins (only to be deterministic).
fn diverged_winner_is_local(local_node: &str, local: &[GenId], peer_node: &str, peer: &[GenId], base: &GenId) -> bool {
    let lf = local.iter().any(|g| g.forced);
    let pf = peer.iter().any(|g| g.forced);
    if lf != pf {
        return lf;
    }
    let ls = local.last().map_or(0, |g| g.seq);
    let ps = peer.last().map_or(0, |g| g.seq);
    if ls != ps {
        return ls > ps;
    }
    if base.node == local_node {
        return true;
    }
    if base.node == peer_node {
        return false;
    }
    local_node < peer_node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(seq: u64, node: &str) -> GenId {
        GenId { seq, node: node.into(), forced: false }
    }

    #[test]
    fn relations() {
        let a = vec![g(1, "n1"), g(2, "n1")];
        let b = vec![g(1, "n1")];
        assert_eq!(relate("n1", &a, "n2", &b), Relation::LocalNewer);
        assert_eq!(relate("n2", &b, "n1", &a), Relation::PeerNewer);
        assert_eq!(relate("n1", &a, "n2", &a), Relation::Same);
        assert_eq!(relate("n1", &[], "n2", &[]), Relation::BothEmpty);
        assert_eq!(relate("n1", &[], "n2", &b), Relation::LocalEmpty);
        assert_eq!(relate("n1", &[g(5, "n1")], "n2", &[g(6, "n2")]), Relation::Unrelated);
    }

    #[test]
    fn split_brain_tie_keeps_the_old_primary() {
        let base = g(1, "n1");
        let n1 = vec![base.clone(), g(2, "n1")];
        let n2 = vec![base.clone(), g(2, "n2")];
        assert_eq!(relate("n1", &n1, "n2", &n2), Relation::Diverged { base: base.clone(), local_wins: true });
        assert_eq!(relate("n2", &n2, "n1", &n1), Relation::Diverged { base, local_wins: false });
    }

    #[test]
    fn forced_branch_wins() {
        let base = g(1, "n1");
        let n1 = vec![base.clone(), g(7, "n1")];
        let n2 = vec![base.clone(), GenId { seq: 2, node: "n2".into(), forced: true }];
        assert!(matches!(relate("n2", &n2, "n1", &n1), Relation::Diverged { local_wins: true, .. }));
        assert!(matches!(relate("n1", &n1, "n2", &n2), Relation::Diverged { local_wins: false, .. }));
    }

    #[test]
    fn history_is_bounded_and_seq_is_lamport() {
        let mut h = History::new();
        for _ in 0..40 {
            push_generation(&mut h, "n1", false, 0);
        }
        assert_eq!(h.len(), HISTORY_LEN);
        let id = push_generation(&mut h, "n2", false, 100);
        assert_eq!(id.seq, 101);
    }
}
