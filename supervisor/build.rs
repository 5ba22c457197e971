//! Build facts the binary reports (`--version`, the `alga_runner_build_info` metric): the commit
//! it was built from and the Wasmtime version it links. Reads only; writes nothing but cargo's
//! instructions.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commit = std::env::var("ALGA_RUNNER_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(&root).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=ALGA_RUNNER_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-env-changed=ALGA_RUNNER_COMMIT");
    // A new commit moves the branch's ref (or packed-refs), not HEAD itself.
    let git = root.join(".git");
    for f in ["HEAD", "packed-refs"] {
        println!("cargo:rerun-if-changed={}", git.join(f).display());
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(r) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git.join(r).display());
    }

    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string)))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ALGA_RUNNER_WASMTIME={wasmtime}");
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
}
