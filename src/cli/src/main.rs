//! The `tandem` binary. Each subcommand lives in a file of its own and only parses arguments and
//! prints results; the work is done by the layer crates (`tandem-config`, `tandem-lab`, ...).

mod config_cmd;
mod lab_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// tandem: high-availability clusters of mirror and farm modules.
#[derive(Parser)]
#[command(name = "tandem", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate cluster.toml and module.toml files.
    Config(config_cmd::ConfigArgs),
    /// A cluster of simulated nodes on this machine, for demos, tests and trying modules.
    Lab(lab_cmd::LabArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(args) => config_cmd::run(args),
        Command::Lab(args) => lab_cmd::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("tandem: {err:#}");
            ExitCode::from(1)
        }
    }
}
