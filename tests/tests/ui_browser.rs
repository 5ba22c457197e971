//! The iframe UI end to end in headless Chromium: a host page (served by this test, on its own
//! origin) embeds the sample extension's UI from the runner with `/sdk/v1/iframe-bridge.js`. The
//! handshake completes, theme tokens reach the iframe (its computed style changes), a resize
//! message sets the iframe's height, an `apiproxy` call reaches the extension's handler through
//! the host's proxy and the runner's gateway and its answer shows in the iframe, and messages
//! from a wrong origin are ignored. Run twice: the UI on our `extension.js`, and the same UI on
//! the published `@alga-psa/extension-iframe-sdk`. Screenshots are saved under the test's
//! output directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alga_tests::server::{Deployed, Options, SERVICE_TOKEN, Server, Signer, install_for, pack_with_ui};
use alga_tests::skip_unless;
use alga_tests::upstream::{Received, Reply, Upstream};
use alga_tests::webdriver::{self, Browser};
use serde_json::{Value, json};

const TENANT: &str = "acme";
/// The published SDK version the second run uses.
const NPM_SDK: &str = "@alga-psa/extension-iframe-sdk@0.1.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// What the host page needs to know, set once the runner is up.
struct Site {
    runner: String,
    extension_id: String,
    /// Content hash per variant (`ours`, `npm`).
    hashes: BTreeMap<String, String>,
}

fn host_page(site: &Site, variant: &str, evil: &str) -> String {
    let hash = &site.hashes[variant];
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Host page</title>
<style>body {{ font-family: sans-serif; }} iframe#ext {{ width: 900px; border: 2px solid #888; }}</style></head>
<body>
<h1>A host application page</h1>
<iframe id="ext"></iframe>
<script type="module">
import {{ bootstrapIframe }} from "{runner}/sdk/v1/iframe-bridge.js";
window.__events = [];
window.addEventListener("message", (e) => {{ if (e.data === "evil-done") window.__evilDone = true; }});
window.__bridge = bootstrapIframe({{
  iframe: document.getElementById("ext"),
  extensionId: "{ext}",
  contentHash: "{hash}",
  publicBase: "{runner}",
  tenant: "{tenant}",
  session: {{ token: "session-token-1", expiresAt: "2099-01-01T00:00:00Z" }},
  themeTokens: {{ "--alga-bg": "rgb(10, 20, 30)", "--alga-fg": "rgb(250, 250, 250)" }},
  onResize: (h) => window.__events.push(["resize", h]),
}});
window.__evilUrl = "{evil}";
</script>
</body></html>"#,
        runner = site.runner,
        ext = site.extension_id,
        tenant = TENANT,
    )
}

const EVIL_PAGE: &str = r#"<!doctype html><html><body><script>
// A page of another origin inside the host page tries to drive both sides of the bridge.
const ext = window.parent.frames[0];
ext.postMessage({ alga: true, version: "1", type: "bootstrap",
  payload: { theme_tokens: { "--alga-bg": "rgb(255, 0, 0)" }, navigation: { path: "/evil" } } }, "*");
ext.postMessage({ alga: true, version: "1", type: "theme_tokens",
  payload: { theme_tokens: { "--alga-bg": "rgb(255, 0, 0)" } } }, "*");
window.parent.postMessage({ alga: true, version: "1", type: "resize", payload: { height: 3333 } }, "*");
window.parent.postMessage("evil-done", "*");
</script></body></html>"#;

