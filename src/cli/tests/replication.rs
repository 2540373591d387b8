//! Acceptance of synchronous replication with real daemons, a real FUSE mount on the primary and
//! real power losses: what the application wrote through the primary's directory is on the
//! secondary, and nothing an fsync acknowledged is ever lost at failover.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{Cluster, DEFAULT_TIMERS};

const DIR: &str = "/srv/web";

/// A listing of the tree: names, kinds, modes, owners, sizes, link targets, link counts, xattrs
/// and content hashes, made inside a node (the same command on both sides).
const LISTING: &str = r#"cd /srv/web && find . -mindepth 1 -printf '%p %y %m %U:%G %n %l\n' | grep -v '\.tmp ' | sort;
find . -type f ! -name '*.tmp' -exec sha256sum {} + | sort;
find . -mindepth 1 ! -name '*.tmp' -exec getfattr -h -d -m user. --absolute-names {} + 2>/dev/null | grep -v '^#' | sort;
find . -type f ! -name '*.tmp' -printf '%p %s\n' | sort"#;

fn listing(c: &Cluster, node: &str) -> String {
    c.sh(node, LISTING)
}

/// `tandem verify` on the primary n1 says the copies are identical.
fn assert_verify_identical(c: &Cluster) {
    let out = c.admin("n1", &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("the copies are identical"), "{text}");
}

