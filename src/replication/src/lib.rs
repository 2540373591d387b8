//! Synchronous replication of directories (mirror modules); see docs/replication.md.
//!
//! - `op`: the replicated operations (pure data);
//! - `frame`, `channel`, `stream`: the wire, the authenticated encrypted channel (Noise with the
//!   cluster key) and the ordered, acknowledged stream between primary and secondary;
//! - `fs`: the primary's FUSE layer over the replicated directory, with the full synchronisation;
//! - `apply`: the secondary's applier;
//! - `manifest`: per-file, per-block blake3 manifests and their differences (verify);
//! - `zonelog`: the durable log of the zones changed while no secondary is in sync;
//! - `activity`: the durable log of the zones a primary with its secondary in sync is writing.

pub mod activity;
pub mod apply;
pub mod channel;
pub mod frame;
pub mod fs;
pub mod manifest;
pub mod op;
pub mod stream;
pub mod zonelog;
