//! The real `alga-runner serve` as a child process, and what tests need around it: a signing key
//! the server trusts, bundles built in memory (well-formed or deliberately malicious), and a small
//! HTTP client.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alga_shared::bundle;
use base64::Engine;
use minisign::KeyPair;
use serde_json::{Value, json};

pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-9876543210";

/// A signing key and how the trust bundle names it.
pub struct Signer {
    pub keys: KeyPair,
    pub key_id: String,
}

impl Signer {
    pub fn new() -> Self {
        let keys = KeyPair::generate_encrypted_keypair(Some(String::new())).expect("generating a key pair");
        let key_id = alga_shared::signing::key_id(keys.pk.keynum());
        Signer { keys, key_id }
    }

    /// The public key in base64, as a trust bundle line holds it.
    pub fn public(&self) -> String {
        self.keys.pk.to_base64()
    }

    /// A `.minisig` over `bytes` whose trusted comment binds `name`, `version` and the bytes' hash.
    pub fn sign(&self, bytes: &[u8], name: &str, version: &str) -> String {
        let comment = format!("alga-bundle name={name} version={version} content_hash={}", bundle::content_hash(bytes));
        self.sign_with_comment(bytes, &comment)
    }

    pub fn sign_with_comment(&self, bytes: &[u8], comment: &str) -> String {
        minisign::sign(None, &self.keys.sk, std::io::Cursor::new(bytes), Some(comment), Some("test signature"))
            .expect("signing")
            .into_string()
    }
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

/// A manifest for a bundle whose entry is `dist/main.wasm`.
pub fn manifest(name: &str, version: &str, capabilities: &[&str]) -> Value {
    json!({
        "name": name,
        "publisher": "Example Inc",
        "version": version,
        "runtime": "wasm-js@1",
        "capabilities": capabilities,
        "api": { "endpoints": [ { "method": "GET", "path": "/", "handler": "h" } ] },
        "ui": { "type": "iframe", "entry": "index.html" }
    })
}

/// Packs a bundle from a manifest and a component with the product's own packer.
pub fn pack(manifest: &Value, component: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("dist")).unwrap();
    std::fs::create_dir_all(dir.path().join("ui")).unwrap();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    std::fs::write(dir.path().join("dist/main.wasm"), component).unwrap();
    std::fs::write(dir.path().join("ui/index.html"), "<!doctype html><p>hi</p>").unwrap();
    bundle::pack(dir.path()).expect("packing a test bundle").bytes
}

/// One entry of a hand-built archive.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Dir(&'a str),
}

/// A tar.zst built entry by entry, with names written raw so that `..`, absolute paths and
/// duplicates get in: what a hostile publisher would send.
pub fn raw_bundle(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        let (path, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match entry {
            Entry::File(p, d) => (p, tar::EntryType::Regular, d, None),
            Entry::Symlink(p, t) => (p, tar::EntryType::Symlink, b"", Some(t)),
            Entry::Hardlink(p, t) => (p, tar::EntryType::Link, b"", Some(t)),
            Entry::Dir(p) => (p, tar::EntryType::Directory, b"", None),
        };
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        if let Some(target) = link {
            h.set_link_name(target).unwrap();
        }
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }
    zstd::stream::encode_all(tar.into_inner().unwrap().as_slice(), 3).unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The problem+json `code`.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }

    /// The body of an execution envelope, decoded.
    pub fn envelope_body(&self) -> Vec<u8> {
        let b64 = self.json()["body_b64"].as_str().unwrap_or("").to_string();
        base64::engine::general_purpose::STANDARD.decode(b64).expect("body_b64 is base64")
    }
}

/// How to start a server.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra environment for the server.
    pub env: Vec<(String, String)>,
    /// Public keys (base64) in the trust bundle, one line each, as written.
    pub trust_lines: Vec<String>,
}

/// A running `alga-runner serve` with its own state directory, tokens and trust bundle.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub options: Options,
    log: PathBuf,
}

impl Server {
    /// Starts a server that trusts `signer` (no publisher scope).
    pub fn start(signer: &Signer) -> Server {
        Server::start_with(Options { trust_lines: vec![signer.public()], ..Options::default() })
    }

