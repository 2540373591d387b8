//! Catch-up benchmark: tandem bringing a returning secondary up to date, against rsync bringing
//! the same stale copy up to date over the same lab link; and the first full copy against
//! `rsync -W` into an empty directory. One run, configurations side by side.
//!
//! Each run builds a fresh lab (`tandem lab`, 2 nodes, network 0 = 198.18.0.0/24, `/srv/web`
//! private to each node) and, for one data-set shape:
//! 1. writes the data set (`BENCH_SIZE_MIB`, 2048 MiB by default) into n1's `/srv/web` before any
//!    daemon runs: `image`, one file with random content, or `files`, 1 MiB files with random
//!    content;
//! 2. full copy, rsync: an `rsync --daemon` on n2 (modules `full` and `stale` under n2's private
//!    `/var/lib/tandem/bench`); from n1, `rsync -a -W --stats /srv/web/ rsync://198.18.0.2/full/`
//!    into an empty directory, then `sync` on n2 (timed apart); the copy is removed;
//! 3. full copy, tandem: daemons on both nodes, `start` and `prim` on n1 (ALONE), then `start` and
//!    `second` on n2: the time from n2's `start` to n2 SECOND and Ready (`tandem state -m web
//!    --json`: exit code 4, readiness `Ready`: caught up), and the `full copy
//!    done` line of n1's module log;
//! 4. waits `BENCH_AGE_SECS` (11 s): files changed less than the replication timeout + 5 s (10 s
//!    with the lab's 1 s heartbeat timeout) before tracking starts are compared whole;
//! 5. `stop` on n2 (a clean departure: n1 goes ALONE and tracks zones); n1 changes 1 % of the data
//!    set through its replicated directory (`image`: 20 scattered 1 MiB regions, 1 MiB-aligned;
//!    `files`: 1 % of the files rewritten in place), then `sync`;
//! 6. the stale copy for rsync: `cp -a --reflink=auto` of n2's `/srv/web` (as the secondary left
//!    it) to `/var/lib/tandem/bench/stale` on n2;
//! 7. catch-up, tandem: `start` on n2; the time from it to n2 SECOND (Ready), the `catch-up done` line of
//!    n1's module log (bytes sent, its own time), and the bytes n1's eth0 sent and received
//!    meanwhile; then `tandem verify` must say the copies are identical;
//! 8. catch-up, rsync: `stop` on n2 then n1 (n1's `/srv/web` is a plain directory again, so rsync
//!    reads the disk, not the FUSE layer), then from n1 `rsync -a --stats /srv/web/
//!    rsync://198.18.0.2/stale/` (rsync's delta algorithm, its defaults otherwise), then `sync` on
//!    n2; rsync's time, its "Total bytes sent/received", eth0's bytes; then the sha256 of every
//!    file of n1's `/srv/web` and of the stale copy must match.
//!
//! The page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`, machine-wide) before each
//! timed step, so that every configuration starts cold (`BENCH_DROP_CACHES=0` to keep caches);
//! then the programs timed (tandem's binary and rsync's, and their shared libraries) are read
//! back, so that neither is timed loading its own code.
//! Runs: `BENCH_RUNS` (3) of each shape, interleaved (run 1 of each shape, then run 2, ...).
//!
//! Environment: `BENCH_RUNS`, `BENCH_SHAPES` (`image,files`), `BENCH_SIZE_MIB` (2048),
//! `BENCH_AGE_SECS` (11), `BENCH_DROP_CACHES` (1), `BENCH_LAB_PREFIX` (default `cb<pid>`; lab
//! names are `<prefix>-<n>`), `BENCH_KEEP_LOGS=1` (keep the working directory with the daemon
//! logs and rsync outputs).
//!
//! Progress goes to stderr; the markdown tables and goals go to stdout. Exit code 1 when something
//! could not be measured or a copy differs, 0 otherwise (a goal not met is reported, not an
//! error). Started without `--bench` (as `cargo test --all-targets` does), it does nothing.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod common;
use common::labcmd::{output_in, run_in, sh_in, text};
use common::*;
use tandem_lab::{Lab, LabSpec};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

const PRIMARY: &str = "n1";
const SECONDARY: &str = "n2";
const SECONDARY_ADDR: &str = "198.18.0.2";
const REPL_DIR: &str = "/srv/web";
const BENCH_DIR: &str = "/var/lib/tandem/bench";
const STALE_DIR: &str = "/var/lib/tandem/bench/stale";
const FULL_DIR: &str = "/var/lib/tandem/bench/full";
const RSYNCD_CONF: &str = "/var/lib/tandem/bench/rsyncd.conf";
const MIB: u64 = 1 << 20;
/// 1 % of the data set changes: 20 regions (image) or files (files) of 1 MiB for 2048 MiB.
const CHANGED_PERCENT: f64 = 1.0;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
const SOCKET_DEADLINE: Duration = Duration::from_secs(20);
const ADMIN_DEADLINE: Duration = Duration::from_secs(10);
/// Writing, copying, hashing or transferring the whole data set.
const BULK_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Image,
    Files,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Image => "image",
            Shape::Files => "files",
        }
    }
}

