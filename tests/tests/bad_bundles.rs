//! Every bad bundle of 08-quality.md, published to the real `alga-runner serve`: each is answered
//! with its documented status and code, and leaves no file and no record behind.

use alga_tests::fixture_bytes;
use alga_tests::server::{Entry, Options, Server, Signer, manifest, pack, raw_bundle};
use serde_json::{Value, json};

/// Publishes, checks the answer, then checks that nothing was stored.
fn refused(server: &Server, what: &str, bytes: &[u8], signature: &str, status: u16, code: &str) -> Value {
    let a = server.publish(bytes, signature);
    let body = String::from_utf8_lossy(&a.body).to_string();
    assert_eq!((a.status, a.code().as_str()), (status, code), "{what}: {body}");
    assert_eq!(a.header("content-type"), Some("application/problem+json"), "{what}");
    assert!(server.blob_files().is_empty(), "{what} left blobs: {:?}", server.blob_files());
    assert!(server.all_versions().is_empty(), "{what} left a version record");
    let exts = server.admin_get("/v1/extensions").json();
    assert_eq!(exts["items"], json!([]), "{what} left an extension record");
    a.json()
}

fn manifest_bytes(name: &str, version: &str) -> Vec<u8> {
    serde_json::to_vec(&manifest(name, version, &[])).unwrap()
}

#[test]
fn bad_signatures_are_refused() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let good = pack(&manifest("com.example.sig", "1.0.0", &[]), &fixture_bytes("echo"));
    let sig = signer.sign(&good, "com.example.sig", "1.0.0");

    // One byte changed after signing.
    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x40;
    refused(&server, "a tampered byte", &tampered, &sig, 401, "signature_invalid");

    // A valid signature by a trusted key, but over other bytes.
    let other = pack(&manifest("com.example.sig", "1.0.1", &[]), &fixture_bytes("echo"));
    refused(
        &server,
        "a signature of other bytes",
        &good,
        &signer.sign(&other, "com.example.sig", "1.0.1"),
        401,
        "signature_invalid",
    );

    // Not a signature at all, and no signature header.
    refused(&server, "garbage signature", &good, "this is not a minisig file", 401, "signature_invalid");
    let a = server.request(
        "POST",
        "/v1/bundles",
        Some(alga_tests::server::ADMIN_TOKEN),
        &[("content-type", "application/octet-stream")],
        Some(&good),
    );
    assert_eq!(a.status, 401, "no x-alga-signature: {}", String::from_utf8_lossy(&a.body));

    // Signed by a key the runner does not trust.
    let stranger = Signer::new();
    refused(
        &server,
        "an untrusted key",
        &good,
        &stranger.sign(&good, "com.example.sig", "1.0.0"),
        403,
        "signer_untrusted",
    );

    // A trusted comment that names another version or another hash than the bundle's.
    refused(
        &server,
        "a comment for another version",
        &good,
        &signer.sign(&good, "com.example.sig", "2.0.0"),
        401,
        "signature_invalid",
    );
    let wrong_hash = format!("alga-bundle name=com.example.sig version=1.0.0 content_hash=sha256:{}", "ab".repeat(32));
    refused(
        &server,
        "a comment with another hash",
        &good,
        &signer.sign_with_comment(&good, &wrong_hash),
        401,
        "signature_invalid",
    );

    // Control: the good bundle with its good signature publishes.
    assert_eq!(server.publish(&good, &sig).status, 201);
}

