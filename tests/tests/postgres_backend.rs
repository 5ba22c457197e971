//! The PostgreSQL backend against a real server (a private cluster, `alga_tests::postgres`):
//! the registry, the guests' storage and the secrets behave as on sled, under concurrent writers
//! from several "hosts" (separate pools) too; migrations and the node-key check; and the real
//! binary serving from PostgreSQL, its state surviving a `kill -9`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alga_runner::db::postgres::{Pg, PgError, SCHEMA};
use alga_runner::hostapi::KvStore;
use alga_runner::hostapi::storage::postgres::PgKv;
use alga_runner::hostapi::storage::{PutResult, Scope};
use alga_runner::registry::chain::{self, Retention};
use alga_runner::registry::*;
use alga_runner::secrets::{NodeKey, PgSecrets, SecretMap, SecretStore};
use alga_tests::fixture_bytes;
use alga_tests::postgres::PgCluster;
use alga_tests::server::{ADMIN_TOKEN, Options, Server, Signer, deploy, hostapi_manifest};
use alga_tests::skip_unless;
use serde_json::json;

/// A migrated database of its own, or the reason there is none.
fn database() -> Result<(String, Pg, tokio::runtime::Runtime), String> {
    let cluster = PgCluster::get()?;
    let url = cluster.database();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pg = pool(&url);
    // A migration that fails is a failure, not a reason to skip.
    rt.block_on(pg.migrate()).unwrap();
    Ok((url, pg, rt))
}

fn pool(url: &str) -> Pg {
    Pg::connect(url, 8, Duration::from_secs(5), None).unwrap()
}

fn ext(name: &str, publisher: &str) -> ExtensionRecord {
    ExtensionRecord { id: new_id(), name: name.into(), publisher: publisher.into(), created_at: now_ms() }
}

fn version(v: &str, hash: &str) -> VersionRecord {
    VersionRecord {
        extension_id: String::new(),
        version: v.into(),
        version_id: new_id(),
        runtime: "wasm32-wasi@1".into(),
        capabilities: vec![],
        endpoints: vec![],
        events: vec![],
        egress: None,
        ui: None,
        entry: "dist/main.wasm".into(),
        content_hash: hash.into(),
        state: VersionState::Active,
        created_at: now_ms(),
    }
}

fn bundle(hash: &str) -> BundleRecord {
    BundleRecord {
        content_hash: hash.into(),
        extension_id: String::new(),
        version_id: String::new(),
        size: 1,
        signature: String::new(),
        signer_key_id: "K".into(),
        trusted_comment: String::new(),
        verified_at: 0,
        component_sha256: None,
        artifacts: Default::default(),
        ui_etags: Default::default(),
    }
}

fn execution(tenant: &str, i: u64) -> ExecutionRecord {
    ExecutionRecord {
        execution_id: new_id(),
        request_id: format!("r{i}"),
        tenant: tenant.into(),
        extension_id: "e".into(),
        install_id: "i".into(),
        version_id: "v".into(),
        content_hash: "h".into(),
        method: "GET".into(),
        path: "/".into(),
        endpoint: None,
        trigger: "envelope".into(),
        status: 200,
        outcome: if i.is_multiple_of(2) { "completed".into() } else { "timeout".into() },
        error: None,
        detail: None,
        duration_ms: 1.0 / 3.0,
        memory_peak_bytes: 0,
        fuel: 0,
        egress_bytes: 0,
        host_calls: 0,
        logs: vec![format!("line {i}")],
        created_at: now_ms(),
        seq: 0,
        prev_hash: String::new(),
    }
}

const KEEP_ALL: Retention = Retention { max_records: 1_000_000, max_age_ms: u64::MAX };

async fn verify(r: &dyn RegistryStore, tenant: &str) -> chain::ChainReport {
    chain::verify(tenant, &r.chain_head(tenant).await.unwrap(), r.executions_oldest_first(tenant).await.unwrap())
}

