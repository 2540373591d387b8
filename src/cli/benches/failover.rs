//! VIP failover benchmark: tandem against keepalived, side by side in the same run.
//!
//! Each run builds a fresh `tandem lab` (2 nodes + client, network 0 = 198.18.0.0/24), starts a
//! TCP listener on 0.0.0.0:8080 on **both** nodes in advance (so what is measured is the move of
//! the virtual IP 198.18.0.100, not an application start), starts the failover software on both
//! nodes with n1 as master/primary, lets it settle (2 s plus a random 0-1 s, so that the kill falls
//! at a random phase of the heartbeats), then kills n1 (`Lab::kill`: every process
//! SIGKILLed at once, its cable dark). A thread in the client's network namespace starts a TCP
//! connection to 198.18.0.100:8080 every 20 ms (each with a 250 ms timeout); the figure of a run is
//! the time from the start of the kill to the first connection that succeeds after it.
//!
//! Configurations (all in the same run, interleaved run by run so that machine noise spreads over
//! all of them):
//! - keepalived, unicast VRRPv3, `advert_int` 1 s (its default), 0.3 s (about tandem's default
//!   timers) and 0.15 s (about tandem's 100 ms / 500 ms);
//! - tandem's daemon with its default timers (pulse 200 ms, timeout 1 s) and pulse 100 ms /
//!   timeout 500 ms.
//!
//! Environment:
//! - `BENCH_RUNS` (default 5): runs per configuration;
//! - `BENCH_CONFIGS`: comma-separated substrings; only configurations whose name contains one of
//!   them run (e.g. `keepalived`, `tandem`, `advert-1s`);
//! - `BENCH_LAB_PREFIX` (default `fb<pid>`): prefix of the labs' names (scripts/bench-failover.sh
//!   uses it to clean up after an interrupted run);
//! - `BENCH_KEEP_LOGS=1`: keep the working directory (configurations and daemon logs).
//!
//! Progress goes to stderr; the markdown table goes to stdout. The exit code is 1 when any run of
//! any configuration failed (its row says so) and 0 otherwise.
//!
//! The bench binary is also its own helper: `failover --serve ADDR` is the TCP listener started
//! inside the nodes. Started without `--bench` (as `cargo test --all-targets` does), it does nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod common;
use common::labcmd::{self, text};
use common::*;
use tandem_lab::{Lab, LabSpec};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const PORT: u16 = 8080;
/// The victim (master/primary) and the survivor.
const PRIMARY: &str = "n1";
const SECONDARY: &str = "n2";

/// A new connection attempt is started this often, after the kill.
const ATTEMPT_INTERVAL: Duration = Duration::from_millis(20);
/// Each attempt gives up after this long (several attempts are in flight at once).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// No failover within this long after the kill is a failed run.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// Steady state before the kill, once both nodes are in their roles.
const SETTLE: Duration = Duration::from_secs(2);
/// Plus a random delay up to this long (at least the longest heartbeat interval measured).
const KILL_JITTER: Duration = Duration::from_secs(1);
/// Deadlines of the set-up steps.
const LISTENER_DEADLINE: Duration = Duration::from_secs(10);
const KEEPALIVED_READY_DEADLINE: Duration = Duration::from_secs(20);
const TANDEM_SOCKET_DEADLINE: Duration = Duration::from_secs(20);
const TANDEM_COMMAND_DEADLINE: Duration = Duration::from_secs(10);
const TANDEM_ROLES_DEADLINE: Duration = Duration::from_secs(60);
const PRECHECK_DEADLINE: Duration = Duration::from_secs(5);
/// Any single command run inside a node (ip, install, tandem state, ...).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Configurations

