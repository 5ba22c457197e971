//! Helpers shared by the end-to-end tests: where the guest fixtures and the `alga-runner` binary
//! are, and small utilities to drive them.

use std::path::PathBuf;

/// Path of a guest fixture component built from `tests/guests/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    let file = format!("{}.wasm", name.replace('-', "_"));
    let path = PathBuf::from(env!("ALGA_GUESTS_DIR")).join(&file);
    let alt = PathBuf::from(env!("ALGA_GUESTS_DIR")).join(format!("{name}.wasm"));
    if path.exists() {
        path
    } else if alt.exists() {
        alt
    } else {
        panic!(
            "guest fixture {name} was not built (looked for {})",
            path.display()
        )
    }
}

/// The bytes of a guest fixture.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

/// A valid core WebAssembly module (not a component): the 8-byte empty module.
pub const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";
