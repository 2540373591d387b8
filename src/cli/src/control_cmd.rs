//! The commands that talk to the local daemon through its control socket: state, the admin
//! commands (start, stop, restart, stopstart, swap, prim, second, primforce, failover), log.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use tandem_cluster::control::{request, ModuleStatus, Request, Response, DEFAULT_SOCKET};
use tandem_machine::Admin;

#[derive(Args, Clone)]
pub struct Target {
    /// The module.
    #[arg(short = 'm', long = "module")]
    module: String,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET, hide = true)]
    socket: PathBuf,
}

#[derive(Args)]
pub struct StateArgs {
    /// Only this module; the exit code then tells its state: STOP 0, WAIT 1, ALONE or UP 2, PRIM 3, SECOND 4.
    #[arg(short = 'm', long = "module")]
    module: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = DEFAULT_SOCKET, hide = true)]
    socket: PathBuf,
}

#[derive(Args)]
pub struct SecondArgs {
    #[command(flatten)]
    target: Target,
    /// Copy everything from the primary instead of catching up.
    #[arg(long)]
    fullsync: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args)]
pub struct FailoverArgs {
    #[arg(value_enum)]
    setting: OnOff,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    target: Target,
    /// Keep printing new events.
    #[arg(short = 'f', long)]
    follow: bool,
    /// How many of the last events to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
}

/// Exit code when the request itself fails (no daemon, unknown module): distinct from the state codes.
const EXIT_ERROR: u8 = 10;
/// Exit code of a refused command.
const EXIT_REFUSED: u8 = 1;

/// Admin commands may wait for hooks (each has a timeout; several may run).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

fn ask(socket: &std::path::Path, req: &Request, timeout: Duration) -> Result<Response, u8> {
    request(socket, req, timeout).map_err(|e| {
        eprintln!("tandem: {e}");
        EXIT_ERROR
    })
}

/// Reports an answer the command did not expect: an error from the daemon (unknown module, ...)
/// or a protocol mix-up.
fn failed(r: Response) -> u8 {
    match r {
        Response::Error { message } => eprintln!("tandem: {message}"),
        other => eprintln!("tandem: unexpected answer {other:?}"),
    }
    EXIT_ERROR
}

pub fn admin(target: Target, command: Admin) -> anyhow::Result<u8> {
    let req = Request::Admin { module: target.module.clone(), command };
    Ok(match ask(&target.socket, &req, ADMIN_TIMEOUT) {
        Err(code) => code,
        Ok(Response::Done { message, .. }) => {
            println!("{}: {message}", target.module);
            0
        }
        Ok(Response::Refused { message }) => {
            eprintln!("{}: {message}", target.module);
            EXIT_REFUSED
        }
        Ok(other) => failed(other),
    })
}

/// `tandem verify`: exit 0 when both copies are identical, 1 when they differ (each difference
/// printed), 10 when the comparison could not be made.
pub fn verify(target: Target) -> anyhow::Result<u8> {
    let req = Request::Verify { module: target.module.clone() };
    Ok(match ask(&target.socket, &req, ADMIN_TIMEOUT) {
        Err(code) => code,
        Ok(Response::Verified { entries, bytes, differences }) if differences.is_empty() => {
            println!(
                "{}: the copies are identical ({entries} entries, {} MiB compared by blake3)",
                target.module,
                bytes >> 20
            );
            0
        }
        Ok(Response::Verified { differences, .. }) => {
            for d in &differences {
                println!("{d}");
            }
            eprintln!("{}: {} difference(s) between the copies", target.module, differences.len());
            EXIT_REFUSED
        }
        Ok(other) => failed(other),
    })
}