#[test]
fn the_registry_on_postgres_keeps_the_rules_of_the_embedded_one() {
    let db = database();
    skip_unless!(db.is_ok(), format!("no PostgreSQL: {}", db.as_ref().err().unwrap()));
    let (_, pg, rt) = db.unwrap();
    let r = PgRegistry::new(pg);
    rt.block_on(async {
        let first = r.publish(ext("com.example.a", "P"), version("1.0.0", "h1"), bundle("h1")).await.unwrap();
        let PublishOutcome::Created { extension, .. } = first else { panic!("{first:?}") };
        assert!(matches!(
            r.publish(ext("com.example.a", "P"), version("1.0.0", "h1"), bundle("h1")).await.unwrap(),
            PublishOutcome::AlreadyPublished { .. }
        ));
        assert!(matches!(
            r.publish(ext("com.example.a", "P"), version("1.0.0", "h2"), bundle("h2")).await.unwrap(),
            PublishOutcome::VersionConflict { .. }
        ));
        assert!(matches!(
            r.publish(ext("com.example.a", "Q"), version("2.0.0", "h3"), bundle("h3")).await.unwrap(),
            PublishOutcome::NameTaken { .. }
        ));
        r.publish(ext("com.example.a", "P"), version("1.10.0", "h4"), bundle("h4")).await.unwrap();
        r.publish(ext("com.example.a", "P"), version("1.2.0", "h5"), bundle("h5")).await.unwrap();
        let versions: Vec<String> = r.versions(&extension.id).await.unwrap().into_iter().map(|v| v.version).collect();
        assert_eq!(versions, ["1.10.0", "1.2.0", "1.0.0"], "newest semver first");
        assert_eq!(r.extension("com.example.a").await.unwrap().unwrap().id, extension.id, "by name");
        assert_eq!(r.extension(&extension.id).await.unwrap().unwrap().name, "com.example.a", "by id");
        assert!(r.bundle("h2").await.unwrap().is_none(), "a conflicting bundle is not stored");
        assert_eq!(r.bundle("h4").await.unwrap().unwrap().extension_id, extension.id);
        r.publish(ext("com.example.B", "P"), version("1.0.0", "hb"), bundle("hb")).await.unwrap();
        r.publish(ext("com.example.b", "P"), version("1.0.0", "hc"), bundle("hc")).await.unwrap();
        let names: Vec<String> = r.extensions(None, 10).await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["com.example.B", "com.example.a", "com.example.b"], "byte order, as on sled");
        let after: Vec<String> =
            r.extensions(Some("com.example.B"), 1).await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(after, ["com.example.a"]);

        // Yank: the state is the record's and the column's.
        let mut v = r.version(&extension.id, "1.2.0").await.unwrap().unwrap();
        v.state = VersionState::Yanked;
        r.put_version(&v).await.unwrap();
        assert_eq!(r.version_by_id(&extension.id, &v.version_id).await.unwrap().unwrap().state, VersionState::Yanked);

        // Installs, their subscriptions (replaced whole) and the content-hash index.
        let install = |tenant: &str, hash: &str| InstallRecord {
            tenant: tenant.into(),
            extension_id: extension.id.clone(),
            install_id: new_id(),
            version_id: "v".into(),
            version: "1.0.0".into(),
            content_hash: hash.into(),
            granted_capabilities: vec!["storage.kv".into()],
            config: BTreeMap::from([("k".into(), "v".into())]),
            egress_allowlist: Some(vec!["api.example.com".into()]),
            limits: Default::default(),
            enabled: true,
            created_at: 1,
            updated_at: 2,
        };
        let sub = |i: &InstallRecord, topic: &str| SubscriptionRecord {
            tenant: i.tenant.clone(),
            topic: topic.into(),
            install_id: i.install_id.clone(),
            extension_id: i.extension_id.clone(),
            handler: "on".into(),
        };
        let a = install("t1", "h1");
        r.put_install(&a, &[sub(&a, "ticket.created"), sub(&a, "ticket.closed")]).await.unwrap();
        assert_eq!(r.install("t1", &extension.id).await.unwrap().unwrap(), a, "the record round-trips");
        assert_eq!(r.subscriptions("t1", "ticket.created").await.unwrap(), [sub(&a, "ticket.created")]);
        r.put_install(&a, &[sub(&a, "ticket.closed")]).await.unwrap();
        assert!(r.subscriptions("t1", "ticket.created").await.unwrap().is_empty(), "replaced, not added");
        let b = install("t2", "h1");
        r.put_install(&b, &[]).await.unwrap();
        assert!(r.installed_anywhere("h1").await.unwrap());
        r.put_install(&install("t1", "h4"), &[]).await.unwrap();
        assert!(r.installed_anywhere("h1").await.unwrap(), "t2 is still on h1");
        assert_eq!(r.delete_install("t2", &extension.id).await.unwrap().unwrap().install_id, b.install_id);
        assert!(r.delete_install("t2", &extension.id).await.unwrap().is_none());
        assert!(!r.installed_anywhere("h1").await.unwrap(), "the upgrade and the uninstall removed h1");
        assert_eq!(r.installs("t1").await.unwrap().len(), 1);

        // Usage windows add up.
        let one = UsageRecord { invocations: 1, cpu_ms: 2, memory_mib_ms: 3, fuel: 4, egress_bytes: 5 };
        for _ in 0..3 {
            r.add_usage("t1", "e", 60, &one).await.unwrap();
        }
        r.add_usage("t1", "e", 0, &one).await.unwrap();
        let usage = r.usage("t1", 60).await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].2, UsageRecord { invocations: 3, cpu_ms: 6, memory_mib_ms: 9, fuel: 12, egress_bytes: 15 });
        r.flush().await.unwrap();
        r.recover().await.unwrap();
    });
}

