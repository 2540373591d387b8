//! The cost of plugins: a `check` call (a fresh instance, the call, its result), median and p99,
//! with and without a host call; and loading a plugin: a cold compilation, and from the on-disk
//! cache as a daemon start does. Uses the shipped plugins of plugins/dist/
//! (scripts/build-plugins.sh).
//!
//! `cargo bench -p tandem-plugin` (`BENCH_CALLS`, default 20000: calls per figure). The markdown
//! table goes to stdout. Started without `--bench` (as `cargo test --all-targets` does), it does
//! nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_config::{Capabilities, HttpGrant};
use tandem_plugin::{Grants, Health, Host, Origin};

fn dist(name: &str) -> PathBuf {
    let p = tandem_plugin::dist_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-plugins.sh", p.display());
    p
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Times `n` runs of `f` (after a warm-up of n/10), sorted.
fn measure(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..n / 10 {
        f();
    }
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

/// An HTTP server answering 200 to every request, for the http-check figure.
fn http_server() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    addr
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let deadline = Duration::from_secs(5);
    let mut rows: Vec<(String, String, String, String)> = Vec::new();

    let host = Host::new(None).unwrap();
    // A check that makes no host call: instantiation + call + result.
    let process = host.load(&dist("process"), Grants::default()).unwrap();
    assert_eq!(process.check("c", deadline).result.unwrap().health, Health::Unknown);
    let v = measure(n, || {
        std::hint::black_box(process.check("c", deadline));
    });
    eprintln!("check, no host call: median {}", us(quantile(&v, 0.5)));
    rows.push((
        "`check` call, no host call (`process` without params)".into(),
        us(quantile(&v, 0.5)),
        us(quantile(&v, 0.99)),
        format!("{n} calls"),
    ));

    // What every call pays before the plugin runs: a store and a fresh instance.
    let v = measure(n, || {
        process.instantiate_only().unwrap();
    });
    rows.push((
        "instantiation alone (a store and a fresh instance, no call)".into(),
        us(quantile(&v, 0.5)),
        us(quantile(&v, 0.99)),
        format!("{n} instances"),
    ));

    // A check that probes HTTP on localhost: the host call and its network round trip.
    let addr = http_server();
    let caps = Capabilities { http: vec![HttpGrant { address: addr, path: "/".into() }], ..Capabilities::default() };
    let url = format!("http://{addr}/health");
    let g = Grants::new("bench", caps, [("url".to_string(), url)].into_iter().collect());
    let http = host.load(&dist("http-check"), g).unwrap();
    assert_eq!(http.check("c", deadline).result.unwrap().health, Health::Up);
    let nh = n / 4;
    let v = measure(nh, || {
        std::hint::black_box(http.check("c", deadline));
    });
    rows.push((
        "`check` call with an HTTP probe of 127.0.0.1 (`http-check`)".into(),
        us(quantile(&v, 0.5)),
        us(quantile(&v, 0.99)),
        format!("{nh} calls"),
    ));
    // The same GET without a plugin, for reference.
    let v = measure(nh, || {
        std::hint::black_box(tandem_plugin::sys::probe_http(addr, "/health", deadline).unwrap());
    });
    rows.push((
        "(reference) the same GET from the host, no plugin".into(),
        us(quantile(&v, 0.5)),
        us(quantile(&v, 0.99)),
        format!("{nh} calls"),
    ));

    // Loading: cold compilation, and from the cache (a new host each time, as a daemon start).
    let runs = 10;
    let wasm = std::fs::read(dist("process")).unwrap();
    let v = measure(runs, || {
        let h = Host::new(None).unwrap();
        std::hint::black_box(h.load_bytes(Path::new("process.wasm"), &wasm, Grants::default()).unwrap());
    });
    rows.push((
        format!("load `process` ({} KiB): compile", wasm.len() >> 10),
        ms(quantile(&v, 0.5)),
        ms(quantile(&v, 0.99)),
        format!("{runs} loads"),
    ));
    let cache = tempfile::tempdir().unwrap();
    let warm = Host::new(Some(cache.path().to_path_buf())).unwrap();
    assert_eq!(warm.load_bytes(Path::new("p"), &wasm, Grants::default()).unwrap().origin(), Origin::Compiled);
    let v = measure(runs * 10, || {
        let h = Host::new(Some(cache.path().to_path_buf())).unwrap();
        let p = h.load_bytes(Path::new("process.wasm"), &wasm, Grants::default()).unwrap();
        assert_eq!(p.origin(), Origin::Cache);
    });
    rows.push((
        "load `process`: from the on-disk cache".into(),
        ms(quantile(&v, 0.5)),
        ms(quantile(&v, 0.99)),
        format!("{} loads", runs * 10),
    ));

    println!("| what | median | p99 | runs |");
    println!("|---|---|---|---|");
    for (what, med, p99, runs) in rows {
        println!("| {what} | {med} | {p99} | {runs} |");
    }
}
