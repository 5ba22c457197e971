//! The bundle and signing commands of the real binary (`keygen`, `pack`, `sign`, `verify`,
//! `inspect`), interoperability with independent minisign implementations, the client commands
//! against a running supervisor, and the service's configuration errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alga_tests::server::{ADMIN_TOKEN, Server, Signer, envelope};
use alga_tests::{fixture_bytes, runner_bin, skip_unless};
use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(runner_bin()).args(args).current_dir(dir).output().expect("running alga-runner")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A bundle directory with the echo fixture as its component.
fn bundle_dir(root: &Path, name: &str, version: &str) -> PathBuf {
    let dir = root.join(format!("{name}-{version}"));
    std::fs::create_dir_all(dir.join("dist")).unwrap();
    std::fs::create_dir_all(dir.join("ui/assets")).unwrap();
    let manifest = alga_tests::server::manifest(name, version, &["storage.kv"]);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::write(dir.join("dist/main.wasm"), fixture_bytes("echo")).unwrap();
    std::fs::write(dir.join("ui/index.html"), "<!doctype html><p>hello</p>").unwrap();
    std::fs::write(dir.join("ui/assets/app.js"), "console.log('hi')").unwrap();
    dir
}

#[test]
fn pack_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let a = bundle_dir(tmp.path(), "com.example.repro", "1.0.0");
    assert!(run(tmp.path(), &["pack", a.to_str().unwrap(), "-o", "one.tar.zst"]).status.success());
    assert!(run(tmp.path(), &["pack", a.to_str().unwrap(), "-o", "two.tar.zst"]).status.success());
    let one = std::fs::read(tmp.path().join("one.tar.zst")).unwrap();
    assert_eq!(one, std::fs::read(tmp.path().join("two.tar.zst")).unwrap(), "packing twice differs");

    // The same tree made again: other inode order, other times, another owner, a hidden file.
    let b = tmp.path().join("copy");
    std::fs::create_dir_all(b.join("ui/assets")).unwrap();
    std::fs::create_dir_all(b.join("dist")).unwrap();
    for rel in ["ui/assets/app.js", "ui/index.html", "dist/main.wasm", "manifest.json"] {
        std::fs::copy(a.join(rel), b.join(rel)).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        std::fs::File::options().write(true).open(b.join(rel)).unwrap().set_modified(old).unwrap();
        std::os::unix::fs::chown(b.join(rel), Some(1234), Some(4321)).unwrap();
    }
    std::fs::write(b.join(".DS_Store"), "junk").unwrap();
    let packed = run(tmp.path(), &["pack", b.to_str().unwrap(), "-o", "three.tar.zst"]);
    assert!(packed.status.success(), "{}", text(&packed));
    assert!(text(&packed).contains(".DS_Store"), "a skipped hidden file is reported: {}", text(&packed));
    assert_eq!(one, std::fs::read(tmp.path().join("three.tar.zst")).unwrap(), "the same tree packed differently");

    // An invalid manifest: refused, each bad field named, nothing written.
    let bad = bundle_dir(tmp.path(), "com.example.bad", "1.0.0");
    std::fs::write(
        bad.join("manifest.json"),
        r#"{"name":"Bad Name","version":"x","runtime":"wasm-js@1","publisher":"p"}"#,
    )
    .unwrap();
    let o = run(tmp.path(), &["pack", bad.to_str().unwrap(), "-o", "bad.tar.zst"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("$.name") && text(&o).contains("$.version"), "{}", text(&o));
    assert!(!tmp.path().join("bad.tar.zst").exists());
}

