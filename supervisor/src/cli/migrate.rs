//! `alga-runner migrate`: brings a PostgreSQL database to this build's schema, and copies a
//! stopped single host's state into it (`--from sled:DIR`): the registry, installs and their
//! subscriptions, usage windows, every tenant's execution log with its hash chain (the records'
//! stored bytes, so the chain still verifies), guest storage (revisions kept) and the sealed
//! secrets (the node key stays the same file). The copy is then checked, table by table and
//! chain by chain. It is not one transaction: a copy that fails half way says so, and the
//! database must be emptied (dropped and created again) before the next attempt.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::redacted_url;
use crate::db::postgres::Pg;
use crate::hostapi::storage::postgres::PgKv;
use crate::hostapi::storage::sled::SledKv;
use crate::registry::{PgRegistry, RegistryStore, SledRegistry, VersionState, chain};
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
    rt.block_on(async {
        let m = pg.migrate().await.with_context(|| format!("migrating {at}"))?;
        println!("{at}: schema {} -> {}", m.from, m.to);
        match from {
            Some(dir) => copy(&dir, &pg).await.map_err(|e| {
                e.context(format!(
                    "the copy into {at} failed part way: drop and create that database again before the next attempt"
                ))
            }),
            None => Ok(0),
        }
    })
}

/// Copies the sled state in `dir` into the (empty) database, then checks the copy.
async fn copy(dir: &std::path::Path, pg: &Pg) -> anyhow::Result<u8> {
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
    if problems.is_empty() {
        println!(
            "copied and verified: {} chain(s) intact; the bundles stay in {} (keep state.dir)",
            copied.chains,
            dir.join("bundles").display()
        );
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
