//! Hostile: loops forever in `check` and in `start_prim`. The host's epoch deadline must
//! interrupt it and report a timeout.

use tandem_plugin_sdk::prelude::*;

struct Spin;

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

impl Plugin for Spin {
    fn start_prim(_ctx: HookContext) -> HookResult {
        info("spinning forever");
        spin()
    }
    fn check(_checker: String) -> CheckResult {
        spin()
    }
}

tandem_plugin_sdk::export!(Spin);
