//! Real tests of the VIP layer in a `tandem lab` (root needed: namespaces, veths, bridges).
//!
//! A test binary is multi-threaded and cannot enter a network namespace itself, so the tests
//! re-execute this binary inside a lab node running only the `vip_agent` test, which performs the
//! operation named by `TANDEM_VIP_AGENT` (on the VIP given by `TANDEM_VIP_ADDR`,
//! `TANDEM_VIP_PREFIX`, `TANDEM_VIP_IF`) on a current-thread tokio runtime and prints one line
//! `VIP-AGENT-RESULT <result>`.

use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_lab::{Lab, LabSpec};
use tandem_network::{announce_takeover, VipSpec, Vips};

const AGENT: &str = "TANDEM_VIP_AGENT";
const RESULT: &str = "VIP-AGENT-RESULT ";
const VIP4: &str = "198.18.0.100";
const VIP6: &str = "fd00:7464::100";
const CLIENT6: &str = "fd00:7464::200";
const MAC_N1: &str = "02:74:6c:00:00:01";
const MAC_N2: &str = "02:74:6c:00:00:02";

// ---------------------------------------------------------------------------------------------
// The agent (runs inside a lab node).

#[test]
fn vip_agent() {
    let Ok(op) = std::env::var(AGENT) else {
        return; // an ordinary run: nothing to do
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tandem_network=debug")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let vip = VipSpec::new(
        env("TANDEM_VIP_ADDR").parse().expect("TANDEM_VIP_ADDR"),
        env("TANDEM_VIP_PREFIX").parse().expect("TANDEM_VIP_PREFIX"),
        env("TANDEM_VIP_IF"),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = rt.block_on(async move {
        let vips = Arc::new(Vips::connect().await?);
        Ok::<String, tandem_network::NetError>(match op.as_str() {
            "add" => vips.add(&vip).await.map(|()| "ok".to_string())?,
            "remove" => vips.remove(&vip).await.map(|()| "ok".to_string())?,
            "present" => format!("present={}", vips.present(&vip).await?),
            "announce" => vips.announce(&vip).map(|()| "ok".to_string())?,
            // Add, then run the whole takeover announcement; report how long it ran.
            "takeover" => {
                vips.add(&vip).await?;
                let t0 = Instant::now();
                announce_takeover(vips.clone(), vip.clone()).await.unwrap();
                format!("ok ms={}", t0.elapsed().as_millis())
            }
            // Add, start the announcement, release the VIP 100 ms later: the task must stop.
            "takeover-release" => {
                vips.add(&vip).await?;
                let t0 = Instant::now();
                let task = announce_takeover(vips.clone(), vip.clone());
                tokio::time::sleep(Duration::from_millis(100)).await;
                vips.remove(&vip).await?;
                task.await.unwrap();
                format!("ok ms={}", t0.elapsed().as_millis())
            }
            // Listen for gratuitous ARPs for the VIP for 5.5 s; report when each came and from whom.
            "capture-garp" => capture_garp(&vip).map_err(|e| tandem_network::NetError::Os {
                op: tandem_network::Op::Check,
                vip: vip.clone(),
                what: "capturing",
                source: e,
            })?,
            other => panic!("unknown agent operation {other}"),
        })
    });
    match result {
        Ok(s) => println!("{RESULT}{s}"),
        Err(e) => println!("{RESULT}error: {e}"),
    }
}

/// Captures ARP frames on the VIP's interface for 5.5 s (prints `VIP-AGENT-READY` once
/// listening); returns `n=<count> mac=<sender> at=<ms after the first>,...` for the gratuitous
/// ARPs (request, sender IP = target IP = the VIP).
fn capture_garp(vip: &VipSpec) -> std::io::Result<String> {
    use std::io::{Error, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let std::net::IpAddr::V4(ip) = vip.address else {
        panic!("capture-garp is for IPv4");
    };
    let name = std::ffi::CString::new(vip.interface.as_str()).unwrap();
    // SAFETY: plain system calls on descriptors we own, with buffers that outlive them.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(Error::last_os_error());
        }
        let proto = (libc::ETH_P_ARP as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as i32);
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        if libc::bind(sock.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) < 0 {
            return Err(Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        let tvlen = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            tvlen,
        );
        println!("VIP-AGENT-READY");
        std::io::stdout().flush()?;
        let start = Instant::now();
        let mut first: Option<Instant> = None;
        let mut at = Vec::new();
        let mut mac = String::new();
        let mut buf = [0u8; 1600];
        while start.elapsed() < Duration::from_millis(5500) {
            let n = libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 42 {
                continue; // timeout, or too short
            }
            let f = &buf[..n as usize];
            let garp = f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 1]
                && f[28..32] == ip.octets()
                && f[38..42] == ip.octets();
            if garp {
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                at.push((now - t0).as_millis().to_string());
                mac = f[6..12].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            }
        }
        Ok(format!("n={} mac={mac} at={}", at.len(), at.join(",")))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(2), Some("0"), "the lab tests need root (namespaces, veths, bridges)");
}

