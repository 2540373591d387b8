//! The semantic rules of module.toml and cluster.toml, through the public API.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_config::*;

const MIRROR: &str = r#"name = "web"
kind = "mirror"
id = 1

[[node]]
name = "n1"

[[node]]
name = "n2"
"#;

const FARM: &str = r#"name = "front"
kind = "farm"
id = 2

[[node]]
name = "n1"

[[node]]
name = "n2"
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The errors of a module text, as `line:col: key: message` strings.
fn errors(text: &str) -> Vec<String> {
    match parse_module(Path::new("m.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| format!("{}:{}: {}: {}", e.line, e.column, e.key, e.message)).collect(),
    }
}

/// Asserts one error starts with `want`.
#[track_caller]
fn assert_error(text: &str, want: &str) {
    let errs = errors(text);
    assert!(errs.iter().any(|e| e.starts_with(want)), "wanted `{want}...`, got {errs:#?}");
}

#[test]
fn minimal_mirror_gets_defaults() {
    let m = parse_module(Path::new("/etc/tandem/modules/web/module.toml"), MIRROR).unwrap();
    assert_eq!(m.name, "web");
    assert_eq!(m.kind, ModuleKind::Mirror);
    assert_eq!(m.id, 1);
    assert_eq!(m.plugin, None);
    assert_eq!(m.nodes, vec![ModuleNode { name: "n1".into(), power: 1 }, ModuleNode { name: "n2".into(), power: 1 }]);
    assert_eq!(m.heartbeat, Heartbeat { pulse: Duration::from_millis(200), timeout: Duration::from_secs(1) });
    assert!(m.vips.is_empty());
    assert_eq!(
        m.replication,
        Some(Replication { ack: AckMode::Written, dirs: vec![], resync_bandwidth_bytes_per_sec: None, activity_log: true })
    );
    assert_eq!(m.farm, None);
    assert_eq!(m.failover, Failover::default());
    assert_eq!(m.failover.preferred, Preferred::Alone);
    assert_eq!(m.failover.loop_limit, 3);
    assert_eq!(m.failover.loop_interval, Duration::from_secs(86_400));
    assert!(m.checkers.is_empty());
    assert_eq!(m.hooks, Hooks::default());
    assert_eq!(m.hooks.timeout, Duration::from_secs(30));
}

#[test]
fn minimal_farm_gets_defaults() {
    let m = parse_module(Path::new("f.toml"), FARM).unwrap();
    assert_eq!(m.kind, ModuleKind::Farm);
    assert_eq!(m.replication, None);
    assert_eq!(m.farm, Some(Farm { balance: Balance::ClientIp }));
}

#[test]
fn full_mirror_fixture_values() {
    let path = repo().join("tests/config/good/mirror-full.toml");
    let m = load_module(&path).unwrap();
    assert_eq!(m.plugin, Some(path.parent().unwrap().join("db.wasm")));
    assert_eq!(m.heartbeat.pulse, Duration::from_millis(100));
    assert_eq!(m.vips[0], Vip { address: "198.18.0.100".parse().unwrap(), prefix_len: 24, interface: "eth0".into() });
    assert_eq!(m.vips[1].prefix_len, 64);
    assert!(m.vips[1].address.is_ipv6());
    let rep = m.replication.as_ref().unwrap();
    assert_eq!(rep.ack, AckMode::Durable);
    assert_eq!(rep.resync_bandwidth_bytes_per_sec, Some(100 << 20));
    assert_eq!(rep.dirs[0].path, PathBuf::from("/var/lib/postgresql"));
    assert_eq!(rep.dirs[0].exclude, vec!["*.tmp", "pg_stat_tmp/**"]);
    assert_eq!(rep.dirs[0].zone_size_bytes, 256 << 10);
    assert_eq!(rep.dirs[1].zone_size_bytes, 1 << 20);
    assert!(!m.failover.enabled);
    assert_eq!(m.failover.preferred, Preferred::Node("n1".into()));
    assert_eq!(m.checkers.len(), 8);
    assert_eq!(m.checkers[0].kind, CheckerKind::Process { process: "postgres".into(), min_count: 2 });
    assert_eq!(m.checkers[0].action, Some(CheckerAction::Restart));
    assert_eq!(m.checkers[1].kind, CheckerKind::Interface { interface: "eth0".into() });
    assert_eq!(m.checkers[2].action, Some(CheckerAction::Wait), "ip checkers default to wait");
    let tcp = &m.checkers[3];
    assert_eq!(tcp.kind, CheckerKind::Tcp { address: "198.18.0.100".parse().unwrap(), port: 5432 });
    assert_eq!((tcp.interval, tcp.timeout), (Duration::from_secs(5), Duration::from_secs(2)));
    assert_eq!(tcp.action, Some(CheckerAction::Stopstart));
    assert_eq!(m.checkers[4].timeout, Duration::from_secs(1), "timeout defaults to interval");
    assert_eq!(m.checkers[5].kind, CheckerKind::Module { module: "nfs".into() });
    assert_eq!(m.checkers[5].action, Some(CheckerAction::Stop));
    assert_eq!(m.checkers[6].kind, CheckerKind::Custom);
    assert_eq!(m.checkers[6].action, Some(CheckerAction::Restart));
    let sb = &m.checkers[7];
    assert_eq!(sb.action, None);
    assert_eq!(
        sb.kind,
        CheckerKind::Splitbrain {
            witnesses: vec![
                Witness::Ping("198.18.0.201".parse().unwrap()),
                Witness::Tcp("198.18.0.201:7399".parse().unwrap()),
                Witness::Tcp("[fd00:198:18::201]:7399".parse().unwrap()),
            ]
        }
    );
    assert_eq!(m.hooks.timeout, Duration::from_secs(45));
    let sp = m.hooks.get(HookPoint::StartPrim).unwrap();
    assert_eq!(sp.argv, vec!["/usr/bin/systemctl", "start", "postgresql"]);
    assert_eq!(sp.timeout, Duration::from_secs(120));
    assert_eq!(m.hooks.stop_prim.as_ref().unwrap().timeout, Duration::from_secs(45));
    assert!(HookPoint::ALL.iter().all(|p| m.hooks.get(*p).is_some()));
}

#[test]
fn inline_forms_are_accepted() {
    let m = load_module(repo().join("tests/config/good/inline-arrays.toml")).unwrap();
    assert_eq!(m.nodes.len(), 2);
    assert_eq!(m.vips.len(), 1);
    assert_eq!(m.vips[0].interface, "eth0");
    assert_eq!(m.heartbeat.timeout, Duration::from_secs(2));
    assert_eq!(m.failover.preferred, Preferred::Last);
}

#[test]
fn unknown_keys_suggest_the_closest() {
    assert_error(
        &format!("nmae = \"x\"\n{MIRROR}"),
        "1:1: nmae: unknown key `nmae` in the top level; did you mean `name`?",
    );
    assert_error(
        &format!("{MIRROR}[heartbeat]\npuls = \"1s\"\n"),
        "11:1: heartbeat.puls: unknown key `puls` in [heartbeat]; did you mean `pulse`?",
    );
    assert_error(
        &format!("{MIRROR}[failover]\nprefered = \"n1\"\n"),
        "11:1: failover.prefered: unknown key `prefered` in [failover]; did you mean `preferred`?",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/a\"\nexcludes = []\n"),
        "12:1: replication.dir[0].excludes: unknown key `excludes` in [[replication.dir]]; did you mean `exclude`?",
    );
    assert_error(
        &format!("{MIRROR}[hooks]\nstart_primary = [\"/bin/true\"]\n"),
        "11:1: hooks.start_primary: unknown key `start_primary` in [hooks]; did you mean `start_prim`?",
    );
    assert_error(
        &format!("{MIRROR}[hooks]\nstart_prim = {{ argv = [\"/bin/true\"], timout = \"1s\" }}\n"),
        "11:38: hooks.start_prim.timout: unknown key `timout` in hooks.start_prim; did you mean `timeout`?",
    );
    assert_error(
        &format!("{MIRROR}[hooks]\nfoo = 1\n"),
        "11:1: hooks.foo: unknown key `foo` in [hooks]; valid keys are: `timeout`, `prestart`",
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    assert_error(&MIRROR.replace("id = 1", "id = \"1\""), "3:6: id: expected an integer from 1 to 64, found a string");
    assert_error(&MIRROR.replace("id = 1", "id = 0"), "3:6: id: 0 is out of range: expected an integer from 1 to 64");
    assert_error(
        &format!("{MIRROR}[heartbeat]\npulse = 200\n"),
        "11:9: heartbeat.pulse: expected a duration string such as \"1s\" or \"500ms\", found an integer",
    );
    assert_error(
        &format!("{MIRROR}[failover]\nenabled = \"yes\"\n"),
        "11:11: failover.enabled: expected a boolean (true or false), found a string",
    );
    assert_error(
        &format!("heartbeat = 1\n{MIRROR}"),
        "1:13: heartbeat: expected a table ([heartbeat]), found an integer",
    );
    assert_error(
        &MIRROR.replace("kind = \"mirror\"", "kind = \"mirorr\""),
        "2:8: kind: invalid value \"mirorr\": expected one of \"mirror\", \"farm\"; did you mean \"mirror\"?",
    );
    assert_error(
        &format!("{MIRROR}[[vip]]\naddress = \"198.18.0.100/24\"\nvip = 3\n"),
        "12:1: vip[0].vip: unknown key",
    );
}

#[test]
fn syntax_errors_have_a_position() {
    assert_error("name = \"web\"\nkind = = \"mirror\"\n", "2:8: : TOML syntax error:");
    assert_error("name = \"web\"\nname = \"db\"\n", "2:1: : TOML syntax error: duplicate key");
}

#[test]
fn missing_required_keys_point_at_their_table() {
    assert_error(&MIRROR.replace("id = 1\n", ""), "1:1: id: missing required key `id` in the top level");
    assert_error(&MIRROR.replace("name = \"n2\"\n", ""), "8:1: node[1].name: missing required key `name` in [[node]]");
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\n"),
        "10:1: checker[0].type: missing required key `type` in [[checker]]",
    );
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"tcp\"\naddress = \"127.0.0.1\"\n"),
        "10:1: checker[0].port: missing required key `port` in [[checker]]",
    );
    assert_error(
        &format!("{MIRROR}[hooks]\nstart_prim = {{ timeout = \"1s\" }}\n"),
        "11:14: hooks.start_prim.argv: missing required key `argv` in hooks.start_prim",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\nexclude = []\n"),
        "10:1: replication.dir[0].path: missing required key `path`",
    );
}

