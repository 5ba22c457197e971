//! Rust types and Wasmtime bindings for the guest world `alga:extension/runner` (`wit/runner.wit`).
//!
//! The types derive serde so the IPC protocol carries them as they are: the sandbox forwards a
//! guest's arguments to the supervisor and lowers the supervisor's answer without a second copy of
//! every record. Every import is `trappable`, so a broken IPC channel ends the guest with a trap.

wasmtime::component::bindgen!({
    path: "wit",
    world: "runner",
    imports: { default: trappable },
    exports: { default: async },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub use alga::extension::types::*;
