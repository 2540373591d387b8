//! What the logs cost a sequential writer, on one FUSE mount, in one run: the same file written
//! through the same mount with no log, with the zone log of an ALONE primary (1 MiB zones, no
//! margin: its secondary left cleanly) and with the activity log of a primary whose secondary is
//! in sync (4 MiB zones), the three interleaved in every round and their order rotated from round
//! to round, so that the disk's state (the writeback the job before left) falls on each alike.
//! No replication: the layer serves ALONE (what the logs add is the same with a secondary).
//!
//!     cargo bench -p tandem-replication --bench seqwrite      # root (FUSE)
//!     BENCH_RUNS=7 BENCH_SIZE_MIB=512 BENCH_DIR=/var/tmp cargo bench -p tandem-replication --bench seqwrite
//!
//! Each job: `BENCH_SIZE_MIB` (512) MiB in 1 MiB `pwrite`s into a file of that size laid out
//! before the first round, then `fsync`: MB/s (10^6 bytes/s) with the `fsync` in the time, and
//! the appends the log made durable (each one `fdatasync`). A fresh log for every job, so every
//! zone is new to it. `BENCH_RUNS` (5) rounds, after one warm-up round not counted. No timing is
//! asserted; the figures go to stdout (docs/benchmarks.md, "Logs and sequential writes").

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_replication::activity::ActivityLog;
use tandem_replication::fs::{MountOptions, ReplicatedFs};
use tandem_replication::zonelog::ZoneLog;

const MIB: u64 = 1 << 20;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, PartialEq)]
enum Log {
    None,
    Zone,
    Activity,
}

impl Log {
    fn name(self) -> &'static str {
        match self {
            Log::None => "no log",
            Log::Zone => "zone log (ALONE, 1 MiB zones)",
            Log::Activity => "activity log (PRIM in sync, 4 MiB zones)",
        }
    }
}

const LOGS: [Log; 3] = [Log::None, Log::Zone, Log::Activity];

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench seqwrite: not run (no --bench): use `cargo bench -p tandem-replication --bench seqwrite`");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench seqwrite: {e}");
            ExitCode::from(1)
        }
    }
}

fn env_num(name: &str, default: u64) -> R<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{name}={v:?}: expected an integer ≥ 1").into()),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One job: the file written whole in order through the mount, then synced. MB/s.
fn job(file: &Path, size_mib: u64, buf: &[u8]) -> R<f64> {
    let t = Instant::now();
    let f = OpenOptions::new().write(true).open(file)?;
    for i in 0..size_mib {
        f.write_all_at(buf, i * MIB)?;
    }
    f.sync_all()?;
    drop(f);
    Ok((size_mib * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6)
}

fn bench() -> R<()> {
    let base = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    let runs = env_num("BENCH_RUNS", 5)?;
    let size_mib = env_num("BENCH_SIZE_MIB", 512)?;
    let tmp = tempfile::Builder::new().prefix("tandem-bench-seqwrite-").tempdir_in(&base)?;
    let dir = tmp.path().join("data");
    fs::create_dir(&dir)?;
    let logs = tmp.path().join("logs");
    fs::create_dir(&logs)?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Sequential writes through the FUSE layer in {}: {size_mib} MiB a job, {runs} round(s) after a warm-up; load average {}",
        dir.display(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let fsys = ReplicatedFs::mount(&dir, MountOptions::new("bench-seqwrite"), None)?;
    let file = dir.join("data");
    let buf: Vec<u8> = (0..MIB).map(|i| (i * 7 + 3) as u8).collect();
    // Laid out once, through the mount: every job then overwrites allocated blocks.
    {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&file)?;
        for i in 0..size_mib {
            f.write_all_at(&buf, i * MIB)?;
        }
        f.sync_all()?;
    }
    let mut mbps: Vec<Vec<f64>> = vec![Vec::new(); LOGS.len()];
    let mut records: Vec<Vec<u64>> = vec![Vec::new(); LOGS.len()];
    for round in 0..=runs {
        for k in 0..LOGS.len() {
            let i = (k + round as usize) % LOGS.len();
            let log = LOGS[i];
            let zone_path = logs.join("zones.log");
            let al_path = logs.join("activity.log");
            let (mut zl, mut al) = (None, None);
            match log {
                Log::None => {}
                Log::Zone => {
                    let _ = ZoneLog::remove(&zone_path);
                    let z = Arc::new(ZoneLog::open_with_margin(&zone_path, MIB, Duration::ZERO)?);
                    z.vouch_names();
                    fsys.set_zone_log(Some(z.clone()));
                    zl = Some(z);
                }
                Log::Activity => {
                    let a =
                        ActivityLog::start(&al_path, 4 * MIB, Duration::from_secs(3600), vec![fsys.backing_dir()?])?;
                    fsys.set_activity_log(Some(a.clone()));
                    al = Some(a);
                }
            }
            let before = zl.as_ref().map(|z| z.syncs()).or(al.as_ref().map(|a| a.records())).unwrap_or(0);
            let r = job(&file, size_mib, &buf)?;
            let n = zl.as_ref().map(|z| z.syncs()).or(al.as_ref().map(|a| a.records())).unwrap_or(0) - before;
            fsys.set_zone_log(None);
            fsys.set_activity_log(None);
            if let Some(a) = al {
                a.remove()?;
            }
            let _ = ZoneLog::remove(&zone_path);
            eprintln!(
                "bench seqwrite: round {round}/{runs}{}: {}: {r:.0} MB/s, {n} record append(s)",
                if round == 0 { " (warm-up)" } else { "" },
                log.name()
            );
            if round > 0 {
                mbps[i].push(r);
                records[i].push(n);
            }
        }
    }
    fsys.unmount()?;

    println!("\n| log | MB/s: median | against no log | record appends per job | all rounds (MB/s) |");
    println!("|---|---|---|---|---|");
    let none = median(&mbps[0]);
    for (i, log) in LOGS.iter().enumerate() {
        let m = median(&mbps[i]);
        let mut n = records[i].clone();
        n.sort_unstable();
        println!(
            "| {} | {m:.0} | {:.2} × | {} | {} |",
            log.name(),
            m / none,
            n[n.len() / 2],
            mbps[i].iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
