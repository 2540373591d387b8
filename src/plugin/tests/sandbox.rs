//! The plugin host with real plugins: the shipped ones (`process`, `http-check`) doing their job
//! within their grants, and the hostile ones (plugins/hostile/) each contained and reported,
//! while the host keeps serving other calls. The plugins are built by scripts/build-plugins.sh
//! into plugins/dist/ (scripts/test.sh does it before the tests).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_config::{Capabilities, CommandGrant, HookPoint, HttpGrant};
use tandem_plugin::{CallError, Event, Grants, Health, HookInput, Host, Origin, PluginError};

fn dist(name: &str) -> PathBuf {
    let p = tandem_plugin::dist_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-plugins.sh", p.display());
    p
}

fn cmd(argv: &[&str]) -> CommandGrant {
    CommandGrant { argv: argv.iter().map(|s| s.to_string()).collect(), any_args: false }
}

fn grants(caps: Capabilities, params: &[(&str, &str)]) -> Grants {
    Grants::new("web", caps, params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn input(current: &str, next: &str, force: bool) -> HookInput {
    HookInput {
        module: "web".into(),
        node: "n1".into(),
        current: current.into(),
        next: next.into(),
        action: "prim".into(),
        force,
    }
}

fn calls(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Call { text, .. } => Some(text.clone()),
            Event::Log { .. } => None,
        })
        .collect()
}

fn denied(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Call { denied: true, .. })).count()
}

const SEC: Duration = Duration::from_secs(5);

/// A `process` plugin managing a marker file in `dir` (start = touch, stop = rm, check = test -e).
fn process_plugin(host: &Host, dir: &Path) -> tandem_plugin::Plugin {
    let marker = dir.join("running").display().to_string();
    let caps = Capabilities {
        commands: vec![
            cmd(&["/usr/bin/touch", &marker]),
            cmd(&["/bin/rm", "-f", &marker]),
            cmd(&["/usr/bin/test", "-e", &marker]),
        ],
        ..Capabilities::default()
    };
    let params = [
        ("start", format!("/usr/bin/touch {marker}")),
        ("stop", format!("/bin/rm -f {marker}")),
        ("check", format!("/usr/bin/test -e {marker}")),
    ];
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    host.load(&dist("process"), grants(caps, &params)).unwrap()
}

#[test]
fn process_plugin_starts_stops_and_checks() {
    let host = Host::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("running");
    let p = process_plugin(&host, dir.path());

    let r = p.check("app", SEC);
    let c = r.result.unwrap();
    assert_eq!(c.health, Health::Down, "{c:?}");
    assert!(c.message.contains("exit 1"), "{c:?}");

    let r = p.hook(HookPoint::StartPrim, &input("WAIT", "ALONE", false), SEC);
    assert_eq!(r.result, Ok(Ok(())));
    assert!(marker.exists());
    let ran = calls(&r.events);
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].starts_with(&format!("run /usr/bin/touch {}: exit 0 in ", marker.display())), "{ran:?}");
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, Event::Log { message, .. } if message.starts_with("starting for web"))));
    assert_eq!(p.check("app", SEC).result.unwrap().health, Health::Up);

    // A mirror's start_both (any Ready state) and the secondary's hooks do not run the service.
    for point in [HookPoint::StartBoth, HookPoint::StartSecond, HookPoint::Prestart] {
        let r = p.hook(point, &input("WAIT", "SECOND", false), SEC);
        assert_eq!(r.result, Ok(Ok(())));
        assert!(r.events.is_empty(), "{point:?}: {:?}", r.events);
    }
    // Stop, graceful then forced (no stop_force: the same stop, idempotent).
    for force in [false, true] {
        let r = p.hook(HookPoint::StopPrim, &input("ALONE", "STOP", force), SEC);
        assert_eq!(r.result, Ok(Ok(())), "{:?}", r.events);
    }
    assert!(!marker.exists());
    // A farm runs it on start_both when the node starts serving.
    let r = p.hook(HookPoint::StartBoth, &input("WAIT", "UP", false), SEC);
    assert_eq!(r.result, Ok(Ok(())));
    assert!(marker.exists());
    let r = p.hook(HookPoint::StopBoth, &input("UP", "STOP", false), SEC);
    assert_eq!(r.result, Ok(Ok(())));
    assert!(!marker.exists());
}

