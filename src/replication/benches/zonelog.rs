//! What the zone log costs (src/zonelog.rs): the durable record before the first write into a
//! zone, a later write into a recorded zone, and a log of 1,000,000 files (one zone each): its
//! size on disk, the time to load it and the memory it takes.
//!
//!     cargo bench -p tandem-replication --bench zonelog
//!
//! Measured in a temporary directory under `BENCH_DIR` (default `/var/tmp`, the disk the daemon's
//! `/var/lib/tandem` is on here):
//! 1. first write into a new zone: `before_write` of 4 KiB into a zone not recorded yet (each call
//!    a new file, so each appends one 32-byte record and `fdatasync`s it), `BENCH_SAMPLES` (2000)
//!    calls, interleaved one for one with the floor: a 32-byte `pwrite` + `fdatasync` into a
//!    zeroed, synced file of the same directory (what any durable record costs on this disk);
//! 2. later writes into a recorded zone: `before_write` into zones already recorded, in a log of a
//!    few files and in the loaded log of 1,000,000 files (random files among them);
//! 3. the log of 1,000,000 files, one zone each: written through `before_write` on tmpfs
//!    (`/dev/shm`, where `fdatasync` is free: 1,000,000 syncs on the disk would take half an hour),
//!    copied to the disk directory and synced; then `ZoneLog::open_or_start` on it in a fresh
//!    child process (this bench re-run with `--load`), `BENCH_LOADS` (5) times, with the page cache
//!    dropped first (cold; root only) and without (warm), with the child's RSS (VmRSS) before and
//!    after the load, and its peak (VmHWM).
//!
//! No timing is asserted; the figures go to stdout.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use tandem_replication::zonelog::ZoneLog;

const MIB: u64 = 1 << 20;
const ZONE: u64 = 1 << 20;
const FILES: u64 = 1_000_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--load") {
        return match child_load(Path::new(&args[i + 1])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zonelog child: {e}");
                ExitCode::from(1)
            }
        };
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("bench zonelog: not run (no --bench): use `cargo bench -p tandem-replication --bench zonelog`");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench zonelog: {e}");
            ExitCode::from(1)
        }
    }
}

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn old() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i]
}

fn status_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse().ok())
        })
        .unwrap_or(0)
}

