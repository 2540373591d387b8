//! tandem's cluster layer: the daemon that runs on every node.
//!
//! Pure parts, unit-tested: `wire` (the heartbeat packet, its MAC and replay protection),
//! `liveness` (when a peer counts as lost), `policy` (module config → machine policy), `control`
//! (the control protocol's types). I/O parts, thin: `store` (atomic persisted state), `modlog`
//! (the bounded module log), `hooks` (running hook commands), `witness` (the splitbrain
//! checker's probes), `driver` (one task per module:
//! heartbeats in and out, the machine, its actions) and `daemon` (loading, the control socket,
//! signals).

pub mod control;
pub mod daemon;
pub mod driver;
pub mod hooks;
pub mod liveness;
pub mod modlog;
pub mod notify;
pub mod policy;
pub mod replica;
pub mod store;
pub mod wire;
pub mod witness;

pub use daemon::{run_daemon, DaemonOptions, VipOps, VipSpec};