#[test]
fn node_counts() {
    assert_error(
        &format!("{MIRROR}[[node]]\nname = \"n3\"\n"),
        "10:1: node: a mirror module has exactly 2 nodes, found 3",
    );
    assert_error(
        &MIRROR.replace("[[node]]\nname = \"n2\"\n", ""),
        "5:1: node: a mirror module has exactly 2 nodes, found 1",
    );
    assert_error(
        &FARM.replace("[[node]]\nname = \"n2\"\n", ""),
        "5:1: node: a farm module needs at least 2 nodes, found 1",
    );
    let farm3 = format!("{FARM}[[node]]\nname = \"n3\"\npower = 4\n");
    let m = parse_module(Path::new("f.toml"), &farm3).unwrap();
    assert_eq!(m.nodes[2].power, 4);
    assert_error(
        &format!("{FARM}[[node]]\nname = \"n3\"\npower = 0\n"),
        "12:9: node[2].power: 0 is out of range: expected an integer from 1 to 4294967295",
    );
    assert_error(
        &MIRROR.replace("name = \"n2\"\n", "name = \"n2\"\npower = 2\n"),
        "10:1: node[1].power: `power` applies only to farm nodes",
    );
}

#[test]
fn names_and_duplicates() {
    assert_error(
        &MIRROR.replace("name = \"n2\"", "name = \"n1\""),
        "9:8: node[1].name: duplicate node name \"n1\" (first listed on line 6)",
    );
    assert_error(&MIRROR.replace("name = \"n2\"", "name = \"N2\""), "9:8: node[1].name: invalid name \"N2\"");
    assert_error(&MIRROR.replace("name = \"web\"", &format!("name = \"{}\"", "w".repeat(33))), "1:8: name: name \"www");
    let two = format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"custom\"\n[[checker]]\nname = \"c\"\ntype = \"custom\"\nplugin = 1\n");
    assert_error(&two, "14:8: checker[1].name: duplicate checker name \"c\" (first declared on line 11)");
    let vips = format!("{MIRROR}[[vip]]\naddress = \"198.18.0.100/24\"\n[[vip]]\naddress = \"198.18.0.100/16\"\n");
    assert_error(&vips, "13:11: vip[1].address: duplicate virtual IP 198.18.0.100 (first declared on line 11)");
}

