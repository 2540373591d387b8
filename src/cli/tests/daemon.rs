//! Acceptance of the daemon: real `tandem daemon`s in a lab, a real TCP service moved with the
//! virtual IP, real power losses (`lab kill`), partitions (`lab cut`) and hostile packets.

mod support;

use std::time::{Duration, Instant};
use support::{Cluster, DEFAULT_TIMERS};

#[test]
fn kill_of_the_primary_moves_the_vip_and_the_service() {
    let mut c = Cluster::new("dk", 1, &DEFAULT_TIMERS);
    c.bring_up();
    assert_eq!(c.vip_holders(), vec!["n1"]);
    assert!(c.client_connect(Duration::from_secs(5)).is_some(), "client reaches the service on the VIP");

    c.lab().kill("n1").unwrap();
    let killed = Instant::now();
    let reconnect = c.client_connect(Duration::from_secs(15)).expect("client reconnects after failover");
    let total = killed.elapsed().min(reconnect + Duration::from_millis(100));
    println!("failover: kill of the primary -> first client connection on n2: {:.3} s", reconnect.as_secs_f64());
    c.forget_daemon("n1");
    assert_eq!(c.state("n2"), 2, "n2 ALONE");
    assert_eq!(c.vip_holders(), vec!["n2"]);
    // Detection needs the 1 s timeout; everything else must be quick.
    assert!(total < Duration::from_secs(4), "failover took {total:?}");
    let log = c.log("n2");
    assert!(log.contains("n1 lost: failover"), "{log}");

    // Failback: n1 powers on, its daemon starts the module again (it was started) and joins.
    c.lab().restart("n1").unwrap();
    c.start_daemon("n1");
    c.wait_state("n1", 4, Duration::from_secs(10));
    c.wait_state("n2", 3, Duration::from_secs(5));
    assert_eq!(c.vip_holders(), vec!["n2"]);
}

#[test]
fn clean_stop_of_the_primary_fails_over_without_waiting_for_the_timeout() {
    // A long timeout: if the failover waited for it, the test would see it.
    let timers = support::Timers { pulse: "500ms", timeout: "10s" };
    let mut c = Cluster::new("ds", 1, &timers);
    c.bring_up();
    let t = Instant::now();
    let out = c.admin("n1", &["stop"]);
    assert!(out.status.success());
    c.wait_state("n2", 2, Duration::from_secs(5));
    let reconnect = c.client_connect(Duration::from_secs(5)).expect("service on n2");
    println!("clean stop -> n2 serving: {:.3} s", t.elapsed().as_secs_f64());
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}: the failover waited for the timeout", t.elapsed());
    assert!(reconnect < Duration::from_secs(3));
    assert_eq!(c.state("n1"), 0);
    assert_eq!(c.vip_holders(), vec!["n2"]);

    // SIGTERM of the daemon on the new primary: modules stopped in order, n1... is stopped, so
    // start it first to have a secondary that takes over.
    assert!(c.admin("n1", &["start"]).status.success());
    c.wait_state("n1", 4, Duration::from_secs(5));
    let t = Instant::now();
    let status = c.stop_daemon("n2");
    assert!(status.success(), "daemon exit {status:?}");
    c.wait_state("n1", 2, Duration::from_secs(5));
    println!("SIGTERM of the primary's daemon -> n1 serving: {:.3} s", t.elapsed().as_secs_f64());
    assert!(t.elapsed() < Duration::from_secs(4));
    assert_eq!(c.vip_holders(), vec!["n1"], "VIP released by the stopping daemon");
    assert!(c.sh("n2", "ss -ltn").lines().all(|l| !l.contains(":8080")), "service stopped on n2");
}

#[test]
fn cutting_one_network_of_two_does_not_fail_over_cutting_all_does() {
    let mut c = Cluster::new("dc", 2, &DEFAULT_TIMERS);
    c.bring_up();
    c.lab().cut("n2", Some(1)).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!((c.state("n1"), c.state("n2")), (3, 4), "no failover with one network left");
    let st = c.state_json("n2");
    assert_eq!(st["peers"][0]["networks"], serde_json::json!(["net0"]), "{st}");

    // All networks: without a witness both sides serve (documented), then converge when healed.
    c.lab().cut("n2", None).unwrap();
    c.wait_state("n2", 2, Duration::from_secs(5));
    // n1 notices the loss on its own clock: up to a heartbeat later than n2 (each last heard
    // the other at a different pulse), so it is waited for, not sampled at once.
    c.wait_state("n1", 2, Duration::from_secs(5));
    c.lab().heal("n2", None).unwrap();
    c.wait_until(Duration::from_secs(10), "one primary after the heal", || {
        let s = (c.state("n1"), c.state("n2"));
        s == (3, 4) || s == (4, 3)
    });
    // The old primary keeps serving (discard-younger-primary); the outcome is in both logs.
    assert_eq!((c.state("n1"), c.state("n2")), (3, 4));
    assert!(c.log("n1").contains("split brain"), "{}", c.log("n1"));
    assert!(c.log("n2").contains("split brain"), "{}", c.log("n2"));
    assert_eq!(c.vip_holders(), vec!["n1"]);
}

