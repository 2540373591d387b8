//! `tandem lab ...`: argument parsing and printing; the work is done by `tandem-lab`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use tandem_lab::{Lab, LabSpec, DEFAULT_LAB};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Args)]
struct NameArg {
    /// Lab name ([a-z0-9][a-z0-9-]{0,11}).
    #[arg(long, default_value = DEFAULT_LAB)]
    name: String,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab: nodes n1..nN, a client and a witness, cabled to 1..4 networks (198.18.k.0/24).
    Up {
        #[command(flatten)]
        name: NameArg,
        /// Number of cluster nodes (1..=16).
        #[arg(long)]
        nodes: u8,
        /// Number of networks (1..=4); nodes are on all, client and witness on network 0.
        #[arg(long, default_value_t = 1)]
        networks: u8,
        /// An absolute directory each host gets a private copy of (repeatable).
        #[arg(long = "dir", value_name = "PATH")]
        dirs: Vec<PathBuf>,
    },
    /// Hosts, addresses, link and power states, process counts.
    Status {
        #[command(flatten)]
        name: NameArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The labs on this machine.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a host (its namespaces and cgroup); its exit code is passed through.
    Exec {
        #[command(flatten)]
        name: NameArg,
        /// n1..n16, client or witness.
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Power loss: every process of the host killed at once, its cables dark.
    Kill {
        #[command(flatten)]
        name: NameArg,
        host: String,
    },
    /// Power back after `kill`: fresh /run and network stack, disks kept.
    Restart {
        #[command(flatten)]
        name: NameArg,
        host: String,
    },
    /// Pull a host's cable(s): all its networks, or only --network K.
    Cut {
        #[command(flatten)]
        name: NameArg,
        host: String,
        #[arg(long)]
        network: Option<u8>,
    },
    /// Plug back what `cut` pulled.
    Heal {
        #[command(flatten)]
        name: NameArg,
        host: String,
        #[arg(long)]
        network: Option<u8>,
    },
    /// Remove a lab entirely (idempotent; also cleans half-built labs), or every lab with --all.
    Down {
        #[command(flatten)]
        name: NameArg,
        /// Remove every lab on this machine.
        #[arg(long)]
        all: bool,
    },
}

fn open(name: &NameArg) -> anyhow::Result<Lab> {
    Ok(Lab::open(&name.name)?)
}

pub fn run(args: LabArgs) -> anyhow::Result<u8> {
    match args.command {
        LabCommand::Up { name, nodes, networks, dirs } => {
            let spec = LabSpec { name: name.name, nodes, networks, private_dirs: dirs };
            let lab = Lab::up(spec)?;
            print!("{}", lab.status()?);
            Ok(0)
        }
        LabCommand::Status { name, json } => {
            let st = open(&name)?.status()?;
            if json {
                println!("{}", st.to_json());
            } else {
                print!("{st}");
            }
            Ok(0)
        }
        LabCommand::List { json } => {
            let labs = tandem_lab::list()?;
            if json {
                let items: Vec<String> = labs.iter().map(|l| l.to_json()).collect();
                println!("[{}]", items.join(","));
            } else if labs.is_empty() {
                println!("no lab");
            } else {
                println!("{:<14} {:>5} {:>8}  NOTE", "LAB", "NODES", "NETWORKS");
                for l in labs {
                    let opt = |v: Option<u8>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
                    let note = if !l.complete {
                        format!("half-built or leftovers: run `tandem lab down --name {}`", l.name)
                    } else if !l.killed.is_empty() {
                        format!("killed: {}", l.killed.join(" "))
                    } else {
                        String::new()
                    };
                    println!("{:<14} {:>5} {:>8}  {}", l.name, opt(l.nodes), opt(l.networks), note);
                }
            }
            Ok(0)
        }
        LabCommand::Exec { name, host, command } => {
            let lab = open(&name)?;
            let mut cmd = lab.command(&host, &command)?;
            // Replaces this process: stdio, signals and the exit code are the command's own.
            let err = cmd.exec();
            let prog = command[0].to_string_lossy();
            eprintln!("tandem: lab {}: host {host}: cannot run {prog}: {err}", lab.name());
            Ok(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
        }
        LabCommand::Kill { name, host } => {
            open(&name)?.kill(&host)?;
            Ok(0)
        }
        LabCommand::Restart { name, host } => {
            open(&name)?.restart(&host)?;
            Ok(0)
        }
        LabCommand::Cut { name, host, network } => {
            open(&name)?.cut(&host, network)?;
            Ok(0)
        }
        LabCommand::Heal { name, host, network } => {
            open(&name)?.heal(&host, network)?;
            Ok(0)
        }
        LabCommand::Down { name, all } => {
            if all {
                let removed = tandem_lab::down_all().context("removing every lab")?;
                for l in removed {
                    println!("removed lab {l}");
                }
            } else {
                if name.name.is_empty() {
                    bail!("--name must not be empty");
                }
                tandem_lab::down(&name.name)?;
            }
            Ok(0)
        }
    }
}