#[test]
fn heartbeat_rules() {
    assert_error(&format!("{MIRROR}[heartbeat]\npulse = \"2x\"\n"), "11:9: heartbeat.pulse: invalid duration \"2x\": unknown unit \"x\"; expected an integer followed by a unit: ms, s, m or h");
    assert_error(
        &format!("{MIRROR}[heartbeat]\npulse = \"1s\"\ntimeout = \"1s\"\n"),
        "12:11: heartbeat.timeout: timeout 1s must be greater than pulse 1s",
    );
    assert_error(
        &format!("{MIRROR}[heartbeat]\npulse = \"300ms\"\ntimeout = \"500ms\"\n"),
        "12:11: heartbeat.timeout: timeout 500ms is too close to pulse 300ms: it must be at least 2 pulses (600ms)",
    );
    // Only the pulse given: the default timeout (1s) is checked against it, the error is on pulse.
    assert_error(
        &format!("{MIRROR}[heartbeat]\npulse = \"800ms\"\n"),
        "11:9: heartbeat.pulse: timeout 1s is too close to pulse 800ms",
    );
    assert_error(
        &format!("{MIRROR}[heartbeat]\npulse = \"0ms\"\n"),
        "11:9: heartbeat.pulse: must be greater than zero",
    );
    let ok = parse_module(Path::new("m.toml"), &format!("{MIRROR}[heartbeat]\npulse = \"500ms\"\ntimeout = \"1s\"\n"))
        .unwrap();
    assert_eq!(ok.heartbeat.timeout, ok.heartbeat.pulse * 2);
}

