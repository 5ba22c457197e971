//! Bundles in a real S3-compatible server (Garage): nothing is written for a refused bundle; two
//! hosts publishing the same bytes at once both succeed, with one object; an unreachable store
//! stops only what is not cached, and the hosts come back without a restart; TLS to the store
//! is verified against a CA file; a missing bucket or refused credentials stop the host (exit
//! 78); a swapped bundle or artifact in the bucket is never used, and publishing the same bytes
//! again repairs the bucket (11-scale-out.md, "Object store" and "Outages").

use std::process::{Child, Command, Stdio};

use alga_tests::cluster::{Cluster, cluster, metric, two_hosts, two_hosts_env};
use alga_tests::garage::Garage;
use alga_tests::server::{Options, Server, Signer, deploy, envelope, manifest, pack, wait_until};
use alga_tests::{fixture_bytes, skip_unless};
use serde_json::{Value, json};

fn run(host: &Server, tenant: &str, d: &alga_tests::server::Deployed) -> Value {
    let body = serde_json::to_vec(&envelope(tenant, &d.extension_id, &d.content_hash, "/")).unwrap();
    host.request(
        "POST",
        "/v1/execute",
        Some(alga_tests::server::SERVICE_TOKEN),
        &[("content-type", "application/json")],
        Some(&body),
    )
    .json()
}

#[test]
fn a_refused_bundle_writes_nothing_and_two_hosts_publishing_the_same_bytes_both_succeed() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (a, b) = two_hosts(&signer, &c);

    // Refused for its signer, and for a component of another world: the bucket stays empty.
    let bytes = pack(&manifest("com.example.refused", "1.0.0", &[]), &fixture_bytes("echo"));
    let stranger = Signer::new();
    let untrusted = a.publish(&bytes, &stranger.sign(&bytes, "com.example.refused", "1.0.0"));
    assert_eq!(untrusted.status, 403, "{}", String::from_utf8_lossy(&untrusted.body));
    let not_a_component = pack(&manifest("com.example.refused", "1.0.1", &[]), b"\0asm\x01\0\0\0");
    let invalid = a.publish(&not_a_component, &signer.sign(&not_a_component, "com.example.refused", "1.0.1"));
    assert_eq!(invalid.status, 400, "{}", String::from_utf8_lossy(&invalid.body));
    let (rt, bucket) = c.garage.client(&c.bucket, "");
    let written =
        rt.block_on(async { [bucket.keys("bundles").await.unwrap(), bucket.keys("artifacts").await.unwrap()] });
    assert_eq!(written, [Vec::<String>::new(), Vec::new()], "a refused bundle wrote to the bucket");

    // The same bytes on both hosts at once: both succeed, one object, one version.
    let bytes = pack(&manifest("com.example.twice", "1.0.0", &[]), &fixture_bytes("echo"));
    let signature = signer.sign(&bytes, "com.example.twice", "1.0.0");
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| a.publish(&bytes, &signature));
        let y = s.spawn(|| b.publish(&bytes, &signature));
        (x.join().unwrap(), y.join().unwrap())
    });
    let mut statuses = [x.status, y.status];
    statuses.sort();
    assert!(statuses == [200, 201] || statuses == [201, 201], "{statuses:?}");
    assert_eq!(x.json()["content_hash"], y.json()["content_hash"]);
    let hash = x.json()["content_hash"].as_str().unwrap().to_string();
    assert_eq!(c.bundles_in_bucket(), vec![hash]);
    let versions = a.admin_get("/v1/extensions/com.example.twice/versions").json();
    assert_eq!(versions["items"].as_array().map(Vec::len), Some(1), "{versions}");
}