/// `tandem verify` on n1 finds differences (exit code 1); returns its report.
fn verify_differences(c: &Cluster) -> String {
    let out = c.admin("n1", &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    text
}

fn replicated_cluster(prefix: &str) -> Cluster {
    let mut c = Cluster::with_dirs(prefix, 1, &DEFAULT_TIMERS, &[DIR]);
    // Data present before the first start is copied by the full synchronisation.
    c.sh("n1", "mkdir -p /srv/web/old && echo before > /srv/web/old/file && truncate -s 3M /srv/web/old/sparse");
    c.bring_up_replicated();
    c
}

#[test]
fn a_tree_written_through_the_primary_is_identical_on_the_secondary() {
    let c = replicated_cluster("rt");
    let script = r#"set -e
cd /srv/web
mkdir -p a/b/c d
for i in $(seq 1 200); do echo "file $i" > a/b/c/f$i; done
for i in $(seq 1 50); do mv a/b/c/f$i d/g$i; done
for i in $(seq 51 80); do rm a/b/c/f$i; done
dd if=/dev/urandom of=big bs=1M count=64 status=none
dd if=/dev/urandom of=big bs=4k count=10 seek=100 conv=notrunc status=none
dd if=/dev/urandom of=huge bs=1M count=1024 status=none
ln d/g1 hardlink
ln -s d/g2 symlink
truncate -s 1G sparse
printf 'x' | dd of=sparse bs=1 seek=500000000 conv=notrunc status=none
setfattr -n user.color -v blue d/g3
chmod 600 d/g4
chown 1000:1000 d/g5
touch -d '2020-01-02 03:04:05' d/g6
echo scratch > ignored.tmp
mkdir gone && rmdir gone
sync"#;
    c.sh("n1", script);
    assert!(c.sh("n1", "mount").contains("fuse.tandem-web"), "the primary's directory is the FUSE layer");
    let (a, b) = (listing(&c, "n1"), listing(&c, "n2"));
    assert!(a.lines().count() > 200, "{a}");
    assert!(a.contains("./huge 1073741824"), "the 1 GiB file is in the listing: {a}");
    assert_eq!(a, b, "the two copies differ");
    // `tandem verify` agrees (blake3 per block), and finds a difference made behind its back.
    assert_verify_identical(&c);
    c.sh("n2", "printf 'Z' | dd of=/run/tandem/replica/web/0/big bs=1 seek=3000000 conv=notrunc status=none");
    let text = verify_differences(&c);
    assert!(text.contains("big") && text.contains("block"), "{text}");
    let out = c.admin("n2", &["verify"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not primary"));
    let log = c.log("n1");
    assert!(log.contains("full copy done: "), "{log}");
    // Excluded files stay local.
    assert!(c.run("n2", &["test", "-e", "/srv/web/ignored.tmp"]).status.code() == Some(1));
    // The secondary's copy is read-only for the application.
    let out = c.run("n2", &["sh", "-c", "echo no > /srv/web/intruder"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// One round of the zero-loss check: a writer on the primary appends numbered records, each
/// followed by fsync, and prints the number once fsync returned; the primary loses power at a
/// random moment; every printed number must be on the new primary, intact.
fn zero_loss_round(c: &mut Cluster, primary: &str, secondary: &str, round: u32) -> usize {
    c.sh(primary, "rm -f /srv/web/records");
    // Records acknowledged so far, published as they arrive.
    let (mut child, last, reader) = support::start_record_writer(c, primary, Stdio::null());
    // The writer must be writing before the clock starts (python's start-up is slow on a loaded
    // machine); a first fsync that never returns would be a bug of its own.
    let started = Instant::now();
    while last.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "round {round}: the writer's first fsync never returned");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Then a pseudo-random moment between 0.3 and 1.5 s.
    let wait = 300 + (std::process::id() as u64 * 7919 + round as u64 * 104_729) % 1200;
    std::thread::sleep(Duration::from_millis(wait));
    c.lab().kill(primary).unwrap();
    let _ = child.wait();
    c.forget_daemon(primary);
    reader.join().unwrap();
    let acked = last.load(std::sync::atomic::Ordering::SeqCst);
    assert!(acked > 0, "round {round}: the writer acknowledged nothing");
    c.wait_state(secondary, 2, Duration::from_secs(10));
    let records = c.sh(secondary, "cat /srv/web/records");
    support::check_records(&records, acked, &format!("round {round}, on {secondary}"));
    // Power back: the old primary rejoins as secondary.
    c.lab().restart(primary).unwrap();
    c.start_daemon(primary);
    c.wait_state(primary, 4, Duration::from_secs(30));
    c.wait_state(secondary, 3, Duration::from_secs(10));
    // Its catch-up (the new primary's zone log and the zones its activity log names, or every
    // file) left nothing of what it alone held: the copies are identical.
    let out = c.admin(secondary, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "round {round}: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("the copies are identical"), "round {round}: {text}");
    acked
}

#[test]
fn no_acknowledged_write_is_lost_when_the_primary_loses_power() {
    let mut c = replicated_cluster("rz");
    let rounds: u32 = std::env::var("TANDEM_ZERO_LOSS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let (mut p, mut s) = ("n1", "n2");
    let t = Instant::now();
    for round in 1..=rounds {
        let acked = zero_loss_round(&mut c, p, s, round);
        println!("round {round}: {acked} fsync'd records, all on {s} after the failover");
        std::mem::swap(&mut p, &mut s);
    }
    println!("{rounds} rounds in {:.1} s", t.elapsed().as_secs_f64());
}

/// Runs a writer on the primary (an fsync'd append every 10 ms) for `secs` seconds while `fault`
/// happens to the secondary; returns the longest time one write+fsync took and the count.
fn longest_write_during(c: &Cluster, secs: u32, fault: impl FnOnce()) -> (Duration, usize) {
    let writer = format!(
        r#"import os, time
fd = os.open('/srv/web/latency', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
end = time.time() + {secs}
worst = 0.0
n = 0
while time.time() < end:
    t = time.time()
    os.write(fd, b'x' * 512)
    os.fsync(fd)
    worst = max(worst, time.time() - t)
    n += 1
    time.sleep(0.01)
print(worst, n)
"#
    );
    let child = c.command("n1", &["python3", "-c", &writer]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    fault();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let worst: f64 = it.next().and_then(|v| v.parse().ok()).expect("writer output");
    let n: usize = it.next().and_then(|v| v.parse().ok()).unwrap();
    (Duration::from_secs_f64(worst), n)
}

#[test]
fn a_lost_secondary_never_blocks_the_application_past_the_timeout() {
    let mut c = replicated_cluster("rb");
    // The replication timeout of a module with the default 1 s heartbeat timeout is 5 s; the
    // application is released earlier, as soon as the peer is declared lost (1 s).
    let bound = Duration::from_secs(5) + Duration::from_millis(500);
    let (worst, n) = longest_write_during(&c, 5, || c.lab().cut("n2", None).unwrap());
    println!("cut of the secondary: {n} fsync'd writes, the longest took {:.3} s", worst.as_secs_f64());
    assert!(worst < bound, "a write blocked {worst:?}");
    assert_eq!(c.state("n1"), 2, "the primary continues ALONE");
    c.lab().heal("n2", None).unwrap();
    c.wait_state("n1", 3, Duration::from_secs(60));

    let (worst, n) = longest_write_during(&c, 5, || {
        c.lab().kill("n2").unwrap();
    });
    c.forget_daemon("n2");
    println!("power loss of the secondary: {n} fsync'd writes, the longest took {:.3} s", worst.as_secs_f64());
    assert!(worst < bound, "a write blocked {worst:?}");
    assert_eq!(c.state("n1"), 2);
}

/// A module may replicate several directories: one stream carries them all, each lands in its
/// own directory on the secondary, and `verify` covers every one.
#[test]
fn several_directories_of_one_module_are_replicated_and_verified() {
    let mut c = Cluster::with_dirs("rm", 1, &DEFAULT_TIMERS, &[DIR, "/srv/data"]);
    c.sh("n1", "mkdir -p /srv/data/before && echo early > /srv/data/before/f");
    c.bring_up_replicated();
    c.sh(
        "n1",
        "set -e; echo web > /srv/web/a; mkdir /srv/data/db; echo data > /srv/data/db/b; \
         ln -s db/b /srv/data/link; mv /srv/web/a /srv/web/a2; chmod 700 /srv/data; sync",
    );
    let mounts = c.sh("n1", "mount");
    assert_eq!(mounts.matches("fuse.tandem-web").count(), 2, "each directory has the FUSE layer: {mounts}");
    for node in ["n1", "n2"] {
        assert_eq!(
            c.sh(node, "cat /srv/web/a2 /srv/data/db/b /srv/data/link /srv/data/before/f"),
            "web\ndata\ndata\nearly\n"
        );
        assert_eq!(c.sh(node, "stat -c %a /srv/data"), "700\n", "the directory's own mode, on {node}");
        assert!(c.run(node, &["test", "-e", "/srv/web/db"]).status.code() == Some(1), "no mixing on {node}");
    }
    assert_verify_identical(&c);
    // A difference in the second directory is named under it.
    c.sh("n2", "echo changed > /run/tandem/replica/web/1/db/b");
    let text = verify_differences(&c);
    assert!(text.contains("1/db/b"), "{text}");
    // Both copies on the secondary are read-only for the application.
    for d in [DIR, "/srv/data"] {
        let out = c.run("n2", &["sh", "-c", &format!("echo no > {d}/intruder")]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only"), "{d}");
    }
}

/// fio's mixed random reads and writes with fsyncs, from two jobs at once, then `verify`.
#[test]
fn a_mixed_random_write_load_with_fsync_ends_identical() {
    let c = replicated_cluster("rf");
    let out = c.run(
        "n1",
        &[
            "fio",
            "--name=mixed",
            "--directory=/srv/web",
            "--rw=randrw",
            "--rwmixwrite=70",
            "--bsrange=4k-64k",
            "--size=48m",
            "--numjobs=2",
            "--fsync=16",
            "--runtime=15",
            "--time_based",
            "--ioengine=psync",
            "--group_reporting",
            "--output-format=json",
        ],
    );
    assert!(out.status.success(), "fio: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio's JSON report");
    let writes = report["jobs"][0]["write"]["total_ios"].as_u64().unwrap_or(0);
    let fsyncs = report["jobs"][0]["sync"]["total_ios"].as_u64().unwrap_or(0);
    assert!(writes > 1000 && fsyncs > 50, "fio did too little to mean anything: {writes} writes, {fsyncs} fsyncs");
    assert_eq!(c.state("n1"), 3, "still replicating (PRIM) after the load");
    assert_verify_identical(&c);
    assert_eq!(listing(&c, "n1"), listing(&c, "n2"));
    println!("fio: {writes} writes, {fsyncs} fsyncs, then verify: identical");
}

/// Degraded mode: the secondary's disk fills up, so an operation fails there; the primary goes
/// ALONE with the reason in its log and the application's writes go on; the secondary waits.
#[test]
fn a_full_secondary_disk_degrades_the_primary_to_alone_without_stopping_the_application() {
    let mut c = Cluster::with_dirs("rd", 1, &DEFAULT_TIMERS, &[DIR]);
    // n2's copy lives on a 16 MiB file system.
    c.sh("n2", "mount -t tmpfs -o size=16m tandem-test-small /srv/web");
    c.bring_up_replicated();
    let out = c.run("n1", &["dd", "if=/dev/zero", "of=/srv/web/big", "bs=1M", "count=48", "conv=fsync"]);
    assert!(out.status.success(), "the application's writes failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.sh("n1", "stat -c %s /srv/web/big"), format!("{}\n", 48 << 20));
    c.wait_state("n1", 2, Duration::from_secs(10));
    let log = c.log("n1");
    assert!(log.contains("replication broken") && log.contains("No space left on device"), "{log}");
    let state = c.state("n2");
    assert!(state == 1 || state == 4, "n2 waits (WAIT, or SECOND catching up again): state {state}");
    assert!(c.log("n2").contains("No space left on device"), "{}", c.log("n2"));
    // The application goes on writing ALONE.
    c.sh("n1", "echo after > /srv/web/after && sync");
    assert_eq!(c.sh("n1", "cat /srv/web/after"), "after\n");
    c.sh("n2", "umount -l /srv/web 2>/dev/null || true");
}

#[test]
fn the_records_check_tolerates_only_a_torn_unacknowledged_tail() {
    let rec = |k: usize| format!("{k:08} {}\n", "x".repeat(100));
    let three = rec(1) + &rec(2) + &rec(3);
    assert_eq!(support::check_records(&three, 3, "t"), 3);
    assert_eq!(support::check_records(&(three.clone() + "0000"), 3, "t"), 4, "a torn 4th, never acknowledged");
    let bad =
        |text: String, acked: usize| std::panic::catch_unwind(|| support::check_records(&text, acked, "t")).is_err();
    assert!(bad(rec(1) + &rec(2), 3), "an acknowledged record missing");
    assert!(bad(rec(1) + &rec(2) + "0000", 3), "an acknowledged record torn");
    assert!(bad(three.clone() + "0001", 3), "garbage after the last acknowledged record");
    assert!(bad(rec(1) + &rec(3), 1), "a record out of order");
}