struct Params {
    runs: usize,
    shapes: Vec<Shape>,
    size_mib: u64,
    age: Duration,
    drop_caches: bool,
}

impl Params {
    /// Regions (image) or files (files) changed: 1 % of the MiB, at least 1.
    fn changed(&self) -> u64 {
        ((self.size_mib as f64 * CHANGED_PERCENT / 100.0).round() as u64).max(1)
    }
    fn describe(&self, shape: Shape) -> String {
        match shape {
            Shape::Image => format!(
                "one {} MiB file of random bytes; {} regions of 1 MiB (1 MiB-aligned, spread over the file) rewritten with random bytes",
                self.size_mib,
                self.changed()
            ),
            Shape::Files => format!(
                "{} files of 1 MiB of random bytes in one directory; {} of them (spread) rewritten in place with random bytes",
                self.size_mib,
                self.changed()
            ),
        }
    }
}

/// The figures of one run of one shape.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// rsync -W into an empty directory: rsync's time, then the `sync` after it.
    rsync_full: f64,
    rsync_full_sync: f64,
    rsync_full_sent: u64,
    /// tandem's full copy: `second` to SECOND, and the time in the log line.
    tandem_full: f64,
    tandem_full_log: f64,
    /// tandem's catch-up: `start` to SECOND, and its log line.
    tandem_catchup: f64,
    tandem_catchup_log: f64,
    tandem_sent: u64,
    tandem_identical: u64,
    tandem_unread: u64,
    tandem_line: String,
    /// Bytes n1's eth0 sent + received during the catch-up.
    tandem_wire: u64,
    /// rsync -a over the stale copy.
    rsync_delta: f64,
    rsync_delta_sync: f64,
    rsync_sent: u64,
    rsync_received: u64,
    rsync_wire: u64,
}

// ---------------------------------------------------------------------------------------------
// Entry point

fn main() -> ExitCode {
    bench_main("catchup", bench)
}

fn bench() -> Result<bool> {
    require_root("catchup")?;
    set_child_subreaper();
    let mut shapes = Vec::new();
    for s in env_or("BENCH_SHAPES", "image,files").split(',') {
        shapes.push(match s.trim() {
            "image" => Shape::Image,
            "files" => Shape::Files,
            other => bail!("BENCH_SHAPES: unknown shape {other:?} (image, files)"),
        });
    }
    let p = Params {
        runs: env_num("BENCH_RUNS", "3", 1)? as usize,
        shapes,
        size_mib: env_num("BENCH_SIZE_MIB", "2048", 16)?,
        age: Duration::from_secs(env_num("BENCH_AGE_SECS", "11", 0)?),
        drop_caches: env_or("BENCH_DROP_CACHES", "1") != "0",
    };
    prerequisites()?;
    let tmp = tempfile::Builder::new().prefix("tandem-bench-catchup-").tempdir().context("working directory")?;
    let workdir = tmp.path().to_path_buf();
    let prefix = std::env::var("BENCH_LAB_PREFIX").unwrap_or_else(|_| format!("cb{}", std::process::id() % 100_000));
    eprintln!(
        "bench catchup: {} run(s) of {:?}, {} MiB each, {} changed; working directory {}",
        p.runs,
        p.shapes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        p.size_mib,
        p.changed(),
        workdir.display()
    );

    let mut results: Vec<(Shape, Vec<Sample>, Vec<String>)> = p.shapes.iter().map(|s| (*s, vec![], vec![])).collect();
    let mut loads: Vec<f64> = Vec::new();
    let mut n = 0;
    for run in 0..p.runs {
        for (shape, samples, errors) in results.iter_mut() {
            n += 1;
            let lab_name = format!("{prefix}-{n}");
            let t = Instant::now();
            loads.push(load_average());
            match one_run(&p, *shape, &workdir, &lab_name, run) {
                Ok(s) => {
                    eprintln!(
                        "bench catchup: run {}/{} {}: full copy rsync -W {:.1} s (+ sync {:.1} s), tandem {:.1} s; catch-up tandem {:.2} s ({} bytes sent), rsync {:.2} s (+ sync {:.2} s, {} bytes sent) ({:.0} s)",
                        run + 1,
                        p.runs,
                        shape.name(),
                        s.rsync_full,
                        s.rsync_full_sync,
                        s.tandem_full,
                        s.tandem_catchup,
                        s.tandem_sent,
                        s.rsync_delta,
                        s.rsync_delta_sync,
                        s.rsync_sent,
                        t.elapsed().as_secs_f64()
                    );
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("bench catchup: run {} {}: FAILED: {e:#}", run + 1, shape.name());
                    errors.push(format!("run {}: {}", run + 1, format!("{e:#}").lines().next().unwrap_or("")));
                }
            }
            loads.push(load_average());
        }
    }
    let text = render(&p, &results, &loads);
    print!("{text}");
    let _ = std::io::stdout().flush();
    let ok = results.iter().all(|(_, s, e)| e.is_empty() && !s.is_empty());
    if std::env::var("BENCH_KEEP_LOGS").as_deref() == Ok("1") || !ok {
        let kept = tmp.keep();
        eprintln!("bench catchup: logs kept in {}", kept.display());
    }
    Ok(ok)
}

