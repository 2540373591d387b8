//! Hostile: traps. `check` panics (panic = abort: an `unreachable` trap); `start_prim` reads
//! outside its linear memory; `stop_prim` recurses until the stack overflows.

use tandem_plugin_sdk::prelude::*;

struct Trap;

#[inline(never)]
#[allow(unconditional_recursion)]
fn deeper(n: u64) -> u64 {
    // Only wasm locals (no shadow-stack frame): the wasm stack itself overflows.
    deeper(std::hint::black_box(n + 1)).wrapping_mul(3)
}

impl Plugin for Trap {
    fn start_prim(_ctx: HookContext) -> HookResult {
        let wild = std::hint::black_box(0xffff_fff0usize) as *const u64;
        // SAFETY: none; this is the point: the sandbox must stop it.
        Err(format!("{}", unsafe { std::ptr::read_volatile(wild) }))
    }
    fn stop_prim(_ctx: HookContext) -> HookResult {
        Err(format!("{}", deeper(0)))
    }
    fn check(checker: String) -> CheckResult {
        panic!("hostile plugin panics in check {checker}")
    }
}

tandem_plugin_sdk::export!(Trap);