/// The host application: its page, and its proxy to the runner's gateway (adding the service
/// token and the tenant, as a real host does after authenticating its user).
fn host_app(site: Arc<OnceLock<Site>>, evil: String) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    move |r: &Received| {
        let Some(site) = site.get() else { return Reply::new(503, "not ready") };
        if let Some(variant) = r.target.strip_prefix("/host.html?variant=") {
            return Reply::new(200, host_page(site, variant, &evil)).header("content-type", "text/html; charset=utf-8");
        }
        if let Some(rest) = r.target.strip_prefix("/api/ext-proxy/") {
            let url = format!("{}/api/ext/{rest}", site.runner);
            let req = ureq::request(&r.method, &url)
                .set("authorization", &format!("Bearer {SERVICE_TOKEN}"))
                .set("x-alga-tenant", TENANT);
            let answer = if r.body.is_empty() { req.call() } else { req.send_bytes(&r.body) };
            let response = match answer {
                Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
                Err(e) => return Reply::new(502, e.to_string()),
            };
            let status = response.status();
            let ct = response.header("content-type").unwrap_or("application/octet-stream").to_string();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
            return Reply::new(status, body).header("content-type", &ct);
        }
        Reply::new(404, "no such page")
    }
}

/// The sample UI's files (`examples/hello/bundle/ui`).
fn sample_ui() -> Vec<(String, Vec<u8>)> {
    let dir = repo().join("examples/hello/bundle/ui");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        out.push((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()));
    }
    out
}

/// The published SDK's `bridge.js`, fetched with npm (never committed).
fn npm_bridge(into: &Path) -> Option<Vec<u8>> {
    let packed = Command::new("npm")
        .args(["pack", NPM_SDK, "--silent", "--pack-destination"])
        .arg(into)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let name = String::from_utf8_lossy(&packed.stdout).trim().lines().last()?.to_string();
    let ok = Command::new("tar").arg("xzf").arg(into.join(&name)).arg("-C").arg(into).status().ok()?.success();
    if !ok {
        return None;
    }
    std::fs::read(into.join("package/dist/bridge.js")).ok()
}

fn publish(server: &Server, signer: &Signer, version: &str, ui: &[(String, Vec<u8>)]) -> Deployed {
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(repo().join("examples/hello/bundle/manifest.json")).unwrap()).unwrap();
    manifest["version"] = json!(version);
    let files: Vec<(&str, &[u8])> = ui.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
    let wasm = std::fs::read(env!("ALGA_HELLO_WASM")).expect("the sample extension is built by build.rs");
    let bytes = pack_with_ui(&manifest, &wasm, &files);
    let answer = server.publish(&bytes, &signer.sign(&bytes, "com.example.hello", version));
    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));
    let p = answer.json();
    Deployed {
        name: "com.example.hello".into(),
        extension_id: p["extension_id"].as_str().unwrap().into(),
        content_hash: p["content_hash"].as_str().unwrap().into(),
    }
}

fn background(browser: &Browser) -> Value {
    browser.run("return getComputedStyle(document.body).backgroundColor;", vec![])
}

/// One full run of the scenario in the browser for `variant`; returns the screenshot.
fn scenario(browser: &Browser, host: &Upstream, variant: &str, live_theme: bool) -> Vec<u8> {
    let long = Duration::from_secs(30);
    browser.goto(&host.url(&format!("/host.html?variant={variant}")));
    browser.wait_for(
        "the UI to ask for its height",
        long,
        "return document.getElementById('ext').style.height === '640px';",
    );

    browser.frame(Some(0));
    browser.wait_for("the handshake", long, "return !!document.body && document.body.dataset.bootstrapped === 'true';");
    assert_eq!(background(browser), "rgb(10, 20, 30)", "the host's theme tokens are the iframe's style");
    browser.wait_for(
        "the gateway's answer in the iframe",
        long,
        "return document.getElementById('greeting').textContent === 'Hello, iframe!';",
    );
    browser.frame(None);

    let expected_bg = if live_theme {
        browser.run("window.__bridge.setTheme({ '--alga-bg': 'rgb(1, 2, 3)' });", vec![]);
        browser.frame(Some(0));
        browser.wait_for(
            "the new theme",
            long,
            "return getComputedStyle(document.body).backgroundColor === 'rgb(1, 2, 3)';",
        );
        browser.frame(None);
        "rgb(1, 2, 3)"
    } else {
        "rgb(10, 20, 30)"
    };

    // Wrong origins: a page of a third origin posts into the UI and to the host, and the host
    // page itself forges a message; all are ignored.
    browser.run(
        "window.postMessage({ alga: true, version: '1', type: 'resize', payload: { height: 2222 } }, '*');\
         const f = document.createElement('iframe'); f.id = 'evil'; f.src = window.__evilUrl;\
         f.style.height = '60px'; document.body.appendChild(f);",
        vec![],
    );
    browser.wait_for("the foreign page's messages", long, "return window.__evilDone === true;");
    std::thread::sleep(Duration::from_millis(500));
    let height = browser.run("return document.getElementById('ext').style.height;", vec![]);
    assert_eq!(height, "640px", "a resize from a wrong source changed the iframe");
    let resizes = browser.run("return window.__events.filter((e) => e[0] === 'resize').map((e) => e[1]);", vec![]);
    assert!(resizes.as_array().unwrap().iter().all(|h| h == 640), "{resizes}");
    browser.frame(Some(0));
    assert_eq!(background(browser), expected_bg, "a theme from a wrong origin reached the UI");
    browser.frame(None);
    browser.screenshot()
}

