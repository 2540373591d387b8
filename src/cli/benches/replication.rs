//! Synchronous replication benchmark: fio on a plain directory, on a plain FUSE passthrough of it
//! (bindfs) and on tandem's replicated directory, in one lab and one run.
//!
//! One lab (`tandem lab`, 2 nodes, network 0 = 198.18.0.0/24, `/srv/web` private to each node) with
//! the daemons running and the mirror module `web` PRIM on n1 and SECOND on n2, replicating
//! `/srv/web` (tandem's FUSE layer mounted over it on n1, ack mode `written`, the default). fio runs
//! inside n1 on these targets, all on the same disk:
//! - `local`: `/var/lib/tandem/bench/plain`, a plain directory of n1 (not replicated);
//! - `bindfs`: `/var/lib/tandem/bench/bindfs`, `bindfs` of that same directory (a FUSE
//!   passthrough that does nothing else: the cost of going through FUSE);
//! - `tandem`: `/srv/web`, through tandem's FUSE layer, every write acknowledged by n2;
//! - `two-local`: the same job as `local` on n1 while n2 runs it at the same time on its own
//!   plain directory (same disk): what writing two copies costs this one disk with no software in
//!   between. In the lab both copies of `tandem` share that disk, so this is its ceiling;
//! - `tandem-noal`: `/srv/noal`, a second mirror module (`noal`, PRIM on n1 and SECOND on n2 too)
//!   with `activity_log = false`: what the activity log costs `tandem`, in the same run.
//!
//! Jobs (psync, no preallocation, one file per target and job, removed before each run):
//! - `seq-1m`: sequential 1 MiB writes of `BENCH_SEQ_SIZE` (512m), one fsync at the end
//!   (`--end_fsync=1`, inside the time measured); figure: MB/s (10^6 bytes per second);
//! - `rand-4k-fsync`: 4 KiB random writes in a file of `BENCH_RAND_SIZE` (64m), fsync after each
//!   (`--fsync=1`), until the file's size was written or `BENCH_RAND_RUNTIME` seconds (20);
//!   figures: IOPS, the p50/p99 of the writes' completion latency and of the fsyncs' latency.
//!
//! Each job runs `BENCH_RUNS` times (3) on each target, interleaved (round 1 of every target and
//! job, then round 2, ...), and the table gives medians. Each round also pings n2 from n1 (20
//! echoes, 50 ms apart) for the network round trip. After every job on `tandem` the bench checks
//! that n1 is still PRIM and n2 SECOND (a primary that went ALONE would be measured without
//! replication); at the end it compares a listing and the sha256 of every file of `/srv/web` on
//! both nodes, and fails if they differ.
//!
//! Environment: `BENCH_RUNS`, `BENCH_SEQ_SIZE`, `BENCH_RAND_SIZE` (fio sizes), `BENCH_RAND_RUNTIME`
//! (seconds), `BENCH_TARGETS` (the targets run and their order in a round, by letter: default
//! `a,b,c,d,e`), `BENCH_JOBS` (default `seq-1m,rand-4k-fsync`), `BENCH_LAB_PREFIX` (default `rb<pid>`: the lab's name is `<prefix>-0`;
//! scripts/bench-replication.sh uses it to clean up after an interrupted run), `BENCH_KEEP_LOGS=1`
//! (keep the working directory: configuration, daemon logs, fio's JSON).
//!
//! Progress goes to stderr; the markdown table, the goals and the identity check go to stdout. The
//! exit code is 1 when something could not be measured or the copies differ, 0 otherwise (a goal
//! that is not met is reported, not an error). Started without `--bench` (as `cargo test
//! --all-targets` does), it does nothing.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod common;
use common::labcmd::{output_in, run_in, text};
use common::*;
use serde_json::Value;
use tandem_lab::{Lab, LabSpec};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

const PRIMARY: &str = "n1";
const SECONDARY: &str = "n2";
/// n2 on the replication network (network 0).
const SECONDARY_ADDR: &str = "198.18.0.2";
/// The replicated directory (private to each node of the lab).
const REPL_DIR: &str = "/srv/web";
/// Target (e): a second module, `noal`, with `activity_log = false`.
const NOAL_DIR: &str = "/srv/noal";
const MODULES: [&str; 2] = ["web", "noal"];
/// The plain directory and its bindfs mount point, inside n1's private /var/lib/tandem (same disk).
const PLAIN_DIR: &str = "/var/lib/tandem/bench/plain";
const BINDFS_DIR: &str = "/var/lib/tandem/bench/bindfs";

