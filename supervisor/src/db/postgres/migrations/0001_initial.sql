-- Schema 1: the data model of 06-data.md as tables. Records keep their identity and the columns
-- queries select on; the rest of each record is the same JSON the embedded backend stores.

CREATE TABLE runner_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE extension_registry (
    id text PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    publisher text NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE extension_version (
    extension_id text NOT NULL REFERENCES extension_registry (id),
    version text NOT NULL,
    version_id text NOT NULL UNIQUE,
    content_hash text NOT NULL,
    state text NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (extension_id, version)
);

CREATE TABLE extension_bundle (
    content_hash text PRIMARY KEY,
    extension_id text NOT NULL REFERENCES extension_registry (id),
    version_id text NOT NULL,
    record jsonb NOT NULL
);

CREATE TABLE tenant_extension_install (
    tenant text NOT NULL,
    extension_id text NOT NULL REFERENCES extension_registry (id),
    install_id text NOT NULL UNIQUE,
    version_id text NOT NULL,
    content_hash text NOT NULL,
    enabled boolean NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (tenant, extension_id)
);
CREATE INDEX tenant_extension_install_by_hash ON tenant_extension_install (content_hash);

CREATE TABLE extension_event_subscription (
    tenant text NOT NULL,
    topic text NOT NULL,
    install_id text NOT NULL,
    handler text NOT NULL,
    extension_id text NOT NULL,
    PRIMARY KEY (tenant, topic, install_id, handler)
);
CREATE INDEX extension_event_subscription_by_install ON extension_event_subscription (tenant, install_id);

-- One hash chain per tenant: appenders lock the head row in the transaction that appends.
CREATE TABLE extension_execution_chain (
    tenant text PRIMARY KEY,
    next_seq bigint NOT NULL,
    head_hash text NOT NULL,
    first_seq bigint NOT NULL,
    anchor_hash text NOT NULL
);

CREATE TABLE extension_execution_log (
    tenant text NOT NULL,
    seq bigint NOT NULL,
    execution_id text NOT NULL,
    request_id text NOT NULL,
    extension_id text NOT NULL,
    outcome text NOT NULL,
    created_at bigint NOT NULL,
    -- The record exactly as the chain hashes it (a schema byte, then JSON).
    record bytea NOT NULL,
    PRIMARY KEY (tenant, seq)
);

CREATE TABLE extension_quota_usage (
    tenant text NOT NULL,
    extension_id text NOT NULL,
    window_start bigint NOT NULL,
    invocations bigint NOT NULL,
    cpu_ms bigint NOT NULL,
    memory_mib_ms bigint NOT NULL,
    fuel bigint NOT NULL,
    egress_bytes bigint NOT NULL,
    PRIMARY KEY (tenant, extension_id, window_start)
);

-- The storage host API: values, and each install's usage (bytes, keys per namespace), changed
-- in one transaction with the value.
CREATE TABLE ext_storage_entry (
    tenant text NOT NULL,
    install_id text NOT NULL,
    namespace text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    revision bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (tenant, install_id, namespace, key)
);

CREATE TABLE ext_storage_usage (
    tenant text NOT NULL,
    install_id text NOT NULL,
    bytes bigint NOT NULL,
    namespaces jsonb NOT NULL,
    PRIMARY KEY (tenant, install_id)
);

-- Sealed with the node key (the key's fingerprint is in runner_meta).
CREATE TABLE install_secrets (
    tenant text NOT NULL,
    install_id text NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (tenant, install_id)
);
