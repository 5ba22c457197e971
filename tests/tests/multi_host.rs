//! Two runner hosts (two real `alga-runner serve` processes, each with its own state directory)
//! sharing one PostgreSQL database and one bucket of a real S3-compatible server (Garage), with
//! one node key given to the second host as a credential, as 11-scale-out.md's multi-host
//! scenarios ask: publish on one and execute on the other (the other fetches the bundle and the
//! compiled artifact and compiles nothing), a storage compare-and-swap race, an idempotent retry that lands on the other host while the
//! first attempt runs, yank and uninstall seen at once by the other host, one hash chain under
//! concurrent appends from both, a concurrency cap and a rate limit held for the cluster (and a
//! dead host's places given back within the lease time), and `kill -9` of one host mid-burst
//! with every acknowledged write and record present afterwards, and two hosts on one machine
//! never touching each other's sandboxes or cgroups.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alga_tests::cluster::{cluster, metric, two_hosts, two_hosts_with};
use alga_tests::fixture_bytes;
use alga_tests::server::{
    ADMIN_TOKEN, Deployed, SERVICE_TOKEN, Server, Signer, cgroup_dirs_of, deploy, descendants, envelope,
    hostapi_manifest, install_for, manifest,
};
use alga_tests::skip_unless;
use serde_json::{Value, json};

/// The envelope answer of `path` on `host`, with an optional idempotency key.
fn execute(host: &Server, tenant: &str, d: &Deployed, path: &str, key: Option<&str>) -> Value {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut env = envelope(tenant, &d.extension_id, &d.content_hash, path);
    env["http"]["query"] = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut headers = vec![("content-type", "application/json")];
    if let Some(k) = key {
        headers.push(("x-idempotency-key", k));
    }
    let body = serde_json::to_vec(&env).unwrap();
    host.request("POST", "/v1/execute", Some(SERVICE_TOKEN), &headers, Some(&body)).json()
}

fn next_seq(host: &Server, tenant: &str) -> u64 {
    host.admin_get(&format!("/v1/tenants/{tenant}/executions/chain")).json()["next_seq"].as_u64().unwrap()
}