/// Deadlines of the set-up steps.
const SOCKET_DEADLINE: Duration = Duration::from_secs(20);
const ADMIN_DEADLINE: Duration = Duration::from_secs(10);
const ROLES_DEADLINE: Duration = Duration::from_secs(60);
const MOUNT_DEADLINE: Duration = Duration::from_secs(10);
/// Any short command run inside a node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// A sequential fio job (512 MiB at 5 MB/s would still fit).
const SEQ_TIMEOUT: Duration = Duration::from_secs(240);
/// A random-write job: its runtime bound plus the layout of the file and fio's start.
const RAND_MARGIN: Duration = Duration::from_secs(120);
/// `sync` before each job, the ping, the final listings.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
const LISTING_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Targets and jobs

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Local,
    Bindfs,
    Tandem,
    TwoLocal,
    TandemNoActivityLog,
}

const TARGETS: [Target; 5] =
    [Target::Local, Target::Bindfs, Target::Tandem, Target::TwoLocal, Target::TandemNoActivityLog];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Local => "(a) local",
            Target::Bindfs => "(b) bindfs",
            Target::Tandem => "(c) tandem",
            Target::TwoLocal => "(d) local on n1 and n2 at once",
            Target::TandemNoActivityLog => "(e) tandem, `activity_log = false`",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::Bindfs => "bindfs",
            Target::Tandem => "tandem",
            Target::TwoLocal => "two-local",
            Target::TandemNoActivityLog => "tandem-noal",
        }
    }
    fn dir(self) -> &'static str {
        match self {
            Target::Local => PLAIN_DIR,
            Target::Bindfs => BINDFS_DIR,
            Target::Tandem => REPL_DIR,
            Target::TwoLocal => PLAIN_DIR,
            Target::TandemNoActivityLog => NOAL_DIR,
        }
    }
    fn replicated(self) -> bool {
        matches!(self, Target::Tandem | Target::TandemNoActivityLog)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Seq,
    Rand,
}

const JOBS: [Job; 2] = [Job::Seq, Job::Rand];

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Seq => "seq-1m",
            Job::Rand => "rand-4k-fsync",
        }
    }
}

struct Params {
    runs: usize,
    /// The targets and jobs run, in this order (`BENCH_TARGETS`, `BENCH_JOBS`).
    targets: Vec<Target>,
    jobs: Vec<Job>,
    seq_size: String,
    rand_size: String,
    rand_runtime: u64,
}

impl Params {
    fn fio_args(&self, job: Job, target: Target) -> Vec<String> {
        let file = format!("{}-{}.fio", job.name(), target.tag());
        let mut a: Vec<String> = vec![
            "fio".into(),
            format!("--name={}", job.name()),
            format!("--directory={}", target.dir()),
            format!("--filename={file}"),
            "--ioengine=psync".into(),
            "--fallocate=none".into(),
            "--output-format=json".into(),
        ];
        match job {
            Job::Seq => a.extend(
                ["--rw=write", "--bs=1m", &format!("--size={}", self.seq_size), "--end_fsync=1"].map(String::from),
            ),
            Job::Rand => a.extend(
                [
                    "--rw=randwrite",
                    "--bs=4k",
                    &format!("--size={}", self.rand_size),
                    "--fsync=1",
                    &format!("--runtime={}", self.rand_runtime),
                ]
                .map(String::from),
            ),
        }
        a
    }

    fn timeout(&self, job: Job) -> Duration {
        match job {
            Job::Seq => SEQ_TIMEOUT,
            Job::Rand => Duration::from_secs(self.rand_runtime) + RAND_MARGIN,
        }
    }

    fn describe(&self, job: Job) -> String {
        match job {
            Job::Seq => format!("`--rw=write --bs=1m --size={} --end_fsync=1`", self.seq_size),
            Job::Rand => {
                format!("`--rw=randwrite --bs=4k --size={} --fsync=1 --runtime={}`", self.rand_size, self.rand_runtime)
            }
        }
    }
}

/// The figures of one fio run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    mbps: f64,
    iops: f64,
    /// Completion latency of the writes (`clat_ns`), µs.
    write_p50: f64,
    write_p99: f64,
    /// Latency of the fsyncs (`sync.lat_ns`), µs; None when the job made none per write.
    fsync_p50: Option<f64>,
    fsync_p99: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Entry point

fn main() -> ExitCode {
    bench_main("replication", bench)
}

