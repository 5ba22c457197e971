//! `GET|HEAD /ext-ui/{extension}/{content_hash}/{path...}` against the real service: every rule
//! of 02-http-api.md, black-box.

use alga_tests::fixture_bytes;
use alga_tests::server::{Answer, Deployed, Options, Server, Signer, hostapi_manifest, install_for, pack_with_ui};
use serde_json::{Value, json};

const INDEX: &[u8] = b"<!doctype html><title>ui</title><script type=module src=app.js></script>";
const APP: &[u8] = b"console.log('app');";

struct Setup {
    server: Server,
    d: Deployed,
    hash: String,
}

fn setup() -> Setup {
    let signer = Signer::new();
    let server = Server::start_with(Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("EXT_UI_FRAME_ANCESTORS".into(), "https://host.example".into()),
            ("ALGA_RUNNER_UI__MAX_FILE_MB".into(), "1".into()),
        ],
    });
    let big = vec![b'x'; 1536 * 1024];
    let manifest = hostapi_manifest("com.example.ui", &[]);
    let files: [(&str, &[u8]); 5] = [
        ("index.html", INDEX),
        ("app.js", APP),
        ("css/site.css", b"body{}"),
        ("img/logo.png", b"\x89PNG...."),
        ("big.bin", &big),
    ];
    let bytes = pack_with_ui(&manifest, &fixture_bytes("hostapi"), &files);
    let published = server.publish(&bytes, &signer.sign(&bytes, "com.example.ui", "1.0.0"));
    assert_eq!(published.status, 201);
    let p = published.json();
    let d = Deployed {
        name: "com.example.ui".into(),
        extension_id: p["extension_id"].as_str().unwrap().into(),
        content_hash: p["content_hash"].as_str().unwrap().into(),
    };
    install_for(&server, &d, "1.0.0", "t1", json!({}));
    let hash = d.content_hash.clone();
    Setup { server, d, hash }
}

impl Setup {
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.server.request("GET", &format!("/ext-ui/{path}"), None, headers, None)
    }

    fn ui(&self, rest: &str) -> Answer {
        self.get(&format!("com.example.ui/{}/{rest}", self.hash), &[])
    }
}

/// A GET written on the socket as given: HTTP client libraries normalize `..` and `%2e%2e`
/// away before sending (as browsers do), which would hide what the server does with them.
fn raw_get(server: &Server, target: &str) -> Answer {
    use std::io::{Read, Write};
    let addr = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete answer");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 4 + size..];
    }
}

