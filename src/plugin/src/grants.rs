//! What a plugin may do, decided without touching the system: the module's `[capabilities]`
//! turned into checks. Every host call asks here first; the answer names what was asked and which
//! key of module.toml would grant it, so a denial in the module log tells the operator what to do.
//!
//! File paths are checked twice: here, lexically (absolute, no `..`, under a granted directory),
//! and by the adapter after resolving symlinks (`sys::confine`), so that neither a `..` nor a
//! symlink planted in a granted directory leads outside it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tandem_config::{Capabilities, CommandGrant, ModuleConfig, ANY_ARGS};

/// The capabilities of one module's plugin, and its parameters.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// The module's name (for messages).
    pub module: String,
    pub caps: Capabilities,
    pub params: BTreeMap<String, String>,
}

impl Grants {
    pub fn new(module: &str, caps: Capabilities, params: BTreeMap<String, String>) -> Grants {
        Grants { module: module.to_string(), caps, params }
    }

    /// The grants of a parsed module.
    pub fn of(cfg: &ModuleConfig) -> Grants {
        Grants::new(&cfg.name, cfg.capabilities.clone(), cfg.params.clone())
    }

    /// Ok if `argv` matches an entry of `capabilities.commands`: exactly, or as a prefix when the
    /// entry ends with `"..."`.
    pub fn command(&self, argv: &[String]) -> Result<(), String> {
        if argv.is_empty() {
            return Err("empty argv".into());
        }
        if self.caps.commands.iter().any(|g| command_matches(g, argv)) {
            return Ok(());
        }
        Err(format!("command {argv:?} is not in capabilities.commands of module {}", self.module))
    }

    /// The lexical check of a file path: absolute, no `.` or `..`, under a granted directory.
    /// Returns the granted directory it is under.
    pub fn file(&self, path: &str) -> Result<&Path, String> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(format!("path \"{path}\" is not absolute"));
        }
        // On the raw string: `Path::components` silently drops inner `.` components.
        if path.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!("path \"{path}\" contains `.` or `..`"));
        }
        self.caps.files.iter().map(PathBuf::as_path).find(|d| p.starts_with(d) && p != *d).ok_or_else(|| {
            format!("path \"{path}\" is not under a directory of capabilities.files of module {}", self.module)
        })
    }

    /// The address of a TCP probe, if granted.
    pub fn tcp(&self, address: &str) -> Result<SocketAddr, String> {
        let a: SocketAddr = address.parse().map_err(|_| format!("invalid address \"{address}\": expected IP:PORT"))?;
        if self.caps.tcp.contains(&a) {
            Ok(a)
        } else {
            Err(format!("TCP address {a} is not in capabilities.tcp of module {}", self.module))
        }
    }

    /// The server and path of an HTTP probe, if a prefix in `capabilities.http` grants it.
    pub fn http(&self, url: &str) -> Result<(SocketAddr, String), String> {
        let (address, path) = tandem_config::parse_http_url(url)?;
        if self.caps.http.iter().any(|g| g.address == address && path.starts_with(&g.path)) {
            Ok((address, path))
        } else {
            Err(format!("URL {url} is not under a prefix of capabilities.http of module {}", self.module))
        }
    }

    /// Ok if the resource name is in `capabilities.resources`.
    pub fn resource(&self, name: &str) -> Result<(), String> {
        if self.caps.resources.iter().any(|r| r == name) {
            Ok(())
        } else {
            Err(format!("resource \"{name}\" is not in capabilities.resources of module {}", self.module))
        }
    }
}

fn command_matches(g: &CommandGrant, argv: &[String]) -> bool {
    if g.any_args {
        argv.len() >= g.argv.len() && argv[..g.argv.len()] == g.argv[..]
    } else {
        argv == g.argv.as_slice()
    }
}