#[test]
fn an_unreachable_object_store_stops_only_what_is_not_cached_and_recovers_without_a_restart() {
    // A Garage of this test's own: it is stopped part way.
    let garage = Garage::start();
    skip_unless!(garage.is_ok(), format!("no S3 server: {}", garage.as_ref().err().unwrap()));
    let garage: &'static Garage = Box::leak(Box::new(garage.unwrap()));
    let c = Cluster::on(garage);
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (a, b) = two_hosts_env(
        &signer,
        &c,
        vec![
            ("ALGA_RUNNER_BLOBS__TIMEOUT_MS".into(), "1500".into()),
            ("ALGA_RUNNER_QUOTAS__TENANT_RATE_PER_S".into(), "0".into()),
            ("ALGA_RUNNER_QUOTAS__EXTENSION_RATE_PER_S".into(), "0".into()),
        ],
    );
    let echo =
        deploy(&a, &signer, &manifest("com.example.cached", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    assert_eq!(run(&a, "t1", &echo)["status"], 200);

    // SIGSTOP: connections are accepted by the kernel and never answered.
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &garage.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let outage = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A has the bundle and its artifact: it keeps running it.
        assert_eq!(run(&a, "t1", &echo)["status"], 200, "a cached bundle runs");
        // B has never seen it: 503 storage_unavailable, not a verification failure.
        let refused = run(&b, "t1", &echo);
        assert_eq!((refused["status"].clone(), refused["error"].clone()), (json!(503), json!("storage_unavailable")));
        // A new bundle cannot be shared: refused with 503, not half published.
        let bytes = pack(&manifest("com.example.during", "1.0.0", &[]), &fixture_bytes("echo"));
        let published = a.publish(&bytes, &signer.sign(&bytes, "com.example.during", "1.0.0"));
        assert_eq!(published.status, 503, "{}", String::from_utf8_lossy(&published.body));
        assert_eq!(published.code(), "storage_unavailable");
        assert_eq!(a.admin_get("/v1/extensions/com.example.during").status, 404, "no record without its bundle");
    }));
    signal("-CONT");
    if let Err(p) = outage {
        std::panic::resume_unwind(p);
    }

    // Back without a restart.
    wait_until("host B to fetch the bundle", || run(&b, "t1", &echo)["status"] == 200);
    let bytes = pack(&manifest("com.example.during", "1.0.0", &[]), &fixture_bytes("echo"));
    let published = a.publish(&bytes, &signer.sign(&bytes, "com.example.during", "1.0.0"));
    assert_eq!(published.status, 201, "{}", String::from_utf8_lossy(&published.body));
}

