//! The `host` interface as the plugin sees it: each function asks [`Grants`] first, then the
//! adapter in [`crate::sys`], bounded by what is left of the call's deadline, and records what
//! happened as an [`Event`].

use crate::bindings::tandem::module::host::{self, CommandOutput, HostError, HttpResponse, Level};
use crate::sys;
use crate::{Event, Grants, LogLevel, LOG_LINES_LIMIT, LOG_LINE_LIMIT};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The memory cap of one instance, and what it was asked when it refused.
pub struct Limits {
    pub cap: usize,
    pub asked: Option<usize>,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.asked = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a plugin needs a few hundred at most.
        Ok(desired <= 100_000)
    }
}

/// The store's data during one call.
pub struct Ctx {
    pub grants: Arc<Grants>,
    pub deadline: Instant,
    pub limits: Limits,
    pub events: Vec<Event>,
    pub resources: Vec<(String, String)>,
    logged: usize,
}

impl Ctx {
    pub fn new(grants: Arc<Grants>, deadline: Instant) -> Ctx {
        let cap = grants.caps.memory_bytes.min(usize::MAX as u64) as usize;
        Ctx {
            grants,
            deadline,
            limits: Limits { cap, asked: None },
            events: Vec::new(),
            resources: Vec::new(),
            logged: 0,
        }
    }

    /// The smaller of what the plugin asked and what is left of the call.
    fn budget(&self, asked_ms: u32) -> Duration {
        Duration::from_millis(asked_ms.into()).min(self.deadline.saturating_duration_since(Instant::now()))
    }

    fn did(&mut self, text: String) {
        self.events.push(Event::Call { denied: false, text });
    }

    fn denied(&mut self, what: &str, why: String) -> HostError {
        self.events.push(Event::Call { denied: true, text: format!("DENIED {what}: {why}") });
        HostError::Denied(why)
    }

    fn failed(&mut self, what: &str, why: String) -> HostError {
        self.events.push(Event::Call { denied: false, text: format!("{what}: failed: {why}") });
        HostError::Failed(why)
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl host::Host for Ctx {
    fn run(&mut self, argv: Vec<String>, timeout_ms: u32) -> Result<CommandOutput, HostError> {
        let what = format!("run {}", cut(&argv.join(" "), 512));
        if let Err(why) = self.grants.command(&argv) {
            return Err(self.denied(&what, why));
        }
        let budget = self.budget(timeout_ms);
        if budget.is_zero() {
            return Err(self.failed(&what, "no time left in this call".into()));
        }
        let started = Instant::now();
        match sys::run_command(&argv, budget) {
            Ok(o) => {
                let status = match (o.exit_code, o.timed_out) {
                    (_, true) => format!("timed out after {} ms, killed", budget.as_millis()),
                    (Some(c), _) => format!("exit {c}"),
                    (None, _) => "killed by a signal".into(),
                };
                self.did(format!("{what}: {status} in {} ms", started.elapsed().as_millis()));
                Ok(CommandOutput {
                    exit_code: o.exit_code,
                    timed_out: o.timed_out,
                    stdout: o.stdout,
                    stderr: o.stderr,
                    truncated: o.truncated,
                })
            }
            Err(e) => Err(self.failed(&what, e)),
        }
    }

    fn probe_tcp(&mut self, address: String, timeout_ms: u32) -> Result<(), HostError> {
        let what = format!("probe tcp {}", cut(&address, 128));
        let addr = match self.grants.tcp(&address) {
            Ok(a) => a,
            Err(why) => return Err(self.denied(&what, why)),
        };
        match sys::probe_tcp(addr, self.budget(timeout_ms)) {
            Ok(()) => {
                self.did(format!("{what}: connected"));
                Ok(())
            }
            Err(e) => Err(self.failed(&what, e)),
        }
    }

    fn probe_http(&mut self, url: String, timeout_ms: u32) -> Result<HttpResponse, HostError> {
        let what = format!("probe http {}", cut(&url, 512));
        let (addr, path) = match self.grants.http(&url) {
            Ok(a) => a,
            Err(why) => return Err(self.denied(&what, why)),
        };
        match sys::probe_http(addr, &path, self.budget(timeout_ms)) {
            Ok((status, body)) => {
                self.did(format!("{what}: status {status}"));
                Ok(HttpResponse { status, body })
            }
            Err(e) => Err(self.failed(&what, e)),
        }
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, HostError> {
        let what = format!("read {}", cut(&path, 512));
        let granted = match self.grants.file(&path) {
            Ok(d) => d.to_path_buf(),
            Err(why) => return Err(self.denied(&what, why)),
        };
        let (dir, name) = match sys::confine(&path, &granted) {
            Ok(x) => x,
            Err(why) if why.contains("leads outside") => return Err(self.denied(&what, why)),
            Err(why) => return Err(self.failed(&what, why)),
        };
        match sys::read_file(&dir, &name) {
            Ok(data) => {
                self.did(format!("{what}: {} bytes", data.len()));
                Ok(data)
            }
            Err(e) => Err(self.failed(&what, e)),
        }
    }

    fn write_file(&mut self, path: String, data: Vec<u8>) -> Result<(), HostError> {
        let what = format!("write {}", cut(&path, 512));
        let granted = match self.grants.file(&path) {
            Ok(d) => d.to_path_buf(),
            Err(why) => return Err(self.denied(&what, why)),
        };
        let (dir, name) = match sys::confine(&path, &granted) {
            Ok(x) => x,
            Err(why) if why.contains("leads outside") => return Err(self.denied(&what, why)),
            Err(why) => return Err(self.failed(&what, why)),
        };
        match sys::write_file(&dir, &name, &data) {
            Ok(()) => {
                self.did(format!("{what}: {} bytes", data.len()));
                Ok(())
            }
            Err(e) => Err(self.failed(&what, e)),
        }
    }

    fn set_resource(&mut self, name: String, value: String) -> Result<(), HostError> {
        let value = cut(&value, 256);
        let what = format!("set resource {} = {value}", cut(&name, 64));
        if let Err(why) = self.grants.resource(&name) {
            return Err(self.denied(&what, why));
        }
        self.did(what);
        self.resources.retain(|(n, _)| *n != name);
        self.resources.push((name, value));
        Ok(())
    }

    fn domain(&mut self, operation: String) -> Result<String, HostError> {
        let what = format!("domain {}", cut(&operation, 64));
        let why = "libvirt domains come with VM modules, in a later version of tandem".to_string();
        self.events.push(Event::Call { denied: true, text: format!("{what}: unavailable: {why}") });
        Err(HostError::Unavailable(why))
    }

    fn param(&mut self, name: String) -> Option<String> {
        self.grants.params.get(&name).cloned()
    }

    fn log(&mut self, level: Level, message: String) {
        self.logged += 1;
        if self.logged > LOG_LINES_LIMIT {
            if self.logged == LOG_LINES_LIMIT + 1 {
                self.events.push(Event::Log {
                    level: LogLevel::Warn,
                    message: format!("more than {LOG_LINES_LIMIT} log lines in one call: the rest are dropped"),
                });
            }
            return;
        }
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.events.push(Event::Log { level, message: cut(&message, LOG_LINE_LIMIT) });
    }
}

impl crate::bindings::tandem::module::types::Host for Ctx {}