/// How a grant is written in module.toml (for messages and `plugin test`).
pub fn describe_command(g: &CommandGrant) -> String {
    let mut v = g.argv.clone();
    if g.any_args {
        v.push(ANY_ARGS.into());
    }
    format!("{v:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::HttpGrant;

    fn grants() -> Grants {
        let caps = Capabilities {
            commands: vec![
                CommandGrant { argv: vec!["/usr/bin/systemctl".into(), "start".into(), "web".into()], any_args: false },
                CommandGrant { argv: vec!["/usr/local/bin/ctl".into(), "status".into()], any_args: true },
            ],
            files: vec![PathBuf::from("/var/lib/web")],
            tcp: vec!["127.0.0.1:8080".parse().unwrap()],
            http: vec![HttpGrant { address: "127.0.0.1:8080".parse().unwrap(), path: "/health".into() }],
            resources: vec!["load".into()],
            ..Capabilities::default()
        };
        Grants::new("web", caps, BTreeMap::new())
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_match_exactly_or_by_prefix() {
        let g = grants();
        assert!(g.command(&argv(&["/usr/bin/systemctl", "start", "web"])).is_ok());
        // Exact entries allow no extra, fewer or other arguments.
        assert!(g.command(&argv(&["/usr/bin/systemctl", "start", "web", "db"])).is_err());
        assert!(g.command(&argv(&["/usr/bin/systemctl", "start"])).is_err());
        assert!(g.command(&argv(&["/usr/bin/systemctl", "stop", "web"])).is_err());
        // No PATH search, no other spelling of the program.
        assert!(g.command(&argv(&["systemctl", "start", "web"])).is_err());
        assert!(g.command(&argv(&["/usr/bin/../bin/systemctl", "start", "web"])).is_err());
        // A "..." entry allows more arguments, never fewer.
        assert!(g.command(&argv(&["/usr/local/bin/ctl", "status"])).is_ok());
        assert!(g.command(&argv(&["/usr/local/bin/ctl", "status", "-v", "x"])).is_ok());
        assert!(g.command(&argv(&["/usr/local/bin/ctl"])).is_err());
        assert!(g.command(&argv(&["/usr/local/bin/ctl", "restart"])).is_err());
        assert!(g.command(&[]).is_err());
        let e = g.command(&argv(&["/bin/sh", "-c", "x"])).unwrap_err();
        assert_eq!(e, "command [\"/bin/sh\", \"-c\", \"x\"] is not in capabilities.commands of module web");
        // Nothing granted: everything denied.
        assert!(Grants::default().command(&argv(&["/bin/true"])).is_err());
    }

    #[test]
    fn files_are_confined_lexically() {
        let g = grants();
        assert_eq!(g.file("/var/lib/web/state").unwrap(), Path::new("/var/lib/web"));
        assert!(g.file("/var/lib/web/a/b/c").is_ok());
        assert!(g.file("/var/lib/web").is_err(), "the directory itself is not a file");
        assert!(g.file("/var/lib/webx/state").is_err(), "component-wise, not a string prefix");
        assert!(g.file("/var/lib/web/../../../etc/passwd").unwrap_err().contains("`..`"));
        assert!(g.file("/var/lib/web/./x").is_err());
        assert!(g.file("var/lib/web/x").unwrap_err().contains("not absolute"));
        assert!(g.file("/etc/passwd").unwrap_err().contains("capabilities.files"));
    }

    #[test]
    fn network_and_resources() {
        let g = grants();
        assert_eq!(g.tcp("127.0.0.1:8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert!(g.tcp("127.0.0.1:22").is_err());
        assert!(g.tcp("localhost:8080").is_err());
        assert_eq!(g.http("http://127.0.0.1:8080/health").unwrap().1, "/health");
        assert!(g.http("http://127.0.0.1:8080/healthz?x=1").is_ok(), "a prefix of the path");
        assert!(g.http("http://127.0.0.1:8080/admin").is_err());
        assert!(g.http("http://127.0.0.1:8081/health").is_err());
        assert!(g.http("http://example.com:8080/health").is_err());
        assert!(g.resource("load").is_ok());
        assert!(g.resource("weight").is_err());
    }

    #[test]
    fn grants_as_written() {
        let g = grants();
        assert_eq!(describe_command(&g.caps.commands[1]), "[\"/usr/local/bin/ctl\", \"status\", \"...\"]");
    }
}