#[test]
fn vip_rules() {
    assert_error(&format!("{MIRROR}[[vip]]\naddress = \"198.18.0.1/24/3\"\n"), "11:11: vip[0].address: invalid CIDR");
    assert_error(
        &format!("{MIRROR}[[vip]]\naddress = \"0.0.0.0/8\"\n"),
        "11:11: vip[0].address: 0.0.0.0 cannot be a virtual IP",
    );
    assert_error(
        &format!("{MIRROR}[[vip]]\naddress = \"198.18.0.100/24\"\ninterface = \"a very long name\"\n"),
        "12:13: vip[0].interface: invalid interface name",
    );
    let m = parse_module(Path::new("m.toml"), &format!("{MIRROR}[[vip]]\naddress = \"198.18.0.255/24\"\n")).unwrap();
    assert_eq!(m.vips[0].address, "198.18.0.255".parse::<IpAddr>().unwrap());
}

#[test]
fn replication_rules() {
    assert_error(
        &format!("{FARM}[replication]\nack = \"written\"\n"),
        "10:1: replication: [replication] is only valid in a mirror module",
    );
    assert_error(&format!("{MIRROR}[farm]\n"), "10:1: farm: [farm] is only valid in a farm module");
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"data\"\n"),
        "11:8: replication.dir[0].path: \"data\" is not an absolute path",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/\"\n"),
        "11:8: replication.dir[0].path: \"/\" cannot be replicated",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/srv/a/../b\"\n"),
        "11:8: replication.dir[0].path: \"/srv/a/../b\" cannot be replicated",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/srv\"\n[[replication.dir]]\npath = \"/srv/data/\"\n"),
        "13:8: replication.dir[1].path: \"/srv/data/\" overlaps replication.dir[0].path \"/srv\"",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/srv\"\nexclude = [\"/tmp\"]\n"),
        "12:12: replication.dir[0].exclude[0]: pattern \"/tmp\" must be relative",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/srv\"\nexclude = [\"a\", 3]\n"),
        "12:17: replication.dir[0].exclude[1]: expected glob pattern strings, found an integer",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/srv\"\nzone_size = \"3KiB\"\n"),
        "12:13: replication.dir[0].zone_size: zone size 3KiB must be a power of two from 4KiB to 1GiB",
    );
    assert_error(
        &format!("{MIRROR}[[replication.dir]]\npath = \"/srv\"\nzone_size = \"1MB\"\n"),
        "12:13: replication.dir[0].zone_size: invalid size \"1MB\": unit \"MB\" is ambiguous",
    );
    assert_error(
        &format!("{MIRROR}[replication]\nresync_bandwidth = \"fast\"\n"),
        "11:20: replication.resync_bandwidth: invalid size \"fast\"",
    );
    assert_error(
        &format!("{MIRROR}[replication]\nzone_size = \"1MiB\"\n"),
        "11:1: replication.zone_size: key `zone_size` belongs in each [[replication.dir]]",
    );
}

