//! `alga-runner migrate`: brings a PostgreSQL database to this build's schema, and copies a
//! stopped single host's state into it (`--from sled:DIR`): the registry, installs and their
//! subscriptions, usage windows, every tenant's execution log with its hash chain (the records'
//! stored bytes, so the chain still verifies), guest storage (revisions kept) and the sealed
//! secrets (the node key stays the same file). The copy is then checked, table by table and
//! chain by chain. With `--blobs s3://BUCKET[/PREFIX]` the bundles, their signatures and the
//! compiled artifacts go into that bucket too, each checked against its hash first, and the
//! check includes every bundle being there. It is not one transaction: a copy that fails half way says so, and the
//! database must be emptied (dropped and created again) before the next attempt.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::redacted_url;
use crate::db::postgres::Pg;
use crate::exec::artifacts::sha256_hex;
use crate::hostapi::storage::postgres::PgKv;
use crate::hostapi::storage::sled::SledKv;
use crate::registry::{BundleRecord, PgRegistry, RegistryStore, SharedBlobs, SledRegistry, VersionState, chain};
use crate::secrets::{NodeKey, PgSecrets, SealedStore, SledSecrets};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The PostgreSQL database, `postgres://user:password@host:port/database` [default:
    /// $ALGA_RUNNER_STORAGE__URL, which keeps a password out of the process list].
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// A stopped host's state to copy: `sled:DIR`, DIR being its state directory (the one holding
    /// `db/` and `node.key`). Without it, only the schema is brought up to date.
    #[arg(long, value_name = "sled:DIR")]
    pub from: Option<String>,
    /// CA certificates (PEM) the database server's certificate must chain to (as `storage.ca_file`).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Also copy the bundles, their signatures and compiled artifacts into this bucket; the
    /// endpoint, region, credentials and CA come from `[blobs]` of --config and the environment
    /// (`ALGA_RUNNER_BLOBS__ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]", requires = "from")]
    pub blobs: Option<String>,
    /// The service's configuration file, for its `[blobs]` section [default: $ALGA_RUNNER_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<u8> {
    let from = match args.from.as_deref().map(|f| f.strip_prefix("sled:")) {
        None => None,
        Some(Some(dir)) if !dir.is_empty() => Some(PathBuf::from(dir)),
        Some(_) => {
            eprintln!(
                "error: --from takes sled:DIR, the state directory of a stopped host (e.g. sled:/var/lib/alga-runner)"
            );
            return Ok(EXIT_USAGE);
        }
    };
    let Some(to) = args.to.or_else(|| std::env::var("ALGA_RUNNER_STORAGE__URL").ok()) else {
        eprintln!("error: --to URL (or ALGA_RUNNER_STORAGE__URL) names the PostgreSQL database");
        return Ok(EXIT_USAGE);
    };
    let pg = match Pg::connect(&to, 4, Duration::from_secs(600), args.ca_file.as_deref()) {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("error: --to: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let at = redacted_url(&to);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let blobs = match &args.blobs {
        None => None,
        Some(target) => {
            let Some((bucket, prefix)) = target
                .strip_prefix("s3://")
                .map(|r| r.split_once('/').unwrap_or((r, "")))
                .filter(|(b, _)| !b.is_empty())
            else {
                eprintln!("error: --blobs takes s3://BUCKET or s3://BUCKET/PREFIX, not `{target}`");
                return Ok(EXIT_USAGE);
            };
            let env: Vec<(String, String)> = std::env::vars().collect();
            let mut config = match super::load_config(args.config.clone(), &env) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            config.blobs.backend = "s3".into();
            config.blobs.bucket = Some(bucket.to_string());
            config.blobs.prefix = prefix.to_string();
            match super::stores::or_exit(super::stores::open_shared(&config, &rt))? {
                Ok(shared) => Some(shared),
                Err(code) => return Ok(code),
            }
        }
    };
    rt.block_on(async {
        let m = pg.migrate().await.with_context(|| format!("migrating {at}"))?;
        println!("{at}: schema {} -> {}", m.from, m.to);
        match from {
            Some(dir) => copy(&dir, &pg, blobs.as_ref()).await.map_err(|e| {
                e.context(format!(
                    "the copy into {at} failed part way: drop and create that database again before the next attempt"
                ))
            }),
            None => Ok(0),
        }
    })
}

/// Copies the sled state in `dir` into the (empty) database, and its blobs into `blobs` when
/// given, then checks the copy.
async fn copy(dir: &std::path::Path, pg: &Pg, blobs: Option<&SharedBlobs>) -> anyhow::Result<u8> {
    let source = SledRegistry::open(&dir.join("db"))
        .with_context(|| format!("opening the database in {} (is its service stopped?)", dir.display()))?;
    let target = PgRegistry::new(pg.clone());
    let occupied: Vec<String> =
        target.counts().await?.into_iter().filter(|(_, n)| *n > 0).map(|(t, n)| format!("{t} ({n})")).collect();
    if !occupied.is_empty() {
        eprintln!("error: the database already holds data: {}; copy into an empty database", occupied.join(", "));
        return Ok(EXIT_FAILURE);
    }

    // The node key: the secrets are copied sealed, so the hosts on this database need this key.
    let key_file = dir.join("node.key");
    let secrets = SledSecrets::new(source.db().clone()).dump()?;
    match NodeKey::load(&key_file)? {
        Some(key) => {
            pg.client()
                .await?
                .execute(
                    "INSERT INTO runner_meta (key, value) VALUES ('node_key_fingerprint', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&key.fingerprint],
                )
                .await?;
            println!("node key {} (fingerprint {}): give it to every host", key_file.display(), key.fingerprint);
        }
        None if !secrets.is_empty() => {
            eprintln!(
                "error: {} is missing, and the secrets are sealed with it: copy the node key there first",
                key_file.display()
            );
            return Ok(EXIT_FAILURE);
        }
        None => {}
    }

    let mut copied = Copied::default();
    for ext in source.extensions(None, usize::MAX).await? {
        copied.extensions += 1;
        for version in source.versions(&ext.id).await? {
            let bundle = source
                .bundle(&version.content_hash)
                .await?
                .with_context(|| format!("{} {} has no bundle record", ext.name, version.version))?;
            target.publish(ext.clone(), version.clone(), bundle).await?;
            if version.state != VersionState::Active {
                target.put_version(&version).await?;
            }
            copied.versions += 1;
        }
    }
    let subscriptions = source.all_subscriptions()?;
    for install in source.all_installs()? {
        let subs: Vec<_> = subscriptions
            .iter()
            .filter(|s| s.tenant == install.tenant && s.install_id == install.install_id)
            .cloned()
            .collect();
        copied.subscriptions += subs.len();
        target.put_install(&install, &subs).await?;
        copied.installs += 1;
    }
    for (tenant, extension, window, usage) in source.all_usage()? {
        target.add_usage(&tenant, &extension, window, &usage).await?;
        copied.usage += 1;
    }
    for tenant in source.chain_tenants().await? {
        let head = source.chain_head(&tenant).await?;
        let records = source.raw_executions(&tenant)?;
        target.import_chain(&tenant, &head, &records).await?;
        copied.executions += records.len();
        copied.chains += 1;
    }
    let entries = SledKv::new(source.db().clone()).dump()?;
    PgKv::new(pg.clone()).import(&entries).await?;
    copied.storage = entries.len();
    let sealed = PgSecrets::new(pg.clone());
    for (tenant, install, bytes) in &secrets {
        sealed.put(tenant, install, bytes.clone()).await?;
    }
    copied.secrets = secrets.len();
    let records = source.bundles().await?;
    if let Some(shared) = blobs {
        copy_blobs(dir, &records, shared).await?;
    }

    // The check: every table holds what was copied, and every chain verifies with the head it had.
    let counts: std::collections::HashMap<&str, i64> = target.counts().await?.into_iter().collect();
    let mut problems = Vec::new();
    for (table, expected) in [
        ("extension_registry", copied.extensions),
        ("extension_version", copied.versions),
        ("tenant_extension_install", copied.installs),
        ("extension_event_subscription", copied.subscriptions),
        ("extension_quota_usage", copied.usage),
        ("extension_execution_chain", copied.chains),
        ("extension_execution_log", copied.executions),
        ("ext_storage_entry", copied.storage),
        ("install_secrets", copied.secrets),
    ] {
        let found = counts.get(table).copied().unwrap_or(-1);
        println!("{table:<30} {expected:>8} copied, {found:>8} in the database");
        if found != expected as i64 {
            problems.push(format!("{table}: {expected} copied but {found} in the database"));
        }
    }
    for tenant in source.chain_tenants().await? {
        let head = source.chain_head(&tenant).await?;
        if target.chain_head(&tenant).await? != head {
            problems.push(format!("tenant {tenant}: the chain head differs from the source's"));
        }
        let report = chain::verify(&tenant, &head, target.executions_oldest_first(&tenant).await?);
        if !report.intact() {
            problems.push(format!("tenant {tenant}: the copied chain does not verify: {}", report.problems.join("; ")));
        }
    }
    if let Some(shared) = blobs {
        let mut present = 0;
        for r in &records {
            if shared.exists(shared.bundle_key(&r.content_hash)).await? {
                present += 1;
            } else {
                problems.push(format!("bundle {} is not in {}", r.content_hash, shared.label()));
            }
        }
        println!("{:<30} {:>8} records, {present:>8} in the bucket", "bundles", records.len());
    }
    if problems.is_empty() {
        match blobs {
            Some(shared) => println!(
                "copied and verified: {} chain(s) intact; the bundles are in {}",
                copied.chains,
                shared.label()
            ),
            None => println!(
                "copied and verified: {} chain(s) intact; the bundles stay in {} (keep state.dir)",
                copied.chains,
                dir.join("bundles").display()
            ),
        }
        Ok(0)
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        Ok(EXIT_FAILURE)
    }
}

#[derive(Debug, Default)]
struct Copied {
    extensions: usize,
    versions: usize,
    installs: usize,
    subscriptions: usize,
    usage: usize,
    chains: usize,
    executions: usize,
    storage: usize,
    secrets: usize,
}

/// Puts every bundle of `records` (its bytes checked against its hash), its signature, and the
/// compiled artifacts whose bytes match the SHA-256 recorded at publish, into the bucket.
async fn copy_blobs(dir: &std::path::Path, records: &[BundleRecord], shared: &SharedBlobs) -> anyhow::Result<()> {
    let (mut bundles, mut artifacts) = (0, 0);
    for r in records {
        let path = dir.join("bundles/sha256").join(r.content_hash.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            alga_shared::bundle::content_hash(&bytes) == r.content_hash,
            "{} does not match its hash {}: not copied",
            path.display(),
            r.content_hash
        );
        shared.put_once(shared.bundle_key(&r.content_hash), bytes).await?;
        shared.put_once(shared.signature_key(&r.content_hash), r.signature.clone().into_bytes()).await?;
        bundles += 1;
        let Some(wasm) = &r.component_sha256 else { continue };
        for (fingerprint, expected) in &r.artifacts {
            let file = dir.join("cache").join(wasm).join(format!("{fingerprint}.cwasm"));
            match std::fs::read(&file) {
                Ok(bytes) if sha256_hex(&bytes) == *expected => {
                    shared.put_once(shared.artifact_key(wasm, fingerprint), bytes).await?;
                    artifacts += 1;
                }
                // A host compiles what is not there.
                _ => println!("compiled artifact {} not copied (missing or changed)", file.display()),
            }
        }
    }
    println!("{:<30} {bundles:>8} bundles and {artifacts} compiled artifact(s) put in {}", "blobs", shared.label());
    Ok(())
}
