//! Acceptance of the catch-up with real daemons: a secondary that comes back keeps its copy and
//! receives only what differs (the bytes sent are counted and asserted), after a clean stop,
//! after a power loss of the primary under a writer, and after a `swap`.

mod support;

use std::time::Duration;
use support::{Cluster, DEFAULT_TIMERS};

const DIR: &str = "/srv/web";
const MIB: u64 = 1 << 20;

/// The numbers of the last "catch-up done" line of `node`'s module log: (bytes sent, bytes
/// found identical, bytes not read, the line).
fn last_catch_up(c: &Cluster, node: &str) -> Option<(u64, u64, u64, String)> {
    let log = c.log(node);
    let line = log.lines().rev().find(|l| l.contains("catch-up done ("))?.to_string();
    let number_before = |what: &str| -> Option<u64> {
        let i = line.find(what)?;
        line[..i].trim_end().rsplit(' ').next()?.parse().ok()
    };
    Some((number_before(" bytes sent")?, number_before(" bytes identical")?, number_before(" bytes not read")?, line))
}

/// Waits for a catch-up line on `node` other than `before`, and returns it.
fn wait_catch_up(c: &Cluster, node: &str, before: Option<&str>) -> (u64, u64, u64, String) {
    let mut found = None;
    c.wait_until(Duration::from_secs(90), &format!("a new catch-up line in {node}'s log"), || {
        found = last_catch_up(c, node).filter(|(_, _, _, l)| Some(l.as_str()) != before);
        found.is_some()
    });
    found.unwrap()
}

fn assert_verify_identical(c: &Cluster, primary: &str) {
    let out = c.admin(primary, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("the copies are identical"), "{text}");
}