fn bench() -> R<()> {
    let base = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    let samples = env_num("BENCH_SAMPLES", 2000) as usize;
    let loads = env_num("BENCH_LOADS", 5) as usize;
    let tmp = tempfile::Builder::new().prefix("tandem-bench-zonelog-").tempdir_in(&base)?;
    let dir = tmp.path();
    let fsinfo = Command::new("df").args(["--output=source,fstype"]).arg(dir).output()?;
    let fsline = String::from_utf8_lossy(&fsinfo.stdout)
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Zone log bench in {} ({fsline}), load average {}",
        dir.display(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    // 1. First write into a new zone, against the floor of a 32-byte pwrite + fdatasync.
    let log = ZoneLog::open_or_start(&dir.join("zones.log"), ZONE)?;
    let floor = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("floor"))?;
    floor.write_all_at(&vec![0u8; MIB as usize], 0)?;
    floor.sync_all()?;
    let rec = [0xa5u8; 32];
    let (mut first, mut fl) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    // A few warm-up rounds of each.
    for i in 0..20u64 {
        log.before_write((9, 1_000_000 + i), 0, 4096, old());
        floor.write_all_at(&rec, (MIB - 32 * (i + 1)) % MIB)?;
        floor.sync_data()?;
    }
    for i in 0..samples as u64 {
        let t = Instant::now();
        log.before_write((1, i), 3 * ZONE, 4096, old());
        first.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        floor.write_all_at(&rec, (i * 32) % MIB)?;
        floor.sync_data()?;
        fl.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (records, files) = log.size();
    println!("\nFirst write into a new zone ({samples} calls, interleaved with the floor; log: {records} records, {files} files):\n");
    println!("| what | p50 (µs) | p99 (µs) | max (µs) |");
    println!("|---|---|---|---|");
    let mx = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (f50, f99, fmax) = (pct(&mut first, 50.0), pct(&mut first, 99.0), mx(&first));
    let (g50, g99, gmax) = (pct(&mut fl, 50.0), pct(&mut fl, 99.0), mx(&fl));
    println!(
        "| `before_write`, first write into a zone (one durable 32-byte record) | {f50:.0} | {f99:.0} | {fmax:.0} |"
    );
    println!("| floor: 32-byte `pwrite` + `fdatasync` on the same disk | {g50:.0} | {g99:.0} | {gmax:.0} |");
    println!("| ratio | {:.2} | {:.2} | |", f50 / g50, f99 / g99);

    // 2a. Later writes into a recorded zone, small log.
    let n = 1_000_000u64;
    let o = old();
    let t = Instant::now();
    for i in 0..n {
        log.before_write(black_box((1, i % 64)), black_box(3 * ZONE + (i % 256) * 4096), 4096, o);
    }
    let later_small = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    if log.size() != (records, files) {
        return Err("writes into recorded zones appended records".into());
    }
    drop(log);

    // 3. The log of 1,000,000 files, one zone each, written on tmpfs then copied to the disk.
    let shm = tempfile::Builder::new().prefix("tandem-bench-zonelog-").tempdir_in("/dev/shm")?;
    let t = Instant::now();
    {
        let big = ZoneLog::open_or_start(&shm.path().join("zones.log"), ZONE)?;
        let o = old();
        for i in 0..FILES {
            big.before_write((2049, 100_000 + i), (i % 4096) * ZONE, 4096, o);
        }
        if big.size() != (FILES, FILES as usize) || big.lost() {
            return Err(format!("the big log has {:?} records/files (lost: {})", big.size(), big.lost()).into());
        }
    }
    let write_tmpfs = t.elapsed().as_secs_f64();
    let big = dir.join("big.log");
    fs::copy(shm.path().join("zones.log"), &big)?;
    File::open(&big)?.sync_all()?;
    drop(shm);
    let meta = fs::metadata(&big)?;
    use std::os::unix::fs::MetadataExt;
    println!("\nA log of {FILES} files with one zone each ({FILES} records; written through `before_write` on tmpfs in {write_tmpfs:.1} s, then copied to the disk):\n");
    println!("- size on disk: {} bytes ({:.1} MiB; {} KiB allocated): a 4 KiB header + 32 bytes per record, grown by zeroed MiB", meta.len(), meta.len() as f64 / MIB as f64, meta.blocks() / 2);

    let exe = std::env::current_exe()?;
    let can_drop = fs::OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches").is_ok();
    let mut rows: Vec<(&str, Vec<ChildFigures>)> = Vec::new();
    for (label, cold) in [("cold (page cache dropped)", true), ("warm (log in the page cache)", false)] {
        if cold && !can_drop {
            continue;
        }
        let mut v = Vec::new();
        for _ in 0..loads {
            if cold {
                Command::new("sync").status()?;
                fs::write("/proc/sys/vm/drop_caches", "3\n")?;
            }
            let o = Command::new(&exe).arg("--load").arg(&big).output()?;
            if !o.status.success() {
                return Err(format!("child: {}", String::from_utf8_lossy(&o.stderr)).into());
            }
            v.push(ChildFigures::parse(&String::from_utf8_lossy(&o.stdout))?);
        }
        rows.push((label, v));
    }
    println!(
        "\nLoading it (`ZoneLog::open_or_start` on the existing log, each in a fresh process; medians of {loads}):\n"
    );
    println!("| load | time (ms) | RSS before (MiB) | RSS after (MiB) | RSS taken by the log (MiB) | peak RSS (MiB) | later write into a recorded zone (ns, mean / p50 / p99) | all loads (ms) |");
    println!("|---|---|---|---|---|---|---|---|");
    let med = |v: &[ChildFigures], f: fn(&ChildFigures) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        pct(&mut x, 50.0)
    };
    for (label, v) in &rows {
        println!(
            "| {label} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} | {} |",
            med(v, |c| c.load_ms),
            med(v, |c| c.rss_before_kib / 1024.0),
            med(v, |c| c.rss_after_kib / 1024.0),
            med(v, |c| (c.rss_after_kib - c.rss_before_kib) / 1024.0),
            med(v, |c| c.hwm_kib / 1024.0),
            med(v, |c| c.later_mean_ns),
            med(v, |c| c.later_p50_ns),
            med(v, |c| c.later_p99_ns),
            v.iter().map(|c| format!("{:.0}", c.load_ms)).collect::<Vec<_>>().join(", ")
        );
    }
    // A computed estimate of the in-memory map: hashbrown keeps (key, FileState) pairs (48 bytes:
    // the 16-byte key and the 32-byte enum holding a BTreeSet) plus one control byte per bucket,
    // at most 7/8 full, in a power-of-two table; each file with zones has a BTreeSet leaf node
    // (a malloc of 56 bytes, 64 with glibc's chunk header).
    let pair = std::mem::size_of::<((u64, u64), Option<std::collections::BTreeSet<u32>>)>() as f64;
    let buckets = ((FILES as f64) * 8.0 / 7.0).log2().ceil().exp2();
    let table = buckets * (pair + 1.0);
    let leaves = FILES as f64 * 64.0;
    println!(
        "\nEstimate of the map for {FILES} files with one zone each: table {buckets:.0} buckets × ({pair:.0} + 1) bytes = {:.1} MiB, plus {FILES} BTreeSet leaves × 64 bytes = {:.1} MiB: {:.1} MiB.",
        table / MIB as f64,
        leaves / MIB as f64,
        (table + leaves) / MIB as f64
    );
    println!("\nLater write into a recorded zone, log of a few files (mean of {n} calls): {later_small:.0} ns.");
    Ok(())
}

