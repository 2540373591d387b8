//! tandem configuration: `cluster.toml` (the cluster's networks and nodes) and `module.toml`
//! (one mirror or farm module).
//!
//! Parsing is done by a validating walker over a span-preserving TOML parse, so that every
//! error of a file is reported at once, each with its exact `file:line:col`, its key path and a
//! clear message (see [`ConfigError`]). This crate is pure: no runtime, no sockets, no I/O other
//! than reading the files it is given.
//!
//! ```
//! use std::path::Path;
//! let text = r#"
//! name = "web"
//! kind = "mirror"
//! id = 1
//! [[node]]
//! name = "n1"
//! [[node]]
//! name = "n2"
//! [heartbeat]
//! puls = "100ms"
//! "#;
//! let err = tandem_config::parse_module(Path::new("web.toml"), text).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "web.toml:10:1: heartbeat.puls: unknown key `puls` in [heartbeat]; did you mean `pulse`?"
//! );
//! ```

mod check;
mod cluster;
mod error;
mod module;
pub mod units;
mod walk;

pub use check::{check_files, detect_kind, CheckReport, FileKind, FileReport, Loaded};
pub use cluster::{load_cluster, parse_cluster, ClusterConfig, ClusterNode, Network, DEFAULT_PORT_BASE, MAX_PORT_BASE};
pub use error::{ConfigError, ConfigErrors};
pub use module::{
    load_module, parse_http_url, parse_module, AckMode, Balance, Capabilities, Checker, CheckerAction, CheckerKind,
    CommandGrant, Failover, Farm, Heartbeat, Hook, HookPoint, Hooks, HttpGrant, ModuleConfig, ModuleKind, ModuleNode,
    Preferred, ReplicatedDir, Replication, Vip, Witness, ANY_ARGS, DEFAULT_CHECKER_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HOOK_TIMEOUT, DEFAULT_LOOP_INTERVAL, DEFAULT_LOOP_LIMIT, DEFAULT_PLUGIN_MEMORY_BYTES, DEFAULT_PULSE,
    DEFAULT_VIP_INTERFACE, DEFAULT_ZONE_SIZE_BYTES, MAX_MODULE_ID, MAX_ZONE_SIZE_BYTES, MIN_ZONE_SIZE_BYTES,
};

use std::path::Path;

/// Reads a configuration file; a read failure becomes a [`ConfigError`] without position.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        }])
    })
}
