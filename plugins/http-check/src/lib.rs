//! The `http-check` plugin: a custom checker that is up when `GET url` answers with the expected
//! status. `[params]`: `url` (required, plain `http://IP:PORT/path`, granted in
//! `capabilities.http`), `status` (default 200), `contains` (a string the body must contain,
//! optional), `timeout_ms` (default 2000). A checker name `NAME` may override them with
//! `NAME.url`, `NAME.status`, `NAME.contains`, so one plugin serves several checkers.

use tandem_plugin_sdk::prelude::*;

struct HttpCheck;

fn setting(checker: &str, key: &str) -> Option<String> {
    param(&format!("{checker}.{key}")).or_else(|| param(key))
}

impl Plugin for HttpCheck {
    fn check(checker: String) -> CheckResult {
        let Some(url) = setting(&checker, "url") else {
            return unknown("no `url` in [params]");
        };
        let want: u16 = match setting(&checker, "status").map(|s| s.parse()) {
            None => 200,
            Some(Ok(s)) => s,
            Some(Err(_)) => return unknown("params.status is not a number"),
        };
        let timeout = setting(&checker, "timeout_ms").and_then(|t| t.parse().ok()).unwrap_or(2000);
        match tandem_plugin_sdk::host::probe_http(&url, timeout) {
            Ok(r) if r.status != want => down(format!("GET {url}: status {} (expected {want})", r.status)),
            Ok(r) => match setting(&checker, "contains") {
                Some(s) if !r.body.contains(&s) => down(format!("GET {url}: status {want} but the body lacks \"{s}\"")),
                _ => up(format!("GET {url}: status {want}")),
            },
            Err(e) => down(format!("GET {url}: {}", e.message())),
        }
    }
}

tandem_plugin_sdk::export!(HttpCheck);
