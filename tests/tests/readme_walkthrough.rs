//! Runs the README's walkthrough (the shell blocks between `<!-- walkthrough -->` and
//! `<!-- /walkthrough -->`) exactly as written, with the real binary on PATH, in a scratch copy
//! of the sample extension. Only the port is changed, so parallel runs do not collide.

use std::path::{Path, PathBuf};
use std::process::Command;

use alga_tests::{runner_bin, skip_unless};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The walkthrough's shell text, blocks joined in order.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme.find("<!-- walkthrough -->").expect("README has a <!-- walkthrough --> marker");
    let end = readme.find("<!-- /walkthrough -->").expect("README has a <!-- /walkthrough --> marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[start..end].lines() {
        match line.trim() {
            "```sh" => in_block = true,
            "```" => in_block = false,
            _ if in_block => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(script.lines().count() > 10, "the walkthrough is missing or empty");
    script
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn the_readme_walkthrough_runs() {
    let curl = Command::new("curl").arg("--version").output();
    skip_unless!(curl.is_ok_and(|o| o.status.success()), "curl is not installed (tests/run installs it)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // What the walkthrough touches: the sample extension, and the world it builds against.
    copy_tree(&repo_root().join("examples/hello"), &root.join("examples/hello"));
    copy_tree(&repo_root().join("shared/wit"), &root.join("shared/wit"));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = walkthrough().replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    // Whatever happens, no runner outlives the script.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");

    let bin_dir = runner_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script]).current_dir(root).env("PATH", path);
    // The outer build's settings are for this workspace, not the sample's own build.
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "ALGA_RUNNER_URL"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let log = std::fs::read_to_string(root.join("runner.log")).unwrap_or_default();
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- runner.log\n{log}");
    assert!(out.status.success(), "the walkthrough failed ({}):\n{context}", out.status);

    // What each step is documented to show.
    assert!(stdout.contains("signer key id:"), "verify names the signer:\n{context}");
    assert!(stdout.contains("\"status\":200"), "the execution answered 200:\n{context}");
    assert!(stdout.contains(r#"{"greeting":"Hello, Ada!","visits":1}"#), "the guest's body:\n{context}");
    assert!(
        stdout.contains("\"outcome\": \"completed\"") || stdout.contains("\"outcome\":\"completed\""),
        "the execution log:\n{context}"
    );
    assert!(root.join("hello-state/db").exists(), "the state lives under ALGA_RUNNER_STATE_DIR");
}