#[test]
fn a_command_that_is_not_granted_fails_the_hook() {
    let host = Host::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("running").display().to_string();
    let start = format!("/usr/bin/touch {marker}");
    // The grant differs by one argument.
    let caps = Capabilities { commands: vec![cmd(&["/usr/bin/touch", "/tmp/other"])], ..Capabilities::default() };
    let p = host.load(&dist("process"), grants(caps, &[("start", &start)])).unwrap();
    let r = p.hook(HookPoint::StartPrim, &input("WAIT", "ALONE", false), SEC);
    let msg = r.result.unwrap().unwrap_err();
    assert!(msg.contains("denied: command [\"/usr/bin/touch\"") && msg.contains("capabilities.commands"), "{msg}");
    assert_eq!(denied(&r.events), 1);
    assert!(!Path::new(&marker).exists());
}

/// A one-shot HTTP server answering `status` and `body`; returns its address.
fn http_server(status: &'static str, body: &'static str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    addr
}

#[test]
fn http_check_plugin() {
    let host = Host::new(None).unwrap();
    let probe = |addr: std::net::SocketAddr, granted: bool, contains: &str| {
        let url = format!("http://{addr}/health");
        let caps = Capabilities {
            http: if granted { vec![HttpGrant { address: addr, path: "/health".into() }] } else { vec![] },
            ..Capabilities::default()
        };
        let mut params = vec![("url", url.as_str())];
        if !contains.is_empty() {
            params.push(("contains", contains));
        }
        let p = host.load(&dist("http-check"), grants(caps, &params)).unwrap();
        p.check("web", SEC)
    };
    let r = probe(http_server("200 OK", "all good"), true, "good");
    assert_eq!(r.result.as_ref().unwrap().health, Health::Up, "{r:?}");
    let r = probe(http_server("200 OK", "all good"), true, "ready");
    let c = r.result.unwrap();
    assert_eq!(c.health, Health::Down);
    assert!(c.message.contains("lacks \"ready\""), "{c:?}");
    let r = probe(http_server("503 Service Unavailable", "draining"), true, "");
    let c = r.result.unwrap();
    assert_eq!(c.health, Health::Down);
    assert!(c.message.contains("status 503 (expected 200)"), "{c:?}");
    let r = probe(http_server("200 OK", "x"), false, "");
    let c = r.result.unwrap();
    assert!(c.health == Health::Down && c.message.contains("denied: URL"), "{c:?}");
    assert_eq!(denied(&r.events), 1);
}

#[test]
fn an_infinite_loop_is_interrupted_and_the_host_keeps_serving() {
    let host = Host::new(None).unwrap();
    let spin = host.load(&dist("hostile-spin"), Grants::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = process_plugin(&host, dir.path());
    std::thread::scope(|s| {
        let looping = s.spawn(|| {
            let t = Instant::now();
            let r = spin.check("c", Duration::from_millis(1500));
            (r, t.elapsed())
        });
        // While it loops, other calls are served at once.
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..5 {
            let t = Instant::now();
            assert_eq!(good.check("app", SEC).result.unwrap().health, Health::Down);
            assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        }
        let (r, elapsed) = looping.join().unwrap();
        assert!(matches!(r.result, Err(CallError::Timeout(_))), "{:?}", r.result);
        assert!(elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2500), "{elapsed:?}");
        let msg = r.result.unwrap_err().to_string();
        assert!(msg.starts_with("timed out after 15") && msg.contains("interrupted"), "{msg}");
    });
    // A hook too: the log line it wrote before looping is kept.
    let r = spin.hook(HookPoint::StartPrim, &input("WAIT", "ALONE", false), Duration::from_millis(200));
    assert!(matches!(r.result, Err(CallError::Timeout(_))));
    assert!(matches!(&r.events[..], [Event::Log { message, .. }] if message == "spinning forever"));
    // The same plugin serves the next call (a fresh instance each time).
    assert!(matches!(spin.check("c", Duration::from_millis(50)).result, Err(CallError::Timeout(_))));
}

