//! The shared database: PostgreSQL, which any number of runner hosts use at once
//! (11-scale-out.md). A pool of connections (tokio-postgres with deadpool-postgres: plain
//! asynchronous SQL with no compile-time database, LISTEN/NOTIFY on its own connection, and a
//! small dependency tree), and versioned migrations applied at start.

use std::time::Duration;

use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

/// The migrations, in order: (version, name, SQL). Each runs once, in one transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (2, "idempotency", include_str!("migrations/0002_idempotency.sql")),
    (3, "quotas", include_str!("migrations/0003_quotas.sql")),
    (4, "admit", include_str!("migrations/0004_admit.sql")),
];

/// The schema this build writes.
pub const SCHEMA: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Serializes migrations across hosts starting at once (an arbitrary, fixed advisory lock id).
const MIGRATION_LOCK: i64 = 0x0061_6c67_616d_6967;

/// How long to wait for a connection (a new one, or a free one from the pool) before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("storage.url: {0}")]
    Url(String),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had (the server is down, refuses us, or the pool timed out).
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error(
        "the database has schema {found}, more than one step newer than this alga-runner (schema {SCHEMA}); \
         upgrade this host to the version the others run"
    )]
    Newer { found: i32 },
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

impl PgError {
    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Unavailable(_) => true,
            // A lost connection (closed, or an I/O error under it), the server shutting it down
            // (class 08, 57P01-57P03), or a statement cancelled by its timeout (57014): the
            // database cannot serve now. A server's refusal of a statement, or a value that does
            // not convert, is a bug to see, not an outage.
            PgError::Db(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.code().is_some_and(|c| {
                        let c = c.code();
                        c.starts_with("08") || c.starts_with("57P0") || c == "57014"
                    })
            }
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::Unavailable(crate::error_chain(&e))
    }
}

/// A pool of connections to one database, and one for state whose loss in a database crash
/// costs nothing (coordination: quota leases and buckets, usage counters, idempotency claims).
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
    /// Commits here do not wait for the write-ahead log to reach the disk
    /// (`synchronous_commit = off`): no fsync on the execution path for what need not survive.
    relaxed: Pool,
    /// For the connection that listens for notifications (outside the pool).
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Pg").field("size", &status.size).field("available", &status.available).finish()
    }
}

/// What `migrate` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

impl Pg {
    /// A pool of at most `pool_size` connections to the database at `url`; every statement is
    /// cut off after `statement_timeout`. Connects lazily: a database that is down fails the
    /// first statement, not this.
    ///
    /// TLS follows the URL's `sslmode` (`disable`; `prefer`, the default: TLS when the server
    /// offers it; `require`, `verify-ca`, `verify-full`: TLS or no connection), and whenever TLS
    /// is used the server's certificate and host name are verified: against the certificates in
    /// `ca_file` (PEM) when given, else the public web roots. An unverified server is never
    /// accepted, whatever the mode.
    pub fn connect(
        url: &str,
        pool_size: usize,
        statement_timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Pg, PgError> {
        // tokio-postgres knows disable, prefer and require; since every TLS connection here is
        // verified, the two verifying modes are `require`.
        let url = url.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require");
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            PgError::Url(format!("{e} (expected postgres://user:password@host:port/database)"))
        })?;
        let tls = MakeRustlsConnect::new(tls_config(ca_file)?);
        config.application_name("alga-runner");
        config.connect_timeout(CONNECT_TIMEOUT);
        // Ours after any the URL gives (the later setting wins).
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            statement_timeout.as_millis()
        )
        .trim_start()
        .to_string();
        config.options(&options);
        let pool_of = |config: &tokio_postgres::Config| {
            let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
            Pool::builder(Manager::from_config(config.clone(), tls.clone(), recycling))
                .max_size(pool_size.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(CONNECT_TIMEOUT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| PgError::Pool(e.to_string()))
        };
        let pool = pool_of(&config)?;
        let mut relaxed = config.clone();
        relaxed.options(format!("{options} -c synchronous_commit=off"));
        let relaxed = pool_of(&relaxed)?;
        Ok(Pg { pool, relaxed, config: Arc::new(config), tls })
    }

    /// Sends `payload` to every host listening on `channel` (delivered when this commits: at once).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), PgError> {
        self.client().await?.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await?;
        Ok(())
    }

    /// Calls `on_notify` with the payload of every notification on `channel`, for as long as the
    /// service runs, on a connection of its own that is made again after a failure (after 1 s;
    /// TCP keepalives find a connection that died silently within about a minute).
    /// Notifications sent while it was not listening are lost, so every time it starts listening
    /// `on_notify` gets `None`: the listener should catch up on whatever it may have missed.
    pub async fn listen(&self, channel: &'static str, mut on_notify: impl FnMut(Option<String>) + Send) {
        use futures_util::StreamExt;
        let mut config = (*self.config).clone();
        config.keepalives(true).keepalives_idle(Duration::from_secs(30)).keepalives_interval(Duration::from_secs(10));
        let mut first = true;
        loop {
            match config.connect(self.tls.clone()).await {
                Ok((client, mut connection)) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    // The connection does the talking; notifications arrive through it.
                    let driver = tokio::spawn(async move {
                        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                    let _ = tx.send(n.payload().to_string());
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, channel, "the notification connection failed");
                                    break;
                                }
                            }
                        }
                    });
                    match client.batch_execute(&format!("LISTEN {channel}")).await {
                        Ok(()) => {
                            if first {
                                tracing::info!(channel, "listening for the other hosts' changes");
                                first = false;
                            }
                            on_notify(None);
                            while let Some(payload) = rx.recv().await {
                                on_notify(Some(payload));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, channel, "LISTEN failed"),
                    }
                    driver.abort();
                }
                Err(e) => tracing::warn!(error = %e, channel, "connecting for notifications failed"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A connection from the pool: a commit returns once it is durable.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.pool.get().await?)
    }

    /// A connection whose commits do not wait for the disk, for state a database crash may lose
    /// without harm (it is rebuilt, expires, or only counts).
    pub async fn relaxed_client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.relaxed.get().await?)
    }

    /// Applies the migrations the database lacks, one host at a time. A database one schema
    /// step newer than this build is accepted (rolling upgrades: migrations only add); a newer
    /// one is refused.
    pub async fn migrate(&self) -> Result<Migrated, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
        let from: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
        if from > SCHEMA + 1 {
            return Err(PgError::Newer { found: from });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > from) {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
            tracing::info!(version, name, "database migrated");
        }
        tx.commit().await?;
        Ok(Migrated { from, to: from.max(SCHEMA) })
    }
}

/// The TLS client of PostgreSQL connections: the CA certificates of `ca_file`, or the web roots.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, PgError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: String| PgError::Url(format!("storage.ca_file {}: {e}", path.display()));
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Url(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A `u64` as PostgreSQL's `bigint` (values past `i64::MAX` saturate; none of ours get there).
pub fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` as `u64` (negative values, which we never write, read as 0).
pub fn unbig(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `sql` prepared on `c`'s connection, once: deadpool keeps each connection's prepared
/// statements, so a query with it costs one round trip instead of two (parse, then execute).
pub async fn prepared<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    sql: &str,
) -> Result<tokio_postgres::Statement, PgError> {
    Ok(c.prepare_cached(sql).await?)
}
