//! tandem's pure core: the mirror and farm state machines.
//!
//! A machine takes events (the peer's view from a heartbeat, an admin command, a checker's result,
//! the end of a catch-up, a timer) with the time as an argument, and returns its new state and the
//! list of actions the daemon must execute (take or release the VIP, run a hook, start or stop
//! replication, start a catch-up, persist state, log an event). It performs no I/O and reads no
//! clock, so every scenario is data: see tests/scenarios/ at the top of the repository.

pub mod action;
pub mod farm;
pub mod history;
pub mod mirror;
pub mod types;

pub use action::{Action, Level, Persisted, ReplicationRole, ResyncMode};
pub use farm::{FarmEvent, FarmMachine, FarmPersist, FarmPolicy, FarmView};
pub use history::{relate, GenId, History, Relation};
pub use mirror::{elect, Freshness, MirrorEvent, MirrorMachine, MirrorPersist, MirrorPolicy, MirrorView, Preferred};
pub use types::{Admin, Cause, FailAction, Hook, Millis, NodeName, Readiness, Refused, State, Status};