#[test]
fn forged_truncated_and_replayed_heartbeats_are_dropped_and_counted() {
    let mut c = Cluster::new("dp", 1, &DEFAULT_TIMERS);
    c.bring_up();
    let before = c.state_json("n1");
    // Packets from the client host to n1's heartbeat port (7400 + module id 1): garbage, a
    // truncated copy and a forged one built with the wrong key, plus a valid packet of an old
    // epoch (a replay of what n2 sent before its daemon's current run).
    let key_hex = c.sh("n1", "cat /etc/tandem/cluster.key");
    let key: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&key_hex.trim()[i..i + 2], 16).unwrap()).collect();
    let view = tandem_cluster::wire::ModuleView::Mirror(
        tandem_machine::MirrorMachine::new(tandem_machine::MirrorPolicy::new("n2", "n1"), None).view(),
    );
    let body = tandem_cluster::wire::Body { cluster: "t".into(), from: "n2".into(), view, synced_join: None };
    let replay = tandem_cluster::wire::Sealer::new(&key, 1).seal(1, 0, &body).unwrap();
    let forged = tandem_cluster::wire::Sealer::new(b"not the key", u64::MAX / 2).seal(1, 0, &body).unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nd=('198.18.0.1',7401)\n\
         for p in [b'garbage', b'TDHB\\x01', bytes.fromhex('{r}')[:-5], bytes.fromhex('{f}'), bytes.fromhex('{r}'), bytes(3000)]:\n    s.sendto(p, d)\n",
        r = hex(&replay),
        f = hex(&forged)
    );
    let out = c.run("client", &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    let after = c.state_json("n1");
    let dropped = &after["dropped"];
    assert_eq!(dropped["mac"], 1, "{after}");
    assert_eq!(dropped["replay"], 1, "{after}");
    assert!(dropped["truncated"].as_u64().unwrap() >= 2, "{after}");
    assert!(dropped["magic"].as_u64().unwrap() >= 1, "{after}");
    // Nothing changed: still PRIM with the same generation, the peer still SECOND.
    assert_eq!(after["state"], "PRIM");
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["peers"][0]["state"], "SECOND");
    assert_eq!(c.state("n2"), 4);
    assert!(c.log("n1").contains("dropped heartbeat packets"), "{}", c.log("n1"));
}

#[test]
fn a_restarted_daemon_keeps_its_generation_and_last_primary() {
    let mut c = Cluster::new("dr", 1, &DEFAULT_TIMERS);
    c.bring_up();
    let gen = c.state_json("n1")["generation"].clone();
    assert_eq!(gen, "1@n1");
    // Stop the secondary's daemon cleanly, then start it again: same generation, and the module
    // starts by itself (it was started) and joins as secondary again.
    assert!(c.stop_daemon("n2").success());
    c.wait_state("n1", 2, Duration::from_secs(5));
    c.start_daemon("n2");
    c.wait_state("n2", 4, Duration::from_secs(10));
    c.wait_state("n1", 3, Duration::from_secs(5));
    let st = c.state_json("n2");
    assert_eq!(st["last_primary"], "n1", "{st}");
    assert_eq!(st["generation"], c.state_json("n1")["generation"]);
    // Exit codes of `state -m`: STOP 0, WAIT 1, ALONE 2, PRIM 3, SECOND 4; an unknown module 10.
    assert!(c.admin("n2", &["stop"]).status.success());
    assert_eq!(c.state("n2"), 0);
    assert_eq!(c.state("n1"), 2);
    assert_eq!(c.tandem("n1", &["state", "-m", "nope"]).status.code(), Some(10));
    // A refused command says why and exits 1.
    let out = c.admin("n2", &["start"]);
    assert!(out.status.success());
    c.wait_state("n2", 4, Duration::from_secs(5));
    let out = c.admin("n2", &["prim"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prim refused: n1 is primary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