#[test]
fn unsafe_archives_are_refused() {
    let signer = Signer::new();
    let options = Options {
        trust_lines: vec![signer.public()],
        env: vec![("ALGA_RUNNER_BUNDLES__MAX_COMPRESSED_MB".into(), "2".into())],
    };
    let server = Server::start_with(options);
    let m = manifest_bytes("com.example.archive", "1.0.0");
    let wasm = fixture_bytes("echo");
    let html = b"<p>x</p>".as_slice();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a zip-slip path",
            raw_bundle(&[
                Entry::File("manifest.json", &m),
                Entry::File("dist/main.wasm", &wasm),
                Entry::File("ui/index.html", html),
                Entry::File("ui/../../evil.sh", b"#!/bin/sh"),
            ]),
        ),
        (
            "an absolute path",
            raw_bundle(&[
                Entry::File("manifest.json", &m),
                Entry::File("dist/main.wasm", &wasm),
                Entry::File("ui/index.html", html),
                Entry::File("/etc/cron.d/evil", b"* * * * * root true"),
            ]),
        ),
        (
            "a symbolic link",
            raw_bundle(&[
                Entry::File("manifest.json", &m),
                Entry::File("dist/main.wasm", &wasm),
                Entry::Symlink("ui/index.html", "/etc/shadow"),
            ]),
        ),
        (
            "a hard link",
            raw_bundle(&[
                Entry::File("manifest.json", &m),
                Entry::File("dist/main.wasm", &wasm),
                Entry::Hardlink("ui/index.html", "manifest.json"),
            ]),
        ),
        (
            "a duplicate entry",
            raw_bundle(&[
                Entry::File("manifest.json", &m),
                Entry::File("dist/main.wasm", &wasm),
                Entry::File("ui/index.html", html),
                Entry::File("dist/main.wasm", b"\0asm\x01\0\0\0"),
            ]),
        ),
        (
            "a file that is also a directory",
            raw_bundle(&[
                Entry::File("manifest.json", &m),
                Entry::File("dist/main.wasm", &wasm),
                Entry::File("ui/index.html", html),
                Entry::File("ui/x", b"file"),
                Entry::File("ui/x/y", b"below the file"),
            ]),
        ),
        ("no manifest", raw_bundle(&[Entry::File("dist/main.wasm", &wasm), Entry::File("ui/index.html", html)])),
        ("not zstd at all", b"PK\x03\x04 this is a zip file, not a tar.zst".to_vec()),
    ];
    for (what, bytes) in &cases {
        let sig = signer.sign(bytes, "com.example.archive", "1.0.0");
        let problem = refused(&server, what, bytes, &sig, 400, "invalid_bundle");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: no detail: {problem}");
        if *what == "a file that is also a directory" {
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("`ui/x`") && detail.contains("`ui/x/y`"), "the entries are named: {detail}");
        }
    }

    // A decompression bomb: 200 MiB of zeros that compress to a few hundred KiB.
    let zeros = vec![0u8; 200 << 20];
    let bomb = raw_bundle(&[
        Entry::File("manifest.json", &m),
        Entry::File("dist/main.wasm", &wasm),
        Entry::File("ui/index.html", html),
        Entry::File("ui/zeros.bin", &zeros),
    ]);
    drop(zeros);
    assert!(bomb.len() < 2 << 20, "the bomb should be small: {}", bomb.len());
    let problem = refused(
        &server,
        "a decompression bomb",
        &bomb,
        &signer.sign(&bomb, "com.example.archive", "1.0.0"),
        400,
        "invalid_bundle",
    );
    assert!(problem["detail"].as_str().unwrap_or("").contains("decompress"), "{problem}");

    // Over the upload limit (2 MiB here): 413 before the body is read whole.
    let oversize = vec![7u8; 3 << 20];
    refused(
        &server,
        "an oversize upload",
        &oversize,
        &signer.sign(&oversize, "com.example.archive", "1.0.0"),
        413,
        "payload_too_large",
    );

    // Components that are not acceptable: a core module, and a component of another world.
    for (what, component) in
        [("a core module", alga_tests::CORE_MODULE.to_vec()), ("another world", fixture_bytes("wrong-world"))]
    {
        let bytes = pack(&manifest("com.example.archive", "1.0.0", &[]), &component);
        let problem =
            refused(&server, what, &bytes, &signer.sign(&bytes, "com.example.archive", "1.0.0"), 400, "invalid_bundle");
        assert!(problem["detail"].as_str().unwrap_or("").contains("dist/main.wasm"), "{what}: {problem}");
    }
    // Nothing compiled for them either.
    let cache = server.state_dir().join("cache");
    let artifacts: Vec<_> = walk_files(&cache);
    assert!(artifacts.is_empty(), "refused components left compiled artifacts: {artifacts:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn each_invalid_manifest_field_is_named() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let wasm = fixture_bytes("echo");
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation)> = vec![
        ("$.name", |m| m["name"] = json!("Not A Name")),
        ("$.publisher", |m| m["publisher"] = json!("")),
        ("$.version", |m| m["version"] = json!("one")),
        ("$.runtime", |m| m["runtime"] = json!("python@3")),
        ("$.capabilities[0]", |m| m["capabilities"] = json!(["cap:root"])),
        ("$.api.endpoints[0].method", |m| m["api"]["endpoints"][0]["method"] = json!("FETCH")),
        ("$.api.endpoints[0].path", |m| m["api"]["endpoints"][0]["path"] = json!("no-slash")),
        ("$.api.endpoints[0].handler", |m| m["api"]["endpoints"][0]["handler"] = json!("")),
        ("$.egress[0]", |m| m["egress"] = json!(["http://example.com/path"])),
        ("$.entry", |m| m["entry"] = json!("dist/missing.wasm")),
        ("$.ui.type", |m| m["ui"]["type"] = json!("window")),
        ("$.ui.entry", |m| m["ui"]["entry"] = json!("missing.html")),
        // An unknown field is accepted with a warning (Alga's schema strips unknown keys):
        // alga_compat.rs checks that.
    ];
    for (path, mutate) in cases {
        let mut m = manifest("com.example.fields", "1.0.0", &[]);
        mutate(&mut m);
        let bytes = pack_unchecked(&m, &wasm);
        let sig = signer.sign(&bytes, "com.example.fields", "1.0.0");
        let problem = refused(&server, path, &bytes, &sig, 422, "invalid_manifest");
        let errors = problem["errors"].as_array().unwrap_or_else(|| panic!("{path}: no errors list: {problem}"));
        assert!(
            errors.iter().any(|e| e["path"] == path && e["message"].as_str().is_some_and(|m| !m.is_empty())),
            "{path} not named: {problem}"
        );
    }
    // A manifest that is not JSON.
    let bytes = raw_bundle(&[Entry::File("manifest.json", b"{ nope"), Entry::File("dist/main.wasm", &wasm)]);
    let sig = signer.sign(&bytes, "com.example.fields", "1.0.0");
    refused(&server, "manifest not JSON", &bytes, &sig, 422, "invalid_manifest");
}

/// A bundle with whatever manifest, packed raw (the product's packer refuses invalid manifests).
fn pack_unchecked(manifest: &Value, wasm: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(manifest).unwrap();
    raw_bundle(&[
        Entry::File("manifest.json", &m),
        Entry::File("dist/main.wasm", wasm),
        Entry::File("ui/index.html", b"<p>x</p>"),
    ])
}