#[test]
fn the_execution_log_is_one_chain_per_tenant_with_many_appenders() {
    let db = database();
    skip_unless!(db.is_ok(), format!("no PostgreSQL: {}", db.as_ref().err().unwrap()));
    let (url, pg, rt) = db.unwrap();
    // Three "hosts": three pools on one database, appending to one tenant's chain at once.
    let hosts: Vec<Arc<PgRegistry>> =
        std::iter::once(pg).chain((0..2).map(|_| pool(&url))).map(|p| Arc::new(PgRegistry::new(p))).collect();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            for i in 0..20u64 {
                let host = host.clone();
                tasks.push(tokio::spawn(async move {
                    host.record_execution(execution("t1", h as u64 * 100 + i), &KEEP_ALL).await.unwrap()
                }));
            }
        }
        let mut seqs: Vec<u64> = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().seq);
        }
        seqs.sort();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "every append got its own place in one chain");
        let report = verify(&*hosts[1], "t1").await;
        assert!(report.intact() && report.records == 60, "{report:?}");

        // Pages, newest first, filtered, with the cursor the API hands out.
        let q = ExecutionQuery { limit: 25, ..Default::default() };
        let (page, cursor) = hosts[0].executions("t1", &q).await.unwrap();
        assert_eq!(page.first().unwrap().seq, 60);
        let (rest, _) = hosts[0].executions("t1", &ExecutionQuery { after: cursor, ..q.clone() }).await.unwrap();
        assert_eq!(rest.first().unwrap().seq, 35);
        let q = ExecutionQuery { outcome: Some("timeout".into()), limit: 100, ..Default::default() };
        assert!(hosts[2].executions("t1", &q).await.unwrap().0.iter().all(|r| r.outcome == "timeout"));

        // Retention keeps the newest; the anchor keeps the chain verifiable; another tenant's
        // chain is its own.
        hosts[0].record_execution(execution("t2", 0), &KEEP_ALL).await.unwrap();
        let ten = Retention { max_records: 10, max_age_ms: u64::MAX };
        assert_eq!(hosts[0].prune_executions(&ten).await.unwrap(), 50);
        let report = verify(&*hosts[2], "t1").await;
        assert!(report.intact() && report.records == 10 && report.first_seq == 51, "{report:?}");
        assert!(verify(&*hosts[0], "t2").await.intact());
        assert_eq!(hosts[0].chain_tenants().await.unwrap(), ["t1", "t2"]);

        // An append prunes too: past the count, and past the age (the oldest record's time is
        // all it reads when the count is within bounds).
        for i in 0..12 {
            hosts[i % 3].record_execution(execution("t3", 0), &ten).await.unwrap();
        }
        let report = verify(&*hosts[0], "t3").await;
        assert!(report.intact() && report.records == 10 && report.first_seq == 3, "{report:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let young = Retention { max_records: 1_000, max_age_ms: 1 };
        hosts[2].record_execution(execution("t3", 0), &young).await.unwrap();
        let report = verify(&*hosts[0], "t3").await;
        assert!(report.intact() && report.records < 10, "records older than the age went: {report:?}");
    });
    // Edit a stored record (its status), as someone covering tracks would: verification names
    // the break.
    let cluster = PgCluster::get().unwrap();
    let database = url.rsplit('/').next().unwrap();
    cluster
        .psql(
            database,
            r#"UPDATE extension_execution_log
               SET record = substring(record from 1 for 1)
                   || convert_to(replace(convert_from(substring(record from 2), 'UTF8'), '"status":200', '"status":503'), 'UTF8')
               WHERE tenant = 't1' AND seq = 55"#,
        )
        .unwrap();
    let report = rt.block_on(verify(&*hosts[0], "t1"));
    assert!(!report.intact() && report.problems.iter().any(|p| p.contains("#56")), "{report:?}");
}