/// A TLS terminator (`socat`) in front of Garage's S3 port, with the test CA's server
/// certificate for 127.0.0.1; killed on drop.
struct TlsFront(Child);

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_to_the_object_store_is_verified_against_the_ca_file() {
    skip_unless!(alga_tests::tls::available(), "no openssl to make the test CA");
    skip_unless!(Command::new("socat").arg("-V").output().is_ok(), "no socat (apt-get install socat; tests/run does)");
    let garage = Garage::get();
    skip_unless!(garage.is_ok(), format!("no S3 server: {}", garage.as_ref().err().unwrap()));
    let garage = garage.unwrap();
    let certs = tempfile::tempdir().unwrap();
    alga_tests::tls::test_ca(certs.path(), "127.0.0.1", "IP:127.0.0.1");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
        certs.path().join("server.pem").display(),
        certs.path().join("server.key").display()
    );
    let _front = TlsFront(
        Command::new("socat")
            .args([listen, format!("TCP:127.0.0.1:{}", garage.port())])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the TLS terminator to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    let bucket = garage.bucket();
    let signer = Signer::new();
    let host = |ca: bool| {
        // Through the TLS terminator, plain http not allowed.
        let mut env: Vec<(String, String)> = garage
            .blobs_env(&bucket)
            .into_iter()
            .filter(|(k, _)| k != "ALGA_RUNNER_BLOBS__ALLOW_HTTP")
            .map(
                |(k, v)| {
                    if k == "ALGA_RUNNER_BLOBS__ENDPOINT" { (k, format!("https://127.0.0.1:{port}")) } else { (k, v) }
                },
            )
            .collect();
        env.push(("ALGA_RUNNER_BLOBS__TIMEOUT_MS".to_string(), "3000".to_string()));
        if ca {
            env.push(("ALGA_RUNNER_BLOBS__CA_FILE".to_string(), certs.path().join("ca.pem").display().to_string()));
        }
        Server::start_with(Options { trust_lines: vec![signer.public()], env })
    };

    // With the CA: the bundle goes over TLS into the bucket.
    let trusted = host(true);
    assert!(trusted.log_text().contains("the object store answers"), "{}", trusted.log_text());
    let d =
        deploy(&trusted, &signer, &manifest("com.example.tls", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    assert_eq!(garage.bundles_in(&bucket, ""), vec![d.content_hash.clone()]);

    // Without it, the store's certificate is not trusted: nothing is sent, publishing answers 503.
    let untrusted = host(false);
    assert!(untrusted.log_text().contains("the object store cannot be reached"), "{}", untrusted.log_text());
    let bytes = pack(&manifest("com.example.tls", "1.0.1", &[]), &fixture_bytes("echo"));
    let refused = untrusted.publish(&bytes, &signer.sign(&bytes, "com.example.tls", "1.0.1"));
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(garage.bundles_in(&bucket, ""), vec![d.content_hash]);
}

#[test]
fn a_missing_bucket_or_refused_credentials_exit_78_naming_the_store() {
    let garage = Garage::get();
    skip_unless!(garage.is_ok(), format!("no S3 server: {}", garage.as_ref().err().unwrap()));
    let garage = garage.unwrap();
    let bucket = garage.bucket();
    let serve = |bucket: &str, secret: &str| {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(alga_tests::runner_bin())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ALGA_RUNNER_LISTEN", "127.0.0.1:0")
            .env("ALGA_RUNNER_STATE_DIR", state.path())
            .envs(garage.blobs_env(bucket))
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = serve("alga-no-such-bucket", &garage.secret_access_key);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("alga-no-such-bucket") && stderr.contains("check blobs.bucket"), "{stderr}");
    let (code, stderr) = serve(&bucket, "0000000000000000000000000000000000000000000000000000000000000000");
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("refused this host"), "{stderr}");
}

#[test]
fn what_the_object_store_holds_is_checked_and_a_bad_copy_is_repaired_by_publishing_again() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (a, b) = two_hosts(&signer, &c);
    let echo_manifest = manifest("com.example.tampered", "1.0.0", &[]);
    let echo = deploy(&a, &signer, &echo_manifest, &fixture_bytes("echo"), "t1", json!({}));
    let sleepy = deploy(
        &a,
        &signer,
        &manifest("com.example.recompiled", "1.0.0", &[]),
        &fixture_bytes("sleeper"),
        "t1",
        json!({}),
    );

    // Someone with write access to the bucket swaps a bundle and a compiled artifact.
    let (rt, bucket) = c.garage.client(&c.bucket, "");
    rt.block_on(async {
        bucket.put(bucket.bundle_key(&echo.content_hash), b"not the bundle".to_vec()).await.unwrap();
        let sleeper_sha = alga_runner::exec::artifacts::sha256_hex(&fixture_bytes("sleeper"));
        let artifacts = bucket.keys(&format!("artifacts/sha256/{sleeper_sha}")).await.unwrap();
        assert_eq!(artifacts.len(), 1, "{artifacts:?}");
        bucket.put(bucket.key(artifacts[0].clone()), b"\x7fELF not the artifact".to_vec()).await.unwrap();
    });

    // B, which has seen neither: the bundle is refused (and not cached), the artifact is not
    // used — B compiles the component itself and runs it.
    let refused = run(&b, "t1", &echo);
    assert_eq!(
        (refused["status"].clone(), refused["error"].clone()),
        (json!(502), json!("bundle_verification_failed"))
    );
    assert_eq!(metric(&b, "alga_runner_bundle_fetches_total{result=\"corrupt\"}"), 1.0);
    assert!(!b.blob_files().contains(&echo.content_hash.trim_start_matches("sha256:").to_string()));
    assert_eq!(run(&b, "t1", &sleepy)["status"], 200);
    assert_eq!(metric(&b, "alga_runner_artifact_loads_total{source=\"compiled\"}"), 1.0);
    assert_eq!(metric(&b, "alga_runner_artifact_loads_total{source=\"shared\"}"), 0.0);

    // The publisher sends the same bytes again: the bucket's copy is put back.
    let bytes = pack(&echo_manifest, &fixture_bytes("echo"));
    let again = a.publish(&bytes, &signer.sign(&bytes, "com.example.tampered", "1.0.0"));
    assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(run(&b, "t1", &echo)["status"], 200);
    assert_eq!(metric(&b, "alga_runner_bundle_fetches_total{result=\"ok\"}"), 2.0, "the sleeper's, then this");
}

#[test]
fn a_host_switched_to_the_object_store_puts_its_bundles_there() {
    let garage = Garage::get();
    skip_unless!(garage.is_ok(), format!("no S3 server: {}", garage.as_ref().err().unwrap()));
    let garage = garage.unwrap();
    let signer = Signer::new();
    let mut host = Server::start(&signer);
    let echo = deploy(
        &host,
        &signer,
        &manifest("com.example.switched", "1.0.0", &[]),
        &fixture_bytes("echo"),
        "t1",
        json!({}),
    );
    let bucket = garage.bucket();
    host.options.env.extend(garage.blobs_env(&bucket));
    host.restart();
    wait_until("the host to put its bundle in the bucket", || {
        garage.bundles_in(&bucket, "") == vec![echo.content_hash.clone()]
    });
    assert_eq!(run(&host, "t1", &echo)["status"], 200);
}
