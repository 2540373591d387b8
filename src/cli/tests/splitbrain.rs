//! Acceptance of the splitbrain checker with real daemons in a lab: a partition that isolates one
//! node (from its peer and from the witness host) never leaves two nodes serving, whichever side
//! is cut off, over 20 splits; after each heal the side that did not serve catches up.

mod support;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{Cluster, Timers};

/// Quick timers, so that 20 splits fit in the suite: heartbeat loss after 600 ms; the witness
/// probed every 300 ms with a 300 ms timeout, so the witness deadline is 1.2 s (300 + 300 + 600)
/// and a secondary takes over 2.4 s after losing its primary.
const TIMERS: Timers = Timers { pulse: "100ms", timeout: "600ms" };
const CHECKER: &str = r#"
[[checker]]
name = "witness"
type = "splitbrain"
witnesses = ["198.18.0.201"]
interval = "300ms"
timeout = "300ms"
"#;

const STOP: i32 = 0;
const WAIT: i32 = 1;
const ALONE: i32 = 2;
const PRIM: i32 = 3;
const SECOND: i32 = 4;

fn with_witness(c: Cluster) -> Cluster {
    for n in ["n1", "n2"] {
        let module = c.sh(n, "cat /etc/tandem/modules/web/module.toml") + CHECKER;
        c.write(n, "/etc/tandem/modules/web/module.toml", &module, "644");
    }
    c
}

fn cluster_with_witness() -> Cluster {
    let mut c = with_witness(Cluster::new("sb", 1, &TIMERS));
    c.bring_up();
    c
}

/// (node, milliseconds since the epoch, VIP added?) from a module log.
fn vip_events(c: &Cluster, node: &str) -> Vec<(String, i64, bool)> {
    c.log(node)
        .lines()
        .filter_map(|l| {
            let added = l.contains(" VIP ") && l.contains(" added on ");
            let removed = l.contains(" VIP ") && l.contains(" removed from ");
            if !added && !removed {
                return None;
            }
            Some((node.to_string(), millis(l.split(' ').next()?)?, added))
        })
        .collect()
}

/// "2026-11-26T20:00:00.123Z" → milliseconds since the epoch (days from the civil date).
fn millis(ts: &str) -> Option<i64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, ms) = time.split_once('.')?;
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms.parse::<i64>().ok()?)
}

#[test]
fn millis_reads_the_module_log_timestamps() {
    assert_eq!(millis("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(millis("2026-11-26T20:00:00.123Z"), Some(1_795_723_200_123));
    assert_eq!(millis("2024-02-29T23:59:59.999Z"), Some(1_709_251_199_999));
}

#[test]
fn a_split_with_a_witness_never_has_two_serving_nodes() {
    let c = cluster_with_witness();
    let (mut primary, mut secondary) = ("n1", "n2");
    let mut longest_to_settle = Duration::ZERO;
    for round in 0..20 {
        // Even rounds cut the primary off, odd rounds the secondary.
        let isolated = if round % 2 == 0 { primary } else { secondary };
        let survivor = if isolated == primary { secondary } else { primary };
        c.lab().cut(isolated, None).unwrap();
        let cut = Instant::now();
        // Until it settles, sample who holds the VIP: never both.
        loop {
            let holders = c.vip_holders();
            assert!(holders.len() <= 1, "round {round}: both nodes hold the VIP: {holders:?}");
            if c.state(isolated) == WAIT && c.state(survivor) == ALONE {
                break;
            }
            assert!(cut.elapsed() < Duration::from_secs(20), "round {round}: did not settle");
            std::thread::sleep(Duration::from_millis(50));
        }
        longest_to_settle = longest_to_settle.max(cut.elapsed());
        assert_eq!(c.vip_holders(), vec![survivor.to_string()], "round {round}");
        // The isolated side stays out while the split lasts.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!((c.state(isolated), c.state(survivor)), (WAIT, ALONE), "round {round}");

        c.lab().heal(isolated, None).unwrap();
        c.wait_state(isolated, SECOND, Duration::from_secs(30));
        c.wait_state(survivor, PRIM, Duration::from_secs(30));
        (primary, secondary) = (survivor, isolated);
    }
    println!("20 splits: the survivor served alone within {:.1} s at most", longest_to_settle.as_secs_f64());

    // From the module logs (one clock: the lab runs on this machine): the intervals in which each
    // node held the VIP never overlap.
    let mut events: Vec<(String, i64, bool)> = vip_events(&c, "n1");
    events.extend(vip_events(&c, "n2"));
    events.sort_by_key(|e| (e.1, !e.2));
    let mut holding: Vec<String> = Vec::new();
    let mut takeovers = 0;
    for (node, at, added) in &events {
        if *added {
            assert!(holding.is_empty(), "at {at} {node} took the VIP while {holding:?} held it");
            holding.push(node.clone());
            takeovers += 1;
        } else {
            holding.retain(|n| n != node);
        }
    }
    assert!(takeovers >= 11, "the VIP moved {takeovers} times: the primary was cut off 10 times");
    let log = c.log("n1") + &c.log("n2");
    assert!(log.contains("no witness is reachable"), "{log}");
    assert!(log.contains("a witness is reachable: this node keeps serving"), "{log}");
    // The side that did not serve joins the survivor again (this module replicates no directory).
    assert!(log.contains("caught up with"), "{log}");
    assert_ne!(c.state("n1"), STOP);
}

/// The primary is cut off (from its peer and the witness) while an application appends records
/// with fsync: it holds the write in flight until the witness verdict, steps down, and that write
/// fails; every record the application saw acknowledged is on the secondary that took over.
#[test]
fn an_isolated_primary_acknowledges_nothing_its_successor_lacks() {
    let mut c = with_witness(Cluster::with_dirs("sz", 1, &TIMERS, &["/srv/web"]));
    c.bring_up_replicated();
    let (mut child, last, reader) = support::start_record_writer(&c, "n1", Stdio::piped());
    let started = Instant::now();
    while last.load(Ordering::SeqCst) < 20 {
        assert!(started.elapsed() < Duration::from_secs(20), "the writer's fsyncs do not return");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.lab().cut("n1", None).unwrap();
    c.wait_state("n2", ALONE, Duration::from_secs(20));
    assert_eq!(c.state("n1"), WAIT);
    // The writer's held fsync failed (fenced) and it stopped; what it printed is what it saw acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the writer still runs on the primary that stepped down");
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("Errno"), "the writer ended without an I/O error: {err}");
    let acked = last.load(Ordering::SeqCst);
    let records = c.sh("n2", "cat /srv/web/records");
    let found = support::check_records(&records, acked, "on n2");
    println!("isolated primary: {acked} records acknowledged, {found} on the successor; the held one failed");
    c.lab().heal("n1", None).unwrap();
    c.wait_state("n1", SECOND, Duration::from_secs(60));
    c.wait_state("n2", PRIM, Duration::from_secs(10));
}