#[derive(Clone, Debug)]
enum System {
    /// keepalived with this `advert_int` (seconds, as written in keepalived.conf).
    Keepalived { advert: &'static str },
    /// tandem with these heartbeat timers (module.toml durations).
    Tandem { pulse: &'static str, timeout: &'static str },
}

#[derive(Clone, Debug)]
struct Config {
    name: &'static str,
    system: System,
    /// What the detection depends on, for the table.
    timers: String,
}

/// keepalived's backup priority here; the master's is 200.
const BACKUP_PRIORITY: u32 = 100;

fn configs() -> Vec<Config> {
    let ka = |name, advert: &'static str| {
        let a: f64 = advert.parse().expect("advert_int");
        let skew = (256 - BACKUP_PRIORITY) as f64 * a / 256.0;
        Config {
            name,
            system: System::Keepalived { advert },
            timers: format!(
                "advert {}, master down after 3 × {} + skew {} = {}",
                secs(a),
                secs(a),
                secs(skew),
                secs(3.0 * a + skew)
            ),
        }
    };
    let td = |name, pulse, timeout| Config {
        name,
        system: System::Tandem { pulse, timeout },
        timers: format!("pulse {pulse}, peer lost after {timeout} of silence"),
    };
    vec![
        ka("keepalived-advert-1s", "1"),
        ka("keepalived-advert-300ms", "0.3"),
        ka("keepalived-advert-150ms", "0.15"),
        td("tandem-200ms-1s", "200ms", "1s"),
        td("tandem-100ms-500ms", "100ms", "500ms"),
    ]
}

fn secs(s: f64) -> String {
    if s >= 1.0 && (s - s.round()).abs() < 1e-9 {
        format!("{s:.0} s")
    } else {
        format!("{s:.2} s")
    }
}