fn bench() -> Result<bool> {
    require_root("replication")?;
    set_child_subreaper();
    let runs_s = env_or("BENCH_RUNS", "3");
    let runs: usize = runs_s
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| anyhow!("BENCH_RUNS={runs_s:?}: expected an integer ≥ 1"))?;
    let rt_s = env_or("BENCH_RAND_RUNTIME", "20");
    let rand_runtime: u64 = rt_s
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| anyhow!("BENCH_RAND_RUNTIME={rt_s:?}: expected seconds ≥ 1"))?;
    // A subset, or another order within a round: a target's place in the round may matter (the
    // page cache and the writeback the one before it left).
    let targets_s = env_or("BENCH_TARGETS", "a,b,c,d,e");
    let targets = targets_s
        .split(',')
        .map(|l| match l.trim() {
            "a" => Ok(Target::Local),
            "b" => Ok(Target::Bindfs),
            "c" => Ok(Target::Tandem),
            "d" => Ok(Target::TwoLocal),
            "e" => Ok(Target::TandemNoActivityLog),
            other => Err(anyhow!("BENCH_TARGETS={targets_s:?}: {other:?} is not a target (a, b, c, d or e)")),
        })
        .collect::<Result<Vec<_>>>()?;
    let jobs_s = env_or("BENCH_JOBS", "seq-1m,rand-4k-fsync");
    let jobs = jobs_s
        .split(',')
        .map(|j| {
            JOBS.into_iter()
                .find(|k| k.name() == j.trim())
                .ok_or_else(|| anyhow!("BENCH_JOBS={jobs_s:?}: {:?} is not a job (seq-1m or rand-4k-fsync)", j.trim()))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].contains(t) {
            bail!("BENCH_TARGETS={targets_s:?}: {} is named twice", t.name());
        }
    }
    for (i, j) in jobs.iter().enumerate() {
        if jobs[..i].contains(j) {
            bail!("BENCH_JOBS={jobs_s:?}: {} is named twice", j.name());
        }
    }
    let p = Params {
        runs,
        targets,
        jobs,
        seq_size: env_or("BENCH_SEQ_SIZE", "512m"),
        rand_size: env_or("BENCH_RAND_SIZE", "64m"),
        rand_runtime,
    };
    for (k, v) in [("BENCH_SEQ_SIZE", &p.seq_size), ("BENCH_RAND_SIZE", &p.rand_size)] {
        if !v.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("{k}={v:?}: expected a fio size such as 512m");
        }
    }
    prerequisites()?;

    let tmp = tempfile::Builder::new()
        .prefix("tandem-bench-replication-")
        .tempdir()
        .context("creating the working directory")?;
    let workdir = tmp.path().to_path_buf();
    let prefix = std::env::var("BENCH_LAB_PREFIX").unwrap_or_else(|_| format!("rb{}", std::process::id() % 100_000));
    let lab_name = format!("{prefix}-0");
    eprintln!(
        "bench replication: {runs} run(s) of {} jobs on {} targets in lab {lab_name}; working directory {}",
        p.jobs.len(),
        p.targets.len(),
        workdir.display()
    );

    let outcome = measure_all(&p, &workdir, &lab_name);
    let ok = match outcome {
        Ok(report) => {
            print!("{}", report.text);
            let _ = std::io::stdout().flush();
            report.ok
        }
        Err(e) => {
            eprintln!("bench replication: {e:#}");
            false
        }
    };
    if std::env::var("BENCH_KEEP_LOGS").as_deref() == Ok("1") || !ok {
        let kept = tmp.keep();
        eprintln!("bench replication: logs kept in {}", kept.display());
    }
    Ok(ok)
}