struct ChildFigures {
    load_ms: f64,
    rss_before_kib: f64,
    rss_after_kib: f64,
    hwm_kib: f64,
    later_mean_ns: f64,
    later_p50_ns: f64,
    later_p99_ns: f64,
}

impl ChildFigures {
    fn parse(out: &str) -> R<ChildFigures> {
        let get = |k: &str| -> R<f64> {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no {k} in the child's output: {out}").into())
        };
        Ok(ChildFigures {
            load_ms: get("load_ms")?,
            rss_before_kib: get("rss_before_kib")?,
            rss_after_kib: get("rss_after_kib")?,
            hwm_kib: get("hwm_kib")?,
            later_mean_ns: get("later_mean_ns")?,
            later_p50_ns: get("later_p50_ns")?,
            later_p99_ns: get("later_p99_ns")?,
        })
    }
}

/// In a fresh process: load the log, report the time and RSS, then time writes into recorded
/// zones of random files of it.
fn child_load(path: &Path) -> R<()> {
    let before = status_kib("VmRSS:");
    let t = Instant::now();
    let log = ZoneLog::open_or_start(path, ZONE)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let after = status_kib("VmRSS:");
    let (records, files) = log.size();
    if records != FILES || files != FILES as usize {
        return Err(format!("loaded {records} records, {files} files").into());
    }
    // Later writes into recorded zones (file i has zone i % 4096), random files: xorshift.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 1_000_000u64;
    let keys: Vec<u64> = (0..n).map(|_| next() % FILES).collect();
    let o = old();
    let t = Instant::now();
    for &i in &keys {
        log.before_write(black_box((2049, 100_000 + i)), (i % 4096) * ZONE + 8192, 4096, o);
    }
    let mean = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let mut one = Vec::with_capacity(100_000);
    for &i in keys.iter().take(100_000) {
        let t = Instant::now();
        log.before_write(black_box((2049, 100_000 + i)), (i % 4096) * ZONE, 4096, o);
        one.push(t.elapsed().as_nanos() as f64);
    }
    if log.size() != (FILES, FILES as usize) {
        return Err("writes into recorded zones appended records".into());
    }
    println!("load_ms={load_ms}");
    println!("rss_before_kib={before}");
    println!("rss_after_kib={after}");
    println!("hwm_kib={}", status_kib("VmHWM:"));
    println!("later_mean_ns={mean}");
    println!("later_p50_ns={}", pct(&mut one, 50.0));
    println!("later_p99_ns={}", pct(&mut one, 99.0));
    Ok(())
}