#[test]
fn guest_storage_on_postgres_keeps_revisions_quotas_and_order_across_hosts() {
    let db = database();
    skip_unless!(db.is_ok(), format!("no PostgreSQL: {}", db.as_ref().err().unwrap()));
    let (url, pg, rt) = db.unwrap();
    let a = Arc::new(PgKv::new(pg));
    let b = Arc::new(PgKv::new(pool(&url)));
    let s = Scope { tenant: "t".into(), install: "i".into() };
    rt.block_on(async {
        assert_eq!(a.put(&s, "ns", "k", b"1".to_vec(), None).await.unwrap(), PutResult::Written { revision: 1 });
        assert_eq!(b.get(&s, "ns", "k").await.unwrap().unwrap().value, b"1", "the other host reads it");
        // A compare-and-swap race between two hosts: exactly one wins.
        let (x, y) = tokio::join!(
            a.put(&s, "ns", "k", b"from a".to_vec(), Some(1)),
            b.put(&s, "ns", "k", b"from b".to_vec(), Some(1))
        );
        let results = [x.unwrap(), y.unwrap()];
        assert_eq!(
            results.iter().filter(|r| matches!(r, PutResult::Written { revision: 2 })).count(),
            1,
            "{results:?}"
        );
        assert_eq!(results.iter().filter(|r| **r == PutResult::Conflict).count(), 1, "{results:?}");
        assert_eq!(a.put(&s, "ns", "missing", b"x".to_vec(), Some(1)).await.unwrap(), PutResult::Conflict);
        // Key order is byte order; the cursor is exclusive.
        for k in ["b", "B", "a", "c"] {
            a.put(&s, "list", k, b"v".to_vec(), None).await.unwrap();
        }
        let keys = |v: Vec<(String, _)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(b.list(&s, "list", None, 10).await.unwrap()), ["B", "a", "b", "c"]);
        assert_eq!(keys(b.list(&s, "list", Some("a"), 2).await.unwrap()), ["b", "c"]);
        // The namespace quota holds under writers on both hosts at once.
        let mut tasks = Vec::new();
        for n in 0..40 {
            let kv = if n % 2 == 0 { a.clone() } else { b.clone() };
            let s = s.clone();
            tasks.push(tokio::spawn(async move { kv.put(&s, &format!("ns{n}"), "k", b"v".to_vec(), None).await }));
        }
        let mut written = 0;
        for t in tasks {
            if matches!(t.await.unwrap().unwrap(), PutResult::Written { .. }) {
                written += 1;
            }
        }
        // Two namespaces ("ns", "list") existed: 30 more fit under the 32-namespace quota.
        assert_eq!(written, 30, "namespace quota");
        assert!(a.delete(&s, "ns", "k").await.unwrap());
        assert!(!b.delete(&s, "ns", "k").await.unwrap(), "already gone");
        let other = Scope { tenant: "t".into(), install: "j".into() };
        a.put(&other, "ns", "k", b"v".to_vec(), None).await.unwrap();
        assert!(a.purge(&s).await.unwrap() > 30);
        assert!(b.get(&s, "list", "a").await.unwrap().is_none());
        assert!(b.get(&other, "ns", "k").await.unwrap().is_some(), "another install keeps its data");
        // After the purge the install starts from an empty quota.
        assert_eq!(a.put(&s, "fresh", "k", b"v".to_vec(), None).await.unwrap(), PutResult::Written { revision: 1 });
    });
}