fn prerequisites() -> Result<()> {
    for (tool, arg, pkg) in
        [("fio", "--version", "fio"), ("bindfs", "--version", "bindfs"), ("fusermount3", "-V", "fuse3")]
    {
        let o = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{tool} is not installed (apt-get install -y {pkg})"))?;
        if !o.status.success() {
            bail!("{tool} {arg} failed: {}", text(&o));
        }
    }
    let o = Command::new(TANDEM).args(["daemon", "--help"]).stdin(Stdio::null()).output()?;
    if !o.status.success() {
        bail!("this build of tandem has no `daemon` subcommand: {}", text(&o));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The lab

fn module_toml(name: &str) -> String {
    // Heartbeat defaults, ack mode `written` (the default), no hooks: only the replication works.
    let (id, dir, extra) = match name {
        "web" => (1, REPL_DIR, ""),
        _ => (2, NOAL_DIR, "[replication]\nactivity_log = false\n\n"),
    };
    format!(
        "name = \"{name}\"
kind = \"mirror\"
id = {id}

[[node]]
name = \"n1\"

[[node]]
name = \"n2\"

{extra}[[replication.dir]]
path = \"{dir}\"
"
    )
}

fn start_tandem(lab: &Lab, guard: &mut LabGuard, dir: &Path) -> Result<()> {
    let files = [
        ("cluster.toml", cluster_toml(), "/etc/tandem/cluster.toml", "0644"),
        ("cluster.key", random_key()?, "/etc/tandem/cluster.key", "0600"),
        ("module.toml", module_toml("web"), "/etc/tandem/modules/web/module.toml", "0644"),
        ("noal.toml", module_toml("noal"), "/etc/tandem/modules/noal/module.toml", "0644"),
    ];
    for (name, content, _, _) in &files {
        fs::write(dir.join(name), content)?;
    }
    let o = Command::new(TANDEM)
        .args(["config", "check"])
        .arg(dir.join("cluster.toml"))
        .arg(dir.join("module.toml"))
        .arg(dir.join("noal.toml"))
        .stdin(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!("tandem config check rejects the bench's files: {}", text(&o));
    }
    let first = guard.children.len();
    for node in [PRIMARY, SECONDARY] {
        for (name, _, dest, mode) in &files {
            let src = dir.join(name);
            let src = src.to_string_lossy();
            run_in(lab, node, &["install", "-D", "-m", mode, &src, dest], &[0], COMMAND_TIMEOUT)?;
        }
        let log = File::create(dir.join(format!("{node}-tandem.log")))?;
        let child = lab
            .command(node, &[TANDEM, "daemon"])?
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting tandem daemon on {node}"))?;
        guard.children.push(child);
    }
    let check_daemons = |guard: &mut LabGuard| -> Result<()> {
        for (k, node) in [PRIMARY, SECONDARY].iter().enumerate() {
            if let Some(st) = guard.children[first + k].try_wait()? {
                bail!("tandem daemon on {node} exited: {st}");
            }
        }
        Ok(())
    };
    for node in [PRIMARY, SECONDARY] {
        let deadline = Instant::now() + SOCKET_DEADLINE;
        loop {
            let o = output_in(lab, node, &[TANDEM, "state"], COMMAND_TIMEOUT)?;
            if o.status.success() {
                break;
            }
            check_daemons(guard).map_err(|e| with_logs(e, dir))?;
            if Instant::now() > deadline {
                return Err(with_logs(anyhow!("`tandem state` on {node} still fails: {}", text(&o)), dir));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    let steps = [(PRIMARY, "start"), (SECONDARY, "start"), (PRIMARY, "prim"), (SECONDARY, "second")];
    for (module, (node, verb)) in MODULES.iter().flat_map(|m| steps.iter().map(move |s| (*m, *s))) {
        let deadline = Instant::now() + ADMIN_DEADLINE;
        loop {
            let o = output_in(lab, node, &[TANDEM, verb, "-m", module], COMMAND_TIMEOUT)?;
            if o.status.success() {
                break;
            }
            check_daemons(guard).map_err(|e| with_logs(e, dir))?;
            if Instant::now() > deadline {
                return Err(with_logs(anyhow!("`tandem {verb} -m {module}` on {node} fails: {}", text(&o)), dir));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    let deadline = Instant::now() + ROLES_DEADLINE;
    loop {
        if roles(lab)? {
            return Ok(());
        }
        check_daemons(guard).map_err(|e| with_logs(e, dir))?;
        if Instant::now() > deadline {
            return Err(with_logs(
                anyhow!("not PRIM ({PRIMARY}) / SECOND ({SECONDARY}) after {ROLES_DEADLINE:?}"),
                dir,
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// PRIM (exit code 3) on n1 and SECOND (4) on n2, for both modules?
fn roles(lab: &Lab) -> Result<bool> {
    for m in MODULES {
        let a = output_in(lab, PRIMARY, &[TANDEM, "state", "-m", m], COMMAND_TIMEOUT)?;
        let b = output_in(lab, SECONDARY, &[TANDEM, "state", "-m", m], COMMAND_TIMEOUT)?;
        if a.status.code() != Some(3) || b.status.code() != Some(4) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The mount of `dir` in n1 (its fstype), from /proc/self/mounts.
fn mount_type(lab: &Lab, dir: &str) -> Result<Option<String>> {
    let o = run_in(lab, PRIMARY, &["cat", "/proc/self/mounts"], &[0], COMMAND_TIMEOUT)?;
    // The last mount on that point is the one seen.
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == dir).then(|| f[2].to_string())
        })
        .next_back())
}

fn start_bindfs(lab: &Lab, guard: &mut LabGuard, dir: &Path) -> Result<()> {
    run_in(lab, PRIMARY, &["mkdir", "-p", PLAIN_DIR, BINDFS_DIR], &[0], COMMAND_TIMEOUT)?;
    run_in(lab, SECONDARY, &["mkdir", "-p", PLAIN_DIR], &[0], COMMAND_TIMEOUT)?;
    let log = File::create(dir.join("n1-bindfs.log"))?;
    // -f: foreground, so the bench owns the process; no option: a plain passthrough.
    let child = lab
        .command(PRIMARY, &["bindfs", "-f", PLAIN_DIR, BINDFS_DIR])?
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting bindfs on n1")?;
    guard.children.push(child);
    let deadline = Instant::now() + MOUNT_DEADLINE;
    loop {
        if mount_type(lab, BINDFS_DIR)?.is_some_and(|t| t.starts_with("fuse")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(with_logs(
                anyhow!("bindfs is not mounted on {BINDFS_DIR} in {PRIMARY} after {MOUNT_DEADLINE:?}"),
                dir,
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn stop_bindfs(lab: &Lab) -> Result<()> {
    run_in(lab, PRIMARY, &["fusermount3", "-u", BINDFS_DIR], &[0], COMMAND_TIMEOUT)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measuring

struct Report {
    text: String,
    ok: bool,
}

#[derive(Default)]
struct Cell {
    samples: Vec<Sample>,
    errors: Vec<String>,
}

fn measure_all(p: &Params, dir: &Path, lab_name: &str) -> Result<Report> {
    let _ = tandem_lab::down(lab_name);
    let mut guard = LabGuard::new("replication", lab_name);
    let lab = Lab::up(LabSpec::new(lab_name, 2).private_dir(REPL_DIR).private_dir(NOAL_DIR))
        .with_context(|| format!("building lab {lab_name}"))?;
    let t0 = Instant::now();
    start_tandem(&lab, &mut guard, dir)?;
    for d in [REPL_DIR, NOAL_DIR] {
        match mount_type(&lab, d)? {
            Some(t) if t.starts_with("fuse") => {}
            other => bail!("{d} on {PRIMARY} is not tandem's FUSE layer (mount type {other:?})"),
        }
    }
    start_bindfs(&lab, &mut guard, dir)?;
    eprintln!(
        "bench replication: PRIM on {PRIMARY}, SECOND on {SECONDARY}, bindfs mounted ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    let mut cells: Vec<((Target, Job), Cell)> =
        TARGETS.iter().flat_map(|t| JOBS.iter().map(move |j| ((*t, *j), Cell::default()))).collect();
    let mut rtts: Vec<f64> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut replication_lost = false;
    for i in 0..p.runs {
        match ping_rtt(&lab) {
            Ok(us) => {
                eprintln!("bench replication: round {}: ping {PRIMARY} → {SECONDARY} average {us:.0} µs", i + 1);
                rtts.push(us);
            }
            Err(e) => notes.push(format!("- ping, round {}: {e:#}", i + 1)),
        }
        for &job in &p.jobs {
            for &target in &p.targets {
                let cell = &mut cells.iter_mut().find(|(k, _)| *k == (target, job)).expect("cell").1;
                if target.replicated() && replication_lost {
                    cell.errors.push(format!("run {}: not run: the replication was lost earlier", i + 1));
                    continue;
                }
                let t = Instant::now();
                let r = run_fio(&lab, p, job, target, dir, i);
                let r = r.and_then(|s| {
                    if target.replicated() && !roles(&lab)? {
                        replication_lost = true;
                        bail!("after the job {PRIMARY} is no longer PRIM or {SECONDARY} no longer SECOND: measured without replication");
                    }
                    Ok(s)
                });
                match r {
                    Ok(s) => {
                        eprintln!(
                            "bench replication: round {}/{}: {} {}: {} ({:.1} s)",
                            i + 1,
                            p.runs,
                            target.name(),
                            job.name(),
                            summary(job, &s),
                            t.elapsed().as_secs_f64()
                        );
                        cell.samples.push(s);
                    }
                    Err(e) => {
                        eprintln!(
                            "bench replication: round {}: {} {}: FAILED: {e:#}",
                            i + 1,
                            target.name(),
                            job.name()
                        );
                        cell.errors.push(format!("run {}: {e:#}", i + 1));
                    }
                }
            }
        }
    }

    // Clean up bindfs first: what follows needs only tandem.
    if let Err(e) = stop_bindfs(&lab) {
        notes.push(format!("- unmounting bindfs: {e:#}"));
    }
    // The copies of each replicated directory the run wrote into.
    let written: Vec<&str> = [(Target::Tandem, REPL_DIR), (Target::TandemNoActivityLog, NOAL_DIR)]
        .into_iter()
        .filter(|(t, _)| p.targets.contains(t))
        .map(|(_, d)| d)
        .collect();
    let identical: Result<Vec<usize>> = written.iter().map(|d| compare_copies(&lab, dir, d, p.jobs.len())).collect();
    let ok_identity = identical.is_ok();
    let identity_line = match &identical {
        Ok(_) if written.is_empty() => "Copies after the run: not compared (no replicated target was run).".to_string(),
        Ok(n) => format!(
            "Copies after the run: **identical** on {PRIMARY} and {SECONDARY} ({}: listing with kinds, modes, owners and sizes, and the sha256 of every file).",
            written.iter().zip(n).map(|(d, n)| format!("{n} entries of {d}")).collect::<Vec<_>>().join(", ")
        ),
        Err(e) => format!("Copies after the run: **DIFFERENT** on {PRIMARY} and {SECONDARY}: {}", e.to_string().lines().next().unwrap_or("")),
    };
    if let Err(e) = &identical {
        eprintln!("bench replication: copies differ: {e:#}");
    }
    drop(guard);

    let mut text = render(p, &cells, &rtts);
    let _ = writeln!(text, "\n{identity_line}");
    let mut failed = Vec::new();
    for ((t, j), c) in &cells {
        for e in &c.errors {
            failed.push(format!("- {} {}: {}", t.name(), j.name(), e.lines().next().unwrap_or("")));
        }
    }
    failed.extend(notes);
    if !failed.is_empty() {
        let _ = writeln!(text, "\nNot measured or failed:\n\n{}", failed.join("\n"));
    }
    let ok = ok_identity && failed.is_empty();
    Ok(Report { text, ok })
}

fn summary(job: Job, s: &Sample) -> String {
    match job {
        Job::Seq => format!("{:.0} MB/s, 1 MiB write p50 {:.0} µs p99 {:.0} µs", s.mbps, s.write_p50, s.write_p99),
        Job::Rand => format!(
            "{:.0} IOPS, write p50 {:.0} µs p99 {:.0} µs, fsync p50 {} µs p99 {} µs",
            s.iops,
            s.write_p50,
            s.write_p99,
            s.fsync_p50.map(|v| format!("{v:.0}")).unwrap_or("–".into()),
            s.fsync_p99.map(|v| format!("{v:.0}")).unwrap_or("–".into())
        ),
    }
}

/// One fio job in n1 (and for `two-local` the same job in n2 at the same time; n1's figures are
/// reported): the file is removed first and everything is synced, so every run starts from the
/// same state.
fn run_fio(lab: &Lab, p: &Params, job: Job, target: Target, dir: &Path, round: usize) -> Result<Sample> {
    let file = format!("{}/{}-{}.fio", target.dir(), job.name(), target.tag());
    let nodes: &[&str] = if target == Target::TwoLocal { &[PRIMARY, SECONDARY] } else { &[PRIMARY] };
    for node in nodes {
        run_in(lab, node, &["rm", "-f", &file], &[0], COMMAND_TIMEOUT)?;
    }
    run_in(lab, PRIMARY, &["sync"], &[0], SYNC_TIMEOUT)?;
    let args = p.fio_args(job, target);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = thread::scope(|scope| -> Result<Output> {
        let other =
            (target == Target::TwoLocal).then(|| scope.spawn(|| run_in(lab, SECONDARY, &argv, &[0], p.timeout(job))));
        let mine = run_in(lab, PRIMARY, &argv, &[0], p.timeout(job));
        if let Some(h) = other {
            h.join().map_err(|_| anyhow!("the fio of {SECONDARY} panicked"))?.context("the fio of n2")?;
        }
        mine
    })?;
    if target == Target::TwoLocal {
        run_in(lab, SECONDARY, &["rm", "-f", &file], &[0], COMMAND_TIMEOUT)?;
    }
    let raw = String::from_utf8_lossy(&o.stdout).into_owned();
    fs::write(dir.join(format!("fio-{}-{}-run{}.json", target.tag(), job.name(), round + 1)), &raw)?;
    parse_fio(&raw).with_context(|| format!("parsing fio's output ({})", raw.chars().take(200).collect::<String>()))
}

/// The figures of fio's JSON output (warnings before the JSON are skipped).
fn parse_fio(raw: &str) -> Result<Sample> {
    let start = raw.find('{').ok_or_else(|| anyhow!("no JSON in fio's output"))?;
    let mut de = serde_json::Deserializer::from_str(&raw[start..]).into_iter::<Value>();
    let v = de.next().ok_or_else(|| anyhow!("empty JSON"))??;
    let j = v.get("jobs").and_then(|j| j.get(0)).ok_or_else(|| anyhow!("no jobs[0]"))?;
    if j.get("error").and_then(Value::as_i64).unwrap_or(0) != 0 {
        bail!("fio reports error {}", j["error"]);
    }
    let w = &j["write"];
    let num = |x: &Value, what: &str| x.as_f64().ok_or_else(|| anyhow!("no {what} in fio's JSON"));
    let pct = |lat: &Value, p: &str| -> Option<f64> { lat.get("percentile")?.get(p)?.as_f64().map(|ns| ns / 1000.0) };
    let io_bytes = num(&w["io_bytes"], "write.io_bytes")?;
    if io_bytes <= 0.0 {
        bail!("fio wrote nothing");
    }
    let sync = &j["sync"]["lat_ns"];
    let fsyncs = sync.get("N").and_then(Value::as_u64).unwrap_or(0);
    Ok(Sample {
        mbps: num(&w["bw_bytes"], "write.bw_bytes")? / 1e6,
        iops: num(&w["iops"], "write.iops")?,
        write_p50: pct(&w["clat_ns"], "50.000000").ok_or_else(|| anyhow!("no write clat p50"))?,
        write_p99: pct(&w["clat_ns"], "99.000000").ok_or_else(|| anyhow!("no write clat p99"))?,
        fsync_p50: if fsyncs > 0 { pct(sync, "50.000000") } else { None },
        fsync_p99: if fsyncs > 0 { pct(sync, "99.000000") } else { None },
    })
}

/// Average round trip n1 → n2 on the replication network, µs (20 echoes, 50 ms apart).
fn ping_rtt(lab: &Lab) -> Result<f64> {
    let o = run_in(
        lab,
        PRIMARY,
        &["ping", "-n", "-q", "-c", "20", "-i", "0.05", "-W", "1", SECONDARY_ADDR],
        &[0],
        SYNC_TIMEOUT,
    )?;
    let out = String::from_utf8_lossy(&o.stdout);
    // "rtt min/avg/max/mdev = 0.031/0.052/0.090/0.012 ms"
    let line =
        out.lines().find(|l| l.contains("min/avg/max")).ok_or_else(|| anyhow!("no summary in ping's output: {out}"))?;
    let nums = line.split('=').nth(1).ok_or_else(|| anyhow!("ping summary: {line}"))?;
    let avg: f64 =
        nums.trim().split('/').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("ping summary: {line}"))?;
    Ok(avg * 1000.0)
}

/// A listing (kinds, modes, owners, sizes, link targets) and the sha256 of every file of the
/// replicated directory, made the same way on both nodes.
const LISTING: &str =
    "find . -mindepth 1 -printf '%p %y %m %U:%G %s %l\\n' | sort && find . -type f -exec sha256sum {} + | sort";

/// Compares the copies of the replicated directory `repl` (into which `jobs` fio jobs wrote);
/// returns the number of entries.
fn compare_copies(lab: &Lab, dir: &Path, repl: &str, jobs: usize) -> Result<usize> {
    // Every fio job ended with an fsync the secondary acknowledged as durable; nothing is in flight.
    let listing = format!("cd {repl} && {LISTING}");
    let a = run_in(lab, PRIMARY, &["sh", "-c", &listing], &[0], LISTING_TIMEOUT)?;
    let b = run_in(lab, SECONDARY, &["sh", "-c", &listing], &[0], LISTING_TIMEOUT)?;
    let (a, b) = (String::from_utf8_lossy(&a.stdout).into_owned(), String::from_utf8_lossy(&b.stdout).into_owned());
    let tag = repl.trim_start_matches("/srv/");
    fs::write(dir.join(format!("listing-{tag}-n1.txt")), &a)?;
    fs::write(dir.join(format!("listing-{tag}-n2.txt")), &b)?;
    // sha256sum lines are "<64 hex digits>  ./name"; the others are the listing's.
    let is_sum = |l: &&str| l.len() > 66 && l[..64].bytes().all(|b| b.is_ascii_hexdigit()) && &l[64..66] == "  ";
    let files = a.lines().filter(is_sum).count();
    let entries = a.lines().count() - files;
    if files < jobs {
        bail!("fewer fio files than jobs in {repl} on {PRIMARY}: {a}");
    }
    if a != b {
        let first = a
            .lines()
            .zip(b.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("{PRIMARY}: {x} / {SECONDARY}: {y}"))
            .unwrap_or_else(|| {
                format!("{} lines on {PRIMARY}, {} on {SECONDARY}", a.lines().count(), b.lines().count())
            });
        bail!("the listings of {repl} differ (first difference: {first})");
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------------------------
// Report

/// Median of one figure over the runs of a cell, if every run has it.
fn med(c: &Cell, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = c.samples.iter().filter_map(&f).collect();
    (!v.is_empty() && v.len() == c.samples.len()).then(|| median(&v))
}

fn us(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "–".into())
}

fn render(p: &Params, cells: &[((Target, Job), Cell)], rtts: &[f64]) -> String {
    let get = |t: Target, j: Job| &cells.iter().find(|(k, _)| *k == (t, j)).expect("cell").1;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| target | job | runs | median | write p50 (µs) | write p99 (µs) | fsync p50 (µs) | fsync p99 (µs) | all runs |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for job in JOBS.into_iter().filter(|j| p.jobs.contains(j)) {
        for target in TARGETS.into_iter().filter(|t| p.targets.contains(t)) {
            let c = get(target, job);
            let fig = |s: &Sample| match job {
                Job::Seq => s.mbps,
                Job::Rand => s.iops,
            };
            let unit = match job {
                Job::Seq => "MB/s",
                Job::Rand => "IOPS",
            };
            let runs = if c.errors.is_empty() {
                format!("{}", c.samples.len())
            } else {
                format!("{}/{} ({} failed)", c.samples.len(), p.runs, c.errors.len())
            };
            let main = med(c, |s| Some(fig(s))).map(|v| format!("{v:.0} {unit}")).unwrap_or("–".into());
            let all = c.samples.iter().map(|s| format!("{:.0}", fig(s))).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                t,
                "| {} | {} | {runs} | {main} | {} | {} | {} | {} | {} |",
                target.name(),
                job.name(),
                us(med(c, |s| Some(s.write_p50))),
                us(med(c, |s| Some(s.write_p99))),
                us(med(c, |s| s.fsync_p50)),
                us(med(c, |s| s.fsync_p99)),
                if all.is_empty() { "–".into() } else { all }
            );
        }
    }
    let _ = writeln!(t, "\nJobs: `seq-1m` = {}; `rand-4k-fsync` = {}.", p.describe(Job::Seq), p.describe(Job::Rand));

    let rtt = (!rtts.is_empty()).then(|| median(rtts));
    let _ = writeln!(
        t,
        "\nNetwork round trip {PRIMARY} → {SECONDARY} (ping, 20 echoes per round, median of the rounds' averages): {} µs{}.",
        us(rtt),
        if rtts.is_empty() {
            String::new()
        } else {
            format!(" (rounds: {})", rtts.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", "))
        }
    );

    let _ = writeln!(t, "\nGoals (issue 4), on the medians above:\n");
    let verdict = |b: bool| if b { "**met**" } else { "**not met**" };
    let seq = |tg| med(get(tg, Job::Seq), |s| Some(s.mbps));
    match (seq(Target::Local), seq(Target::Bindfs), seq(Target::Tandem)) {
        (Some(a), Some(b), Some(c)) => {
            let r = c / a;
            let _ = writeln!(
                t,
                "- sequential throughput (c) ≥ 0.6 × (a): {}: {c:.0} MB/s = {r:.2} × {a:.0} MB/s.",
                verdict(r >= 0.6)
            );
            let _ = writeln!(
                t,
                "- sequential throughput (c) faster than (b): {}: {c:.0} MB/s against {b:.0} MB/s ({:.2} ×).",
                verdict(c > b),
                c / b
            );
            if let Some(d) = seq(Target::TwoLocal) {
                let _ = writeln!(
                    t,
                    "- (the ceiling of this machine, not a goal) two plain copies written at once on its one disk, (d): {d:.0} MB/s = {:.2} × (a); (c) reaches {:.2} × (d).",
                    d / a,
                    c / d
                );
            }
        }
        _ => {
            let _ = writeln!(t, "- sequential throughput: not evaluated (a target was not measured).");
        }
    }
    let fp99 = |tg| med(get(tg, Job::Rand), |s| s.fsync_p99);
    match (fp99(Target::Local), fp99(Target::Tandem), rtt) {
        (Some(a), Some(c), Some(r)) => {
            let bound = a + r + 200.0;
            let _ = writeln!(
                t,
                "- 4 KiB fsync latency p99 (c) ≤ local p99 + one round trip + 200 µs: {}: {c:.0} µs against {a:.0} + {r:.0} + 200 = {bound:.0} µs.",
                verdict(c <= bound)
            );
            if let Some(d) = fp99(Target::TwoLocal) {
                let _ = writeln!(
                    t,
                    "- (the ceiling of this machine, not a goal) 4 KiB fsync p99 with both nodes' plain copies flushing at once on the one disk, (d): {d:.0} µs; (d) + round trip + 200 µs = {:.0} µs.",
                    d + r + 200.0
                );
            }
        }
        _ => {
            let _ =
                writeln!(t, "- 4 KiB fsync latency p99: not evaluated (a target or the round trip was not measured).");
        }
    }
    let wp99 = |tg| med(get(tg, Job::Rand), |s| Some(s.write_p99));
    if let (Some(a), Some(c), Some(r)) = (wp99(Target::Local), wp99(Target::Tandem), rtt) {
        let _ = writeln!(
            t,
            "- (for reference, not a goal) the 4 KiB write before each fsync, p99: {c:.0} µs through (c), {a:.0} µs local; local + round trip + 200 µs = {:.0} µs.",
            a + r + 200.0
        );
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Commands inside nodes

/// Appends the tails of the run's logs to an error.
fn with_logs(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let mut s = String::new();
    if let Ok(rd) = fs::read_dir(dir) {
        let mut files: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect();
        files.sort();
        for f in files {
            let t = fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            let _ =
                write!(s, "\n--- {} (last lines)\n{}", f.display(), lines[lines.len().saturating_sub(15)..].join("\n"));
        }
    }
    anyhow!("{e:#}\nlogs:{s}")
}

// ---------------------------------------------------------------------------------------------
// System calls std does not wrap (glibc is linked anyway)