#[test]
fn keygen_sign_verify_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Unencrypted and password-protected keys; the secret key is private to its owner.
    let o = run(d, &["keygen", "--unencrypted", "-o", "plain"]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(d.join("pw"), "correct horse\n").unwrap();
    let o = run(d, &["keygen", "-o", "locked", "--password-file", "pw"]);
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    for key in ["plain.key", "locked.key"] {
        assert_eq!(std::fs::metadata(d.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
    }
    let o = run(d, &["keygen", "--unencrypted", "-o", "plain"]);
    assert_eq!(o.status.code(), Some(2), "keygen must not overwrite a key: {}", text(&o));
    let o = run(d, &["keygen"]);
    assert!(!o.status.success(), "keygen without a terminal or a password file must fail");
    // `-o DIR` writes into an existing directory, not beside it.
    std::fs::create_dir(d.join("keys")).unwrap();
    let o = run(d, &["keygen", "--unencrypted", "-o", "keys"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("keys/alga-signing.pub").is_file() && d.join("keys/alga-signing.key").is_file());
    assert!(!d.join("keys.pub").exists());
    let o = run(d, &["keygen", "--unencrypted", "-o", "missing/"]);
    assert_eq!(o.status.code(), Some(2), "a directory that is not there: {}", text(&o));

    let dir = bundle_dir(d, "com.example.cli", "1.0.0");
    assert!(run(d, &["pack", dir.to_str().unwrap(), "-o", "b.tar.zst"]).status.success());
    let o = run(d, &["sign", "b.tar.zst", "--key", "locked.key", "--password-file", "pw"]);
    assert!(o.status.success(), "{}", text(&o));
    let sig = std::fs::read_to_string(d.join("b.tar.zst.minisig")).unwrap();
    let bytes = std::fs::read(d.join("b.tar.zst")).unwrap();
    let hash = alga_shared::bundle::content_hash(&bytes);
    assert!(
        sig.contains(&format!("trusted comment: alga-bundle name=com.example.cli version=1.0.0 content_hash={hash}"))
    );
    std::fs::write(d.join("wrong-pw"), "nope\n").unwrap();
    let o = run(d, &["sign", "b.tar.zst", "--key", "locked.key", "--password-file", "wrong-pw", "-o", "x.minisig"]);
    assert!(!o.status.success() && text(&o).contains("password"), "{}", text(&o));

    // verify: 0 valid and trusted (naming the signer and its scope), 1 not, 2 usage.
    let o = run(d, &["verify", "b.tar.zst", "--trust", "locked.pub"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let pk = std::fs::read_to_string(d.join("locked.pub")).unwrap();
    let key_id =
        alga_shared::signing::key_id(minisign::PublicKey::from_base64(pk.lines().nth(1).unwrap()).unwrap().keynum());
    assert!(text(&o).contains(&key_id) && text(&o).contains("publisher scope"), "{}", text(&o));
    let scoped = format!("{} publisher=Example Inc\n", pk.lines().nth(1).unwrap());
    std::fs::write(d.join("scoped.trust"), scoped).unwrap();
    let o = run(d, &["verify", "b.tar.zst", "--trust", "scoped.trust"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("Example Inc"), "{}", text(&o));
    let other = format!("{} publisher=Someone Else\n", pk.lines().nth(1).unwrap());
    std::fs::write(d.join("other.trust"), other).unwrap();
    assert_eq!(run(d, &["verify", "b.tar.zst", "--trust", "other.trust"]).status.code(), Some(1));
    assert_eq!(run(d, &["verify", "b.tar.zst", "--trust", "plain.pub"]).status.code(), Some(1));
    let mut tampered = bytes.clone();
    tampered[10] ^= 1;
    std::fs::write(d.join("t.tar.zst"), &tampered).unwrap();
    let o = run(d, &["verify", "t.tar.zst", "--sig", "b.tar.zst.minisig", "--trust", "locked.pub"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(run(d, &["verify"]).status.code(), Some(2));

    // inspect: manifest (capabilities by name), hash, files, signature.
    let o = run(d, &["inspect", "b.tar.zst"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["content_hash"], hash.as_str());
    assert_eq!(v["manifest"]["capabilities"], serde_json::json!(["cap:storage.kv"]));
    assert_eq!(v["signature"]["key_id"], key_id.as_str());
    let files: Vec<&str> = v["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(files, ["dist/main.wasm", "manifest.json", "ui/assets/app.js", "ui/index.html"]);

    // An independent implementation (the minisign-verify crate) accepts our signature.
    let pk = minisign_verify::PublicKey::from_base64(pk.lines().nth(1).unwrap()).unwrap();
    let signature = minisign_verify::Signature::decode(&sig).unwrap();
    pk.verify(&bytes, &signature, false).expect("minisign-verify accepts the signature");
    assert!(pk.verify(&tampered, &signature, false).is_err());
}

#[test]
fn the_debian_minisign_tool_interoperates() {
    let tool = Command::new("minisign").arg("-v").output();
    skip_unless!(
        tool.is_ok_and(|o| o.status.success()),
        "the minisign tool is not installed (apt-get install minisign; .ci/run installs it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = bundle_dir(d, "com.example.interop", "2.0.0");
    assert!(run(d, &["pack", dir.to_str().unwrap(), "-o", "b.tar.zst"]).status.success());
    let hash = alga_shared::bundle::content_hash(&std::fs::read(d.join("b.tar.zst")).unwrap());
    let minisign = |args: &[&str]| {
        let o = Command::new("minisign").args(args).current_dir(d).output().unwrap();
        assert!(o.status.success(), "minisign {args:?}: {}", text(&o));
    };

    // A key and a signature made by the tool: our verify accepts them.
    minisign(&["-G", "-W", "-p", "tool.pub", "-s", "tool.key"]);
    let comment = format!("alga-bundle name=com.example.interop version=2.0.0 content_hash={hash}");
    minisign(&["-S", "-s", "tool.key", "-m", "b.tar.zst", "-x", "tool.minisig", "-t", &comment]);
    let o = run(d, &["verify", "b.tar.zst", "--sig", "tool.minisig", "--trust", "tool.pub"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Our signature, with our key and with the tool's key: the tool accepts both.
    assert!(run(d, &["keygen", "--unencrypted", "-o", "ours"]).status.success());
    assert!(run(d, &["sign", "b.tar.zst", "--key", "ours.key"]).status.success());
    minisign(&["-V", "-m", "b.tar.zst", "-x", "b.tar.zst.minisig", "-p", "ours.pub"]);
    let o = run(d, &["sign", "b.tar.zst", "--key", "tool.key", "-o", "ours-tool-key.minisig"]);
    assert!(o.status.success(), "{}", text(&o));
    minisign(&["-V", "-m", "b.tar.zst", "-x", "ours-tool-key.minisig", "-p", "tool.pub"]);
    // The tool signs with a key of ours.
    minisign(&["-S", "-s", "ours.key", "-m", "b.tar.zst", "-x", "tool-ours-key.minisig", "-t", &comment]);
    let o = run(d, &["verify", "b.tar.zst", "--sig", "tool-ours-key.minisig", "--trust", "ours.pub"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A running supervisor, and a directory holding `b.tar.zst` (bundle `name` 1.0.0), its
/// signature `b.tar.zst.minisig` by a publisher the supervisor trusts, and `admin.token`.
fn signed_bundle_and_server(name: &str) -> (Server, tempfile::TempDir) {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = bundle_dir(d, name, "1.0.0");
    assert!(run(d, &["pack", dir.to_str().unwrap(), "-o", "b.tar.zst"]).status.success());
    let bytes = std::fs::read(d.join("b.tar.zst")).unwrap();
    std::fs::write(d.join("b.tar.zst.minisig"), signer.sign(&bytes, name, "1.0.0")).unwrap();
    std::fs::write(d.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    (server, tmp)
}

#[test]
fn client_commands_drive_a_running_supervisor() {
    let (server, tmp) = signed_bundle_and_server("com.example.client");
    let d = tmp.path();
    let client = |args: &[&str]| {
        Command::new(runner_bin())
            .args(args)
            .args(["--url", &server.url, "--token-file", "admin.token"])
            .current_dir(d)
            .env_remove("ALGA_RUNNER_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let o = client(&["publish", "b.tar.zst"]);
    assert!(o.status.success(), "{}", text(&o));
    let published: Value = serde_json::from_slice(&o.stdout).unwrap();
    let hash = published["content_hash"].as_str().unwrap().to_string();
    let o = client(&[
        "install",
        "com.example.client",
        "--tenant",
        "t1",
        "--version",
        "1.0.0",
        "--grant",
        "storage.kv",
        "--config",
        "mode=test",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = client(&["list", "--tenant", "t1"]);
    assert!(text(&o).contains("com.example.client"), "{}", text(&o));
    let o = client(&["list"]);
    assert!(text(&o).contains("com.example.client"), "{}", text(&o));
    assert_eq!(server.execute(&envelope("t1", "com.example.client", &hash, "/")).json()["status"], 200);
    let o = client(&["executions", "--tenant", "t1"]);
    assert!(o.status.success() && text(&o).contains(&hash), "{}", text(&o));

    // A refused request: the problem's code and each field error are shown; the exit status is 1.
    let o = client(&["install", "com.example.client", "--tenant", "t2", "--version", "9.9.9"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("404") || text(&o).contains("not_found"), "{}", text(&o));
    // A wrong token is named as such.
    std::fs::write(d.join("admin.token"), "wrong\n").unwrap();
    let o = client(&["list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unauthorized"), "{}", text(&o));
    std::fs::write(d.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();

    let o = client(&["uninstall", "com.example.client", "--tenant", "t1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.execute(&envelope("t1", "com.example.client", &hash, "/")).json()["error"], "not_installed");
}

#[test]
fn invalid_configuration_exits_78_naming_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("runner.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"nowhere\"\n[limits]\ndefault_timeout_ms = \"soon\"\n[mystery]\nx = 1\n",
    )
    .unwrap();
    let o = Command::new(runner_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("ALGA_RUNNER_STATE_DIR", tmp.path().join("state"))
        .env("ALGA_RUNNER_SANDBOX__LANDLOCK", "sometimes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    for field in ["server.listen", "limits.default_timeout_ms", "mystery", "sandbox.landlock"] {
        assert!(text(&o).contains(field), "{field} not named: {}", text(&o));
    }

    // No tokens and a non-loopback address: refused, saying what to do.
    let o = Command::new(runner_bin())
        .args(["serve"])
        .env("ALGA_RUNNER_LISTEN", "0.0.0.0:0")
        .env("ALGA_RUNNER_STATE_DIR", tmp.path().join("state"))
        .env_remove("ALGA_RUNNER_SERVICE_TOKEN")
        .env_remove("ALGA_RUNNER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("ALGA_RUNNER_SERVICE_TOKEN") && text(&o).contains("--insecure-dev"), "{}", text(&o));

    // A trust bundle that does not parse names its line.
    std::fs::write(tmp.path().join("trust"), "# keys\nRWnot-a-key\n").unwrap();
    let o = Command::new(runner_bin())
        .args(["serve"])
        .env("ALGA_RUNNER_LISTEN", "127.0.0.1:0")
        .env("ALGA_RUNNER_STATE_DIR", tmp.path().join("state"))
        .env("SIGNING_TRUST_BUNDLE", tmp.path().join("trust"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("line 2"), "{}", text(&o));
}

#[test]
fn publish_shows_its_progress_on_a_terminal() {
    let script = Command::new("script").arg("--version").output();
    skip_unless!(
        script.is_ok_and(|o| o.status.success()),
        "`script` (util-linux) is needed to give the CLI a terminal"
    );
    let (server, tmp) = signed_bundle_and_server("com.example.tty");
    let d = tmp.path();
    let command = format!("{} publish b.tar.zst --url {} --token-file admin.token", runner_bin().display(), server.url);
    // `script` runs the command on a pseudo-terminal: stdout and stderr both arrive here.
    let o = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(d)
        .env_remove("ALGA_RUNNER_ADMIN_TOKEN")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains("verifying and compiling… 0 s"), "the elapsed time while it compiles: {shown:?}");
    assert!(shown.contains("\"content_hash\""), "then the answer: {shown:?}");
}

#[test]
fn the_man_page_has_files_environment_exit_status_and_names_only_pages_that_exist() {
    let o = Command::new(runner_bin()).arg("manpage").output().unwrap();
    assert!(o.status.success());
    let page = String::from_utf8_lossy(&o.stdout);
    for section in [".SH FILES", ".SH ENVIRONMENT", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
        assert!(page.contains(section), "{section} missing");
    }
    for code in ["\\fB78\\fR", "\\fB2\\fR", "\\fB1\\fR"] {
        assert!(page.contains(code), "exit status {code} not described");
    }
    // Every `name(N)` reference is a page of a package alga-runner depends on.
    let referenced: Vec<&str> =
        page.match_indices("\\fR(").filter_map(|(i, _)| page[..i].rsplit("\\fB").next()).collect();
    assert!(!referenced.is_empty());
    for name in referenced {
        assert!(["systemctl", "journalctl"].contains(&name), "the man page refers to {name}, which may not exist");
    }
}