/// `tandem diff`: the estimate of a catch-up now (exit 0), 10 when it cannot be made.
pub fn diff(target: Target) -> anyhow::Result<u8> {
    let req = Request::Diff { module: target.module.clone() };
    Ok(match ask(&target.socket, &req, ADMIN_TIMEOUT) {
        Err(code) => code,
        Ok(Response::Diff(r)) => {
            print!("{}", diff_text(&target.module, &r));
            0
        }
        Ok(other) => failed(other),
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn diff_text(module: &str, r: &tandem_cluster::control::DiffReport) -> String {
    let z = &r.zones;
    let mut out = String::new();
    if r.in_sync {
        out.push_str(&format!("{module}: the secondary is in sync: a catch-up now would send nothing\n"));
        return out;
    }
    let time = |bytes: u64| match r.rate {
        Some(rate) if rate > 0.0 => {
            format!("about {:.1} s at the last catch-up's rate ({:.0} MiB/s)", bytes as f64 / rate, rate / 1048576.0)
        }
        _ => "no catch-up measured yet to estimate the time".to_string(),
    };
    match r.tracking_since {
        Some(since) => {
            out.push_str(&format!(
                "{module}: changes tracked since {since} (seconds since the epoch). If the secondary left cleanly, \
                 a catch-up compares {} by block hash, at most that much sent (plus what it lacks entirely), \
                 and does not read {} (the zone log vouches for it); {}\n",
                mib(z.compare),
                mib(z.unread),
                time(z.compare)
            ));
            out.push_str(&format!(
                "{module}: after a crash of the secondary or a divergence, every file is compared: {} in {} files; {}\n",
                mib(z.bytes),
                z.files,
                time(z.bytes)
            ));
        }
        None => out.push_str(&format!(
            "{module}: no zone log to trust: a catch-up compares every file by block hash: {} in {} files, \
             at most that much sent; {}\n",
            mib(z.bytes),
            z.files,
            time(z.bytes)
        )),
    }
    out
}

pub fn second(args: SecondArgs) -> anyhow::Result<u8> {
    admin(args.target, Admin::Second { fullsync: args.fullsync })
}

pub fn failover(args: FailoverArgs) -> anyhow::Result<u8> {
    admin(args.target, Admin::Failover(matches!(args.setting, OnOff::On)))
}

fn print_table(modules: &[ModuleStatus]) {
    if modules.is_empty() {
        println!("no module on this node");
        return;
    }
    for m in modules {
        let peers: Vec<String> = m
            .peers
            .iter()
            .map(|p| match p.state {
                Some(s) => format!(
                    "{} {}{} via {}",
                    p.node,
                    s,
                    p.readiness.map(|r| format!(" ({r})")).unwrap_or_default(),
                    if p.networks.is_empty() { "-".into() } else { p.networks.join(",") }
                ),
                None => format!("{} not seen", p.node),
            })
            .collect();
        println!(
            "{:<16} {:<6} {} ({}){}{}   peers: {}",
            m.module,
            m.kind,
            m.state,
            m.readiness,
            m.generation.as_ref().map(|g| format!("  generation {g}")).unwrap_or_default(),
            match m.failover {
                Some(false) => "  failover off",
                _ => "",
            },
            if peers.is_empty() { "-".to_string() } else { peers.join("; ") }
        );
        if let Some(r) = &m.replication {
            println!("{:<16} {r}", "");
        }
        if let Some(f) = &m.last_failure {
            println!("{:<16} last failure: {f}", "");
        }
        let dropped: u64 = m.dropped.values().sum();
        if dropped > 0 {
            let reasons: Vec<String> = m.dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("{:<16} heartbeats dropped: {}", "", reasons.join(", "));
        }
    }
}

pub fn state(args: StateArgs) -> anyhow::Result<u8> {
    let req = Request::State { module: args.module.clone() };
    let modules = match ask(&args.socket, &req, Duration::from_secs(10)) {
        Err(code) => return Ok(code),
        Ok(Response::State { modules }) => modules,
        Ok(other) => return Ok(failed(other)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&modules)?);
    } else {
        print_table(&modules);
    }
    Ok(match (&args.module, modules.first()) {
        (Some(_), Some(m)) => m.state.exit_code(),
        _ => 0,
    })
}

pub fn log(args: LogArgs) -> anyhow::Result<u8> {
    let mut since = 0;
    let mut tail = args.lines;
    loop {
        let req = Request::Log { module: args.target.module.clone(), since, tail };
        match ask(&args.target.socket, &req, Duration::from_secs(10)) {
            Err(code) => return Ok(code),
            Ok(Response::Log { lines, next }) => {
                for l in lines {
                    println!("{l}");
                }
                since = next;
            }
            Ok(other) => return Ok(failed(other)),
        }
        if !args.follow {
            return Ok(0);
        }
        // With --follow, offset 0 means "from the top" once we have read the file.
        tail = usize::MAX;
        std::thread::sleep(Duration::from_millis(300));
    }
}
