//! `[capabilities]` and `[params]` of a module's plugin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tandem_config::*;

const MIRROR: &str = r#"name = "web"
kind = "mirror"
id = 1
plugin = "web.wasm"

[[node]]
name = "n1"

[[node]]
name = "n2"
"#;

fn errors(text: &str) -> Vec<String> {
    match parse_module(Path::new("m.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| format!("{}:{}: {}: {}", e.line, e.column, e.key, e.message)).collect(),
    }
}

#[track_caller]
fn assert_error(text: &str, want: &str) {
    let errs = errors(text);
    assert!(errs.iter().any(|e| e.starts_with(want)), "wanted `{want}...`, got {errs:#?}");
}

#[test]
fn denied_by_default() {
    let m = parse_module(Path::new("/etc/tandem/modules/web/module.toml"), MIRROR).unwrap();
    assert_eq!(m.plugin, Some(PathBuf::from("/etc/tandem/modules/web/web.wasm")));
    assert_eq!(m.capabilities, Capabilities::default());
    assert!(m.capabilities.commands.is_empty() && m.capabilities.files.is_empty());
    assert_eq!(m.capabilities.memory_bytes, DEFAULT_PLUGIN_MEMORY_BYTES);
    assert!(m.params.is_empty());
}

#[test]
fn every_capability_parses() {
    let text = format!(
        r#"{MIRROR}
[capabilities]
commands = [["/usr/bin/systemctl", "start", "web"], ["/usr/local/bin/web-ctl", "..."]]
files = ["/var/lib/web", "/run/web"]
tcp = ["127.0.0.1:8080", "[::1]:80"]
http = ["http://127.0.0.1:8080/health", "http://198.18.0.100:80"]
resources = ["load"]
memory = "16MiB"

[params]
unit = "web.service"
timeout_ms = 5000
verbose = true
"#
    );
    let m = parse_module(Path::new("m.toml"), &text).unwrap();
    let c = &m.capabilities;
    assert_eq!(
        c.commands,
        vec![
            CommandGrant { argv: vec!["/usr/bin/systemctl".into(), "start".into(), "web".into()], any_args: false },
            CommandGrant { argv: vec!["/usr/local/bin/web-ctl".into()], any_args: true },
        ]
    );
    assert_eq!(c.files, vec![PathBuf::from("/var/lib/web"), PathBuf::from("/run/web")]);
    assert_eq!(c.tcp, vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap(), "[::1]:80".parse().unwrap()]);
    assert_eq!(
        c.http,
        vec![
            HttpGrant { address: "127.0.0.1:8080".parse().unwrap(), path: "/health".into() },
            HttpGrant { address: "198.18.0.100:80".parse().unwrap(), path: "/".into() },
        ]
    );
    assert_eq!(c.resources, vec!["load".to_string()]);
    assert_eq!(c.memory_bytes, 16 << 20);
    assert_eq!(m.params.get("unit").map(String::as_str), Some("web.service"));
    assert_eq!(m.params.get("timeout_ms").map(String::as_str), Some("5000"));
    assert_eq!(m.params.get("verbose").map(String::as_str), Some("true"));
}

#[test]
fn capability_errors_point_at_the_value() {
    let caps = |body: &str| format!("{MIRROR}\n[capabilities]\n{body}\n");
    // Line 13 is the first line of the [capabilities] body.
    assert_error(
        &caps("commands = [[\"systemctl\", \"start\"]]"),
        "13:14: capabilities.commands[0][0]: program \"systemctl\" must be an absolute path",
    );
    assert_error(&caps("commands = [[]]"), "13:13: capabilities.commands[0]: empty argv");
    assert_error(&caps("commands = [[\"...\"]]"), "13:13: capabilities.commands[0]: empty argv");
    assert_error(
        &caps("commands = [[\"/bin/x\", \"...\", \"y\"]]"),
        "13:24: capabilities.commands[0]: \"...\" (any further arguments) may only be the last element",
    );
    assert_error(&caps("commands = [\"/bin/x\"]"), "13:13: capabilities.commands[0]: expected an argv array");
    assert_error(
        &caps("commands = [[\"/bin/x\", 3]]"),
        "13:24: capabilities.commands[0][1]: expected an argument string",
    );
    assert_error(
        &caps("files = [\"var/lib\"]"),
        "13:10: capabilities.files[0]: directory \"var/lib\" must be an absolute path",
    );
    assert_error(&caps("files = [\"/var/../etc\"]"), "13:10: capabilities.files[0]: directory \"/var/../etc\" must be");
    assert_error(
        &caps("files = [\"/\"]"),
        "13:10: capabilities.files[0]: granting \"/\" would give the plugin the whole file system",
    );
    assert_error(&caps("tcp = [\"localhost:80\"]"), "13:8: capabilities.tcp[0]: invalid address \"localhost:80\"");
    assert_error(
        &caps("http = [\"http://localhost:80/\"]"),
        "13:9: capabilities.http[0]: invalid URL \"http://localhost:80/\": the server must be IP:PORT",
    );
    assert_error(
        &caps("http = [\"https://10.0.0.1:443/\"]"),
        "13:9: capabilities.http[0]: invalid URL \"https://10.0.0.1:443/\": expected http://",
    );
    assert_error(&caps("resources = [\"Bad Name\"]"), "13:14: capabilities.resources[0]:");
    assert_error(&caps("memory = \"512KiB\""), "13:10: capabilities.memory: plugin memory 512KiB is out of range");
    assert_error(&caps("network = true"), "13:1: capabilities.network: unknown key `network` in [capabilities]");
}

#[test]
fn params_are_scalars() {
    assert_error(
        &format!("{MIRROR}\n[params]\nlist = [1]\n"),
        "13:8: params.list: expected a string, an integer or a boolean",
    );
}

#[test]
fn sections_need_a_plugin() {
    let no_plugin = MIRROR.replace("plugin = \"web.wasm\"\n", "");
    assert_error(
        &format!("{no_plugin}\n[capabilities]\nfiles = [\"/var/lib/web\"]\n"),
        "11:2: capabilities: [capabilities] applies to the module's plugin, but this module has no `plugin`",
    );
    assert_error(
        &format!("{no_plugin}\n[params]\nunit = \"web\"\n"),
        "11:2: params: [params] applies to the module's plugin",
    );
}

#[test]
fn http_urls() {
    assert_eq!(parse_http_url("http://10.0.0.1:80").unwrap(), ("10.0.0.1:80".parse().unwrap(), "/".into()));
    assert_eq!(parse_http_url("http://[::1]:8080/a/b?c").unwrap(), ("[::1]:8080".parse().unwrap(), "/a/b?c".into()));
    assert!(parse_http_url("http://10.0.0.1/").is_err());
    assert!(parse_http_url("http://10.0.0.1:80/a b").is_err());
}
