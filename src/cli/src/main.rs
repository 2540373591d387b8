//! The `tandem` binary. Each group of subcommands lives in a file of its own and only parses
//! arguments and prints results; the work is done by the layer crates.

mod config_cmd;
mod control_cmd;
mod daemon_cmd;
mod lab_cmd;
mod plugin_cmd;

use clap::{Parser, Subcommand};
use control_cmd::Target;
use std::process::ExitCode;
use tandem_machine::Admin;

/// tandem: high-availability clusters of mirror and farm modules.
#[derive(Parser)]
#[command(name = "tandem", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cluster daemon of this node (foreground; systemd unit in dist/).
    Daemon(daemon_cmd::DaemonArgs),
    /// Show the state of the modules on this node (exit code with -m: STOP 0, WAIT 1, ALONE/UP 2, PRIM 3, SECOND 4).
    State(control_cmd::StateArgs),
    /// Start a module on this node.
    Start(Target),
    /// Stop a module on this node (a primary fails over to its peer at once).
    Stop(Target),
    /// Run the module's stop and start hooks again on this node.
    Restart(Target),
    /// Stop then start the module on this node: a primary fails over.
    Stopstart(Target),
    /// Exchange the roles of PRIM and SECOND.
    Swap(Target),
    /// Make this node primary, if its data is known to be up to date.
    Prim(Target),
    /// Make this node secondary.
    Second(control_cmd::SecondArgs),
    /// Make this node primary even on stale data (the peer then resynchronises from it).
    Primforce(Target),
    /// Allow or forbid automatic failover of a module.
    Failover(control_cmd::FailoverArgs),
    /// Compare both copies of a module's replicated directory by blake3 (on the primary).
    Verify(Target),
    /// Estimate what a catch-up of the secondary would read and send, and how long it would take
    /// (on the primary; nothing is read).
    Diff(Target),
    /// Show a module's event log.
    Log(control_cmd::LogArgs),
    /// Create a cluster: cluster.toml and a new key.
    Cluster(daemon_cmd::ClusterArgs),
    /// Validate cluster.toml and module.toml files.
    Config(config_cmd::ConfigArgs),
    /// A cluster of simulated nodes on this machine, for demos, tests and trying modules.
    Lab(lab_cmd::LabArgs),
    /// Write and try WASM plugins: scaffold a plugin crate, run one call in the real host.
    Plugin(plugin_cmd::PluginArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon reports what it does; the other commands print their results and stay quiet.
    let default = if matches!(cli.command, Command::Daemon(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Daemon(args) => daemon_cmd::run_daemon(args),
        Command::State(args) => control_cmd::state(args),
        Command::Start(t) => control_cmd::admin(t, Admin::Start),
        Command::Stop(t) => control_cmd::admin(t, Admin::Stop),
        Command::Restart(t) => control_cmd::admin(t, Admin::Restart),
        Command::Stopstart(t) => control_cmd::admin(t, Admin::StopStart),
        Command::Swap(t) => control_cmd::admin(t, Admin::Swap),
        Command::Prim(t) => control_cmd::admin(t, Admin::Prim),
        Command::Second(args) => control_cmd::second(args),
        Command::Primforce(t) => control_cmd::admin(t, Admin::PrimForce),
        Command::Failover(args) => control_cmd::failover(args),
        Command::Log(args) => control_cmd::log(args),
        Command::Verify(t) => control_cmd::verify(t),
        Command::Diff(t) => control_cmd::diff(t),
        Command::Cluster(args) => daemon_cmd::run_cluster(args),
        Command::Config(args) => config_cmd::run(args),
        Command::Lab(args) => lab_cmd::run(args),
        Command::Plugin(args) => plugin_cmd::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("tandem: {err:#}");
            ExitCode::from(1)
        }
    }
}
