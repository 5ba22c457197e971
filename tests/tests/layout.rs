//! The supervisor's layout is its architecture (docs/architecture.md, "Code layout and which
//! part may use which"): every `crate::…` path in `supervisor/src` must point at a part the
//! importing part may use, and the execution core's modules at modules below them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each part and the parts it may use. Items of the crate root (`error_chain`, the build facts)
/// are open to all.
const PARTS: &[(&str, &[&str])] = &[
    ("main", &["cli", "exec"]),
    ("cli", &["http", "service", "hostapi", "exec", "registry", "config", "secrets", "ops", "fsutil", "db"]),
    ("http", &["service", "registry", "config", "secrets", "ops", "exec"]),
    ("service", &["exec", "hostapi", "registry", "config", "secrets", "ops", "db"]),
    ("hostapi", &["exec", "registry", "secrets", "ops", "db"]),
    ("exec", &["ops", "fsutil"]),
    ("registry", &["fsutil", "db"]),
    ("config", &[]),
    ("secrets", &["db"]),
    ("db", &[]),
    ("ops", &[]),
    ("fsutil", &[]),
];

/// The execution core's modules, lowest first: each may use only those before it.
const EXEC_LAYERS: &[&[&str]] = &[
    &["settings", "cgroups", "forkserver", "artifacts"],
    &["sandbox"],
    &["pool"],
    &["preload"],
    &["core"],
    &["executor"],
];

/// What `exec/mod.rs` re-exports, and the module each comes from.
const EXEC_REEXPORTS: &[(&str, &str)] = &[("Core", "core"), ("Spawner", "sandbox"), ("HostCalls", "executor")];

const ROOT_ITEMS: &[&str] = &["error_chain", "COMMIT", "WASMTIME_VERSION", "LONG_VERSION"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` in code (not in comments), as (`a`, `b`).
fn crate_paths(source: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
            let first = ident(rest);
            let after = &rest[first.len()..];
            let second = after.strip_prefix("::").map(ident).unwrap_or_default();
            found.push((first, second));
        }
    }
    found
}

fn layer_of(item: &str) -> Option<usize> {
    let module = EXEC_REEXPORTS.iter().find(|(name, _)| *name == item).map_or(item, |(_, m)| m);
    EXEC_LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn no_import_runs_against_the_dependency_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../supervisor/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 40, "found only {} files under {}", files.len(), src.display());
    let allowed: BTreeMap<&str, &[&str]> = PARTS.iter().copied().collect();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string());
        let part = parts.next().unwrap();
        if part == "lib" {
            continue;
        }
        let module = parts.next().unwrap_or_default();
        let may_use = allowed.get(part.as_str()).unwrap_or_else(|| {
            panic!("{}: part `{part}` is not in this test's table (nor in docs/architecture.md)", rel.display())
        });
        let source = std::fs::read_to_string(file).unwrap();
        for (used, inner) in crate_paths(&source) {
            if used == part || ROOT_ITEMS.contains(&used.as_str()) {
                if part == "exec" && used == "exec" {
                    let (Some(from), Some(to)) = (layer_of(&module), layer_of(&inner)) else { continue };
                    if to >= from {
                        wrong.push(format!("{}: exec::{module} uses exec::{inner}", rel.display()));
                    }
                }
                continue;
            }
            if !may_use.contains(&used.as_str()) {
                wrong.push(format!("{}: `{part}` uses `crate::{used}`", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the dependency direction:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_an_import_and_skips_comments() {
    let paths = crate_paths("use crate::exec::core::Core; // crate::cli::x\n/// [`crate::http::y`]\n");
    assert_eq!(paths, vec![("exec".to_string(), "core".to_string())]);
    assert_eq!(layer_of("Core"), layer_of("core"));
    assert!(layer_of("pool") < layer_of("preload"));
}
