-- Schema 3: admission shared by every host. Token buckets of the rate limits, and one lease per
-- running execution for the concurrency caps; a lease expires unless its host renews it, so a
-- host that died gives back what it held.

CREATE TABLE quota_bucket (
    key text PRIMARY KEY,
    tokens double precision NOT NULL,
    at timestamptz NOT NULL
);

CREATE TABLE quota_lease (
    lease_id text PRIMARY KEY,
    host_id text NOT NULL,
    tenant text NOT NULL,
    extension_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX quota_lease_by_tenant ON quota_lease (tenant, expires_at);
CREATE INDEX quota_lease_by_host ON quota_lease (host_id);