#[test]
fn farm_rules() {
    let m = parse_module(Path::new("f.toml"), &format!("{FARM}[farm]\nbalance = \"client-ip-port\"\n")).unwrap();
    assert_eq!(m.farm.unwrap().balance, Balance::ClientIpPort);
    assert_error(
        &format!("{FARM}[farm]\nbalance = \"round-robin\"\n"),
        "11:11: farm.balance: invalid value \"round-robin\": expected one of \"client-ip\", \"client-ip-port\"",
    );
    assert_error(
        &format!("{FARM}[failover]\npreferred = \"n1\"\n"),
        "11:13: failover.preferred: `preferred` applies only to mirror modules",
    );
}

#[test]
fn failover_rules() {
    assert_error(
        &format!("{MIRROR}[failover]\npreferred = \"n3\"\n"),
        "11:13: failover.preferred: preferred primary \"n3\" is not a node of this module (nodes: n1, n2)",
    );
    assert_error(
        &format!("{MIRROR}[failover]\nloop_interval = \"-1s\"\n"),
        "11:17: failover.loop_interval: invalid duration \"-1s\": negative durations are not allowed",
    );
    assert_error(&format!("{MIRROR}[failover]\nloop_limit = -1\n"), "11:14: failover.loop_limit: -1 is out of range");
    let m = parse_module(Path::new("m.toml"), &format!("{MIRROR}[failover]\npreferred = \"n2\"\nloop_limit = 0\n"))
        .unwrap();
    assert_eq!(m.failover.preferred, Preferred::Node("n2".into()));
    assert_eq!(m.failover.loop_limit, 0);
}

