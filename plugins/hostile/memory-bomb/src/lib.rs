//! Hostile: allocates (and touches) memory until something stops it. The host's memory cap must.

use tandem_plugin_sdk::prelude::*;

struct Bomb;

fn bomb() -> usize {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5; 1 << 20]);
        std::hint::black_box(&hoard);
        if hoard.len() == usize::MAX {
            return hoard.len();
        }
    }
}

impl Plugin for Bomb {
    fn start_prim(_ctx: HookContext) -> HookResult {
        Err(format!("survived {} MiB", bomb()))
    }
    fn check(_checker: String) -> CheckResult {
        up(format!("survived {} MiB", bomb()))
    }
}

tandem_plugin_sdk::export!(Bomb);
