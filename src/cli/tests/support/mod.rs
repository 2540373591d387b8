//! A cluster of real `tandem daemon`s in a lab, for the daemon's acceptance tests: each node gets
//! the same cluster.toml and key, a mirror module `web` whose hooks start and stop a small TCP
//! service on the VIP, and its own daemon process. Everything is removed when the value is dropped.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tandem_lab::{Lab, LabSpec};

pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
pub const VIP: &str = "198.18.0.100";
pub const PORT: u16 = 8080;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A lab name unique to this test process and call (names are at most 12 characters).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

pub const SERVICE: &str = r#"#!/bin/sh
# A tiny TCP service for the lab: started on the primary, stopped when it leaves.
pidfile=/run/tandem/web-service.pid
case "$1" in
  start) python3 -m http.server 8080 --bind 198.18.0.100 >/dev/null 2>&1 &
         echo $! > $pidfile ;;
  stop)  [ -f $pidfile ] && kill "$(cat $pidfile)" 2>/dev/null; rm -f $pidfile; exit 0 ;;
esac
"#;

pub struct Cluster {
    pub lab: Option<Lab>,
    pub name: String,
    pub nodes: Vec<String>,
    daemons: Vec<(String, Child)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.daemons {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(lab) = self.lab.take() {
            let _ = lab.down();
        }
        let _ = tandem_lab::down(&self.name);
    }
}

pub struct Timers {
    pub pulse: &'static str,
    pub timeout: &'static str,
}

pub const DEFAULT_TIMERS: Timers = Timers { pulse: "200ms", timeout: "1s" };

impl Cluster {
    /// A lab of two nodes with `networks` networks, the cluster files and the `web` module on each
    /// node; daemons not started yet.
    pub fn new(prefix: &str, networks: u8, timers: &Timers) -> Cluster {
        Cluster::with_dirs(prefix, networks, timers, &[])
    }