#[test]
fn the_sample_ui_in_a_real_browser() {
    skip_unless!(
        webdriver::available(),
        "Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver)"
    );
    let npm_dir = tempfile::tempdir().unwrap();
    let npm_sdk = npm_bridge(npm_dir.path());
    skip_unless!(npm_sdk.is_some(), format!("npm cannot fetch {NPM_SDK}"));

    let site = Arc::new(OnceLock::new());
    let evil = Upstream::start(|_| Reply::new(200, EVIL_PAGE).header("content-type", "text/html"));
    let host = Upstream::start(host_app(site.clone(), evil.url("/evil.html")));
    let host_origin = host.url("");

    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![("EXT_UI_FRAME_ANCESTORS".into(), format!("'self' {host_origin}"))],
    });
    let ours = publish(&server, &signer, "1.0.0", &sample_ui());
    install_for(&server, &ours, "1.0.0", TENANT, json!({ "granted_capabilities": ["storage.kv"] }));

    // The same UI on the published SDK: its own script, the package's bridge beside it.
    let mut npm_ui: Vec<(String, Vec<u8>)> = sample_ui().into_iter().filter(|(p, _)| p != "app.js").collect();
    for (p, bytes) in npm_ui.iter_mut() {
        if p == "index.html" {
            *bytes = String::from_utf8_lossy(bytes).replace("src=\"app.js\"", "src=\"app-npm.js\"").into_bytes();
        }
    }
    npm_ui.push(("app-npm.js".into(), std::fs::read(repo().join("tests/ui/app-npm.js")).unwrap()));
    npm_ui.push(("vendor/alga-sdk/bridge.js".into(), npm_sdk.unwrap()));
    let npm = publish(&server, &signer, "1.0.1", &npm_ui);

    let _ = site.set(Site {
        runner: server.url.clone(),
        extension_id: ours.extension_id.clone(),
        hashes: BTreeMap::from([
            ("ours".to_string(), ours.content_hash.clone()),
            ("npm".to_string(), npm.content_hash.clone()),
        ]),
    });

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-browser");
    std::fs::create_dir_all(&out).unwrap();
    let browser = Browser::start();
    let shot = scenario(&browser, &host, "ours", true);
    std::fs::write(out.join("extension-js.png"), &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");

    // Upgrade the tenant to the version built on the published SDK (strict mode: the UI served
    // is the installed one).
    install_for(&server, &npm, "1.0.1", TENANT, json!({ "granted_capabilities": ["storage.kv"] }));
    let shot = scenario(&browser, &host, "npm", false);
    std::fs::write(out.join("published-sdk.png"), &shot).unwrap();
    eprintln!("screenshots in {}", out.display());
}
