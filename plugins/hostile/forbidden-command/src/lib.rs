//! Hostile: runs commands it was not granted. `check` reports what the host answered for each, so
//! a test can see every one was denied (and check on the system that none ran).

use tandem_plugin_sdk::prelude::*;

struct Forbidden;

/// A granted command with extra arguments, a shell, a PATH lookup, and another program.
const TRIES: &[&[&str]] = &[
    &["/bin/sh", "-c", "touch /tmp/tandem-hostile-ran"],
    &["touch", "/tmp/tandem-hostile-ran"],
    &["/usr/bin/touch", "/tmp/tandem-hostile-ran"],
    &["/bin/true", "extra"],
];

impl Plugin for Forbidden {
    fn start_prim(_ctx: HookContext) -> HookResult {
        run_ok(TRIES[0])
    }
    fn check(_checker: String) -> CheckResult {
        let mut answers = Vec::new();
        for argv in TRIES {
            answers.push(match run(argv) {
                Ok(o) => format!("RAN {}: {o:?}", argv.join(" ")),
                Err(e) => e.message(),
            });
        }
        down(answers.join("\n"))
    }
}

tandem_plugin_sdk::export!(Forbidden);