fn code(a: &Answer) -> String {
    serde_json::from_slice::<Value>(&a.body).map(|v| v["code"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

#[test]
fn serves_files_with_types_caching_and_csp() {
    let s = setup();
    let html = s.ui("index.html?tenant=t1");
    assert_eq!(html.status, 200);
    assert_eq!(html.body, INDEX);
    assert_eq!(html.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(html.header("cache-control"), Some(IMMUTABLE));
    assert_eq!(html.header("x-content-type-options"), Some("nosniff"));
    let csp = html.header("content-security-policy").expect("CSP on HTML");
    assert!(csp.contains("frame-ancestors https://host.example") && csp.contains("default-src 'self'"), "{csp}");
    let etag = html.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'));

    let js = s.ui("app.js");
    assert_eq!((js.status, js.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert!(js.header("content-security-policy").is_none(), "CSP on HTML only");
    assert_eq!(s.ui("css/site.css").header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(s.ui("img/logo.png").header("content-type"), Some("image/png"));

    // By registry id; the colon URL-encoded.
    let by_id = s.get(&format!("{}/{}/app.js", s.d.extension_id, s.hash.replace(':', "%3A")), &[]);
    assert_eq!((by_id.status, by_id.body.as_slice()), (200, APP));

    // SPA fallback: no extension in the last segment, or nothing at all → the entry.
    for spa in ["settings/profile", "", "deep/route/"] {
        let r = s.ui(spa);
        assert_eq!((r.status, r.body.as_slice()), (200, INDEX), "{spa}");
    }
    let root = s.get(&format!("com.example.ui/{}", s.hash), &[]);
    assert_eq!(root.body, INDEX);

    // Conditional and partial requests.
    let again = s.get(&format!("com.example.ui/{}/index.html", s.hash), &[("if-none-match", &etag)]);
    assert_eq!(again.status, 304);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("cache-control"), Some(IMMUTABLE));
    let part = s.get(&format!("com.example.ui/{}/app.js", s.hash), &[("range", "bytes=0-6")]);
    assert_eq!((part.status, part.body.as_slice()), (206, &b"console"[..]));
    assert_eq!(part.header("content-range"), Some(format!("bytes 0-6/{}", APP.len()).as_str()));
    assert_eq!(part.header("cache-control"), Some(IMMUTABLE));
    let beyond = s.get(&format!("com.example.ui/{}/app.js", s.hash), &[("range", "bytes=9999-")]);
    assert_eq!(beyond.status, 416);
    assert_ne!(beyond.header("cache-control"), Some(IMMUTABLE));

    let head = s.server.request("HEAD", &format!("/ext-ui/com.example.ui/{}/app.js", s.hash), None, &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some(APP.len().to_string().as_str()));
}

#[test]
fn refuses_with_clear_errors_and_no_immutable_header() {
    let s = setup();
    let refused = |a: &Answer, status: u16, c: &str| {
        assert_eq!((a.status, code(a).as_str()), (status, c), "{}", String::from_utf8_lossy(&a.body));
        assert_ne!(a.header("cache-control"), Some(IMMUTABLE), "no immutable caching on errors");
    };
    for bad in [
        "../../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "css/%2E%2E/x.js",
        "css/..%2f..%2fx.js",
        ".env",
        "img/.hidden.png",
        "a%5cb.js",
        "a\\b.js",
        "a%00.js",
        "x%0d%0a.js",
    ] {
        refused(&raw_get(&s.server, &format!("/ext-ui/com.example.ui/{}/{bad}", s.hash)), 400, "invalid_path");
    }
    refused(&s.get("com.example.ui/sha256:1234/index.html", &[]), 400, "invalid_content_hash");
    refused(
        &s.get(&format!("com.example.ui/{}/index.html", s.hash.trim_start_matches("sha256:")), &[]),
        400,
        "invalid_content_hash",
    );
    // Every not-found answers one body, so it tells nothing about which tenant has what.
    let unknown_hash = format!("sha256:{}", "ab".repeat(32));
    let not_found = [
        s.ui("missing.js"),
        s.ui("index.html?tenant=t2"),
        s.ui("index.html?tenant=no-such-tenant"),
        s.get(&format!("com.example.other/{}/index.html", s.hash), &[]),
        s.get(&format!("com.example.other/{}/index.html?tenant=t1", s.hash), &[]),
        s.get(&format!("com.example.ui/{unknown_hash}/index.html"), &[]),
        s.get(&format!("com.example.ui/{unknown_hash}/index.html?tenant=t1"), &[]),
    ];
    for a in &not_found {
        refused(a, 404, "not_found");
        assert_eq!(a.body, not_found[0].body, "one body for every not-found");
    }
    let body = String::from_utf8_lossy(&not_found[0].body);
    assert!(!body.contains("t2") && !body.contains("tenant t") && !body.contains("com.example"), "{body}");
    refused(&s.ui("big.bin"), 413, "payload_too_large");
}

#[test]
fn strict_mode_needs_an_install_and_a_lost_tree_comes_back() {
    let s = setup();
    // Uninstalled everywhere: 404 even without a tenant.
    let gone = s.server.request(
        "DELETE",
        "/v1/tenants/t1/installs/com.example.ui",
        Some(alga_tests::server::ADMIN_TOKEN),
        &[],
        None,
    );
    assert_eq!(gone.status, 204);
    assert_eq!(s.ui("index.html").status, 404);
    install_for(&s.server, &s.d, "1.0.0", "t2", json!({}));
    assert_eq!(s.ui("index.html").status, 200, "installed for some tenant");
    assert_eq!(s.ui("index.html?tenant=t2").status, 200);

    // The extracted tree is removed by hand: it is extracted again from the verified blob.
    let tree = s.server.state_dir().join("ui").join(s.hash.trim_start_matches("sha256:"));
    assert!(tree.join("index.html").is_file(), "extracted at publish");
    std::fs::remove_dir_all(&tree).unwrap();
    let back = s.ui("app.js");
    assert_eq!((back.status, back.body.as_slice()), (200, APP));
}