#[test]
fn checker_rules() {
    let sb = "[[checker]]\nname = \"w\"\ntype = \"splitbrain\"\nwitnesses = [\"198.18.0.201\"]\n";
    assert_error(
        &format!("{FARM}{sb}"),
        "12:8: checker[0].type: a splitbrain checker is only valid in a mirror module",
    );
    assert_error(
        &format!("{MIRROR}{sb}{}", sb.replace("\"w\"", "\"w2\"")),
        "16:8: checker[1].type: only one splitbrain checker is allowed (another is declared on line 12)",
    );
    assert_error(
        &format!("{MIRROR}{}", sb.replace("[\"198.18.0.201\"]", "[]")),
        "13:13: checker[0].witnesses: at least one witness is needed",
    );
    assert_error(
        &format!("{MIRROR}{}", sb.replace("\"198.18.0.201\"", "\"tcp:198.18.0.201:x\"")),
        "13:14: checker[0].witnesses[0]: invalid witness \"tcp:198.18.0.201:x\"",
    );
    assert_error(
        &format!("{MIRROR}{sb}action = \"wait\"\n"),
        "14:1: checker[0].action: a splitbrain checker has no action",
    );
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"custom\"\n"),
        "12:8: checker[0].type: a custom checker calls the module's plugin, but this module has no `plugin`",
    );
    assert!(
        errors(&format!("plugin = \"web.wasm\"\n{MIRROR}[[checker]]\nname = \"c\"\ntype = \"custom\"\n")).is_empty()
    );
    assert_error(&format!("plugin = \"web.so\"\n{MIRROR}"), "1:10: plugin: plugin \"web.so\" must be a .wasm file");
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"ping\"\naddress = \"198.18.0.1\"\nport = 1\n"),
        "14:1: checker[0].port: key `port` does not apply to a ping checker (it is used by: tcp)",
    );
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"tcp\"\naddress = \"localhost\"\nport = 80\n"),
        "13:11: checker[0].address: invalid IP address \"localhost\"",
    );
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"tcp\"\naddress = \"127.0.0.1\"\nport = 70000\n"),
        "14:8: checker[0].port: 70000 is out of range: expected an integer from 1 to 65535",
    );
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"module\"\nmodule = \"web\"\n"),
        "13:10: checker[0].module: a module checker must watch another module",
    );
    assert_error(&format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"process\"\nprocess = \"x\"\naction = \"reboot\"\n"), "14:10: checker[0].action: invalid value \"reboot\": expected one of \"restart\", \"stopstart\", \"wait\", \"stop\"");
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"pong\"\n"),
        "12:8: checker[0].type: invalid value \"pong\": expected one of \"process\"",
    );
    assert_error(
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"process\"\nprocess = \"x\"\ninterval = \"1.5s\"\n"),
        "14:12: checker[0].interval: invalid duration \"1.5s\": fractions are not accepted (write \"1500ms\")",
    );
    let m = parse_module(
        Path::new("m.toml"),
        &format!("{MIRROR}[[checker]]\nname = \"c\"\ntype = \"ping\"\naddress = \"198.18.0.254\"\n"),
    )
    .unwrap();
    assert_eq!(m.checkers[0].action, Some(CheckerAction::Wait));
    assert_eq!(m.checkers[0].interval, Duration::from_secs(1));
}

