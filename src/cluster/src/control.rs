//! The control protocol between the CLI and the daemon: one JSON request per connection on a
//! root-only Unix socket, one JSON response. Every admin action, from the CLI today and the REST
//! API later, is a `Request`; every answer a `Response`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use tandem_machine::{Admin, Readiness, State};

pub const DEFAULT_SOCKET: &str = "/run/tandem/control.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    State {
        module: Option<String>,
    },
    Admin {
        module: String,
        command: Admin,
    },
    /// Log lines from byte offset `since` (0: the last `tail` lines).
    Log {
        module: String,
        since: u64,
        tail: usize,
    },
    /// Compare both copies of the module's replicated directory by blake3 (run on the primary).
    Verify {
        module: String,
    },
    /// Estimate what a catch-up of the secondary would read and send (run on the primary).
    Diff {
        module: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    State {
        modules: Vec<ModuleStatus>,
    },
    /// The command was carried out; the module's state afterwards.
    Done {
        state: State,
        readiness: Readiness,
        message: String,
    },
    /// The machine refused the command (the reason is for the admin).
    Refused {
        message: String,
    },
    /// The request could not be served (unknown module, ...).
    Error {
        message: String,
    },
    Log {
        lines: Vec<String>,
        next: u64,
    },
    /// `Verify`: what was compared and every difference found (none: identical).
    Verified {
        entries: u64,
        bytes: u64,
        differences: Vec<String>,
    },
    /// `Diff`: the estimate of a catch-up now.
    Diff(DiffReport),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    /// The secondary is connected and in sync: a catch-up would send nothing.
    pub in_sync: bool,
    /// Changes are tracked in the zone log since this time (seconds since the epoch), and the
    /// log can be trusted for a secondary that left cleanly.
    pub tracking_since: Option<u64>,
    /// With the zone log (a clean departure): files, bytes, bytes compared, bytes not read.
    pub zones: tandem_replication::fs::CatchUpEstimate,
    /// The rate of the last catch-up (bytes checked per second), if there was one.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    pub state: Option<State>,
    pub readiness: Option<Readiness>,
    /// Networks on which heartbeats arrive within the timeout.
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub module: String,
    pub kind: String,
    pub id: u8,
    pub node: String,
    pub state: State,
    pub readiness: Readiness,
    pub failover: Option<bool>,
    /// Newest data generation (mirror), e.g. "3@n1".
    pub generation: Option<String>,
    pub freshness: Option<String>,
    pub last_primary: Option<String>,
    pub peers: Vec<PeerStatus>,
    /// Heartbeat packets dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub accepted: u64,
    /// Replication: the full copy in progress (primary), if any.
    #[serde(default)]
    pub replication: Option<String>,
    /// The last hook (command or plugin call) that failed, with when and why.
    #[serde(default)]
    pub last_failure: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the tandem daemon at {path}: {source} (is `tandem daemon` running on this node?)")]
    Connect { path: String, source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("control socket {path}: unreadable answer: {reason}")]
    Protocol { path: String, reason: String },
}

/// Sends one request and waits for its answer (admin commands wait for their hooks: up to `timeout`).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let path = socket.display().to_string();
    let io = |source| ControlError::Io { path: path.clone(), source };
    let mut stream =
        UnixStream::connect(socket).map_err(|source| ControlError::Connect { path: path.clone(), source })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol { path: path.clone(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable_json() {
        let r = Request::Admin { module: "web".into(), command: Admin::Second { fullsync: true } };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"admin","module":"web","command":{"Second":{"fullsync":true}}}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let bad = serde_json::from_str::<Request>(r#"{"op":"explode"}"#);
        assert!(bad.is_err());
    }
}