#[test]
fn a_memory_bomb_hits_its_cap() {
    let host = Host::new(None).unwrap();
    let caps = Capabilities { memory_bytes: 16 << 20, ..Capabilities::default() };
    let bomb = host.load(&dist("hostile-memory-bomb"), grants(caps, &[])).unwrap();
    let t = Instant::now();
    let r = bomb.check("c", SEC);
    match &r.result {
        Err(CallError::Memory { limit_bytes, asked_bytes }) => {
            assert_eq!(*limit_bytes, 16 << 20);
            assert!(*asked_bytes > 16 << 20);
        }
        other => panic!("{other:?}"),
    }
    assert!(r.result.unwrap_err().to_string().contains("the cap is 16 MiB (capabilities.memory)"));
    assert!(t.elapsed() < Duration::from_secs(2));
    // The default cap (64 MiB) holds too, and the host serves the next call.
    let bomb = host.load(&dist("hostile-memory-bomb"), Grants::default()).unwrap();
    let r = bomb.hook(HookPoint::StartPrim, &input("WAIT", "ALONE", false), SEC);
    assert!(
        matches!(r.result, Err(CallError::Memory { limit_bytes, .. }) if limit_bytes == 64 << 20),
        "{:?}",
        r.result
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(process_plugin(&host, dir.path()).check("app", SEC).result.is_ok());
}

#[test]
fn commands_outside_the_allow_list_never_run() {
    let ran = Path::new("/tmp/tandem-hostile-ran");
    let _ = std::fs::remove_file(ran);
    let host = Host::new(None).unwrap();
    let caps = Capabilities { commands: vec![cmd(&["/bin/true"])], ..Capabilities::default() };
    let p = host.load(&dist("hostile-forbidden-command"), grants(caps, &[])).unwrap();
    let r = p.check("c", SEC);
    let c = r.result.unwrap();
    let lines: Vec<&str> = c.message.lines().collect();
    assert_eq!(lines.len(), 4, "{c:?}");
    for l in &lines {
        assert!(
            l.starts_with("denied: command [") && l.ends_with("is not in capabilities.commands of module web"),
            "{l}"
        );
    }
    assert_eq!(denied(&r.events), 4);
    assert!(!ran.exists(), "a forbidden command ran");
    let r = p.hook(HookPoint::StartPrim, &input("WAIT", "ALONE", false), SEC);
    assert!(r.result.unwrap().unwrap_err().contains("denied"));
    assert!(!ran.exists());
}

#[test]
fn files_outside_the_granted_directories_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::os::unix::fs::symlink("/etc", granted.join("link")).unwrap();
    let host = Host::new(None).unwrap();
    let caps = Capabilities { files: vec![granted.clone()], ..Capabilities::default() };
    let dir = granted.display().to_string();
    let p = host.load(&dist("hostile-file-escape"), grants(caps, &[("dir", &dir)])).unwrap();
    let r = p.check("c", SEC);
    let c = r.result.unwrap();
    let lines: Vec<&str> = c.message.lines().collect();
    assert_eq!(lines.len(), 7, "{c:?}");
    assert!(lines[0]
        .starts_with("read /etc/passwd: denied: path \"/etc/passwd\" is not under a directory of capabilities.files"));
    assert!(
        lines[1].contains("/../../etc/passwd: denied: path") && lines[1].contains("contains `.` or `..`"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("link/passwd: denied:") && lines[2].contains("leads outside"), "{}", lines[2]);
    assert!(lines[3].starts_with("write /tmp/tandem-hostile-written: denied:"), "{}", lines[3]);
    assert!(lines[4].contains(": denied:") && lines[5].contains(": denied:"), "{lines:?}");
    assert_eq!(lines[6], "own file: mine");
    assert_eq!(denied(&r.events), 6);
    assert!(!Path::new("/tmp/tandem-hostile-written").exists());
    assert!(!root.path().join("tandem-hostile-written").exists());
    assert!(!Path::new("/etc/tandem-hostile-written").exists());
    assert_eq!(std::fs::read_to_string(granted.join("own.txt")).unwrap(), "mine");
}

#[test]
fn traps_are_reported_with_their_cause() {
    let host = Host::new(None).unwrap();
    let p = host.load(&dist("hostile-trap"), Grants::default()).unwrap();
    let r = p.check("c", SEC);
    let e = r.result.unwrap_err();
    assert!(matches!(&e, CallError::Trap(m) if m.contains("unreachable")), "{e}");
    // The SDK says why in the log before the instance aborts.
    assert!(
        r.events.iter().any(|ev| matches!(ev, Event::Log { message, .. }
            if message.contains("plugin panicked") && message.contains("hostile plugin panics in check c"))),
        "{:?}",
        r.events
    );
    let r = p.hook(HookPoint::StartPrim, &input("WAIT", "ALONE", false), SEC);
    assert!(
        matches!(&r.result, Err(CallError::Trap(m)) if m.contains("out of bounds memory access")),
        "{:?}",
        r.result
    );
    let r = p.hook(HookPoint::StopPrim, &input("ALONE", "STOP", false), SEC);
    assert!(matches!(&r.result, Err(CallError::Trap(m)) if m.contains("stack overflow")), "{:?}", r.result);
    // Still serving.
    assert!(matches!(p.check("c", SEC).result, Err(CallError::Trap(_))));
    let dir = tempfile::tempdir().unwrap();
    assert!(process_plugin(&host, dir.path()).check("app", SEC).result.is_ok());
}

#[test]
fn a_plugin_for_another_interface_version_is_refused_at_load() {
    let host = Host::new(None).unwrap();
    let e = host.load(&dist("hostile-other-version"), Grants::default()).err().expect("refused");
    assert!(matches!(e, PluginError::Version { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("is built for tandem:module@2.0.0; this tandem provides tandem:module@1.0.0: rebuild it"),
        "{msg}"
    );
    // Not a component at all.
    let e = host.load_bytes(Path::new("junk.wasm"), b"\0asm junk", Grants::default()).err().unwrap();
    assert!(matches!(e, PluginError::Invalid { .. }), "{e:?}");
    let e = host.load(Path::new("/nonexistent.wasm"), Grants::default()).err().unwrap();
    assert!(e.to_string().starts_with("cannot read plugin /nonexistent.wasm"), "{e}");
}

#[test]
fn compiled_plugins_are_cached_by_hash() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(dist("process")).unwrap();
    let file = tandem_plugin::cache::path(cache.path(), &wasm);
    let load = || {
        let host = Host::new(Some(cache.path().to_path_buf())).unwrap();
        let p = host.load(&dist("process"), Grants::default()).unwrap();
        // A loaded plugin works whatever its origin.
        assert_eq!(p.check("c", SEC).result.unwrap().health, Health::Unknown);
        p.origin()
    };
    assert_eq!(load(), Origin::Compiled);
    assert_eq!(file.file_name().unwrap().to_string_lossy(), format!("{}.cwasm", blake3::hash(&wasm).to_hex()));
    assert_eq!(load(), Origin::Cache);
    // A cache from another engine (wasmtime version or settings) is compiled again and replaced.
    let data = std::fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&data[..200]).to_string();
    let engine_line = text.lines().nth(1).unwrap().to_string();
    assert!(engine_line.starts_with("engine "));
    let forged = String::from_utf8_lossy(&data).replacen(&engine_line, "engine 0000000000000000", 1);
    std::fs::write(&file, forged.as_bytes()).unwrap();
    assert_eq!(load(), Origin::Compiled);
    assert_eq!(std::fs::read(&file).unwrap(), data, "rewritten as the current engine writes it");
    assert_eq!(load(), Origin::Cache);
    // A torn or tampered body is not loaded either.
    let mut torn = data.clone();
    torn.truncate(data.len() - 100);
    std::fs::write(&file, &torn).unwrap();
    assert_eq!(load(), Origin::Compiled);
    assert_eq!(load(), Origin::Cache);
}