fn prerequisites() -> Result<()> {
    let o = Command::new("rsync")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("rsync is not installed (apt-get install -y rsync)")?;
    if !o.status.success() {
        bail!("rsync --version failed: {}", text(&o));
    }
    let o = Command::new(TANDEM).args(["daemon", "--help"]).stdin(Stdio::null()).output()?;
    if !o.status.success() {
        bail!("this build of tandem has no `daemon` subcommand: {}", text(&o));
    }
    Ok(())
}

fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The lab

fn module_toml() -> String {
    // The lab's timers (pulse 200 ms, timeout 1 s: replication timeout 5 s, zone log margin
    // 10 s), the default zone size (1 MiB), no hooks.
    format!(
        "name = \"web\"
kind = \"mirror\"
id = 1

[[node]]
name = \"n1\"

[[node]]
name = \"n2\"

[heartbeat]
pulse = \"200ms\"
timeout = \"1s\"

[[replication.dir]]
path = \"{REPL_DIR}\"
"
    )
}

fn rsyncd_conf() -> String {
    format!(
        "use chroot = no
uid = root
gid = root
max connections = 4
log file = {BENCH_DIR}/rsyncd.log

[stale]
path = {STALE_DIR}
read only = no

[full]
path = {FULL_DIR}
read only = no
"
    )
}

