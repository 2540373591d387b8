//! tandem's cluster layer. `wire` (the heartbeat packet: encoding, MAC, replay protection) and
//! `liveness` (when a peer counts as lost) are pure and unit-tested; the daemon that uses them over
//! real sockets comes with the daemon issue.

pub mod liveness;
pub mod wire;