#[test]
fn two_hosts_share_registry_storage_idempotency_and_one_chain() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (a, b) = two_hosts(&signer, &c);

    // Published and installed on A, executed on B; installed on B, executed on A.
    let kv = deploy(
        &a,
        &signer,
        &hostapi_manifest("com.example.shared", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    assert_eq!(b.report("t1", &kv, "/storage/put?key=k", Some(b"from b")), json!({ "ok": 1 }));
    // B had never seen the bundle: it fetched it from the bucket, verified it, and ran the
    // artifact A compiled at publish (its SHA-256 checked against the database) without
    // compiling anything.
    assert_eq!(metric(&b, "alga_runner_bundle_fetches_total{result=\"ok\"}"), 1.0);
    assert_eq!(metric(&b, "alga_runner_artifact_loads_total{source=\"shared\"}"), 1.0);
    assert_eq!(metric(&b, "alga_runner_artifact_loads_total{source=\"compiled\"}"), 0.0);
    assert_eq!(metric(&b, "alga_runner_bundle_verifications_total{stage=\"load\",result=\"ok\"}"), 1.0);
    assert!(b.blob_files().contains(&kv.content_hash.trim_start_matches("sha256:").to_string()), "cached on B");
    assert_eq!(a.report("t1", &kv, "/storage/get?key=k", None), json!({ "ok": "from b", "rev": 1 }));
    install_for(&b, &kv, "1.0.0", "t2", json!({ "granted_capabilities": ["storage.kv"] }));
    assert_eq!(a.report("t2", &kv, "/storage/get?key=k", None), json!({ "err": "missing" }), "t2's own store");

    // A compare-and-swap race between the hosts: one winner.
    let race = std::thread::scope(|s| {
        let x = s.spawn(|| a.report("t1", &kv, "/storage/put?key=k&rev=1", Some(b"a")));
        let y = s.spawn(|| b.report("t1", &kv, "/storage/put?key=k&rev=1", Some(b"b")));
        [x.join().unwrap(), y.join().unwrap()]
    });
    assert_eq!(race.iter().filter(|r| **r == json!({ "ok": 2 })).count(), 1, "{race:?}");
    assert_eq!(race.iter().filter(|r| **r == json!({ "err": "conflict" })).count(), 1, "{race:?}");

    // An idempotent retry on B while the first attempt still runs on A: B waits for it and
    // answers the same; it never executes twice.
    let sleeper_manifest = manifest("com.example.sleepy", "1.0.0", &[]);
    let sleepy = deploy(&a, &signer, &sleeper_manifest, &fixture_bytes("sleeper"), "t1", json!({}));
    let before = next_seq(&a, "t1");
    let (first, retry) = std::thread::scope(|s| {
        let first = s.spawn(|| execute(&a, "t1", &sleepy, "/?ms=1500", Some("retry-1")));
        std::thread::sleep(Duration::from_millis(400));
        let retry = s.spawn(|| execute(&b, "t1", &sleepy, "/?ms=1500", Some("retry-1")));
        (first.join().unwrap(), retry.join().unwrap())
    });
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(retry, first, "the retry on B got A's answer");
    assert_eq!(execute(&b, "t1", &sleepy, "/?ms=1500", Some("retry-1")), first, "a later retry: replayed");
    assert_eq!(next_seq(&a, "t1"), before + 1, "one execution for three requests");

    // Concurrent appends from both hosts build one chain.
    std::thread::scope(|s| {
        for i in 0..16 {
            let host = if i % 2 == 0 { &a } else { &b };
            let kv = &kv;
            s.spawn(move || host.report("t1", kv, "/context", None));
        }
    });
    let (code, out) = b.verify_chain("t1");
    assert_eq!(code, 0, "{out}");
    assert_eq!(next_seq(&a, "t1"), before + 17);

    // Yank on A: B refuses new installs of it at once. Uninstall on B: A no longer runs it.
    let yank = a.request("DELETE", "/v1/extensions/com.example.shared/versions/1.0.0", Some(ADMIN_TOKEN), &[], None);
    assert_eq!(yank.status, 200, "{}", String::from_utf8_lossy(&yank.body));
    let refused = b.install("t3", "com.example.shared", &json!({ "version": "1.0.0" }));
    assert_eq!(refused.status, 409, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.code(), "version_yanked");
    let gone = b.request("DELETE", "/v1/tenants/t2/installs/com.example.shared", Some(ADMIN_TOKEN), &[], None);
    assert_eq!(gone.status, 204);
    assert_eq!(execute(&a, "t2", &kv, "/context", None)["error"], "not_installed");
}

#[test]
fn kill_9_of_one_host_mid_burst_loses_nothing_acknowledged() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (mut a, b) = two_hosts(&signer, &c);
    let kv = deploy(
        &a,
        &signer,
        &hostapi_manifest("com.example.burst", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    std::thread::scope(|s| {
        for worker in 0..4 {
            let (acknowledged, kv, a, b) = (acknowledged.clone(), &kv, &a, &b);
            s.spawn(move || {
                for i in 0..100 {
                    let key = format!("w{worker}-{i}");
                    let host = if (worker + i) % 2 == 0 { a } else { b };
                    let mut env = envelope("t1", &kv.extension_id, &kv.content_hash, "/storage/put");
                    env["http"]["method"] = json!("POST");
                    env["http"]["query"] = json!({ "key": key });
                    env["http"]["body_b64"] = json!("dg==");
                    env["context"]["request_id"] = json!(key);
                    let body = serde_json::to_vec(&env).unwrap();
                    let answer = ureq::post(&format!("{}/v1/execute", host.url))
                        .set("authorization", &format!("Bearer {SERVICE_TOKEN}"))
                        .set("content-type", "application/json")
                        .timeout(Duration::from_secs(10))
                        .send_bytes(&body);
                    if let Ok(r) = answer
                        && let Ok(v) = r.into_json::<Value>()
                        && v["status"] == 200
                    {
                        acknowledged.lock().unwrap().insert(key);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        // SIGKILL host A while the burst runs.
        assert_eq!(
            std::process::Command::new("kill").args(["-9", &a.pid().to_string()]).status().unwrap().code(),
            Some(0)
        );
    });
    a.kill9();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 20, "only {} acknowledged", acknowledged.len());
    assert!(acknowledged.len() < 400, "host A was killed only after the burst");
    eprintln!("{} of 400 executions acknowledged around the kill", acknowledged.len());
    // B keeps serving; every acknowledged write and record is there.
    let page = b.admin_get("/v1/tenants/t1/executions?limit=500").json();
    let recorded: BTreeSet<String> =
        page["items"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect();
    for key in &acknowledged {
        assert!(recorded.contains(key), "{key} was acknowledged but has no execution record");
        assert_eq!(b.report("t1", &kv, &format!("/storage/get?key={key}"), None)["ok"], "v", "{key}");
    }
    let (code, out) = b.verify_chain("t1");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn concurrency_caps_and_rate_limits_hold_for_the_cluster_and_a_dead_hosts_leases_expire() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (mut a, b) = two_hosts_with(
        &signer,
        &c,
        &[
            ("EXTENSION_CONCURRENCY", "2"),
            ("TENANT_RATE_PER_S", "0.01"),
            ("TENANT_BURST", "8"),
            ("EXTENSION_RATE_PER_S", "0"),
        ],
    );
    let sleepy =
        deploy(&a, &signer, &manifest("com.example.capped", "1.0.0", &[]), &fixture_bytes("sleeper"), "t1", json!({}));

    // Six at once, three on each host, against a cap of two for the cluster.
    let answers: Vec<Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let (host, sleepy) = (if i % 2 == 0 { &a } else { &b }, &sleepy);
                s.spawn(move || execute(host, "t1", sleepy, "/?ms=3000", None))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let ran = answers.iter().filter(|a| a["status"] == 200).count();
    let capped = answers.iter().filter(|a| a["error"] == "quota_exceeded").count();
    assert_eq!((ran, capped), (2, 4), "{answers:?}");
    // Their leases are released as they end (asynchronously, just after their answers).
    alga_tests::server::wait_until("the cluster's places to be free", || {
        a.admin_get("/v1/tenants/t1/quotas").json()["in_flight"]["tenant_in_flight"] == 0
    });

    // The tenant's bucket (a burst of 8, refilling at 0.01/s) is one for both hosts: the two
    // admitted above took a token each (a refused call takes none), six are left, whichever
    // host asks.
    for i in 0..6 {
        let host = if i % 2 == 0 { &a } else { &b };
        assert_eq!(execute(host, "t1", &sleepy, "/?ms=1", None)["status"], 200, "token {}", i + 3);
    }
    let limited = execute(&b, "t1", &sleepy, "/?ms=1", None);
    assert_eq!(limited["error"], "rate_limited", "{limited}");
    assert!(limited["headers"]["retry-after"].as_str().is_some_and(|s| s.parse::<u64>().unwrap() > 1), "{limited}");

    // Host A dies holding both places of the cap (a new tenant, with its own bucket): host B
    // gets them back once A's leases expire, within the lease time.
    install_for(&a, &sleepy, "1.0.0", "t2", json!({}));
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (a, sleepy) = (&a, &sleepy);
            // Its answer never comes: A is killed while it runs.
            s.spawn(move || {
                let mut env = envelope("t2", &sleepy.extension_id, &sleepy.content_hash, "/");
                env["http"]["query"] = json!({ "ms": "4000" });
                let _ = ureq::post(&format!("{}/v1/execute", a.url))
                    .set("authorization", &format!("Bearer {SERVICE_TOKEN}"))
                    .send_json(env);
            });
        }
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(execute(&b, "t2", &sleepy, "/?ms=1", None)["error"], "quota_exceeded", "A holds both places");
        assert_eq!(
            std::process::Command::new("kill").args(["-9", &a.pid().to_string()]).status().unwrap().code(),
            Some(0)
        );
    });
    a.kill9();
    let died = std::time::Instant::now();
    alga_tests::server::wait_within("the dead host's leases to expire", Duration::from_secs(20), || {
        execute(&b, "t2", &sleepy, "/?ms=1", None)["status"] == 200
    });
    eprintln!("the dead host's places came back after {:?}", died.elapsed());
    // The lease time (15 s) and a moment for the request that sees it.
    assert!(died.elapsed() <= Duration::from_secs(17), "leases outlived the lease time: {:?}", died.elapsed());
}

#[test]
fn a_trust_reload_on_one_host_reaches_every_host_within_a_second() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let (first, second) = (Signer::new(), Signer::new());
    let (a, b) = two_hosts(&first, &c);
    let keys =
        |host: &Server| host.request("GET", "/readyz", None, &[], None).json()["checks"]["trust"]["keys"].clone();
    assert_eq!((keys(&a), keys(&b)), (json!(1), json!(1)));
    alga_tests::server::wait_until("host B to listen", || b.log_text().contains("listening for the other hosts"));
    // The operator's configuration management writes each host's file; only A is told to reload.
    for host in [&a, &b] {
        host.write_trust(&[first.public(), second.public()]);
    }
    let reload = a.request("POST", "/v1/admin/reload", Some(ADMIN_TOKEN), &[], None);
    assert_eq!(reload.status, 200, "{}", String::from_utf8_lossy(&reload.body));
    let asked = std::time::Instant::now();
    alga_tests::server::wait_within("host B to reload", Duration::from_secs(1), || keys(&b) == json!(2));
    eprintln!("host B reloaded {:?} after host A was asked", asked.elapsed());
    // B now accepts what only the new key signed.
    let bytes = alga_tests::server::pack(&manifest("com.example.newkey", "1.0.0", &[]), &fixture_bytes("echo"));
    let published = b.publish(&bytes, &second.sign(&bytes, "com.example.newkey", "1.0.0"));
    assert_eq!(published.status, 201, "{}", String::from_utf8_lossy(&published.body));
}

#[test]
fn two_hosts_on_one_machine_keep_to_their_own_sandboxes_and_cgroups() {
    let c = cluster();
    skip_unless!(c.is_ok(), c.as_ref().err().unwrap());
    let c = c.unwrap();
    let signer = Signer::new();
    let (a, mut b) = two_hosts(&signer, &c);
    let sleepy =
        deploy(&a, &signer, &manifest("com.example.apart", "1.0.0", &[]), &fixture_bytes("sleeper"), "t1", json!({}));
    let (a_dirs, b_dirs) = (cgroup_dirs_of(a.pid()), cgroup_dirs_of(b.pid()));
    skip_unless!(!a_dirs.is_empty() && !b_dirs.is_empty(), "the hosts run their sandboxes without cgroups here");
    assert!(a_dirs.iter().all(|d| !b_dirs.contains(d)), "{a_dirs:?} / {b_dirs:?}");

    // While each host runs a sandbox, each sandbox sits in its own host's cgroups only.
    std::thread::scope(|s| {
        let runs: Vec<_> = [&a, &b]
            .into_iter()
            .map(|host| {
                let sleepy = &sleepy;
                s.spawn(move || execute(host, "t1", sleepy, "/?ms=1500", None))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(600));
        for (host, other) in [(&a, &b), (&b, &a)] {
            let theirs = format!("alga-runner.{}-", other.pid());
            let tree = descendants(host.pid());
            assert!(tree.len() >= 2, "a fork server and a sandbox: {tree:?}");
            for pid in tree {
                let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                assert!(
                    !groups.contains(&theirs),
                    "pid {pid} of {} sits in the other host's cgroup: {groups}",
                    host.pid()
                );
                assert!(!descendants(other.pid()).contains(&pid), "pid {pid} belongs to both hosts");
            }
        }
        for r in runs {
            assert_eq!(r.join().unwrap()["status"], 200);
        }
    });

    // B dies and starts again: its start-up sweep removes its own leftovers and leaves the
    // live host A's cgroups alone; A keeps executing.
    let old_b = b.pid();
    b.restart();
    assert!(cgroup_dirs_of(old_b).is_empty(), "B's leftovers remain: {:?}", cgroup_dirs_of(old_b));
    assert!(a_dirs.iter().all(|d| d.exists()), "B's sweep removed a cgroup of the live host A");
    assert_eq!(execute(&a, "t1", &sleepy, "/?ms=1", None)["status"], 200);
    assert_eq!(execute(&b, "t1", &sleepy, "/?ms=1", None)["status"], 200);
}
