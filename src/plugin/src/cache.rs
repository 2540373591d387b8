//! Compiled plugins, cached on disk by the blake3 hash of their bytes, so that a daemon start
//! compiles only what changed. A cache file is a header then wasmtime's serialized component:
//!
//! ```text
//! tandem-plugin-cache 1
//! engine <hash of the engine's compatibility: wasmtime version, target, settings>
//! source <blake3 of the .wasm>
//! body <blake3 of what follows>
//! <serialized component>
//! ```
//!
//! A file whose header does not match (another wasmtime or tandem, another plugin, a torn write)
//! is compiled again and replaced, never loaded. Loading serialized code trusts it, so the cache
//! directory must be writable by root only (the daemon's state directory is).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::Origin;

const MAGIC: &str = "tandem-plugin-cache 1";

/// The cache file of a plugin.
pub fn path(dir: &Path, wasm: &[u8]) -> PathBuf {
    dir.join(format!("{}.cwasm", blake3::hash(wasm).to_hex()))
}

fn engine_id(engine: &Engine) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn header(engine: &Engine, wasm: &[u8], body: &[u8]) -> String {
    format!(
        "{MAGIC}\nengine {}\nsource {}\nbody {}\n",
        engine_id(engine),
        blake3::hash(wasm).to_hex(),
        blake3::hash(body).to_hex()
    )
}

/// The compiled component of `wasm`: from the cache when a valid entry exists, else compiled (and
/// then written to the cache; a cache that cannot be written only costs a compilation later).
pub fn component(engine: &Engine, wasm: &[u8], dir: Option<&Path>) -> Result<(Component, Origin), String> {
    if let Some(dir) = dir {
        if let Some(c) = load(engine, wasm, &path(dir, wasm)) {
            return Ok((c, Origin::Cache));
        }
    }
    let component = Component::new(engine, wasm).map_err(|e| format!("{e:#}"))?;
    if let Some(dir) = dir {
        if let Ok(body) = component.serialize() {
            let _ = store(&path(dir, wasm), header(engine, wasm, &body).as_bytes(), &body);
        }
    }
    Ok((component, Origin::Compiled))
}

fn load(engine: &Engine, wasm: &[u8], file: &Path) -> Option<Component> {
    let data = std::fs::read(file).ok()?;
    // The header is four lines; the body follows.
    let mut end = 0;
    for _ in 0..4 {
        end += data.get(end..)?.iter().position(|&b| b == b'\n')? + 1;
    }
    let (head, body) = data.split_at(end);
    if head != header(engine, wasm, body).as_bytes() {
        return None;
    }
    // SAFETY: the bytes are what `Component::serialize` wrote for this very engine
    // configuration and plugin (checked by the header, including a hash of the body), in a
    // directory only root can write.
    unsafe { Component::deserialize(engine, body) }.ok()
}

/// Write, fsync, rename: a crash leaves the old file or the new one, never half of one.
fn store(file: &Path, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("cwasm.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(head)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}
