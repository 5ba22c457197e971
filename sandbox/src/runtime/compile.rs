//! Compiling a component and checking that it belongs to the `alga:extension/runner` world.
//! Runs only inside a compile sandbox: the supervisor never parses tenant wasm.

use alga_shared::bindings::RunnerPre;
use alga_shared::protocol::{ComponentInfo, Failure};
use wasmtime::component::Component;

use super::guest::Prepared;

/// Compiles `wasm`, checks every import is one this runner provides and that `handler` is
/// exported with the world's signature, and returns the serialized artifact.
pub fn compile(prep: &Prepared, wasm: &[u8]) -> Result<(Vec<u8>, ComponentInfo), Failure> {
    let invalid = |message: String| Failure::InvalidComponent { message };
    match wasm.get(0..8) {
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => {
            return Err(invalid(
                "not a component: this is a core WebAssembly module; build a component of the \
                 alga:extension/runner world (e.g. `cargo build --target wasm32-wasip2`, or \
                 `wasm-tools component new`)"
                    .into(),
            ));
        }
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => {
            return Err(invalid(
                "not a WebAssembly component: the file does not start with the wasm magic bytes".into(),
            ));
        }
    }
    let component =
        Component::new(&prep.engine, wasm).map_err(|e| invalid(format!("invalid component: {}", chain(&e))))?;

    let ty = component.component_type();
    let info = ComponentInfo {
        imports: ty.imports(&prep.engine).map(|(name, _)| name.to_string()).collect(),
        exports: ty.exports(&prep.engine).map(|(name, _)| name.to_string()).collect(),
    };

    let pre = prep
        .linker
        .instantiate_pre(&component)
        .map_err(|e| invalid(format!("the component needs an import this runner does not provide: {}", chain(&e))))?;
    RunnerPre::new(pre).map_err(|e| {
        invalid(format!(
            "the component does not export `handler: func(request: execute-request) -> execute-response` \
             of the alga:extension/runner world ({}); its exports: [{}]",
            chain(&e),
            info.exports.join(", ")
        ))
    })?;

    let artifact = component.serialize().map_err(|e| Failure::Internal { message: chain(&e) })?;
    Ok((artifact, info))
}

fn chain(e: &wasmtime::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