    pub fn start_with(options: Options) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Server { child: None, url: String::new(), dir, options, log: PathBuf::new() };
        server.spawn();
        server
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn trust_file(&self) -> PathBuf {
        self.dir.path().join("trust.pub")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Writes the trust bundle file (the server rereads it on SIGHUP or `/v1/admin/reload`).
    pub fn write_trust(&self, lines: &[String]) {
        let mut text = String::from("# trust bundle written by the tests\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(self.trust_file(), text).unwrap();
    }

    fn spawn(&mut self) {
        self.write_trust(&self.options.trust_lines.clone());
        let n = std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0);
        self.log = self.dir.path().join(format!("serve-{n}.log"));
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(crate::runner_bin());
        cmd.args(["serve", "--log-format", "json"])
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ALGA_RUNNER_LOG", "info")
            .env("ALGA_RUNNER_LISTEN", "127.0.0.1:0")
            .env("ALGA_RUNNER_STATE_DIR", self.state_dir())
            .env("ALGA_RUNNER_SERVICE_TOKEN", SERVICE_TOKEN)
            .env("ALGA_RUNNER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SIGNING_TRUST_BUNDLE", self.trust_file())
            .env("ALGA_RUNNER_SANDBOX__POOL_SIZE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting alga-runner serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Copy the server's log to a file and report the address it serves on.
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = log;
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(sender) = tx.as_ref()
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "serving"
                {
                    let _ = sender.send(v["fields"]["listen"].as_str().unwrap_or("").to_string());
                    tx = None;
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("alga-runner serve did not start; its log:\n{}", self.log_text())
            }
        };
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log satisfies `seen`: a line the service wrote before it
    /// answered a request reaches the log file through a copying thread, a moment later.
    pub fn wait_for_log(&self, what: &str, seen: impl Fn(&str) -> bool) {
        let log = || self.log_text();
        wait_within(&format!("the log shows {what}"), Duration::from_secs(10), || seen(&log()));
    }

    /// `kill -9` the supervisor, and wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the graceful shutdown.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("waiting for the server")
    }

    /// Starts again on the same state directory and trust file.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build();
        let mut r = agent.request(method, &format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.set("authorization", &format!("Bearer {t}"));
        }
        for (n, v) in headers {
            r = r.set(n, v);
        }
        let result = match body {
            Some(b) => r.send_bytes(b),
            None => r.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}\nserver log:\n{}", self.log_text()),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|n| response.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        let mut body = Vec::new();
        response.into_reader().take(64 << 20).read_to_end(&mut body).unwrap();
        Answer { status, headers, body }
    }