    /// As `new`, and the module replicates `dirs` (each node has its own copy of each), with
    /// `*.tmp` excluded.
    pub fn with_dirs(prefix: &str, networks: u8, timers: &Timers, dirs: &[&str]) -> Cluster {
        let name = unique_name(prefix);
        let _ = tandem_lab::down(&name);
        let mut spec = LabSpec::new(&name, 2).networks(networks);
        for d in dirs {
            spec = spec.private_dir(d);
        }
        let lab = Lab::up(spec).expect("lab up");
        let nodes: Vec<String> = vec!["n1".into(), "n2".into()];
        let c = Cluster { lab: Some(lab), name, nodes, daemons: Vec::new() };
        let addrs = |i: u8| (0..networks).map(|k| format!("198.18.{k}.{i}")).collect::<Vec<_>>().join(",");
        let out = c.tandem(
            "n1",
            &[
                "cluster",
                "init",
                "--name",
                "t",
                "--node",
                &format!("n1={}", addrs(1)),
                "--node",
                &format!("n2={}", addrs(2)),
            ],
        );
        assert!(out.status.success(), "cluster init: {}", String::from_utf8_lossy(&out.stderr));
        let cluster_toml = c.sh("n1", "cat /etc/tandem/cluster.toml");
        let key = c.sh("n1", "cat /etc/tandem/cluster.key");
        let module = format!(
            r#"name = "web"
kind = "mirror"
id = 1

[[node]]
name = "n1"

[[node]]
name = "n2"

[heartbeat]
pulse = "{}"
timeout = "{}"

[[vip]]
address = "{VIP}/24"
interface = "eth0"

[hooks]
timeout = "10s"
start_prim = ["/etc/tandem/modules/web/service.sh", "start"]
stop_prim = ["/etc/tandem/modules/web/service.sh", "stop"]
{}"#,
            timers.pulse,
            timers.timeout,
            dirs.iter()
                .map(|d| format!("\n[[replication.dir]]\npath = \"{d}\"\nexclude = [\"*.tmp\"]\n"))
                .collect::<String>()
        );
        for n in ["n1", "n2"] {
            c.write(n, "/etc/tandem/cluster.toml", &cluster_toml, "644");
            c.write(n, "/etc/tandem/cluster.key", &key, "600");
            c.write(n, "/etc/tandem/modules/web/module.toml", &module, "644");
            c.write(n, "/etc/tandem/modules/web/service.sh", SERVICE, "755");
        }
        c
    }

    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().unwrap()
    }

    pub fn command(&self, host: &str, argv: &[&str]) -> Command {
        self.lab().command(host, argv).expect("lab command")
    }

    pub fn run(&self, host: &str, argv: &[&str]) -> Output {
        self.command(host, argv).stdin(Stdio::null()).output().expect("run in lab host")
    }

    pub fn tandem(&self, host: &str, args: &[&str]) -> Output {
        let mut argv = vec![TANDEM];
        argv.extend_from_slice(args);
        self.run(host, &argv)
    }

    pub fn sh(&self, host: &str, script: &str) -> String {
        let out = self.run(host, &["sh", "-c", script]);
        assert!(out.status.success(), "{host}: `{script}`: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn write(&self, host: &str, path: &str, content: &str, mode: &str) {
        let dir = std::path::Path::new(path).parent().unwrap().display().to_string();
        let mut child = self
            .command(host, &["sh", "-c", &format!("mkdir -p {dir} && cat > {path} && chmod {mode} {path}")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "write {path} on {host}");
    }

    /// Starts the node's daemon in the background (its output in /tmp/tandem-<lab>-<node>.log).
    pub fn start_daemon(&mut self, node: &str) {
        let log = std::fs::File::create(format!("/tmp/tandem-{}-{node}.log", self.name)).unwrap();
        let child = self
            .command(node, &[TANDEM, "daemon"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.daemons.retain(|(n, _)| n != node);
        self.daemons.push((node.to_string(), child));
        self.wait_until(Duration::from_secs(10), &format!("daemon of {node} answers"), || {
            self.tandem(node, &["state"]).status.code() == Some(0)
        });
    }

    pub fn daemon_log(&self, node: &str) -> String {
        std::fs::read_to_string(format!("/tmp/tandem-{}-{node}.log", self.name)).unwrap_or_default()
    }

    /// SIGTERM to the node's daemon, then wait for it to exit.
    pub fn stop_daemon(&mut self, node: &str) -> std::process::ExitStatus {
        let idx = self.daemons.iter().position(|(n, _)| n == node).expect("daemon running");
        let (_, mut child) = self.daemons.remove(idx);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// The daemon process of a node that `lab kill` killed: reap it.
    pub fn forget_daemon(&mut self, node: &str) {
        if let Some(idx) = self.daemons.iter().position(|(n, _)| n == node) {
            let (_, mut child) = self.daemons.remove(idx);
            let _ = child.wait();
        }
    }

    /// The state of `web` on the node, as `tandem state -m web`'s exit code.
    pub fn state(&self, node: &str) -> i32 {
        self.tandem(node, &["state", "-m", "web"]).status.code().unwrap_or(-1)
    }

    pub fn state_json(&self, node: &str) -> serde_json::Value {
        let out = self.tandem(node, &["state", "-m", "web", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("state --json")[0].clone()
    }

    pub fn wait_state(&self, node: &str, code: i32, within: Duration) {
        self.wait_until(within, &format!("{node} in state {code}"), || self.state(node) == code);
    }

    pub fn admin(&self, node: &str, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-m", "web"]);
        self.tandem(node, &a)
    }

    pub fn wait_until(&self, within: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while t.elapsed() < within {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {within:?} waiting for: {what}\n--- n1 daemon ---\n{}\n--- n2 daemon ---\n{}",
            self.daemon_log("n1"),
            self.daemon_log("n2")
        );
    }

    /// Both daemons up, `web` PRIM on n1 and SECOND on n2, as an admin does at first start.
    pub fn bring_up(&mut self) {
        self.bring_up_with(Duration::from_secs(5));
    }

    fn bring_up_with(&mut self, ready_within: Duration) {
        self.start_daemon("n1");
        self.start_daemon("n2");
        for n in ["n1", "n2"] {
            assert!(self.admin(n, &["start"]).status.success());
        }
        let out = self.admin("n1", &["prim"]);
        assert!(out.status.success(), "prim: {}", String::from_utf8_lossy(&out.stderr));
        let out = self.admin("n2", &["second"]);
        assert!(out.status.success(), "second: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_state("n1", 3, ready_within);
        self.wait_state("n2", 4, ready_within);
    }

    /// As `bring_up`, for a module with a replicated directory: the secondary becomes Ready once the
    /// full copy is applied.
    pub fn bring_up_replicated(&mut self) {
        self.bring_up_with(Duration::from_secs(60));
    }

    /// Connects from the client to the VIP in a loop until one connection succeeds; returns how
    /// long it took (from the call), or None after `within`.
    pub fn client_connect(&self, within: Duration) -> Option<Duration> {
        let script = format!(
            "import socket,time,sys\nt=time.time()\nwhile time.time()-t < {}:\n    try:\n        s=socket.create_connection(('{VIP}',{PORT}),timeout=0.05); s.close(); print('%.4f' % (time.time()-t)); sys.exit(0)\n    except OSError: time.sleep(0.01)\nsys.exit(1)\n",
            within.as_secs_f64()
        );
        let out = self.run("client", &["python3", "-c", &script]);
        if !out.status.success() {
            return None;
        }
        let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some(Duration::from_secs_f64(secs))
    }

    /// Who holds the VIP: the running nodes with 198.18.0.100 on eth0 (a killed node holds nothing).
    pub fn vip_holders(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| {
                let Ok(mut cmd) = self.lab().command(n, &["ip", "-br", "addr", "show", "dev", "eth0"]) else {
                    return false; // killed
                };
                let out = cmd.stdin(Stdio::null()).output().expect("ip addr");
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains(VIP)
            })
            .cloned()
            .collect()
    }

    pub fn log(&self, node: &str) -> String {
        String::from_utf8(self.admin(node, &["log", "-n", "1000"]).stdout).unwrap()
    }
}

/// The records file of the zero-loss writers (`%08d` + space + 100 `x`, one per line), as found
/// on the node that took over: every record up to `acked` (the last one the application saw
/// fsync'd) must be there, intact and in order. Records after it were never acknowledged: they
/// may be there or not, and the very last one may be torn (cut short, as a write interrupted by
/// the power loss can be, on any disk); nothing else may differ. Returns the number of lines.
pub fn check_records(records: &str, acked: usize, context: &str) -> usize {
    let record = |k: usize| format!("{k:08} {}", "x".repeat(100));
    let lines: Vec<&str> = records.split_terminator('\n').collect();
    assert!(lines.len() >= acked, "{context}: {acked} records acknowledged, only {} found", lines.len());
    for (i, l) in lines.iter().enumerate() {
        let want = record(i + 1);
        let last_unacked = i + 1 == lines.len() && i + 1 > acked;
        if last_unacked && !records.ends_with('\n') {
            assert!(want.starts_with(l), "{context}: unacknowledged record {} is not even a prefix: {l:?}", i + 1);
        } else {
            assert_eq!(*l, want, "{context}: record {} damaged", i + 1);
        }
    }
    lines.len()
}

/// Starts the zero-loss writer on `node`: it appends numbered records to /srv/web/records, each
/// followed by fsync, and prints each number once its fsync returned. Returns the process, the
/// last number printed (updated as they arrive) and the thread that reads them (it ends with the
/// writer).
pub fn start_record_writer(
    c: &Cluster,
    node: &str,
    stderr: Stdio,
) -> (std::process::Child, std::sync::Arc<std::sync::atomic::AtomicUsize>, std::thread::JoinHandle<()>) {
    use std::io::BufRead;
    let writer = r#"import os, sys
fd = os.open('/srv/web/records', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
while True:
    i += 1
    os.write(fd, ('%08d %s\n' % (i, 'x' * 100)).encode())
    os.fsync(fd)
    print(i, flush=True)
"#;
    let mut child = c.command(node, &["python3", "-c", writer]).stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let last = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = last.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            match line.ok().and_then(|l| l.trim().parse::<usize>().ok()) {
                Some(n) => seen.store(n, std::sync::atomic::Ordering::SeqCst),
                None => break,
            }
        }
    });
    (child, last, reader)
}