#[test]
fn hook_rules() {
    assert_error(
        &format!("{MIRROR}[hooks]\nstart_prim = [\"bin/start\"]\n"),
        "11:15: hooks.start_prim[0]: program \"bin/start\" must be an absolute path",
    );
    assert_error(
        &format!("{MIRROR}[hooks]\nstart_prim = {{ argv = [\"start\"] }}\n"),
        "11:24: hooks.start_prim.argv[0]: program \"start\" must be an absolute path",
    );
    assert_error(&format!("{MIRROR}[hooks]\nstart_prim = []\n"), "11:14: hooks.start_prim: empty argv");
    assert_error(
        &format!("{MIRROR}[hooks]\nstart_prim = \"/bin/start\"\n"),
        "11:14: hooks.start_prim: expected an argv array such as [\"/usr/local/bin/start\"] or a table",
    );
    assert_error(&format!("{FARM}[hooks]\nstop_second = [\"/bin/true\"]\n"), "11:1: hooks.stop_second: `stop_second` is a mirror hook; a farm has no primary or secondary: use start_both/stop_both");
    assert_error(&format!("{MIRROR}[hooks]\ntimeout = \"0s\"\n"), "11:11: hooks.timeout: must be greater than zero");
    let m = parse_module(Path::new("f.toml"), &format!("{FARM}[hooks]\nstart_both = [\"/bin/true\"]\n")).unwrap();
    assert_eq!(m.hooks.start_both.unwrap().argv, vec!["/bin/true"]);
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let text = "name = \"Web\"\nkind = \"mirror\"\nid = 99\nbogus = 1\n[[node]]\nname = \"n1\"\npower = 2\n[heartbeat]\npulse = \"x\"\n[[vip]]\naddress = \"1.2.3.4\"\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 7, "{errs:#?}");
    // Sorted by position.
    let lines: Vec<usize> = errs.iter().map(|e| e.split(':').next().unwrap().parse().unwrap()).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn error_display_format() {
    let e = parse_module(Path::new("dir/m.toml"), &MIRROR.replace("id = 1", "id = 100")).unwrap_err();
    assert_eq!(e.to_string(), "dir/m.toml:3:6: id: 100 is out of range: expected an integer from 1 to 64");
    let err: &dyn std::error::Error = &e;
    assert!(err.to_string().contains("3:6"));
    let missing = load_module("/nonexistent/module.toml").unwrap_err();
    assert!(missing.to_string().starts_with("/nonexistent/module.toml: cannot read file:"), "{missing}");
}

#[test]
fn check_files_cross_checks() {
    let dir = tempfile_dir();
    let cluster = dir.join("cluster.toml");
    std::fs::copy(repo().join("docs/examples/cluster.toml"), &cluster).unwrap();
    let a = dir.join("a.toml");
    let b = dir.join("b.toml");
    std::fs::write(&a, MIRROR).unwrap();
    std::fs::write(&b, MIRROR.replace("n2", "n7")).unwrap();
    let report = check_files(&[cluster.clone(), a.clone(), b.clone()]);
    assert!(!report.is_ok());
    assert!(report.file_ok(&cluster));
    assert!(report.file_ok(&a));
    assert!(!report.file_ok(&b));
    let errs: Vec<String> = report.errors().iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with(&format!(
            "{}:1:8: name: module name \"web\" is already used in {}",
            b.display(),
            a.display()
        )),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with(&format!(
            "{}:3:6: id: module id 1 is already used by module \"web\" in {}",
            b.display(),
            a.display()
        )),
        "{errs:#?}"
    );
    assert!(
        errs[2]
            .starts_with(&format!("{}:9:8: node[1].name: node \"n7\" is not a node of cluster \"lab\"", b.display())),
        "{errs:#?}"
    );
    assert_eq!(report.files_with_errors(), 1);
    match &report.files[0].result {
        Ok(l @ Loaded::Cluster(c)) => {
            assert_eq!(c.nodes.len(), 3);
            assert_eq!(l.summary(), "cluster \"lab\", 3 nodes, 2 networks");
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kind_detection() {
    assert_eq!(detect_kind("kind = \"farm\""), Some(FileKind::Module));
    assert_eq!(detect_kind("key_file = \"k\""), Some(FileKind::Cluster));
    assert_eq!(detect_kind("[[network]]\nname = \"a\""), Some(FileKind::Cluster));
    assert_eq!(detect_kind("id = 3\n[[node]]\nname = \"n1\""), Some(FileKind::Module));
    assert_eq!(detect_kind("name = \"x\"\n[[node]]\nname = \"n1\""), None);
    let dir = tempfile_dir();
    let f = dir.join("x.toml");
    std::fs::write(&f, "name = \"x\"\n").unwrap();
    let report = check_files(std::slice::from_ref(&f));
    let errs = report.errors();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.starts_with("cannot tell whether this is a cluster or a module file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_examples_parse() {
    let c = load_cluster(repo().join("docs/examples/cluster.toml")).unwrap();
    assert_eq!(c.replication_network().name, "net0");
    assert_eq!(c.node("n1").unwrap().address("net0"), Some("198.18.0.1".parse().unwrap()));
    let m = load_module(repo().join("app-modules/generic-mirror/module.toml")).unwrap();
    assert_eq!(m.vips[0].address, "198.18.0.100".parse::<IpAddr>().unwrap());
    let f = load_module(repo().join("app-modules/generic-farm/module.toml")).unwrap();
    assert_eq!(f.vips[0].address, "198.18.0.110".parse::<IpAddr>().unwrap());
    for n in m.nodes.iter().chain(&f.nodes) {
        assert!(c.node(&n.name).is_some(), "{}", n.name);
    }
}

/// A fresh temporary directory (no tempfile dependency in this crate).
fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "tandem-config-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