#[test]
fn secrets_on_postgres_are_sealed_and_migrations_refuse_a_newer_schema() {
    let db = database();
    skip_unless!(db.is_ok(), format!("no PostgreSQL: {}", db.as_ref().err().unwrap()));
    let (url, pg, rt) = db.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets = SecretStore::new(
        Arc::new(PgSecrets::new(pg.clone())),
        NodeKey::load_or_create(&dir.path().join("node.key")).unwrap(),
    );
    let map = SecretMap(BTreeMap::from([("api_key".to_string(), "PLAINTEXT-VALUE".to_string())]));
    rt.block_on(async {
        secrets.put("t1", "i1", &map).await.unwrap();
        assert_eq!(secrets.get("t1", "i1").await.unwrap(), map);
        assert_eq!(secrets.get("t2", "i1").await.unwrap(), SecretMap::default());
        // Migrating again does nothing; one schema step ahead is accepted (a rolling upgrade),
        // two are refused with both versions named.
        let again = pg.migrate().await.unwrap();
        assert_eq!((again.from, again.to), (SCHEMA, SCHEMA));
    });
    let cluster = PgCluster::get().unwrap();
    let database = url.rsplit('/').next().unwrap();
    let raw = cluster.psql(database, "SELECT encode(sealed, 'escape') FROM install_secrets").unwrap();
    assert!(!raw.is_empty() && !raw.contains("PLAINTEXT-VALUE"), "sealed at rest");
    cluster
        .psql(database, &format!("INSERT INTO schema_migrations (version, name) VALUES ({}, 'next')", SCHEMA + 1))
        .unwrap();
    assert!(rt.block_on(pool(&url).migrate()).is_ok(), "one step newer");
    cluster
        .psql(database, &format!("INSERT INTO schema_migrations (version, name) VALUES ({}, 'after')", SCHEMA + 2))
        .unwrap();
    let refused = rt.block_on(pool(&url).migrate()).unwrap_err();
    assert!(matches!(refused, PgError::Newer { .. }), "{refused}");
    assert!(refused.to_string().contains(&format!("schema {}", SCHEMA + 2)), "{refused}");
    assert!(refused.to_string().contains(&format!("schema {SCHEMA}")), "{refused}");
}

/// `serve` with `[storage] backend = "postgres"` (environment).
fn pg_options(signer: &Signer, url: &str) -> Options {
    Options {
        trust_lines: vec![signer.public()],
        env: vec![
            ("ALGA_RUNNER_STORAGE__BACKEND".into(), "postgres".into()),
            ("ALGA_RUNNER_STORAGE__URL".into(), url.into()),
        ],
    }
}

#[test]
fn the_service_runs_on_postgres_and_keeps_what_it_acknowledged_across_kill_9() {
    let cluster = PgCluster::get();
    skip_unless!(cluster.is_ok(), format!("no PostgreSQL: {}", cluster.as_ref().err().unwrap()));
    let url = cluster.unwrap().database();
    let signer = Signer::new();
    let mut server = Server::start_with(pg_options(&signer, &url));
    assert!(server.log_text().contains("storage on PostgreSQL"), "{}", server.log_text());
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.pgkv", &["cap:storage.kv", "cap:secrets.get"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv", "secrets.get"] }),
    );
    let r = |server: &Server, path: &str, body: Option<&[u8]>| server.report("t1", &d, path, body);
    assert_eq!(r(&server, "/storage/put?key=a", Some(b"one")), json!({ "ok": 1 }));
    assert_eq!(r(&server, "/storage/put?key=a&rev=1", Some(b"two")), json!({ "ok": 2 }));
    let put = server.request(
        "PUT",
        "/v1/tenants/t1/installs/com.example.pgkv/secrets",
        Some(ADMIN_TOKEN),
        &[("content-type", "application/json")],
        Some(br#"{"api_key":"s3cret"}"#),
    );
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(r(&server, "/secrets/get?key=api_key", None), json!({ "ok": "s3cret" }));

    // Everything acknowledged is in the database: after kill -9 the restarted service has it.
    server.kill9();
    server.restart();
    assert_eq!(r(&server, "/storage/get?key=a", None), json!({ "ok": "two", "rev": 2 }));
    assert_eq!(r(&server, "/secrets/get?key=api_key", None), json!({ "ok": "s3cret" }));
    let page = server.admin_get("/v1/tenants/t1/executions?limit=100").json();
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
    let chain = server.admin_get("/v1/tenants/t1/executions/chain").json();
    assert_eq!(chain["next_seq"], 6, "{chain}");

    // Another host with a different node key is refused (exit 78), naming both fingerprints.
    let other = std::process::Command::new(alga_tests::runner_bin())
        .args(["serve"])
        .env_clear()
        .env("ALGA_RUNNER_LISTEN", "127.0.0.1:0")
        .env("ALGA_RUNNER_STATE_DIR", tempfile::tempdir().unwrap().path().join("state"))
        .env("ALGA_RUNNER_SERVICE_TOKEN", "s")
        .env("ALGA_RUNNER_ADMIN_TOKEN", "a")
        .env("ALGA_RUNNER_STORAGE__BACKEND", "postgres")
        .env("ALGA_RUNNER_STORAGE__URL", &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("node key") && stderr.contains("fingerprint"), "{stderr}");
}

