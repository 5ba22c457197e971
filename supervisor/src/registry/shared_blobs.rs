//! The object store several hosts share (11-scale-out.md, "Object store"): content-addressed
//! keys under a prefix, written once with `If-None-Match: *`, read back by any host.
//!
//! Keys:
//! - `bundles/sha256/<hex>/bundle.tar.zst` and `bundles/sha256/<hex>/bundle.tar.zst.minisig`;
//! - `artifacts/sha256/<hex of the component>/<engine fingerprint>.cwasm`.
//!
//! Nothing read from here is trusted for its name: a bundle is hashed again and its signature
//! verified again, an artifact's SHA-256 must be the one the database recorded at publish.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

/// How to reach the bucket (from `[blobs]`). Its `Debug` leaves the secret out.
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub allow_http: bool,
    /// PEM bytes of CA certificates to trust besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// Why the object store did not answer what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SharedBlobError {
    /// The configuration cannot make a client (bad CA file, no credentials).
    #[error("blobs: {0}")]
    Config(String),
    /// The store failed or cannot be reached.
    #[error("the object store {store}: {source}")]
    Unavailable {
        store: String,
        #[source]
        source: object_store::Error,
    },
    /// The request did not end within its deadline.
    #[error("the object store {0} did not answer in time")]
    Timeout(String),
    /// The store sent more than was asked for.
    #[error("the object store {store} holds {size} bytes under {key}, more than the {max} expected")]
    TooLarge { store: String, key: String, size: u64, max: u64 },
    /// The task running the request failed.
    #[error("object store request: {0}")]
    Task(String),
}

/// One bucket, under one prefix.
#[derive(Clone)]
pub struct SharedBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3://bucket/prefix` at the endpoint, for messages.
    label: String,
    /// Requests run on this runtime (its connection pool lives there).
    rt: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SharedBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBlobs").field("label", &self.label).finish()
    }
}

/// The hex part of `sha256:<hex>`.
fn hex_of(content_hash: &str) -> &str {
    content_hash.strip_prefix("sha256:").unwrap_or(content_hash)
}

