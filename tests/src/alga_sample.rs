//! The Alga-tooling sample (examples/hello-alga), built as an Alga extension author builds one:
//! `npm ci` on its lockfile (the published @alga-psa/cli and extension runtime, componentize-js
//! as Alga pins it), its build, then `alga pack`. What comes out is the archive `alga pack`
//! made, unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-alga")
}

/// Whether node, npm, tar and zstd are here (what `alga pack` needs).
pub fn tools_missing() -> Option<String> {
    let missing: Vec<&str> = ["node", "npm", "tar", "zstd"]
        .into_iter()
        .filter(|t| !Command::new(t).arg("--version").output().is_ok_and(|o| o.status.success()))
        .collect();
    (!missing.is_empty()).then(|| format!("not installed: {} (apt-get install npm zstd)", missing.join(", ")))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.current_dir(example()).output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// Builds and packs the sample into `out_dir`; the path of `bundle.tar.zst` (its hex hash is
/// in `bundle.sha256` beside it, as `alga pack` writes it).
pub fn pack(out_dir: &Path) -> Result<PathBuf, String> {
    if !example().join("node_modules/@alga-psa/cli").is_dir() {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]), "npm ci")?;
    }
    run(Command::new("node").arg("build.mjs"), "node build.mjs")?;
    let out = out_dir.join("bundle.tar.zst");
    let out_arg = out.display().to_string();
    run(
        Command::new("npx").args(["--no-install", "alga", "pack", "--project", ".", "--out", &out_arg, "--force"]),
        "alga pack",
    )?;
    Ok(out)
}
