//! Hostile: reads and writes outside its granted directories: an absolute path elsewhere, a `..`
//! escape from a granted directory, and through a symlink planted in it (`[params] dir` names the
//! granted directory). `check` reports each answer; `start_prim` fails on the first escape denied.

use tandem_plugin_sdk::host;
use tandem_plugin_sdk::prelude::*;

struct Escape;

fn attempts() -> Vec<String> {
    let dir = param("dir").unwrap_or_else(|| "/var/lib/granted".into());
    let mut out = Vec::new();
    for path in ["/etc/passwd".to_string(), format!("{dir}/../../etc/passwd"), format!("{dir}/link/passwd")] {
        out.push(match host::read_file(&path) {
            Ok(data) => format!("READ {path}: {} bytes", data.len()),
            Err(e) => format!("read {path}: {}", e.message()),
        });
    }
    for path in [
        "/tmp/tandem-hostile-written".to_string(),
        format!("{dir}/../tandem-hostile-written"),
        format!("{dir}/link/tandem-hostile-written"),
    ] {
        out.push(match host::write_file(&path, b"pwned") {
            Ok(()) => format!("WROTE {path}"),
            Err(e) => format!("write {path}: {}", e.message()),
        });
    }
    // Inside the granted directory: allowed.
    let own = format!("{dir}/own.txt");
    out.push(match host::write_file(&own, b"mine").and_then(|_| host::read_file(&own)) {
        Ok(d) => format!("own file: {}", String::from_utf8_lossy(&d)),
        Err(e) => format!("own file: {}", e.message()),
    });
    out
}

impl Plugin for Escape {
    fn start_prim(_ctx: HookContext) -> HookResult {
        match host::read_file("/etc/passwd") {
            Ok(_) => Ok(()),
            Err(e) => Err(e.message()),
        }
    }
    fn check(_checker: String) -> CheckResult {
        down(attempts().join("\n"))
    }
}

tandem_plugin_sdk::export!(Escape);