/// A lab removed when dropped, even if the test fails.
struct TestLab {
    lab: Lab,
}

impl TestLab {
    fn up(nodes: u8) -> TestLab {
        require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("v{}-{}", std::process::id() % 1_000_000, N.fetch_add(1, Ordering::SeqCst));
        let _ = tandem_lab::down(&name);
        let lab = Lab::up(LabSpec::new(name.as_str(), nodes)).expect("lab up");
        TestLab { lab }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = tandem_lab::down(self.lab.name()) {
            eprintln!("removing lab {}: {e}", self.lab.name());
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn agent_cmd(lab: &Lab, host: &str, op: &str, addr: &str, prefix: u8, iface: &str) -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let mut cmd = lab.command(host, &[exe, "--exact", "vip_agent", "--nocapture", "--test-threads=1"]).unwrap();
    cmd.env(AGENT, op)
        .env("TANDEM_VIP_ADDR", addr)
        .env("TANDEM_VIP_PREFIX", prefix.to_string())
        .env("TANDEM_VIP_IF", iface)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn agent_result(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout);
    // The harness prints "test vip_agent ... " before the agent's line.
    match out.lines().find_map(|l| l.split_once(RESULT).map(|(_, r)| r)) {
        Some(r) if o.status.success() => r.to_string(),
        _ => panic!("the agent gave no result\n{}", text(o)),
    }
}

/// Runs one VIP operation inside `host`; returns its result line ("ok", "present=true",
/// "error: ...").
fn agent(lab: &Lab, host: &str, op: &str, addr: &str, prefix: u8, iface: &str) -> String {
    let o = agent_cmd(lab, host, op, addr, prefix, iface).output().unwrap();
    agent_result(&o)
}

fn spawn_agent(lab: &Lab, host: &str, op: &str, addr: &str, prefix: u8, iface: &str) -> Child {
    agent_cmd(lab, host, op, addr, prefix, iface).spawn().unwrap()
}

fn run(lab: &Lab, host: &str, argv: &[&str]) -> Output {
    lab.command(host, argv).unwrap().stdin(Stdio::null()).output().unwrap()
}

fn run_ok(lab: &Lab, host: &str, argv: &[&str]) -> String {
    let o = run(lab, host, argv);
    assert!(o.status.success(), "{argv:?} in {host}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One ping from `host`, waiting at most 1 s for the answer.
fn ping(lab: &Lab, host: &str, addr: &str) -> bool {
    ping_output(lab, host, addr).status.success()
}

fn ping_output(lab: &Lab, host: &str, addr: &str) -> Output {
    run(lab, host, &["ping", "-n", "-c1", "-W1", addr])
}

/// Pings until one answer comes, for at most 3 s: for the first contact with a freshly added
/// address, whose neighbour resolution (ARP/NS, retransmitted after 1 s) is not what is tested.
/// Once the client has a neighbour entry, a single [`ping`] must do.
fn ping_within(lab: &Lab, host: &str, addr: &str) -> bool {
    let t0 = Instant::now();
    loop {
        let o = ping_output(lab, host, addr);
        if o.status.success() {
            return true;
        }
        if t0.elapsed() > Duration::from_secs(3) {
            eprintln!("last ping of {addr} from {host}: {}", text(&o));
            return false;
        }
    }
}

/// The link-layer address of `addr` in `host`'s neighbour table, with the entry's line.
fn neigh(lab: &Lab, host: &str, addr: &str) -> (Option<String>, String) {
    let out = run_ok(lab, host, &["ip", "neigh", "show", addr, "dev", "eth0"]);
    let line = out.lines().next().unwrap_or("").to_string();
    let mut words = line.split_whitespace();
    let mut mac = None;
    while let Some(w) = words.next() {
        if w == "lladdr" {
            mac = words.next().map(str::to_string);
        }
    }
    (mac, line)
}

/// Waits up to `limit` for `host`'s neighbour entry of `addr` to be `mac`; returns how long it took.
fn wait_neigh(lab: &Lab, host: &str, addr: &str, mac: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (got, line) = neigh(lab, host, addr);
        if got.as_deref() == Some(mac) {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            panic!("after {limit:?}, {host}'s neighbour entry of {addr} is {line:?}, not {mac}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn addr_lines(lab: &Lab, host: &str, addr: &str) -> Vec<String> {
    run_ok(lab, host, &["ip", "-o", "addr", "show", "dev", "eth0"])
        .lines()
        .filter(|l| l.contains(&format!(" {addr}/")))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn add_remove_present_idempotent_and_reachable() {
    let t = TestLab::up(1);
    let lab = &t.lab;
    let v = |op: &str| agent(lab, "n1", op, VIP4, 24, "eth0");

    assert_eq!(v("present"), "present=false");
    assert!(!ping(lab, "client", VIP4), "the VIP answers before it was added");

    assert_eq!(v("add"), "ok");
    assert_eq!(v("add"), "ok", "adding twice is fine");
    assert_eq!(v("present"), "present=true");
    let lines = addr_lines(lab, "n1", VIP4);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!("{VIP4}/24")), "{lines:?}");
    assert!(ping_within(lab, "client", VIP4), "the VIP does not answer after add");

    assert_eq!(v("remove"), "ok");
    assert_eq!(v("present"), "present=false");
    assert!(addr_lines(lab, "n1", VIP4).is_empty());
    assert_eq!(v("remove"), "ok", "removing twice is fine");
    assert!(!ping(lab, "client", VIP4), "the VIP still answers after remove");

    // A VIP left behind with another prefix length (configuration changed between runs) is
    // removed too, and counts as present.
    run_ok(lab, "n1", &["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "eth0"]);
    assert_eq!(v("present"), "present=true");
    assert_eq!(v("remove"), "ok");
    assert!(addr_lines(lab, "n1", VIP4).is_empty());
    assert_eq!(v("present"), "present=false");

    // IPv6: same contract; added without duplicate address detection, usable at once.
    let v6 = |op: &str| agent(lab, "n1", op, VIP6, 64, "eth0");
    assert_eq!(v6("present"), "present=false");
    assert_eq!(v6("add"), "ok");
    assert_eq!(v6("add"), "ok");
    assert_eq!(v6("present"), "present=true");
    let lines = addr_lines(lab, "n1", VIP6);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!("{VIP6}/64")), "{lines:?}");
    assert!(!lines[0].contains("tentative") && !lines[0].contains("dadfailed"), "{lines:?}");
    assert_eq!(v6("remove"), "ok");
    assert_eq!(v6("remove"), "ok");
    assert_eq!(v6("present"), "present=false");
}

#[test]
fn bad_input_gives_clear_errors() {
    let t = TestLab::up(1);
    let lab = &t.lab;
    for (op, verb) in [("add", "add"), ("remove", "remove"), ("present", "check"), ("announce", "announce")] {
        assert_eq!(
            agent(lab, "n1", op, VIP4, 24, "nope0"),
            format!("error: cannot {verb} 198.18.0.100/24 on nope0: no such interface"),
        );
    }
    assert_eq!(
        agent(lab, "n1", "add", VIP4, 33, "eth0"),
        "error: cannot add 198.18.0.100/33 on eth0: prefix length 33 is over 32"
    );
    assert_eq!(
        agent(lab, "n1", "add", VIP4, 24, "eth0/x"),
        "error: cannot add 198.18.0.100/24 on eth0/x: invalid interface name \"eth0/x\""
    );
    let r = agent(lab, "n1", "announce", VIP4, 24, "lo");
    assert!(
        r.starts_with("error: cannot announce 198.18.0.100/24 on lo: an interface whose link type is not Ethernet")
            && r.ends_with("is not supported"),
        "{r}"
    );
    // Nothing was added anywhere by the failures.
    assert!(addr_lines(lab, "n1", VIP4).is_empty());
}

#[test]
fn vip_moves_with_gratuitous_arp() {
    let t = TestLab::up(2);
    let lab = &t.lab;

    // On n1, and the client learns n1's MAC for it.
    assert_eq!(agent(lab, "n1", "add", VIP4, 24, "eth0"), "ok");
    assert!(ping_within(lab, "client", VIP4));
    assert_eq!(neigh(lab, "client", VIP4).0.as_deref(), Some(MAC_N1));

    // Moved to n2 without an announcement: the client still sends to n1 (the control).
    assert_eq!(agent(lab, "n1", "remove", VIP4, 24, "eth0"), "ok");
    assert_eq!(agent(lab, "n2", "add", VIP4, 24, "eth0"), "ok");
    assert_eq!(neigh(lab, "client", VIP4).0.as_deref(), Some(MAC_N1));

    // One gratuitous ARP from n2 moves the client's entry at once, and the VIP answers.
    assert_eq!(agent(lab, "n2", "announce", VIP4, 24, "eth0"), "ok");
    let took = wait_neigh(lab, "client", VIP4, MAC_N2, Duration::from_millis(500));
    eprintln!("client's neighbour entry moved to n2 {took:?} after the announcement returned");
    let t0 = Instant::now();
    assert!(ping(lab, "client", VIP4), "the VIP does not answer on n2");
    assert!(t0.elapsed() < Duration::from_millis(500));

    // Back to n1 with the full takeover announcement: the burst moves the client at once, the
    // repeats run to the 4 s mark.
    assert_eq!(agent(lab, "n2", "remove", VIP4, 24, "eth0"), "ok");
    let mut capture = spawn_agent(lab, "client", "capture-garp", VIP4, 24, "eth0");
    let mut capture_out = std::io::BufReader::new(capture.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("VIP-AGENT-READY") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut capture_out, &mut line).unwrap();
        assert!(n > 0, "the capture agent ended before it was ready: {seen}");
        seen.push_str(&line);
    }
    let child = spawn_agent(lab, "n1", "takeover", VIP4, 24, "eth0");
    // The agent process needs some time to start, add the VIP and send the burst.
    let took = wait_neigh(lab, "client", VIP4, MAC_N1, Duration::from_secs(3));
    eprintln!("client's neighbour entry moved back to n1 {took:?} after the takeover agent started");
    assert!(ping(lab, "client", VIP4), "the VIP does not answer on n1");
    let r = agent_result(&child.wait_with_output().unwrap());
    let ms: u64 = r.strip_prefix("ok ms=").unwrap_or_else(|| panic!("{r}")).parse().unwrap();
    assert!((4000..5000).contains(&ms), "takeover announcement ran {ms} ms");
    // What the client saw: 3 packets 20 ms apart, then at 0.5, 1, 2 and 4 s, from n1's MAC.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut capture_out, &mut rest).unwrap();
    assert!(capture.wait().unwrap().success(), "{seen}{rest}");
    let r = rest
        .lines()
        .find_map(|l| l.split_once(RESULT).map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no capture result: {seen}{rest}"));
    eprintln!("client captured: {r}");
    let (n, r) = r.split_once(' ').unwrap();
    let (mac, at) = r.split_once(' ').unwrap();
    assert_eq!(n, "n=7", "{r}");
    assert_eq!(mac, format!("mac={MAC_N1}"));
    let at: Vec<i64> = at.strip_prefix("at=").unwrap().split(',').map(|x| x.parse().unwrap()).collect();
    for (got, want) in at.iter().zip([0i64, 20, 40, 500, 1000, 2000, 4000]) {
        assert!((got - want).abs() <= 150, "packet expected at {want} ms came at {got} ms: {at:?}");
    }

    // Released during the announcement: the task stops at its next packet (0.5 s).
    let r = agent(lab, "n1", "takeover-release", VIP4, 24, "eth0");
    let ms: u64 = r.strip_prefix("ok ms=").unwrap_or_else(|| panic!("{r}")).parse().unwrap();
    assert!(ms < 1000, "takeover announcement did not stop on release: ran {ms} ms");
    assert_eq!(agent(lab, "n1", "present", VIP4, 24, "eth0"), "present=false");
}

#[test]
fn vip6_moves_with_unsolicited_na() {
    let t = TestLab::up(2);
    let lab = &t.lab;
    run_ok(lab, "client", &["ip", "addr", "add", &format!("{CLIENT6}/64"), "dev", "eth0", "nodad"]);

    assert_eq!(agent(lab, "n1", "add", VIP6, 64, "eth0"), "ok");
    assert!(ping_within(lab, "client", VIP6), "the IPv6 VIP does not answer on n1");
    assert_eq!(neigh(lab, "client", VIP6).0.as_deref(), Some(MAC_N1));

    assert_eq!(agent(lab, "n1", "remove", VIP6, 64, "eth0"), "ok");
    assert_eq!(agent(lab, "n2", "add", VIP6, 64, "eth0"), "ok");
    assert_eq!(neigh(lab, "client", VIP6).0.as_deref(), Some(MAC_N1));

    assert_eq!(agent(lab, "n2", "announce", VIP6, 64, "eth0"), "ok");
    let took = wait_neigh(lab, "client", VIP6, MAC_N2, Duration::from_millis(500));
    eprintln!("client's IPv6 neighbour entry moved to n2 {took:?} after the announcement");
    assert!(ping(lab, "client", VIP6), "the IPv6 VIP does not answer on n2");
}