impl SharedBlobs {
    /// A client for the bucket; requests run on `rt`.
    pub fn open(config: &S3Settings, rt: tokio::runtime::Handle) -> Result<Self, SharedBlobError> {
        let timeout = config.timeout;
        let mut options = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(5));
        if let Some(pem) = &config.ca_pem {
            let certs = object_store::Certificate::from_pem_bundle(pem)
                .map_err(|e| SharedBlobError::Config(format!("blobs.ca_file: {e}")))?;
            if certs.is_empty() {
                return Err(SharedBlobError::Config("blobs.ca_file: no PEM certificate in it".into()));
            }
            for c in certs {
                options = options.with_root_certificate(c);
            }
        }
        let bucket = &config.bucket;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_allow_http(config.allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(options)
            // A host that cannot reach the store answers 503 soon rather than retrying for minutes.
            .with_retry(RetryConfig { max_retries: 2, retry_timeout: timeout, ..Default::default() });
        if let Some(endpoint) = &config.endpoint {
            // Path-style requests (`endpoint/bucket/key`): what self-hosted stores serve.
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| SharedBlobError::Config(e.to_string()))?;
        let prefix = config.prefix.trim_matches('/').to_string();
        let label = format!(
            "s3://{bucket}/{prefix} at {}",
            config.endpoint.clone().unwrap_or_else(|| format!("AWS {}", config.region))
        );
        Ok(SharedBlobs { store: Arc::new(store), prefix, label, rt, timeout })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The object key of `rest`, under the prefix.
    pub fn key(&self, rest: String) -> Path {
        if self.prefix.is_empty() { Path::from(rest) } else { Path::from(format!("{}/{rest}", self.prefix)) }
    }

    pub fn bundle_key(&self, content_hash: &str) -> Path {
        self.key(format!("bundles/sha256/{}/bundle.tar.zst", hex_of(content_hash)))
    }

    pub fn signature_key(&self, content_hash: &str) -> Path {
        self.key(format!("bundles/sha256/{}/bundle.tar.zst.minisig", hex_of(content_hash)))
    }

    pub fn artifact_key(&self, wasm_sha256: &str, fingerprint: &str) -> Path {
        self.key(format!("artifacts/sha256/{wasm_sha256}/{fingerprint}.cwasm"))
    }

    /// Runs `f` on the store's runtime, within the deadline.
    async fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, SharedBlobError> {
        let deadline = self.timeout + Duration::from_secs(5);
        match tokio::time::timeout(deadline, self.rt.spawn(f)).await {
            Err(_) => Err(SharedBlobError::Timeout(self.label.clone())),
            Ok(Err(join)) => Err(SharedBlobError::Task(join.to_string())),
            Ok(Ok(r)) => r.map_err(|source| SharedBlobError::Unavailable { store: self.label.clone(), source }),
        }
    }

    /// Stores `bytes` under `key` unless an object is there already. Content-addressed: an
    /// object already there holds the same bytes (readers check), so a lost race is a success.
    pub async fn put_once(&self, key: Path, bytes: impl Into<bytes::Bytes>) -> Result<(), SharedBlobError> {
        let (store, bytes) = (self.store.clone(), bytes.into());
        self.run(async move {
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            match store.put_opts(&key, PutPayload::from(bytes), options).await {
                Ok(_) => Ok(()),
                // Already there (412), or (409) another upload of it in flight: only an object
                // that is there now counts.
                Err(object_store::Error::AlreadyExists { .. }) => store.head(&key).await.map(|_| ()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Stores `bytes` under `key`, replacing what is there (a copy found corrupt, put back by
    /// its publisher).
    pub async fn put(&self, key: Path, bytes: impl Into<bytes::Bytes>) -> Result<(), SharedBlobError> {
        let (store, bytes) = (self.store.clone(), bytes.into());
        self.run(async move { store.put(&key, PutPayload::from(bytes)).await.map(|_| ()) }).await
    }

    /// The object under `key` (at most `max` bytes: the store is not trusted to send what it
    /// says), or None when there is none.
    pub async fn get(&self, key: Path, max: u64) -> Result<Option<bytes::Bytes>, SharedBlobError> {
        use futures_util::StreamExt;
        let store = self.store.clone();
        let too_large =
            |size: u64| SharedBlobError::TooLarge { store: self.label.clone(), key: key.to_string(), size, max };
        let got = self
            .run({
                let key = key.clone();
                async move {
                    let r = match store.get(&key).await {
                        Ok(r) => r,
                        Err(object_store::Error::NotFound { .. }) => return Ok(Err(None)),
                        Err(e) => return Err(e),
                    };
                    if r.meta.size > max {
                        return Ok(Err(Some(r.meta.size)));
                    }
                    let mut out = bytes::BytesMut::with_capacity(r.meta.size as usize);
                    let mut stream = r.into_stream();
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk?;
                        if (out.len() + chunk.len()) as u64 > max {
                            return Ok(Err(Some((out.len() + chunk.len()) as u64)));
                        }
                        out.extend_from_slice(&chunk);
                    }
                    Ok(Ok(out.freeze()))
                }
            })
            .await?;
        match got {
            Ok(bytes) => Ok(Some(bytes)),
            Err(None) => Ok(None),
            Err(Some(size)) => Err(too_large(size)),
        }
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: Path) -> Result<bool, SharedBlobError> {
        let store = self.store.clone();
        self.run(async move {
            match store.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Removes the object under `key` (none there is no error).
    pub async fn delete(&self, key: Path) -> Result<(), SharedBlobError> {
        let store = self.store.clone();
        self.run(async move {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Every key under `under` (below the prefix), the prefix left out.
    pub async fn keys(&self, under: &str) -> Result<Vec<String>, SharedBlobError> {
        use futures_util::StreamExt;
        let store = self.store.clone();
        let base = self.key(under.to_string());
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        self.run(async move {
            let mut out = Vec::new();
            let mut list = store.list(Some(&base));
            while let Some(meta) = list.next().await {
                let key = meta?.location.to_string();
                out.push(key.strip_prefix(&prefix).unwrap_or(&key).to_string());
            }
            Ok(out)
        })
        .await
    }

    /// Content hashes of every bundle in the store (for `migrate` and checks).
    pub async fn bundles(&self) -> Result<Vec<String>, SharedBlobError> {
        use futures_util::StreamExt;
        let store = self.store.clone();
        let base = self.key("bundles/sha256".into());
        self.run(async move {
            let mut out = Vec::new();
            let mut list = store.list(Some(&base));
            while let Some(meta) = list.next().await {
                let meta = meta?;
                if meta.location.filename() == Some("bundle.tar.zst")
                    && let Some(hex) = meta.location.parts().rev().nth(1)
                {
                    out.push(format!("sha256:{}", hex.as_ref()));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Proves the bucket exists and these credentials may write to it: a small probe object
    /// (a missing bucket answers 404, refused credentials 403; a listing would not say which).
    pub async fn probe(&self) -> Result<(), SharedBlobError> {
        self.put(self.key("probe".into()), bytes::Bytes::from_static(b"alga-runner\n")).await
    }
}

impl SharedBlobError {
    /// Whether the operator must change the configuration (no such bucket, credentials
    /// refused) rather than wait for the store to come back.
    pub fn is_config(&self) -> bool {
        match self {
            SharedBlobError::Config(_) => true,
            SharedBlobError::Unavailable { source, .. } => matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            SharedBlobError::Timeout(_) | SharedBlobError::TooLarge { .. } | SharedBlobError::Task(_) => false,
        }
    }
}