#[test]
fn with_the_database_unreachable_nothing_unrecorded_is_acknowledged_and_it_recovers_by_itself() {
    let cluster = PgCluster::get();
    skip_unless!(cluster.is_ok(), format!("no PostgreSQL: {}", cluster.as_ref().err().unwrap()));
    let cluster = cluster.unwrap();
    let url = cluster.database();
    let database = url.rsplit('/').next().unwrap().to_string();
    let signer = Signer::new();
    let server = Server::start_with(pg_options(&signer, &url));
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.outage", &["cap:storage.kv"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv"] }),
    );
    assert_eq!(server.report("t1", &d, "/storage/put?key=a", Some(b"1")), json!({ "ok": 1 }));

    // The database refuses this service's connections (as if it were down).
    cluster.psql("postgres", &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false")).unwrap();
    cluster
        .psql(
            "postgres",
            &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"),
        )
        .unwrap();
    let answer = server.call("t1", &d, "GET", "/storage/get?key=a", None);
    assert_eq!(answer.status, 503, "{}\n{}", String::from_utf8_lossy(&answer.body), server.log_text());
    assert!(
        String::from_utf8_lossy(&answer.body).contains("storage_unavailable"),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(server.request("GET", "/readyz", None, &[], None).status, 503, "not ready while it cannot write");

    // Back: the same service serves again, without a restart.
    cluster.psql("postgres", &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true")).unwrap();
    alga_tests::server::wait_until("ready again", || server.request("GET", "/readyz", None, &[], None).status == 200);
    assert_eq!(server.report("t1", &d, "/storage/get?key=a", None), json!({ "ok": "1", "rev": 1 }));
}

#[test]
fn migrate_copies_a_sled_host_into_postgres_and_a_bucket_and_the_copy_verifies() {
    let cluster = alga_tests::cluster::cluster();
    skip_unless!(cluster.is_ok(), cluster.as_ref().err().unwrap());
    let cluster = cluster.unwrap();
    let url = cluster.url.clone();
    let signer = Signer::new();
    // A single host on sled, with a little of everything.
    let mut sled_host = Server::start(&signer);
    let d = deploy(
        &sled_host,
        &signer,
        &hostapi_manifest("com.example.moving", &["cap:storage.kv", "cap:secrets.get"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["storage.kv", "secrets.get"] }),
    );
    alga_tests::server::install_for(&sled_host, &d, "1.0.0", "t2", json!({ "granted_capabilities": ["storage.kv"] }));
    let r = |server: &Server, tenant: &str, path: &str, body: Option<&[u8]>| server.report(tenant, &d, path, body);
    r(&sled_host, "t1", "/storage/put?key=a", Some(b"one"));
    r(&sled_host, "t1", "/storage/put?key=a", Some(b"two"));
    r(&sled_host, "t2", "/storage/put?key=b", Some(b"bee"));
    let put = sled_host.request(
        "PUT",
        "/v1/tenants/t1/installs/com.example.moving/secrets",
        Some(ADMIN_TOKEN),
        &[("content-type", "application/json")],
        Some(br#"{"api_key":"s3cret"}"#),
    );
    assert_eq!(put.status, 200);
    let head = sled_host.admin_get("/v1/tenants/t1/executions/chain").json();
    sled_host.stop();

    let migrate = |from: &str| {
        std::process::Command::new(alga_tests::runner_bin())
            .args(["migrate", "--to", &url, "--from", from, "--blobs", &format!("s3://{}/moved", cluster.bucket)])
            .envs(cluster.env().into_iter().filter(|(k, _)| !k.starts_with("ALGA_RUNNER_STORAGE")))
            .env_remove("ALGA_RUNNER_CONFIG")
            .output()
            .unwrap()
    };
    let from = format!("sled:{}", sled_host.state_dir().display());
    let out = migrate(&from);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("copied and verified"), "{text}");
    assert_eq!(cluster.garage.bundles_in(&cluster.bucket, "moved"), vec![d.content_hash.clone()], "{text}");
    let again = migrate(&from);
    assert_eq!(again.status.code(), Some(1), "a second copy into the same database is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds data"));

    // The same state directory (bundles, node key) now on PostgreSQL: everything is there.
    let mut options = pg_options(&signer, &url);
    options.env.push(("ALGA_RUNNER_STATE_DIR".into(), sled_host.state_dir().display().to_string()));
    let pg_host = Server::start_with(options);
    assert_eq!(r(&pg_host, "t1", "/storage/get?key=a", None), json!({ "ok": "two", "rev": 2 }));
    assert_eq!(r(&pg_host, "t2", "/storage/get?key=b", None), json!({ "ok": "bee", "rev": 1 }));
    assert_eq!(r(&pg_host, "t1", "/secrets/get?key=api_key", None), json!({ "ok": "s3cret" }));
    let moved = pg_host.admin_get("/v1/tenants/t1/executions/chain").json();
    assert_eq!(
        moved["next_seq"].as_u64().unwrap(),
        head["next_seq"].as_u64().unwrap() + 2,
        "two more appended on PostgreSQL"
    );
    let (code, out) = pg_host.verify_chain("t1");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    // A new host with nothing of the old one but its node key (as a credential), on the
    // database and the bucket: it fetches the bundle and the compiled artifact and runs.
    let credentials = tempfile::tempdir().unwrap();
    std::fs::copy(sled_host.state_dir().join("node.key"), credentials.path().join("node-key")).unwrap();
    let mut env = cluster.env();
    env.push(("ALGA_RUNNER_BLOBS__PREFIX".into(), "moved".into()));
    env.push(("CREDENTIALS_DIRECTORY".into(), credentials.path().display().to_string()));
    let fresh = Server::start_with(alga_tests::server::Options { trust_lines: vec![signer.public()], env });
    assert_eq!(r(&fresh, "t1", "/secrets/get?key=api_key", None), json!({ "ok": "s3cret" }));
    assert!(fresh.log_text().contains("using the compiled artifact another host stored"), "{}", fresh.log_text());
}

#[test]
fn tls_to_postgres_is_verified_against_the_ca_file_and_the_host_name() {
    skip_unless!(alga_tests::tls::available(), "no openssl to make the test CA");
    // A test CA, and a server certificate it signed for `localhost` only.
    let certs = tempfile::Builder::new().prefix("alga-runner-tls-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(certs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = certs.path();
    alga_tests::tls::test_ca(dir, "localhost", "DNS:localhost");
    let plain = PgCluster::get();
    skip_unless!(plain.is_ok(), format!("no PostgreSQL: {}", plain.as_ref().err().unwrap()));
    plain.unwrap().give(&dir.join("server.key"));
    let cluster = PgCluster::start(&[
        "ssl=on".into(),
        format!("ssl_cert_file={}", dir.join("server.pem").display()),
        format!("ssl_key_file={}", dir.join("server.key").display()),
    ])
    .unwrap();
    let database = cluster.database();
    let database = database.rsplit('/').next().unwrap();
    let ca = dir.join("ca.pem");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = |host: &str, mode: &str| format!("postgres://postgres@{host}:{}/{database}?sslmode={mode}", cluster.port);
    let try_connect = |url: String, ca: Option<&std::path::Path>| -> Result<bool, String> {
        let pg = Pg::connect(&url, 2, Duration::from_secs(5), ca).map_err(|e| e.to_string())?;
        rt.block_on(async {
            pg.migrate().await.map_err(|e| alga_runner::error_chain(&e))?;
            let c = pg.client().await.map_err(|e| e.to_string())?;
            let row = c
                .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get::<_, bool>(0))
        })
    };
    assert_eq!(try_connect(url("localhost", "verify-full"), Some(&ca)), Ok(true), "TLS, verified");
    assert_eq!(try_connect(url("localhost", "require"), Some(&ca)), Ok(true));
    let unknown = try_connect(url("localhost", "require"), None).unwrap_err();
    assert!(unknown.to_lowercase().contains("certificate"), "a CA it does not know is refused: {unknown}");
    let wrong_name = try_connect(url("127.0.0.1", "verify-full"), Some(&ca)).unwrap_err();
    assert!(
        wrong_name.to_lowercase().contains("certificate"),
        "a certificate for another name is refused: {wrong_name}"
    );
    assert_eq!(try_connect(url("localhost", "disable"), Some(&ca)), Ok(false), "sslmode=disable stays plain");
}

#[test]
fn the_node_key_rotates_without_losing_a_secret() {
    let cluster = PgCluster::get();
    skip_unless!(cluster.is_ok(), format!("no PostgreSQL: {}", cluster.as_ref().err().unwrap()));
    let url = cluster.unwrap().database();
    let signer = Signer::new();
    let mut server = Server::start_with(pg_options(&signer, &url));
    let d = deploy(
        &server,
        &signer,
        &hostapi_manifest("com.example.rotate", &["cap:secrets.get"]),
        &fixture_bytes("hostapi"),
        "t1",
        json!({ "granted_capabilities": ["secrets.get"] }),
    );
    let put = server.request(
        "PUT",
        "/v1/tenants/t1/installs/com.example.rotate/secrets",
        Some(ADMIN_TOKEN),
        &[("content-type", "application/json")],
        Some(br#"{"api_key":"s3cret"}"#),
    );
    assert_eq!(put.status, 200);
    server.stop();

    // The new key becomes the node key, the old one its previous: both open secrets.
    let state = server.state_dir();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(alga_tests::runner_bin())
            .args(args)
            .env("ALGA_RUNNER_STORAGE__BACKEND", "postgres")
            .env("ALGA_RUNNER_STORAGE__URL", &url)
            .env("ALGA_RUNNER_STATE_DIR", &state)
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, out) = cli(&["keygen-node", "-o", state.join("new.key").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["rotate-node-key"]);
    assert_eq!(code, Some(78), "without a previous key there is nothing to rotate: {out}");
    assert!(out.contains("node.key.previous"), "{out}");
    std::fs::rename(state.join("node.key"), state.join("node.key.previous")).unwrap();
    std::fs::rename(state.join("new.key"), state.join("node.key")).unwrap();
    server.restart();
    assert!(server.log_text().contains("rotation in progress"), "{}", server.log_text());
    assert_eq!(server.report("t1", &d, "/secrets/get?key=api_key", None), json!({ "ok": "s3cret" }));

    let (code, out) = cli(&["rotate-node-key"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("sealed 1 install secret map"), "{out}");
    // The previous key goes: what it sealed was sealed again with the new one.
    server.stop();
    std::fs::remove_file(state.join("node.key.previous")).unwrap();
    server.restart();
    assert!(!server.log_text().contains("rotation in progress"), "{}", server.log_text());
    assert_eq!(server.report("t1", &d, "/secrets/get?key=api_key", None), json!({ "ok": "s3cret" }));
}

#[test]
fn the_sweep_removes_refilled_buckets_and_leases_of_dead_hosts() {
    use alga_runner::config::QuotasConfig;
    use alga_runner::service::quotas_shared::SharedAdmission;
    let db = database();
    skip_unless!(db.is_ok(), format!("no PostgreSQL: {}", db.as_ref().err().unwrap()));
    let (url, pg, rt) = db.unwrap();
    let config =
        QuotasConfig { tenant_rate_per_s: 1000.0, tenant_burst: 2.0, extension_rate_per_s: 0.0, ..Default::default() };
    let admission = SharedAdmission::new(pg);
    let count = |table: &str| {
        PgCluster::get()
            .unwrap()
            .psql(url.rsplit('/').next().unwrap(), &format!("SELECT count(*) FROM {table}"))
            .unwrap()
    };
    rt.block_on(async {
        let lease = admission.admit(&config, "t1", "e1").await.unwrap();
        assert_eq!(count("quota_bucket"), "1");
        assert_eq!(count("quota_lease"), "1");
        // A running execution's lease stays; its refilled bucket goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        admission.sweep(&config).await.unwrap();
        assert_eq!((count("quota_bucket"), count("quota_lease")), ("0".into(), "1".into()));
        std::mem::forget(lease);
    });
    // A lease whose host stopped renewing it (here: expired by hand) goes too.
    let database = url.rsplit('/').next().unwrap();
    PgCluster::get()
        .unwrap()
        .psql(database, "UPDATE quota_lease SET expires_at = now() - interval '1 second'")
        .unwrap();
    rt.block_on(admission.sweep(&config)).unwrap();
    assert_eq!(count("quota_lease"), "0");
}
