//! `tandem config`: configuration file commands.

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Validate cluster.toml and module.toml files.
#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check cluster and module files, alone or together.
    ///
    /// Each file is recognised by its keys: a module file has a top-level `kind`; a cluster file
    /// has `key_file` and [[network]] tables. Files given together are also checked against each
    /// other: module nodes must be nodes of the cluster file, module ids and names must be
    /// unique. Errors are printed on stderr as `file:line:col: key: message`; the exit code is 0
    /// when every file is valid, 1 otherwise.
    Check {
        /// The files to check (a cluster file and any number of module files).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Runs a `tandem config` command and returns the process exit code.
pub fn run(args: ConfigArgs) -> anyhow::Result<u8> {
    match args.command {
        ConfigCommand::Check { files } => Ok(check(&files)),
    }
}

fn check(files: &[PathBuf]) -> u8 {
    let report = tandem_config::check_files(files);
    for f in &report.files {
        if let Ok(loaded) = &f.result {
            if report.file_ok(&f.path) {
                println!("ok: {} ({})", f.path.display(), loaded.summary());
            }
        }
    }
    let errors = report.errors();
    for e in &errors {
        eprintln!("{e}");
    }
    if report.is_ok() {
        return 0;
    }
    let n = errors.len();
    let bad = report.files_with_errors();
    eprintln!(
        "config check: {n} error{} in {bad} of {} file{}",
        if n == 1 { "" } else { "s" },
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    1
}