#[test]
fn a_returning_secondary_receives_only_what_differs() {
    let mut c = Cluster::with_dirs("cu", 1, &DEFAULT_TIMERS, &[DIR]);
    // 64 MiB image and 100 files of 10,000 bytes, there before the first start: the first join
    // is a full copy.
    c.sh(
        "n1",
        "mkdir -p /srv/web/files && head -c 67108864 /dev/urandom > /srv/web/image \
         && for i in $(seq 1 100); do head -c 10000 /dev/urandom > /srv/web/files/f$i; done",
    );
    c.bring_up_replicated();
    assert!(c.log("n1").contains("full copy done: "), "{}", c.log("n1"));
    // No pause: the zone log n1 starts when n2 leaves takes over from its activity log, so it
    // vouches for everything with no margin (files written just before are not compared).

    // 1. A clean stop of the secondary; the primary goes on ALONE (tracking zones and names)
    //    and changes 3 zones of the image, writes 5 new files and removes one; the secondary
    //    comes back. The log recorded a change in files/ only: n2 lists whole that directory
    //    alone, the rest by name.
    assert!(c.admin("n2", &["stop"]).status.success());
    c.wait_state("n1", 2, Duration::from_secs(10));
    c.sh(
        "n1",
        "cd /srv/web && for z in 3 17 60; do printf changed | dd of=image bs=1 seek=$((z*1048576+100)) conv=notrunc status=none; done \
         && for i in 1 2 3 4 5; do head -c 10000 /dev/urandom > files/new$i; done && rm files/f7 && sync",
    );
    // `tandem diff` predicts it from the metadata and the zone log (nothing read).
    let out = c.admin("n1", &["diff"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("compares 3.0 MiB") && text.contains("does not read 61.9 MiB"), "{text}");
    let out = c.admin("n2", &["diff"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not primary"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = c.tandem("n1", &["diff", "-m", "nosuchmodule"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(c.admin("n2", &["start"]).status.success());
    c.wait_state("n2", 4, Duration::from_secs(90));
    c.wait_state("n1", 3, Duration::from_secs(10));
    let (sent, same, unread, line) = wait_catch_up(&c, "n1", None);
    println!("after a clean stop: {line}");
    assert!(line.contains("(names, zones and block hashes)"), "{line}");
    let log = c.log("n1");
    assert!(
        log.contains("the secondary lists whole only the 1 directory with changes (and hashes 0 file(s))"),
        "{log}"
    );
    assert_eq!(sent, 3 * MIB + 5 * 10_000, "only the 3 changed zones and the 5 new files: {line}");
    assert_eq!((same, unread), (0, 61 * MIB + 99 * 10_000), "the rest is not even read: {line}");
    assert_verify_identical(&c, "n1");

    // 1b. The same, but the ALONE primary loses power after writing 2 zones: its zone log
    //     survives, and the catch-up is still only those zones.
    assert!(c.admin("n2", &["stop"]).status.success());
    c.wait_state("n1", 2, Duration::from_secs(10));
    c.sh(
        "n1",
        "cd /srv/web && for z in 10 11; do printf power | dd of=image bs=1 seek=$((z*1048576+7)) conv=notrunc status=none; done",
    );
    c.lab().kill("n1").unwrap();
    c.forget_daemon("n1");
    c.lab().restart("n1").unwrap();
    c.start_daemon("n1");
    c.wait_state("n1", 2, Duration::from_secs(30));
    let before = last_catch_up(&c, "n1").map(|(_, _, _, l)| l);
    assert!(c.admin("n2", &["start"]).status.success());
    c.wait_state("n2", 4, Duration::from_secs(90));
    c.wait_state("n1", 3, Duration::from_secs(10));
    let (sent, same, unread, line) = wait_catch_up(&c, "n1", before.as_deref());
    println!("after a power loss of the ALONE primary: {line}");
    assert!(line.contains("(names, zones and block hashes)"), "{line}");
    assert_eq!(sent, 2 * MIB, "only the 2 zones written before the power loss: {line}");
    assert_eq!((same, unread), (0, 62 * MIB + 104 * 10_000), "{line}");
    assert_verify_identical(&c, "n1");

    // 2. The primary loses power while a writer changes the first 4 MiB of the image; n2 takes
    //    over and changes 2 zones; n1 comes back as secondary and gets only differing blocks,
    //    and reads only what its activity log and n2's zone log name.
    c.sh(
        "n1",
        "nohup python3 -c \"
import os, random
fd = os.open('/srv/web/image', os.O_WRONLY)
while True:
    os.pwrite(fd, os.urandom(4096), random.randrange(0, 4 * 1048576 - 4096))
    os.fsync(fd)
\" >/dev/null 2>&1 &",
    );
    std::thread::sleep(Duration::from_millis(1500));
    c.lab().kill("n1").unwrap();
    c.forget_daemon("n1");
    c.wait_state("n2", 2, Duration::from_secs(15));
    c.sh(
        "n2",
        "cd /srv/web && for z in 30 50; do printf again | dd of=image bs=1 seek=$((z*1048576)) conv=notrunc status=none; done && sync",
    );
    c.lab().restart("n1").unwrap();
    c.start_daemon("n1");
    c.wait_state("n1", 4, Duration::from_secs(90));
    c.wait_state("n2", 3, Duration::from_secs(10));
    let (sent, _, unread, line) = wait_catch_up(&c, "n2", None);
    println!("after a power loss of the primary: {line}");
    // n1 crashed as primary: its activity log names the zones it was writing (the image's
    // first 4 MiB), so n2 trusts its own zone log for the rest: the 100 small files are not
    // read; the image, written lately on both sides, is compared.
    let log = c.log("n2");
    assert!(log.contains("the secondary's activity log (it crashed) names 1 file(s)"), "{log}\n{}", c.log("n1"));
    assert!(line.contains("(zones and block hashes)"), "{line}");
    assert!(sent >= 2 * MIB, "n2's 2 zones at least: {line}");
    assert!(sent <= 6 * MIB, "at most the writer's 4 MiB and n2's 2 zones: {line}");
    assert!(unread >= 100 * 10_000, "{line}");
    assert_verify_identical(&c, "n2");

    // 3. `swap`: the roles exchange and nothing is sent.
    let before = last_catch_up(&c, "n1").map(|(_, _, _, l)| l);
    assert!(c.admin("n2", &["swap"]).status.success());
    c.wait_state("n1", 3, Duration::from_secs(60));
    c.wait_state("n2", 4, Duration::from_secs(60));
    let (sent, _, unread, line) = wait_catch_up(&c, "n1", before.as_deref());
    println!("after swap: {line}");
    assert_eq!(sent, 0, "a swap sends no data: {line}");
    // n1 was a Ready secondary: its zone log, started at the swap, vouches for everything,
    // names included.
    assert!(line.contains("(names, zones and block hashes)") && unread >= 104 * 10_000, "{line}\n{}", c.log("n1"));
    assert_verify_identical(&c, "n1");
    let out = c.admin("n1", &["diff"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("in sync"), "{}", String::from_utf8_lossy(&out.stdout));

    // 4. A catch-up under a write load: a writer changes random blocks of the image and appends
    //    to a log, fsync'd, before, during and after the catch-up; the copies end identical.
    assert!(c.admin("n2", &["stop"]).status.success());
    c.wait_state("n1", 2, Duration::from_secs(10));
    c.sh(
        "n1",
        "nohup python3 -c \"
import os, random, time
fd = os.open('/srv/web/image', os.O_WRONLY)
log = os.open('/srv/web/files/log', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
end = time.time() + 6
n = 0
while time.time() < end:
    os.pwrite(fd, os.urandom(4096), random.randrange(0, 64 * 1048576 - 4096))
    os.write(log, b'record %08d\\n' % n)
    n += 1
    if n % 10 == 0:
        os.fsync(fd); os.fsync(log)
open('/srv/web/files/writer-done', 'w').close()
\" >/dev/null 2>&1 &",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let before = last_catch_up(&c, "n1").map(|(_, _, _, l)| l);
    assert!(c.admin("n2", &["start"]).status.success());
    c.wait_state("n2", 4, Duration::from_secs(90));
    let (_, _, _, line) = wait_catch_up(&c, "n1", before.as_deref());
    println!("under a write load: {line}");
    c.wait_until(Duration::from_secs(30), "the writer is done", || {
        c.run("n1", &["test", "-e", "/srv/web/files/writer-done"]).status.success()
    });
    assert_verify_identical(&c, "n1");

    // 5. A split without a witness where both sides serve and write: once healed the nodes
    //    agree on one primary, and the other catches up by block hashes, receiving only the
    //    zones either side changed.
    c.lab().cut("n2", None).unwrap();
    c.wait_state("n1", 2, Duration::from_secs(30));
    c.wait_state("n2", 2, Duration::from_secs(30));
    c.sh("n1", "cd /srv/web && for z in 40 41; do printf n1 | dd of=image bs=1 seek=$((z*1048576)) conv=notrunc status=none; done");
    c.sh("n2", "cd /srv/web && for z in 42 43; do printf n2 | dd of=image bs=1 seek=$((z*1048576)) conv=notrunc status=none; done");
    let before = ["n1", "n2"].map(|n| last_catch_up(&c, n).map(|(_, _, _, l)| l));
    c.lab().heal("n2", None).unwrap();
    let mut roles = None;
    c.wait_until(Duration::from_secs(90), "one primary and one secondary after the heal", || {
        roles = match (c.state("n1"), c.state("n2")) {
            (3, 4) => Some(("n1", 0)),
            (4, 3) => Some(("n2", 1)),
            _ => None,
        };
        roles.is_some()
    });
    let (winner, i) = roles.unwrap();
    let (sent, _, _, line) = wait_catch_up(&c, winner, before[i].as_deref());
    println!("after a split without a witness, {winner} kept its data: {line}");
    assert!(line.contains("(block hashes)"), "diverged histories: every file is compared: {line}");
    assert_eq!(sent, 4 * MIB, "the 2 zones of each side: {line}");
    assert_verify_identical(&c, winner);

    // 6. The Ready secondary loses power just after applying a write into zone 5. Writes it
    //    acknowledged from its page cache may be lost with it while their mtime survived (ext4
    //    commits metadata before overwritten data): the lab's kill keeps the page cache, so that
    //    loss is played by changing that zone of its copy behind its back, size and mtime kept.
    //    The primary's zone log does not know that zone; the secondary's activity log (kept
    //    since it was Ready) names it: the catch-up sends the primary's zone and that extent
    //    (4 MiB), and trusts the rest. (The read-only bind a secondary puts over its directory
    //    is undone first, as a reboot would.)
    let loser = if winner == "n1" { "n2" } else { "n1" };
    let before = last_catch_up(&c, winner).map(|(_, _, _, l)| l);
    c.sh(winner, "cd /srv/web && printf applied | dd of=image bs=1 seek=$((5*1048576)) conv=notrunc status=none");
    c.lab().kill(loser).unwrap();
    c.forget_daemon(loser);
    c.wait_state(winner, 2, Duration::from_secs(15));
    c.sh(winner, "cd /srv/web && printf after | dd of=image bs=1 seek=$((20*1048576)) conv=notrunc status=none");
    c.lab().restart(loser).unwrap();
    c.sh(
        loser,
        "(umount /srv/web 2>/dev/null || true) && cd /srv/web && m=$(stat -c %y image) && printf lost | dd of=image bs=1 seek=$((5*1048576+9)) conv=notrunc status=none \
         && touch -m -d \"$m\" image && sync",
    );
    c.start_daemon(loser);
    c.wait_state(loser, 4, Duration::from_secs(90));
    c.wait_state(winner, 3, Duration::from_secs(30));
    let (sent, _, unread, line) = wait_catch_up(&c, winner, before.as_deref());
    println!("after a power loss of the secondary: {line}");
    let log = c.log(winner);
    assert!(log.contains("the secondary's activity log (it crashed) names 1 file(s)"), "{log}");
    assert!(line.contains("(zones and block hashes)"), "{line}");
    assert_eq!(
        sent,
        MIB + 4 * MIB,
        "the zone changed on {winner} and the extent {loser}'s activity log names (where the crash changed it): {line}"
    );
    assert!(unread >= 100 * 10_000, "the rest is trusted: {line}");
    assert_verify_identical(&c, winner);
}

/// `preferred = "n1"`: after a failover to n2, n1 comes back, catches up, and takes the primary
/// role back by itself (an automatic swap), with no data copied by the swap.
#[test]
fn a_preferred_primary_takes_its_role_back_after_its_catch_up() {
    let mut c = Cluster::with_dirs("cp", 1, &DEFAULT_TIMERS, &[DIR]);
    for n in ["n1", "n2"] {
        c.sh(n, "printf '\\n[failover]\\npreferred = \"n1\"\\n' >> /etc/tandem/modules/web/module.toml");
    }
    c.sh("n1", "mkdir -p /srv/web && head -c 8388608 /dev/urandom > /srv/web/data");
    c.bring_up_replicated();
    c.lab().kill("n1").unwrap();
    c.forget_daemon("n1");
    c.wait_state("n2", 2, Duration::from_secs(15));
    c.sh("n2", "printf written-on-n2 | dd of=/srv/web/data bs=1 seek=4096 conv=notrunc status=none");
    c.lab().restart("n1").unwrap();
    c.start_daemon("n1");
    // n1 rejoins as secondary, catches up, then takes the role back.
    c.wait_state("n1", 3, Duration::from_secs(90));
    c.wait_state("n2", 4, Duration::from_secs(30));
    let log = c.log("n2");
    assert!(log.contains("n1 is the preferred primary and has caught up: automatic swap"), "{log}");
    let (sent, _, _, line) = wait_catch_up(&c, "n2", None);
    println!("n1's catch-up from n2: {line}");
    assert_eq!(sent, MIB, "n1's catch-up from n2: the one block n2 changed: {line}");
    assert_verify_identical(&c, "n1");
    assert_eq!(c.sh("n1", "dd if=/srv/web/data bs=1 skip=4096 count=13 status=none"), "written-on-n2");
}