// ---------------------------------------------------------------------------------------------
// Entry point

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let addr = args.get(1).map(String::as_str).unwrap_or("0.0.0.0:8080");
        return match serve(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("failover --serve {addr}: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    // `cargo bench` passes `--bench` (and maybe a filter, ignored: use BENCH_CONFIGS).
    bench_main("failover", bench)
}

/// The TCP service of the nodes: accepts and closes connections.
fn serve(addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    for mut s in listener.incoming().flatten() {
        let _ = s.write_all(b"ok\n");
    }
    Ok(())
}

struct Ctx {
    workdir: PathBuf,
    self_exe: PathBuf,
    lab_prefix: String,
}

#[derive(Default)]
struct Results {
    samples: Vec<Sample>,
    errors: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// From the start of the kill to the first successful connection.
    failover: Duration,
    /// From the start of the kill until `Lab::kill` returned (processes reaped, cable down).
    kill: Duration,
}

fn bench() -> Result<bool> {
    require_root("failover")?;
    set_child_subreaper();
    let runs: usize = match std::env::var("BENCH_RUNS") {
        Ok(v) => {
            v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| anyhow!("BENCH_RUNS={v:?}: expected an integer ≥ 1"))?
        }
        Err(_) => 5,
    };
    let filter: Vec<String> = std::env::var("BENCH_CONFIGS")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let selected: Vec<Config> = configs()
        .into_iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        bail!(
            "BENCH_CONFIGS={filter:?} selects no configuration (they are: {})",
            configs().iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("tandem-bench-failover-")
        .tempdir()
        .context("creating the working directory")?;
    let ctx = Ctx {
        workdir: tmp.path().to_path_buf(),
        self_exe: std::env::current_exe().context("finding the bench binary")?,
        lab_prefix: std::env::var("BENCH_LAB_PREFIX").unwrap_or_else(|_| format!("fb{}", std::process::id() % 100_000)),
    };
    eprintln!(
        "bench failover: {} configuration(s) × {runs} run(s); working directory {}",
        selected.len(),
        ctx.workdir.display()
    );

    // Prerequisites, once per configuration: a configuration that cannot run is reported, not run.
    let mut results: BTreeMap<&str, Results> = BTreeMap::new();
    let mut runnable = Vec::new();
    for c in &selected {
        match prerequisites(&ctx, c) {
            Ok(()) => runnable.push(c.clone()),
            Err(e) => {
                eprintln!("bench failover: {}: not run: {e:#}", c.name);
                results.entry(c.name).or_default().errors.push(format!("not run: {e:#}"));
            }
        }
    }

    // Interleaved: run i of every configuration, then run i+1.
    for i in 0..runs {
        for c in &runnable {
            let t = Instant::now();
            let r = run_once(&ctx, c, i);
            let entry = results.entry(c.name).or_default();
            match r {
                Ok(s) => {
                    eprintln!(
                        "bench failover: {} run {}/{runs}: failover {:.3} s (kill took {:.3} s; run {:.1} s)",
                        c.name,
                        i + 1,
                        s.failover.as_secs_f64(),
                        s.kill.as_secs_f64(),
                        t.elapsed().as_secs_f64()
                    );
                    entry.samples.push(s);
                }
                Err(e) => {
                    eprintln!("bench failover: {} run {}/{runs}: FAILED: {e:#}", c.name, i + 1);
                    entry.errors.push(format!("run {}: {e:#}", i + 1));
                }
            }
        }
    }

    let table = render(&selected, &results, runs);
    print!("{table}");
    let _ = std::io::stdout().flush();
    let ok = results.values().all(|r| r.errors.is_empty());
    if std::env::var("BENCH_KEEP_LOGS").as_deref() == Ok("1") || !ok {
        let kept = tmp.keep();
        eprintln!("bench failover: logs kept in {}", kept.display());
    }
    Ok(ok)
}

fn prerequisites(ctx: &Ctx, c: &Config) -> Result<()> {
    match &c.system {
        System::Keepalived { .. } => {
            let o = Command::new("keepalived")
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .context("keepalived is not installed (apt-get install -y keepalived)")?;
            if !o.status.success() {
                bail!("keepalived --version failed: {}", text(&o));
            }
            Ok(())
        }
        System::Tandem { pulse, timeout } => {
            let o = Command::new(TANDEM)
                .args(["daemon", "--help"])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {TANDEM}"))?;
            if !o.status.success() {
                bail!(
                    "this build of tandem has no `daemon` subcommand yet ({TANDEM} daemon --help: {})",
                    text(&o).trim()
                );
            }
            // The configuration files must be valid before any lab is built.
            let dir = ctx.workdir.join(format!("check-{}", c.name));
            fs::create_dir_all(&dir)?;
            let cluster = dir.join("cluster.toml");
            let module = dir.join("module.toml");
            fs::write(&cluster, cluster_toml())?;
            fs::write(&module, module_toml(pulse, timeout))?;
            let o = Command::new(TANDEM)
                .args(["config", "check"])
                .arg(&cluster)
                .arg(&module)
                .stdin(Stdio::null())
                .output()?;
            if !o.status.success() {
                bail!("tandem config check rejects the bench's files: {}", text(&o));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run

fn unique_lab_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::SeqCst))
}

fn run_once(ctx: &Ctx, c: &Config, i: usize) -> Result<Sample> {
    let name = unique_lab_name(&ctx.lab_prefix);
    let dir = ctx.workdir.join(format!("{}-run{}", c.name, i + 1));
    fs::create_dir_all(&dir)?;
    let mut guard = LabGuard::new("failover", name.clone());
    let lab = Lab::up(LabSpec::new(&name, 2)).with_context(|| format!("building lab {name}"))?;

    // The service, on both nodes, before anything else.
    for node in [PRIMARY, SECONDARY] {
        let log = File::create(dir.join(format!("{node}-listener.log")))?;
        let child = lab
            .command(node, &[ctx.self_exe.as_os_str(), "--serve".as_ref(), "0.0.0.0:8080".as_ref()])?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the listener on {node}"))?;
        guard.children.push(child);
    }
    let node_addrs: Vec<SocketAddr> =
        [1u8, 2].iter().map(|&i| SocketAddr::V4(SocketAddrV4::new(lab.node_addr(i, 0), PORT))).collect();
    in_client(&lab, move || {
        for a in &node_addrs {
            connect_until(*a, LISTENER_DEADLINE).with_context(|| format!("the listener on {a} does not answer"))?;
        }
        Ok(())
    })?;

    match &c.system {
        System::Keepalived { advert } => start_keepalived(&lab, &mut guard, &dir, advert)?,
        System::Tandem { pulse, timeout } => start_tandem(&lab, &mut guard, &dir, pulse, timeout)?,
    }
    // The kill falls at a random moment of the heartbeat cycle: without the jitter it would come
    // at the same phase every run (the roles are reached right after an advertisement), which
    // biases every figure of a configuration the same way.
    thread::sleep(SETTLE + random_below(KILL_JITTER)?);
    if !has_vip(&lab, PRIMARY)? || has_vip(&lab, SECONDARY)? {
        bail!(
            "before the kill the VIP should be on {PRIMARY} only: {PRIMARY} {}, {SECONDARY} {}",
            has_vip(&lab, PRIMARY)?,
            has_vip(&lab, SECONDARY)?
        );
    }

    let sample = measure(&lab).map_err(|e| with_logs(e, &dir))?;
    if !has_vip(&lab, SECONDARY)? {
        bail!("a connection succeeded after the kill but {SECONDARY} does not hold the VIP");
    }
    drop(guard);
    Ok(sample)
}

/// Appends the tails of the run's logs to an error.
fn with_logs(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let mut s = String::new();
    if let Ok(rd) = fs::read_dir(dir) {
        let mut files: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect();
        files.sort();
        for f in files {
            let _ = write!(s, "\n--- {} (last lines)\n{}", f.display(), tail(&f, 15));
        }
    }
    // The error first: the table quotes the first line of a failed run's error.
    anyhow!("{e:#}\nlogs:{s}")
}

fn tail(p: &Path, n: usize) -> String {
    let t = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// keepalived

fn keepalived_conf(node: u8, advert: &str) -> String {
    let peer = 3 - node;
    let (state, priority) = if node == 1 { ("MASTER", 200) } else { ("BACKUP", BACKUP_PRIORITY) };
    format!(
        "global_defs {{
  router_id n{node}
  vrrp_version 3
}}

vrrp_instance web {{
  state {state}
  interface eth0
  virtual_router_id 51
  priority {priority}
  advert_int {advert}
  unicast_src_ip 198.18.0.{node}
  unicast_peer {{
    198.18.0.{peer}
  }}
  virtual_ipaddress {{
    {VIP}/24 dev eth0
  }}
}}
"
    )
}

fn start_keepalived(lab: &Lab, guard: &mut LabGuard, dir: &Path, advert: &str) -> Result<()> {
    let mut logs = Vec::new();
    for (i, node) in [(1u8, PRIMARY), (2, SECONDARY)] {
        // /tmp is shared by the hosts: the file name says which node it is for.
        let conf = dir.join(format!("{node}-keepalived.conf"));
        fs::write(&conf, keepalived_conf(i, advert))?;
        let log_path = dir.join(format!("{node}-keepalived.log"));
        let log = File::create(&log_path)?;
        let conf_s = conf.to_string_lossy().into_owned();
        // -n: foreground; -l: log to the console; -G: no syslog; -P: VRRP only; pid files in
        // the node's private /run, so that instances never collide.
        let argv = [
            "keepalived",
            "-n",
            "-l",
            "-D",
            "-G",
            "-P",
            "-f",
            &conf_s,
            "-p",
            "/run/keepalived-bench.pid",
            "-r",
            "/run/keepalived-bench-vrrp.pid",
            "-c",
            "/run/keepalived-bench-checkers.pid",
        ];
        let child = lab
            .command(node, &argv)?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting keepalived on {node}"))?;
        guard.children.push(child);
        logs.push(log_path);
    }
    let deadline = Instant::now() + KEEPALIVED_READY_DEADLINE;
    loop {
        let master = fs::read_to_string(&logs[0]).unwrap_or_default();
        let backup = fs::read_to_string(&logs[1]).unwrap_or_default();
        if backup.contains("Entering MASTER STATE") {
            return Err(with_logs(anyhow!("keepalived on {SECONDARY} became master before the kill"), dir));
        }
        if master.contains("Entering MASTER STATE") && backup.contains("Entering BACKUP STATE") {
            return Ok(());
        }
        for (k, c) in guard.children.iter_mut().enumerate().skip(2) {
            if let Some(st) = c.try_wait()? {
                return Err(with_logs(anyhow!("keepalived on {} exited: {st}", ["n1", "n2"][k - 2]), dir));
            }
        }
        if Instant::now() > deadline {
            return Err(with_logs(
                anyhow!(
                    "keepalived not in MASTER ({PRIMARY}) / BACKUP ({SECONDARY}) after {:?}",
                    KEEPALIVED_READY_DEADLINE
                ),
                dir,
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// tandem

fn module_toml(pulse: &str, timeout: &str) -> String {
    // No replicated directory and no hooks: the listener runs on both nodes in advance, so the
    // failover is the VIP move alone (as with keepalived).
    format!(
        "name = \"web\"
kind = \"mirror\"
id = 1

[[node]]
name = \"n1\"

[[node]]
name = \"n2\"

[heartbeat]
pulse = \"{pulse}\"
timeout = \"{timeout}\"

[[vip]]
address = \"{VIP}/24\"
interface = \"eth0\"
"
    )
}

/// A uniformly random duration in [0, max), to the microsecond.
fn random_below(max: Duration) -> Result<Duration> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    let us = max.as_micros().max(1) as u64;
    Ok(Duration::from_micros(u64::from_le_bytes(b) % us))
}

fn start_tandem(lab: &Lab, guard: &mut LabGuard, dir: &Path, pulse: &str, timeout: &str) -> Result<()> {
    let files = [
        ("cluster.toml", cluster_toml(), "/etc/tandem/cluster.toml", "0644"),
        ("cluster.key", random_key()?, "/etc/tandem/cluster.key", "0600"),
        ("module.toml", module_toml(pulse, timeout), "/etc/tandem/modules/web/module.toml", "0644"),
    ];
    for (name, content, _, _) in &files {
        fs::write(dir.join(name), content)?;
    }
    let mut logs = Vec::new();
    for node in [PRIMARY, SECONDARY] {
        for (name, _, dest, mode) in &files {
            let src = dir.join(name);
            let src = src.to_string_lossy();
            run_in(lab, node, &["install", "-D", "-m", *mode, &src, *dest], &[0])?;
        }
        let log_path = dir.join(format!("{node}-tandem.log"));
        let log = File::create(&log_path)?;
        let child = lab
            .command(node, &[TANDEM, "daemon"])?
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting tandem daemon on {node}"))?;
        guard.children.push(child);
        logs.push(log_path);
    }
    let daemons = guard.children.len() - 2..guard.children.len();
    let check_daemons = |guard: &mut LabGuard| -> Result<()> {
        for (k, idx) in daemons.clone().enumerate() {
            if let Some(st) = guard.children[idx].try_wait()? {
                bail!("tandem daemon on {} exited: {st}", [PRIMARY, SECONDARY][k]);
            }
        }
        Ok(())
    };

    // The control socket: `tandem state` answers.
    for node in [PRIMARY, SECONDARY] {
        let deadline = Instant::now() + TANDEM_SOCKET_DEADLINE;
        loop {
            let o = output_in(lab, node, &[TANDEM, "state"])?;
            if o.status.success() {
                break;
            }
            check_daemons(guard).map_err(|e| with_logs(e, dir))?;
            if Instant::now() > deadline {
                return Err(with_logs(
                    anyhow!("`tandem state` on {node} still fails after {:?}: {}", TANDEM_SOCKET_DEADLINE, text(&o)),
                    dir,
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    // Roles: start on both, prim on n1, second on n2.
    let steps: [(&str, &str); 4] = [(PRIMARY, "start"), (SECONDARY, "start"), (PRIMARY, "prim"), (SECONDARY, "second")];
    for (node, verb) in steps {
        let deadline = Instant::now() + TANDEM_COMMAND_DEADLINE;
        loop {
            let o = output_in(lab, node, &[TANDEM, verb, "-m", "web"])?;
            if o.status.success() {
                break;
            }
            check_daemons(guard).map_err(|e| with_logs(e, dir))?;
            if Instant::now() > deadline {
                return Err(with_logs(anyhow!("`tandem {verb} -m web` on {node} fails: {}", text(&o)), dir));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    // PRIM (exit code 3) on n1, SECOND (4) on n2.
    let deadline = Instant::now() + TANDEM_ROLES_DEADLINE;
    loop {
        let a = output_in(lab, PRIMARY, &[TANDEM, "state", "-m", "web"])?;
        let b = output_in(lab, SECONDARY, &[TANDEM, "state", "-m", "web"])?;
        if a.status.code() == Some(3) && b.status.code() == Some(4) {
            return Ok(());
        }
        check_daemons(guard).map_err(|e| with_logs(e, dir))?;
        if Instant::now() > deadline {
            return Err(with_logs(
                anyhow!(
                    "not PRIM ({PRIMARY}) / SECOND ({SECONDARY}) after {:?}:\n{PRIMARY}: {}\n{SECONDARY}: {}",
                    TANDEM_ROLES_DEADLINE,
                    text(&a),
                    text(&b)
                ),
                dir,
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Kills the primary and waits for the first connection to the VIP from the client.
fn measure(lab: &Lab) -> Result<Sample> {
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP, PORT));
    let ns = netns_file(lab, "client")?;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    let probe = thread::spawn(move || -> Result<Option<Instant>> {
        enter_netns(&ns)?;
        // The service answers on the VIP (through the primary) right before the kill: the
        // client's neighbour entry for the VIP is fresh, as for a client in use.
        connect_until(vip, PRECHECK_DEADLINE).context("before the kill, the VIP does not answer from the client")?;
        let _ = ready_tx.send(());
        if !go_rx.recv().unwrap_or(false) {
            return Ok(None);
        }
        Ok(first_connection(vip, FAILOVER_DEADLINE))
    });
    if ready_rx.recv().is_err() {
        // The probe ended before being ready: its error says why.
        return Err(match probe.join() {
            Ok(Err(e)) => e,
            _ => anyhow!("the client probe died"),
        });
    }
    // `Lab::kill` takes the machine-wide lab lock first, which other labs on the machine may hold
    // for a while: the power loss itself (the same SIGKILL of the whole cgroup that `Lab::kill`
    // sends) is triggered directly, so that the clock starts when the primary's processes die.
    // `Lab::kill` then finishes the job (waits for the group to be empty, cable down, state).
    let cgroup_kill =
        tandem_lab::cgroup2_mount()?.join("tandem-lab").join(lab.name()).join(PRIMARY).join("cgroup.kill");
    let t0 = Instant::now();
    let sigkill = fs::write(&cgroup_kill, "1");
    let killed = lab.kill(PRIMARY);
    let kill = t0.elapsed();
    let _ = go_tx.send(killed.is_ok());
    let first = probe.join().map_err(|_| anyhow!("the client probe panicked"))??;
    sigkill.with_context(|| format!("writing {}", cgroup_kill.display()))?;
    killed.with_context(|| format!("killing {PRIMARY}"))?;
    match first {
        Some(t) => Ok(Sample { failover: t.duration_since(t0), kill }),
        None => bail!("no connection to {vip} from the client within {:?} of the kill of {PRIMARY}", FAILOVER_DEADLINE),
    }
}

/// Starts a connection to `addr` every ATTEMPT_INTERVAL (each in its own thread, which inherits
/// the calling thread's network namespace) until one succeeds; returns when it did.
fn first_connection(addr: SocketAddr, deadline: Duration) -> Option<Instant> {
    let (tx, rx) = mpsc::channel::<Instant>();
    let start = Instant::now();
    let mut next = start;
    let mut inflight: Vec<thread::JoinHandle<()>> = Vec::new();
    let mut found = None;
    while found.is_none() && start.elapsed() < deadline {
        let tx = tx.clone();
        inflight.push(thread::spawn(move || {
            if TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT).is_ok() {
                let _ = tx.send(Instant::now());
            }
        }));
        next += ATTEMPT_INTERVAL;
        if let Ok(t) = rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            found = Some(t);
        }
        let (done, running): (Vec<_>, Vec<_>) = inflight.into_iter().partition(|h| h.is_finished());
        for h in done {
            let _ = h.join();
        }
        inflight = running;
    }
    drop(tx);
    for h in inflight {
        let _ = h.join();
    }
    // Attempts in flight may have succeeded earlier than the one seen first.
    rx.try_iter().chain(found).min()
}

/// Connects (and closes) until it works, or errors after `deadline`.
fn connect_until(addr: SocketAddr, deadline: Duration) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        let e = match TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > end {
            bail!("connecting to {addr}: {e} (for {deadline:?})");
        }
        thread::sleep(ATTEMPT_INTERVAL);
    }
}

/// Runs `f` in a thread that has entered the client's network namespace.
fn in_client<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = netns_file(lab, "client")?;
    thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("client thread panicked"))?
}

fn netns_file(lab: &Lab, host: &str) -> Result<File> {
    let p = Path::new("/run/netns").join(lab.netns(host)?);
    File::open(&p).with_context(|| format!("opening {}", p.display()))
}

/// Is the VIP on the node's eth0?
fn has_vip(lab: &Lab, node: &str) -> Result<bool> {
    let o = run_in(lab, node, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"], &[0])?;
    let needle = format!("inet {VIP}/");
    Ok(String::from_utf8_lossy(&o.stdout).contains(&needle))
}

// ---------------------------------------------------------------------------------------------
// Commands inside nodes

/// Runs a command in a node with the bench's timeout; returns its output whatever its exit code.
fn output_in(lab: &Lab, node: &str, argv: &[&str]) -> Result<Output> {
    labcmd::output_in(lab, node, argv, COMMAND_TIMEOUT)
}

/// Like `output_in`, but an exit code outside `ok` is an error.
fn run_in(lab: &Lab, node: &str, argv: &[&str], ok: &[i32]) -> Result<Output> {
    labcmd::run_in(lab, node, argv, ok, COMMAND_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// System calls std does not wrap (glibc is linked anyway)

/// Moves the calling thread (and the threads it spawns later) into a network namespace.
fn enter_netns(ns: &File) -> Result<()> {
    // SAFETY: a plain system call on a descriptor we own; it affects only this thread.
    if unsafe { sys::setns(ns.as_raw_fd(), sys::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns into the client's network namespace");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

fn render(selected: &[Config], results: &BTreeMap<&str, Results>, runs: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| configuration | detection timers | runs | median | max | all runs (s) |");
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for c in selected {
        let empty = Results::default();
        let r = results.get(c.name).unwrap_or(&empty);
        let v: Vec<f64> = r.samples.iter().map(|s| s.failover.as_secs_f64()).collect();
        let runs_cell = if r.errors.is_empty() {
            format!("{}", v.len())
        } else if r.errors.iter().any(|e| e.starts_with("not run")) {
            "not run".to_string()
        } else {
            format!("{}/{runs} ({} failed)", v.len(), runs - v.len().min(runs))
        };
        let (med, max, raw) = if v.is_empty() {
            ("–".to_string(), "–".to_string(), "–".to_string())
        } else {
            (
                format!("{:.2} s", median(&v)),
                format!("{:.2} s", v.iter().cloned().fold(f64::MIN, f64::max)),
                v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
            )
        };
        let _ = writeln!(t, "| {} | {} | {runs_cell} | {med} | {max} | {raw} |", c.name, c.timers);
        for e in &r.errors {
            let first = e.lines().next().unwrap_or("");
            notes.push(format!("- {}: {first}", c.name));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(t, "\nNot measured or failed:\n\n{}", notes.join("\n"));
    }
    let kills: Vec<f64> = results.values().flat_map(|r| r.samples.iter().map(|s| s.kill.as_secs_f64())).collect();
    if !kills.is_empty() {
        let _ = writeln!(
            t,
            "\nThe kill itself (SIGKILL of the node's cgroup, then `Lab::kill`: processes reaped, cable down), included in the figures: median {:.3} s, max {:.3} s.",
            median(&kills),
            kills.iter().cloned().fold(f64::MIN, f64::max)
        );
    }
    t
}