    /// `alga-runner executions --tenant T --verify` against this running service: its exit code
    /// and its output.
    pub fn verify_chain(&self, tenant: &str) -> (i32, String) {
        let token = self.dir.path().join("admin.token");
        std::fs::write(&token, ADMIN_TOKEN).unwrap();
        let out = Command::new(crate::runner_bin())
            .args(["executions", "--tenant", tenant, "--verify", "--url", &self.url])
            .arg("--token-file")
            .arg(&token)
            .output()
            .expect("running alga-runner executions --verify");
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    pub fn admin_get(&self, path: &str) -> Answer {
        self.request("GET", path, Some(ADMIN_TOKEN), &[], None)
    }

    pub fn publish(&self, bytes: &[u8], signature: &str) -> Answer {
        let sig = base64::engine::general_purpose::STANDARD.encode(signature);
        self.request(
            "POST",
            "/v1/bundles",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/octet-stream"), ("x-alga-signature", &sig)],
            Some(bytes),
        )
    }

    pub fn install(&self, tenant: &str, extension: &str, body: &Value) -> Answer {
        self.request(
            "PUT",
            &format!("/v1/tenants/{tenant}/installs/{extension}"),
            Some(ADMIN_TOKEN),
            &[("content-type", "application/json")],
            Some(&serde_json::to_vec(body).unwrap()),
        )
    }

    pub fn execute(&self, envelope: &Value) -> Answer {
        self.request(
            "POST",
            "/v1/execute",
            Some(SERVICE_TOKEN),
            &[("content-type", "application/json")],
            Some(&serde_json::to_vec(envelope).unwrap()),
        )
    }

    /// The stored blobs (file names in the blob store), temp files included.
    pub fn blob_files(&self) -> Vec<String> {
        list_names(&self.state_dir().join("bundles/sha256"))
    }

    /// Every version record the registry holds, over all extensions.
    pub fn all_versions(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let exts = self.admin_get("/v1/extensions?limit=1000").json();
        for e in exts["items"].as_array().cloned().unwrap_or_default() {
            let id = e["id"].as_str().unwrap().to_string();
            let versions = self.admin_get(&format!("/v1/extensions/{id}/versions?limit=1000")).json();
            out.extend(versions["items"].as_array().cloned().unwrap_or_default());
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The names in a directory (empty when it does not exist).
pub fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// An envelope for `/v1/execute`.
pub fn envelope(tenant: &str, extension: &str, content_hash: &str, path: &str) -> Value {
    json!({
        "context": { "tenant_id": tenant, "extension_id": extension, "content_hash": content_hash },
        "http": { "method": "GET", "path": path }
    })
}

/// Every descendant of `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for c in crate::children_of(p) {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

/// Whether a process still exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, a)| a.split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

/// The cgroup directories a supervisor with this pid created (`alga-runner.<pid>-*`), in every
/// hierarchy under /sys/fs/cgroup.
pub fn cgroup_dirs_of(pid: u32) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, prefix: &str, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(p);
            } else {
                walk(&p, depth - 1, prefix, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 5, &format!("alga-runner.{pid}-"), &mut out);
    out
}

/// Waits (up to 20 s) for `done`, or panics naming `what`.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(20), done)
}

/// Waits up to `limit` for `done`, or panics naming `what`.
pub fn wait_within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A published, installed extension.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub name: String,
    pub extension_id: String,
    pub content_hash: String,
}

/// Publishes `component` with `manifest` (signed by `signer`) and installs it for `tenant` with
/// the install body `install` (its `version` is filled in).
pub fn deploy(
    server: &Server,
    signer: &Signer,
    manifest: &Value,
    component: &[u8],
    tenant: &str,
    install: Value,
) -> Deployed {
    let name = manifest["name"].as_str().expect("manifest name").to_string();
    let version = manifest["version"].as_str().expect("manifest version").to_string();
    let bytes = pack(manifest, component);
    let published = server.publish(&bytes, &signer.sign(&bytes, &name, &version));
    assert!(matches!(published.status, 200 | 201), "publish {name}: {}", String::from_utf8_lossy(&published.body));
    let p = published.json();
    let deployed = Deployed {
        name,
        extension_id: p["extension_id"].as_str().unwrap().to_string(),
        content_hash: p["content_hash"].as_str().unwrap().to_string(),
    };
    install_for(server, &deployed, &version, tenant, install);
    deployed
}

/// Installs an already published extension for another tenant.
pub fn install_for(server: &Server, d: &Deployed, version: &str, tenant: &str, mut install: Value) {
    install["version"] = json!(version);
    let answer = server.install(tenant, &d.name, &install);
    assert!(matches!(answer.status, 200 | 201), "install {}: {}", d.name, String::from_utf8_lossy(&answer.body));
}

impl Server {
    /// `/v1/execute` for `tenant` with a method, a path (with query) and an optional body;
    /// returns the envelope answer.
    pub fn call(&self, tenant: &str, d: &Deployed, method: &str, path_and_query: &str, body: Option<&[u8]>) -> Answer {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let query: serde_json::Map<String, Value> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), json!(percent_decode(v)))
            })
            .collect();
        let mut env = envelope(tenant, &d.extension_id, &d.content_hash, path);
        env["http"]["method"] = json!(method);
        env["http"]["query"] = Value::Object(query);
        if let Some(b) = body {
            env["http"]["body_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(b));
        }
        self.execute(&env)
    }

    /// Like [`Server::call`], returning the guest's JSON report (asserting the envelope is 200).
    pub fn report(&self, tenant: &str, d: &Deployed, path_and_query: &str, body: Option<&[u8]>) -> Value {
        let answer = self.call(tenant, d, if body.is_some() { "POST" } else { "GET" }, path_and_query, body);
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let env = answer.json();
        assert_eq!(env["status"], 200, "envelope for {path_and_query}: {env}\nserver log:\n{}", self.log_text());
        serde_json::from_slice(&answer.envelope_body()).unwrap_or_else(|e| {
            panic!("guest report not JSON ({e}): {}", String::from_utf8_lossy(&answer.envelope_body()))
        })
    }
}

/// `%XX` decoding, for query strings written in tests.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A manifest for the `hostapi` fixture with `capabilities`, endpoints for every path.
pub fn hostapi_manifest(name: &str, capabilities: &[&str]) -> Value {
    json!({
        "name": name,
        "publisher": "Example Inc",
        "version": "1.0.0",
        "runtime": "wasm-js@1",
        "capabilities": capabilities,
        "api": { "endpoints": [
            { "method": "GET", "path": "/", "handler": "h" },
            { "method": "GET", "path": "/items/:id", "handler": "h" },
            { "method": "POST", "path": "/items", "handler": "h" },
            { "method": "GET", "path": "/headers", "handler": "h" },
            { "method": "GET", "path": "/redirect-away", "handler": "h" }
        ] },
        "ui": { "type": "iframe", "entry": "index.html" }
    })
}

/// Packs a bundle from a manifest, a component and `ui` files (paths relative to `ui/`).
pub fn pack_with_ui(manifest: &Value, component: &[u8], ui: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("dist")).unwrap();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    std::fs::write(dir.path().join("dist/main.wasm"), component).unwrap();
    for (path, bytes) in ui {
        let p = dir.path().join("ui").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    bundle::pack(dir.path()).expect("packing a test bundle").bytes
}
