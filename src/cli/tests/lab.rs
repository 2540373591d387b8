//! Real tests of `tandem lab`: they build labs with namespaces, veths, bridges, mounts and cgroups,
//! so they must run as root. Every test uses its own lab name and a guard that removes the lab
//! even when the test fails.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tandem_lab::Lab;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn require_root() {
    // SAFETY-free check: /proc/self/status "Uid:" real effective ...
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let euid = uid_line.split_whitespace().nth(2).unwrap();
    assert_eq!(euid, "0", "the lab tests need root (namespaces, mounts, cgroups)");
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("t{}-{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

fn tandem(args: &[&str]) -> Output {
    Command::new(TANDEM).args(args).stdin(Stdio::null()).output().expect("running tandem")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lab that is removed (`tandem lab down`) when dropped.
struct TestLab {
    name: String,
}

impl TestLab {
    fn up(nodes: u8, networks: u8) -> TestLab {
        Self::up_with(nodes, networks, &[])
    }

    fn up_with(nodes: u8, networks: u8, extra: &[&str]) -> TestLab {
        require_root();
        let lab = TestLab { name: unique_name() };
        let (n, m) = (nodes.to_string(), networks.to_string());
        let mut args = vec!["lab", "up", "--name", &lab.name, "--nodes", &n, "--networks", &m];
        args.extend_from_slice(extra);
        let o = tandem(&args);
        assert!(o.status.success(), "lab up failed: {}", text(&o));
        lab
    }

    /// `tandem lab <sub> --name <lab> <rest...>`
    fn cli(&self, sub: &str, rest: &[&str]) -> Output {
        let mut args = vec!["lab", sub, "--name", &self.name];
        args.extend_from_slice(rest);
        tandem(&args)
    }

    fn ok(&self, sub: &str, rest: &[&str]) -> Output {
        let o = self.cli(sub, rest);
        assert!(o.status.success(), "tandem lab {sub} {rest:?} failed: {}", text(&o));
        o
    }

    fn exec(&self, host: &str, cmd: &[&str]) -> Output {
        let mut rest = vec![host, "--"];
        rest.extend_from_slice(cmd);
        self.cli("exec", &rest)
    }

    fn sh(&self, host: &str, script: &str) -> String {
        let o = self.exec(host, &["sh", "-c", script]);
        assert!(o.status.success(), "in {host}: {script}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        self.exec(from, &["ping", "-c1", "-W1", to]).status.success()
    }

    /// Pings, allowing a couple of tries (ARP after a link came back).
    fn reaches(&self, from: &str, to: &str) -> bool {
        (0..3).any(|_| self.ping(from, to))
    }

    fn lib(&self) -> Lab {
        Lab::open(&self.name).expect("Lab::open")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let o = tandem(&["lab", "down", "--name", &self.name]);
        if !o.status.success() && !std::thread::panicking() {
            panic!("lab down failed: {}", text(&o));
        }
    }
}

#[test]
fn exec_runs_inside_an_isolated_node() {
    let lab = TestLab::up(3, 2);
    assert!(lab.ping("n1", "198.18.0.2"), "n1 -> n2 on network 0");
    assert!(lab.ping("n1", "198.18.1.3"), "n1 -> n3 on network 1");
    assert!(lab.ping("n1", "n2"), "names of /etc/hosts");

    // Private /etc/tandem: n1's file is seen neither by n2 nor by the machine.
    let file = format!("/etc/tandem/{}-only-n1", lab.name);
    lab.sh("n1", &format!("echo hello > {file}"));
    assert_eq!(lab.sh("n1", &format!("cat {file}")), "hello\n");
    assert!(!lab.exec("n2", &["test", "-e", &file]).status.success(), "n2 sees n1's /etc/tandem");
    assert!(!Path::new(&file).exists(), "the machine sees n1's /etc/tandem");
    lab.sh("n2", "test -d /var/lib/tandem && test -d /run/tandem");

    // Own /sys: the node's interfaces only.
    let ifaces = lab.sh("n1", "ls /sys/class/net");
    let mut ifaces: Vec<&str> = ifaces.lines().collect();
    ifaces.sort();
    assert_eq!(ifaces, ["eth0", "eth1", "lo"]);
    assert_eq!(lab.sh("n2", "hostname"), "n2\n");
    assert!(lab.sh("n1", "cat /proc/self/cgroup").contains(&format!("0::/tandem-lab/{}/n1", lab.name)));

    // Exit code passed through, and unknown commands.
    assert_eq!(lab.exec("n1", &["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(lab.exec("n1", &["true"]).status.code(), Some(0));
    assert_eq!(lab.exec("n1", &["/nonexistent-tandem-command"]).status.code(), Some(127));

    // Status and list.
    let st = String::from_utf8(lab.ok("status", &["--json"]).stdout).unwrap();
    assert!(st.contains(&format!("\"name\":\"{}\"", lab.name)), "{st}");
    assert!(st.contains("\"addr\":\"198.18.1.3\",\"state\":\"up\""), "{st}");
    assert!(st.contains("{\"host\":\"witness\",\"power\":\"running\""), "{st}");
    let table = String::from_utf8(lab.ok("status", &[]).stdout).unwrap();
    assert!(table.contains("198.18.0.200 up"), "{table}");
    let list = String::from_utf8(tandem(&["lab", "list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with(&format!("{} ", lab.name))), "{list}");
}

#[test]
fn cut_and_heal_partition_a_node() {
    let lab = TestLab::up(3, 2);
    assert!(lab.reaches("n1", "198.18.0.2") && lab.reaches("n1", "198.18.1.2"));

    lab.ok("cut", &["n2"]);
    assert!(!lab.ping("n1", "198.18.0.2"), "cut n2 still reachable on network 0");
    assert!(!lab.ping("n1", "198.18.1.2"), "cut n2 still reachable on network 1");
    assert!(lab.ping("n1", "198.18.0.3"), "n3 must not be affected");
    let carrier = lab.sh("n2", "cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0");
    assert_eq!(carrier.trim(), "0", "n2 must see no carrier");
    assert!(String::from_utf8(lab.ok("status", &[]).stdout).unwrap().contains("198.18.1.2 cut"));

    lab.ok("heal", &["n2"]);
    assert!(lab.reaches("n1", "198.18.0.2") && lab.reaches("n1", "198.18.1.2"), "heal");

    lab.ok("cut", &["n2", "--network", "1"]);
    assert!(lab.ping("n1", "198.18.0.2"), "network 0 must still work");
    assert!(!lab.ping("n1", "198.18.1.2"), "network 1 must be cut");
    lab.ok("heal", &["n2", "--network", "1"]);
    assert!(lab.reaches("n1", "198.18.1.2"));

    // Networks a host is not on.
    let o = lab.cli("cut", &["client", "--network", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = lab.cli("cut", &["n1", "--network", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn kill_is_a_power_loss_and_restart_keeps_the_disks() {
    let lab = TestLab::up(2, 1);
    let l = lab.lib();
    let mut sleeper =
        l.command("n1", &["sleep", "1000"]).unwrap().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    lab.sh(
        "n1",
        "echo volatile > /run/tandem/marker && echo durable > /etc/tandem/keep && echo data > /var/lib/tandem/keep",
    );
    lab.sh("n1", "ip addr add 198.18.0.99/24 dev eth0");
    assert!(lab.reaches("n2", "198.18.0.1"));
    assert_eq!(l.status().unwrap().hosts[0].processes, 1, "the sleep is in n1's cgroup");

    lab.ok("kill", &["n1"]);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = sleeper.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "sleep survived the power loss");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    assert!(!lab.ping("n2", "198.18.0.1"), "a killed node must be unreachable");
    let st = l.status().unwrap();
    assert_eq!(st.hosts[0].power, tandem_lab::Power::Killed);
    assert_eq!(st.hosts[0].links[0].state, tandem_lab::LinkState::Off);
    // Nothing runs on a powered-off node.
    let o = lab.exec("n1", &["true"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(l.command("n1", &["true"]).is_err());

    lab.ok("restart", &["n1"]);
    assert!(lab.reaches("n2", "198.18.0.1"), "restarted node reachable");
    assert_eq!(lab.sh("n1", "ls -A /run/tandem"), "", "/run must be fresh");
    assert_eq!(lab.sh("n1", "cat /etc/tandem/keep /var/lib/tandem/keep"), "durable\ndata\n");
    assert!(
        !lab.sh("n1", "ip -o addr show dev eth0").contains("198.18.0.99"),
        "run-time addresses vanish at power loss"
    );
    assert!(lab.sh("n1", "ls /sys/class/net").contains("eth0"));
    assert_eq!(lab.sh("n1", "hostname"), "n1\n");

    // Restarting a running node is refused.
    let o = lab.cli("restart", &["n1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is running"), "{}", text(&o));

    // A cut survives a power cycle, like a pulled cable.
    lab.ok("cut", &["n2"]);
    lab.ok("kill", &["n2"]);
    lab.ok("restart", &["n2"]);
    assert!(!lab.ping("n1", "198.18.0.2"), "n2's cable is still cut");
    lab.ok("heal", &["n2"]);
    assert!(lab.reaches("n1", "198.18.0.2"));
}

#[test]
fn client_and_witness_are_on_network_zero_only() {
    let lab = TestLab::up(2, 2);
    assert!(lab.reaches("client", "198.18.0.1"));
    assert!(lab.reaches("witness", "198.18.0.2"));
    assert!(lab.reaches("n1", "198.18.0.200"));
    assert!(lab.reaches("n2", "witness"));
    assert!(!lab.ping("client", "198.18.1.1"), "client must not reach network 1");
    let routes = lab.sh("client", "ip route");
    let routes: Vec<&str> = routes.lines().collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].starts_with("198.18.0.0/24 dev eth0"), "{routes:?}");
    assert!(!lab.exec("client", &["ip", "route", "get", "1.1.1.1"]).status.success(), "no route out of the lab");
    assert!(!lab.exec("n1", &["ip", "route", "get", "1.1.1.1"]).status.success(), "no route out of the lab");
    let links = lab.sh("witness", "ls /sys/class/net");
    assert_eq!(links.lines().filter(|l| l.starts_with("eth")).collect::<Vec<_>>(), ["eth0"]);
}

#[test]
fn private_dirs_are_copied_per_node() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("seed"), "seed\n").unwrap();
    let d = data.to_str().unwrap();
    let lab = TestLab::up_with(2, 1, &["--dir", d]);
    assert_eq!(lab.sh("n1", &format!("cat {d}/seed")), "seed\n", "initialised from the machine's copy");
    lab.sh("n1", &format!("echo one > {d}/written"));
    assert!(!lab.exec("n2", &["test", "-e", &format!("{d}/written")]).status.success());
    assert!(!data.join("written").exists());
    lab.ok("kill", &["n1"]);
    lab.ok("restart", &["n1"]);
    assert_eq!(lab.sh("n1", &format!("cat {d}/written")), "one\n", "disks survive a power loss");
}

fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = format!("tl-{name}-");
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) {
            found.push(format!("netns {n}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mounts.lines() {
        if line.contains(&format!("tandem-lab/{name}/"))
            || line.contains(&format!("tandem-lab/{name} "))
            || line.contains(&prefix)
        {
            found.push(format!("mount {line}"));
        }
    }
    let cg = tandem_lab::cgroup2_mount().unwrap().join("tandem-lab").join(name);
    for p in [format!("/var/lib/tandem-lab/{name}"), format!("/run/tandem-lab/{name}"), cg.display().to_string()] {
        if Path::new(&p).exists() {
            found.push(p);
        }
    }
    found
}

#[test]
fn down_leaves_nothing_and_labs_do_not_interfere() {
    let a = TestLab::up(2, 2);
    let b = TestLab::up(2, 1);
    // Same addresses, separate wires.
    assert!(a.reaches("n1", "198.18.0.2") && b.reaches("n1", "198.18.0.2"));
    a.ok("cut", &["n2"]);
    assert!(!a.ping("n1", "198.18.0.2"));
    assert!(b.ping("n1", "198.18.0.2"), "cutting a's n2 must not touch b");
    let mut sleeper = b.lib().command("n2", &["sleep", "1000"]).unwrap().spawn().unwrap();
    a.ok("kill", &["n2"]);
    assert!(sleeper.try_wait().unwrap().is_none(), "killing a's n2 must not touch b's n2");

    a.ok("down", &[]);
    assert_eq!(leftovers(&a.name), Vec::<String>::new());
    a.ok("down", &[]); // twice is fine
    assert!(b.reaches("n1", "198.18.0.2"), "b survives a's down");
    assert!(sleeper.try_wait().unwrap().is_none(), "b's processes survive a's down");

    let bname = b.name.clone();
    drop(b);
    assert_eq!(leftovers(&bname), Vec::<String>::new());
    let status = sleeper.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "down kills the lab's processes");
}

#[test]
fn down_cleans_a_half_built_lab() {
    require_root();
    let name = unique_name();
    // Leftovers of a crashed run: a namespace, a cgroup and a state dir, without a state file.
    let ns = format!("tl-{name}-n1");
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let cg = tandem_lab::cgroup2_mount().unwrap().join("tandem-lab").join(&name).join("n1");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::create_dir_all(format!("/var/lib/tandem-lab/{name}/n1")).unwrap();
    let o = tandem(&["lab", "up", "--name", &name, "--nodes", "1"]);
    assert_eq!(o.status.code(), Some(1), "up over leftovers must fail: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"), "{}", text(&o));
    let list = String::from_utf8(tandem(&["lab", "list"]).stdout).unwrap();
    assert!(list.contains(&name), "{list}");
    let o = tandem(&["lab", "down", "--name", &name]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn bad_input_is_refused_with_exit_code_1() {
    require_root();
    let expect_err = |args: &[&str], needle: &str| {
        let o = tandem(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{args:?}: want {needle:?} in {}", text(&o));
    };
    expect_err(&["lab", "up", "--name", "Bad_Name", "--nodes", "2"], "invalid lab name");
    expect_err(&["lab", "up", "--name", "much-too-long-name", "--nodes", "2"], "invalid lab name");
    let fresh = unique_name();
    expect_err(&["lab", "up", "--name", &fresh, "--nodes", "0"], "--nodes must be between 1 and 16");
    expect_err(&["lab", "up", "--name", &fresh, "--nodes", "17"], "--nodes must be between 1 and 16");
    expect_err(&["lab", "up", "--name", &fresh, "--nodes", "2", "--networks", "5"], "--networks");
    expect_err(&["lab", "up", "--name", &fresh, "--nodes", "2", "--dir", "relative/dir"], "absolute");
    expect_err(&["lab", "status", "--name", &fresh], "does not exist");
    assert_eq!(leftovers(&fresh), Vec::<String>::new(), "refused ups leave nothing");

    let lab = TestLab::up(2, 1);
    expect_err(&["lab", "exec", "--name", &lab.name, "n3", "--", "true"], "has no host \"n3\"");
    expect_err(&["lab", "exec", "--name", &lab.name, "router", "--", "true"], "has no host \"router\"");
    expect_err(&["lab", "kill", "--name", &lab.name, "n9"], "has no host \"n9\"");
    expect_err(&["lab", "up", "--name", &lab.name, "--nodes", "2"], "already exists");
    assert!(lab.reaches("n1", "198.18.0.2"), "a refused up must not damage the existing lab");
}