/// Installs the configuration and starts both daemons (no module started yet).
fn start_daemons(lab: &Lab, guard: &mut LabGuard, dir: &Path, tag: &str) -> Result<()> {
    let files = [
        ("cluster.toml", cluster_toml(), "/etc/tandem/cluster.toml", "0644"),
        ("cluster.key", random_key()?, "/etc/tandem/cluster.key", "0600"),
        ("module.toml", module_toml(), "/etc/tandem/modules/web/module.toml", "0644"),
    ];
    for (name, content, _, _) in &files {
        fs::write(dir.join(name), content)?;
    }
    let o = Command::new(TANDEM)
        .args(["config", "check"])
        .arg(dir.join("cluster.toml"))
        .arg(dir.join("module.toml"))
        .stdin(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!("tandem config check rejects the bench's files: {}", text(&o));
    }
    for node in [PRIMARY, SECONDARY] {
        for (name, _, dest, mode) in &files {
            let src = dir.join(name);
            run_in(lab, node, &["install", "-D", "-m", mode, &src.to_string_lossy(), dest], &[0], COMMAND_TIMEOUT)?;
        }
        let log = File::create(dir.join(format!("{tag}-{node}-tandem.log")))?;
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
    for node in [PRIMARY, SECONDARY] {
        let deadline = Instant::now() + SOCKET_DEADLINE;
        loop {
            if output_in(lab, node, &[TANDEM, "state"], COMMAND_TIMEOUT)?.status.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!("`tandem state` on {node} still fails after {SOCKET_DEADLINE:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// `tandem <verb> -m web` on a node, retried until it succeeds (the daemon may be busy).
fn admin(lab: &Lab, node: &str, verb: &str) -> Result<()> {
    let deadline = Instant::now() + ADMIN_DEADLINE;
    loop {
        let o = output_in(lab, node, &[TANDEM, verb, "-m", "web"], COMMAND_TIMEOUT)?;
        if o.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("`tandem {verb} -m web` on {node} fails: {}", text(&o));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `tandem state -m web`'s exit code (STOP 0, WAIT 1, ALONE 2, PRIM 3, SECOND 4).
fn state(lab: &Lab, node: &str) -> Result<i32> {
    Ok(output_in(lab, node, &[TANDEM, "state", "-m", "web"], COMMAND_TIMEOUT)?.status.code().unwrap_or(-1))
}

/// Polls until the node is in `code`; returns when it was first seen there.
fn wait_state(lab: &Lab, node: &str, code: i32, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if state(lab, node)? == code {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{node} not in state {code} after {within:?} (state {})", state(lab, node)?);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until the node is SECOND and Ready (caught up: the state alone turns SECOND when the
/// catch-up starts); returns when it was first seen so.
fn wait_second_ready(lab: &Lab, node: &str, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let o = output_in(lab, node, &[TANDEM, "state", "-m", "web", "--json"], COMMAND_TIMEOUT)?;
        if o.status.code() == Some(4) {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("tandem state --json")?;
            if v[0]["readiness"].as_str() == Some("Ready") {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("{node} not SECOND (Ready) after {within:?}: {}", text(&o));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn module_log(lab: &Lab, node: &str) -> Result<String> {
    let o = run_in(lab, node, &[TANDEM, "log", "-m", "web", "-n", "1000"], &[0], COMMAND_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The last line of n1's module log containing `what`, waited for.
fn wait_log_line(lab: &Lab, what: &str, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let log = module_log(lab, PRIMARY)?;
        if let Some(l) = log.lines().rev().find(|l| l.contains(what)) {
            return Ok(l.to_string());
        }
        if Instant::now() > deadline {
            bail!("no {what:?} line in {PRIMARY}'s module log after {within:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The number just before `what` in `line` ("..., 123 bytes sent, ...").
fn number_before(line: &str, what: &str) -> Option<u64> {
    let i = line.find(what)?;
    line[..i].trim_end().rsplit(' ').next()?.replace(',', "").parse().ok()
}

/// The seconds of "in T s" in a done line.
fn secs_in(line: &str) -> Option<f64> {
    let i = line.rfind(" in ")?;
    line[i + 4..].split_whitespace().next()?.parse().ok()
}

/// Bytes sent + received by a node's eth0 (network 0) so far.
fn wire_bytes(lab: &Lab, node: &str) -> Result<u64> {
    let out = sh_in(
        lab,
        node,
        "cat /sys/class/net/eth0/statistics/tx_bytes /sys/class/net/eth0/statistics/rx_bytes",
        COMMAND_TIMEOUT,
    )?;
    let mut total = 0u64;
    for l in out.lines() {
        total += l.trim().parse::<u64>().with_context(|| format!("eth0 statistics: {out:?}"))?;
    }
    Ok(total)
}

fn drop_caches(p: &Params) -> Result<()> {
    if p.drop_caches {
        let st = Command::new("sync").status()?;
        if !st.success() {
            bail!("sync failed");
        }
        fs::write("/proc/sys/vm/drop_caches", "3\n").context("dropping the page cache")?;
        warm_programs()?;
    }
    Ok(())
}

/// Reads back the programs timed (tandem's binary, which the daemons run and every `tandem`
/// command loads, and rsync's) and their shared libraries: the data stays cold, but neither side
/// is timed loading its own code from the disk.
fn warm_programs() -> Result<()> {
    let rsync = which("rsync").ok_or_else(|| anyhow!("rsync not found in PATH"))?;
    let mut files = vec![TANDEM.to_string(), rsync.clone()];
    for prog in [TANDEM, rsync.as_str()] {
        let o = Command::new("ldd").arg(prog).output().context("ldd")?;
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            if let Some(path) = l.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(path.to_string());
            }
        }
    }
    for f in files {
        std::io::copy(&mut File::open(&f).with_context(|| f.clone())?, &mut std::io::sink())?;
    }
    Ok(())
}

fn which(prog: &str) -> Option<String> {
    std::env::var("PATH").ok()?.split(':').map(|d| format!("{d}/{prog}")).find(|p| Path::new(p).is_file())
}

/// rsync's "Total bytes sent: 1,234" and "Total bytes received: 56".
fn rsync_totals(out: &str) -> Result<(u64, u64)> {
    let get = |what: &str| -> Option<u64> {
        let l = out.lines().find(|l| l.trim_start().starts_with(what))?;
        l[l.find(':')? + 1..].split_whitespace().next()?.replace(',', "").parse().ok()
    };
    match (get("Total bytes sent:"), get("Total bytes received:")) {
        (Some(s), Some(r)) => Ok((s, r)),
        _ => bail!("no totals in rsync's --stats output: {out}"),
    }
}

/// Writes the data set into n1's /srv/web (no daemon runs yet).
fn make_data(lab: &Lab, p: &Params, shape: Shape) -> Result<()> {
    let py = match shape {
        Shape::Image => format!(
            "import os\nf = open('/srv/web/image', 'wb')\nfor i in range({}):\n    f.write(os.urandom(1 << 20))\nf.close()\n",
            p.size_mib
        ),
        Shape::Files => format!(
            "import os\nos.makedirs('/srv/web/files', exist_ok=True)\nfor i in range({}):\n    with open('/srv/web/files/f%05d' % i, 'wb') as f:\n        f.write(os.urandom(1 << 20))\n",
            p.size_mib
        ),
    };
    run_in(lab, PRIMARY, &["python3", "-c", &py], &[0], BULK_TIMEOUT)?;
    run_in(lab, PRIMARY, &["sync"], &[0], BULK_TIMEOUT)?;
    Ok(())
}

/// Which 1 MiB units change: `changed` of `total`, spread evenly (with an offset inside each
/// stride so they do not fall at regular boundaries).
fn changed_units(total: u64, changed: u64) -> Vec<u64> {
    let stride = total / changed;
    (0..changed).map(|k| k * stride + (k * 37 + 11) % stride.max(1)).collect()
}

/// Changes 1 % of the data set through n1's replicated directory (n1 ALONE), then syncs.
fn change_data(lab: &Lab, p: &Params, shape: Shape) -> Result<()> {
    let units = changed_units(p.size_mib, p.changed());
    let list = units.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ");
    let py = match shape {
        Shape::Image => format!(
            "import os\nfd = os.open('/srv/web/image', os.O_WRONLY)\nfor u in [{list}]:\n    os.pwrite(fd, os.urandom(1 << 20), u << 20)\nos.fsync(fd)\nos.close(fd)\n"
        ),
        Shape::Files => format!(
            "import os\nfor u in [{list}]:\n    fd = os.open('/srv/web/files/f%05d' % u, os.O_WRONLY)\n    os.pwrite(fd, os.urandom(1 << 20), 0)\n    os.fsync(fd)\n    os.close(fd)\n"
        ),
    };
    run_in(lab, PRIMARY, &["python3", "-c", &py], &[0], BULK_TIMEOUT)?;
    run_in(lab, PRIMARY, &["sync"], &[0], BULK_TIMEOUT)?;
    Ok(())
}

/// `find -type f | sha256sum` of a directory in a node, paths relative to it.
fn sums(lab: &Lab, node: &str, dir: &str) -> Result<String> {
    sh_in(lab, node, &format!("cd {dir} && find . -type f -print0 | sort -z | xargs -0 sha256sum"), BULK_TIMEOUT)
}

fn mount_type(lab: &Lab, node: &str, dir: &str) -> Result<Option<String>> {
    let o = run_in(lab, node, &["cat", "/proc/self/mounts"], &[0], COMMAND_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == dir).then(|| f[2].to_string())
        })
        .next_back())
}

fn one_run(p: &Params, shape: Shape, workdir: &Path, lab_name: &str, run: usize) -> Result<Sample> {
    let tag = format!("run{}-{}", run + 1, shape.name());
    let dir = workdir.join(&tag);
    fs::create_dir_all(&dir)?;
    let _ = tandem_lab::down(lab_name);
    let mut guard = LabGuard::new("catchup", lab_name);
    let lab = Lab::up(LabSpec::new(lab_name, 2).private_dir(REPL_DIR)).with_context(|| format!("lab {lab_name}"))?;
    let r = measure(p, shape, &lab, &mut guard, &dir, &tag);
    if let Err(e) = &r {
        // Keep what the daemons said.
        for node in [PRIMARY, SECONDARY] {
            if let Ok(l) = module_log(&lab, node) {
                let _ = fs::write(dir.join(format!("{node}-module.log")), l);
            }
        }
        let _ = fs::write(dir.join("error.txt"), format!("{e:#}"));
    }
    drop(guard);
    r
}

fn measure(p: &Params, shape: Shape, lab: &Lab, guard: &mut LabGuard, dir: &Path, tag: &str) -> Result<Sample> {
    let mut s = Sample::default();
    eprintln!("bench catchup: {tag}: writing {} MiB ({})", p.size_mib, shape.name());
    make_data(lab, p, shape)?;

    // rsync daemon on n2.
    run_in(lab, SECONDARY, &["mkdir", "-p", STALE_DIR, FULL_DIR], &[0], COMMAND_TIMEOUT)?;
    fs::write(dir.join("rsyncd.conf"), rsyncd_conf())?;
    run_in(
        lab,
        SECONDARY,
        &["install", "-m", "0644", &dir.join("rsyncd.conf").to_string_lossy(), RSYNCD_CONF],
        &[0],
        COMMAND_TIMEOUT,
    )?;
    let log = File::create(dir.join("n2-rsyncd.out"))?;
    let child = lab
        .command(
            SECONDARY,
            &[
                "rsync",
                "--daemon",
                "--no-detach",
                &format!("--config={RSYNCD_CONF}"),
                &format!("--address={SECONDARY_ADDR}"),
            ],
        )?
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting rsync --daemon on n2")?;
    guard.children.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let module_url = |m: &str| format!("rsync://{SECONDARY_ADDR}/{m}/");
    while !output_in(lab, PRIMARY, &["rsync", &module_url("full")], COMMAND_TIMEOUT)?.status.success() {
        if Instant::now() > deadline {
            bail!("rsync daemon on n2 does not answer");
        }
        thread::sleep(Duration::from_millis(100));
    }

    // 1. Full copy with rsync -W into an empty directory.
    drop_caches(p)?;
    let t = Instant::now();
    let o = run_in(
        lab,
        PRIMARY,
        &["rsync", "-a", "-W", "--stats", &format!("{REPL_DIR}/"), &module_url("full")],
        &[0],
        BULK_TIMEOUT,
    )?;
    s.rsync_full = t.elapsed().as_secs_f64();
    let t = Instant::now();
    run_in(lab, SECONDARY, &["sync"], &[0], BULK_TIMEOUT)?;
    s.rsync_full_sync = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    fs::write(dir.join("rsync-full.txt"), &out)?;
    s.rsync_full_sent = rsync_totals(&out)?.0;
    sh_in(lab, SECONDARY, &format!("rm -rf {FULL_DIR} && mkdir -p {FULL_DIR} && sync"), BULK_TIMEOUT)?;

    // 2. tandem: the first join is a full copy.
    start_daemons(lab, guard, dir, tag)?;
    admin(lab, PRIMARY, "start")?;
    admin(lab, PRIMARY, "prim")?;
    wait_state(lab, PRIMARY, 2, Duration::from_secs(30)).context("n1 ALONE before n2 joins")?;
    drop_caches(p)?;
    let t = Instant::now();
    admin(lab, SECONDARY, "start")?;
    let o = output_in(lab, SECONDARY, &[TANDEM, "second", "-m", "web"], COMMAND_TIMEOUT)?;
    if !o.status.success() {
        eprintln!("bench catchup: {tag}: `second` on n2 right after `start`: {}", text(&o));
    }
    let ready = wait_second_ready(lab, SECONDARY, BULK_TIMEOUT)?;
    s.tandem_full = (ready - t).as_secs_f64();
    let full_line = wait_log_line(lab, "full copy done: ", Duration::from_secs(30))?;
    s.tandem_full_log = secs_in(&full_line).unwrap_or(f64::NAN);
    eprintln!("bench catchup: {tag}: {}", full_line.trim());
    wait_state(lab, PRIMARY, 3, Duration::from_secs(30))?;
    match mount_type(lab, PRIMARY, REPL_DIR)? {
        Some(t) if t.starts_with("fuse") => {}
        other => bail!("{REPL_DIR} on n1 is not tandem's FUSE layer (mount type {other:?})"),
    }

    // 3. Age past the zone log's margin, then a clean departure of the secondary.
    thread::sleep(p.age);
    admin(lab, SECONDARY, "stop")?;
    wait_state(lab, PRIMARY, 2, Duration::from_secs(30)).context("n1 ALONE after n2's stop")?;
    wait_state(lab, SECONDARY, 0, Duration::from_secs(30)).context("n2 STOP")?;
    change_data(lab, p, shape)?;

    // 4. The stale copy for rsync: n2's copy as the secondary left it.
    sh_in(lab, SECONDARY, &format!("cp -a --reflink=auto {REPL_DIR}/. {STALE_DIR}/ && sync"), BULK_TIMEOUT)?;

    // 5. tandem's catch-up.
    drop_caches(p)?;
    let w0 = wire_bytes(lab, PRIMARY)?;
    let t = Instant::now();
    admin(lab, SECONDARY, "start")?;
    let ready = wait_second_ready(lab, SECONDARY, BULK_TIMEOUT)?;
    s.tandem_catchup = (ready - t).as_secs_f64();
    s.tandem_wire = wire_bytes(lab, PRIMARY)? - w0;
    let line = wait_log_line(lab, "catch-up done (", Duration::from_secs(30))?;
    eprintln!("bench catchup: {tag}: {}", line.trim());
    s.tandem_sent = number_before(&line, " bytes sent").ok_or_else(|| anyhow!("catch-up line: {line}"))?;
    s.tandem_identical = number_before(&line, " bytes identical").ok_or_else(|| anyhow!("catch-up line: {line}"))?;
    s.tandem_unread = number_before(&line, " bytes not read").ok_or_else(|| anyhow!("catch-up line: {line}"))?;
    s.tandem_catchup_log = secs_in(&line).unwrap_or(f64::NAN);
    s.tandem_line = line[line.find("catch-up done").unwrap_or(0)..].trim().to_string();
    wait_state(lab, PRIMARY, 3, Duration::from_secs(30))?;
    let o = run_in(lab, PRIMARY, &[TANDEM, "verify", "-m", "web"], &[0, 1], BULK_TIMEOUT)?;
    let v = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.code() != Some(0) || !v.contains("identical") {
        bail!("tandem verify after the catch-up: {}", text(&o));
    }

    // 6. rsync over the stale copy, from n1's plain directory.
    admin(lab, SECONDARY, "stop")?;
    wait_state(lab, PRIMARY, 2, Duration::from_secs(30))?;
    admin(lab, PRIMARY, "stop")?;
    wait_state(lab, PRIMARY, 0, Duration::from_secs(30))?;
    if let Some(t) = mount_type(lab, PRIMARY, REPL_DIR)?.filter(|t| t.starts_with("fuse")) {
        bail!("{REPL_DIR} on n1 is still mounted ({t}) after stop: rsync would read through it");
    }
    drop_caches(p)?;
    let w0 = wire_bytes(lab, PRIMARY)?;
    let t = Instant::now();
    let o = run_in(
        lab,
        PRIMARY,
        &["rsync", "-a", "--stats", &format!("{REPL_DIR}/"), &module_url("stale")],
        &[0],
        BULK_TIMEOUT,
    )?;
    s.rsync_delta = t.elapsed().as_secs_f64();
    let t = Instant::now();
    run_in(lab, SECONDARY, &["sync"], &[0], BULK_TIMEOUT)?;
    s.rsync_delta_sync = t.elapsed().as_secs_f64();
    s.rsync_wire = wire_bytes(lab, PRIMARY)? - w0;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    fs::write(dir.join("rsync-delta.txt"), &out)?;
    (s.rsync_sent, s.rsync_received) = rsync_totals(&out)?;
    let (a, b) = thread::scope(|sc| {
        let h = sc.spawn(|| sums(lab, SECONDARY, STALE_DIR));
        (sums(lab, PRIMARY, REPL_DIR), h.join().map_err(|_| anyhow!("panic")).and_then(|r| r))
    });
    let (a, b) = (a?, b?);
    if a != b || a.lines().count() == 0 {
        bail!("after rsync, the stale copy differs from n1's {REPL_DIR}");
    }
    for node in [PRIMARY, SECONDARY] {
        let _ = fs::write(dir.join(format!("{node}-module.log")), module_log(lab, node)?);
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Report

fn med(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(&samples.iter().map(f).collect::<Vec<_>>())
}

fn all(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> String {
    // Two decimals under a second (a catch-up), one above (a full copy).
    let one = |v: f64| if v < 1.0 { format!("{v:.2}") } else { format!("{v:.1}") };
    samples.iter().map(|s| one(f(s))).collect::<Vec<_>>().join(", ")
}

fn mib(b: f64) -> String {
    if b >= 10.0 * MIB as f64 {
        format!("{:.0} MiB", b / MIB as f64)
    } else {
        format!("{:.1} MiB", b / MIB as f64)
    }
}

fn render(p: &Params, results: &[(Shape, Vec<Sample>, Vec<String>)], loads: &[f64]) -> String {
    let mut t = String::new();
    let lmin = loads.iter().cloned().fold(f64::INFINITY, f64::min);
    let lmax = loads.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let _ = writeln!(
        t,
        "Data sets ({} MiB each, {} changed while the secondary was stopped; page cache dropped before each timed step: {}):\n",
        p.size_mib,
        p.changed(),
        if p.drop_caches { "yes" } else { "no" }
    );
    for (shape, _, _) in results {
        let _ = writeln!(t, "- `{}`: {}.", shape.name(), p.describe(*shape));
    }
    let _ = writeln!(t, "\nLoad average (1 min) at the start and end of each run: {lmin:.1}–{lmax:.1}.\n");

    let _ = writeln!(t, "Catch-up, median of the runs (all runs in the last column, in the order measured):\n");
    let _ = writeln!(
        t,
        "| data set | what | runs | time (s) | time + `sync` (s) | data sent | on the wire (n1's eth0, both ways) | all runs (s) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
    for (shape, ss, errs) in results {
        let runs =
            if errs.is_empty() { format!("{}", ss.len()) } else { format!("{} ({} failed)", ss.len(), errs.len()) };
        if ss.is_empty() {
            let _ = writeln!(t, "| {} | – | {runs} | – | – | – | – | – |", shape.name());
            continue;
        }
        let _ = writeln!(
            t,
            "| {} | tandem catch-up: `start` on n2 → SECOND (Ready) | {runs} | {:.2} | (included) | {} | {} | {} |",
            shape.name(),
            med(ss, |s| s.tandem_catchup),
            mib(med(ss, |s| s.tandem_sent as f64)),
            mib(med(ss, |s| s.tandem_wire as f64)),
            all(ss, |s| s.tandem_catchup)
        );
        let _ = writeln!(
            t,
            "| {} | tandem catch-up: the time in its log line | {runs} | {:.2} | (included) | | | {} |",
            shape.name(),
            med(ss, |s| s.tandem_catchup_log),
            all(ss, |s| s.tandem_catchup_log)
        );
        let _ = writeln!(
            t,
            "| {} | `rsync -a` over the same stale copy | {runs} | {:.2} | {:.2} | {} sent, {} received (rsync's totals) | {} | {} |",
            shape.name(),
            med(ss, |s| s.rsync_delta),
            med(ss, |s| s.rsync_delta + s.rsync_delta_sync),
            mib(med(ss, |s| s.rsync_sent as f64)),
            mib(med(ss, |s| s.rsync_received as f64)),
            mib(med(ss, |s| s.rsync_wire as f64)),
            all(ss, |s| s.rsync_delta)
        );
    }
    let _ = writeln!(t, "\nThe catch-up lines of n1's module log (last run of each data set):\n");
    for (shape, ss, _) in results {
        if let Some(s) = ss.last() {
            let _ = writeln!(t, "- `{}`: `{}`", shape.name(), s.tandem_line);
        }
    }

    let _ = writeln!(t, "\nFull copy (first join) of the same data set into an empty directory, median of the runs:\n");
    let _ = writeln!(t, "| data set | what | runs | time (s) | time + `sync` (s) | MiB/s | all runs (s) |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    let total = (p.size_mib * MIB) as f64 / MIB as f64;
    for (shape, ss, _) in results {
        if ss.is_empty() {
            continue;
        }
        let tf = med(ss, |s| s.tandem_full);
        let _ = writeln!(
            t,
            "| {} | tandem full copy: `start` + `second` on n2 → SECOND (Ready) | {} | {tf:.2} | (included) | {:.0} | {} |",
            shape.name(),
            ss.len(),
            total / tf,
            all(ss, |s| s.tandem_full)
        );
        let tl = med(ss, |s| s.tandem_full_log);
        let _ = writeln!(
            t,
            "| {} | tandem full copy: the time in its log line | {} | {tl:.2} | (included) | {:.0} | {} |",
            shape.name(),
            ss.len(),
            total / tl,
            all(ss, |s| s.tandem_full_log)
        );
        let rw = med(ss, |s| s.rsync_full);
        let rws = med(ss, |s| s.rsync_full + s.rsync_full_sync);
        let _ = writeln!(
            t,
            "| {} | `rsync -a -W` | {} | {rw:.2} | {rws:.2} | {:.0} ({:.0} with `sync`) | {} |",
            shape.name(),
            ss.len(),
            total / rw,
            total / rws,
            all(ss, |s| s.rsync_full)
        );
    }

    let verdict = |b: bool| if b { "**met**" } else { "**not met**" };
    let _ = writeln!(t, "\nGoals, on the medians above:\n");
    for (shape, ss, _) in results {
        if ss.is_empty() {
            let _ = writeln!(t, "- `{}`: not measured.", shape.name());
            continue;
        }
        let tc = med(ss, |s| s.tandem_catchup);
        let r = med(ss, |s| s.rsync_delta);
        let rs = med(ss, |s| s.rsync_delta + s.rsync_delta_sync);
        let _ = writeln!(
            t,
            "- `{}`, catch-up at least 3 × faster than rsync: {} against rsync with its `sync` ({tc:.2} s against {rs:.2} s: {:.1} ×); {} against rsync alone ({r:.2} s: {:.1} ×).",
            shape.name(),
            verdict(rs >= 3.0 * tc),
            rs / tc,
            verdict(r >= 3.0 * tc),
            r / tc
        );
        let tf = med(ss, |s| s.tandem_full);
        let rw = med(ss, |s| s.rsync_full);
        let rws = med(ss, |s| s.rsync_full + s.rsync_full_sync);
        let _ = writeln!(
            t,
            "- `{}`, full copy at least as fast as `rsync -W`: {} against `rsync -W` + `sync` ({tf:.2} s against {rws:.2} s); {} against `rsync -W` alone ({rw:.2} s).",
            shape.name(),
            verdict(tf <= rws),
            verdict(tf <= rw)
        );
    }
    let failed: Vec<String> =
        results.iter().flat_map(|(s, _, e)| e.iter().map(move |x| format!("- {}: {x}", s.name()))).collect();
    if !failed.is_empty() {
        let _ = writeln!(t, "\nFailed runs:\n\n{}", failed.join("\n"));
    }
    t
}
