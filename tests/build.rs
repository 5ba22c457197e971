//! Builds the guest fixtures in `guests/` for `wasm32-wasip2`, from source, into this build's
//! OUT_DIR, and tells the crate where they are (`ALGA_GUESTS_DIR`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guests = manifest_dir.join("guests");
    let target_dir = out_dir.join("guests-target");

    println!("cargo:rerun-if-changed={}", guests.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", guests.join("Cargo.lock").display());
    for dir in [
        "common",
        "echo",
        "logger",
        "storage",
        "spin",
        "membomb",
        "trap",
        "huge",
        "flood",
        "random",
        "sleeper",
        "wrong-world",
        "hostapi",
        "wasi-http",
    ] {
        println!("cargo:rerun-if-changed={}", guests.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../shared/wit").display());

    if !build_wasm(&guests.join("Cargo.toml"), &target_dir) {
        panic!(
            "building the guest fixtures failed (tests/guests). If the error says the target is \
             missing, run `rustup target add wasm32-wasip2` (the CI script .ci/run does)."
        );
    }
    println!("cargo:rustc-env=ALGA_GUESTS_DIR={}", target_dir.join("wasm32-wasip2").join("release").display());

    // The sample extension of the README and of the browser test, built the same way.
    let hello = manifest_dir.join("../examples/hello");
    println!("cargo:rerun-if-changed={}", hello.join("src").display());
    println!("cargo:rerun-if-changed={}", hello.join("Cargo.toml").display());
    let hello_target = out_dir.join("hello-target");
    if !build_wasm(&hello.join("Cargo.toml"), &hello_target) {
        panic!("building the sample extension (examples/hello) failed");
    }
    println!(
        "cargo:rustc-env=ALGA_HELLO_WASM={}",
        hello_target.join("wasm32-wasip2").join("release").join("hello.wasm").display()
    );
}

/// `cargo build --release --locked --target wasm32-wasip2` of another workspace into
/// `target_dir`; true when it succeeded.
fn build_wasm(manifest: &Path, target_dir: &Path) -> bool {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings are for the host target; none of them apply to wasm builds.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd.status().expect("running cargo to build wasm components").success()
}
