-- Schema 2: idempotency keys shared by every host. A claim ('running') expires with its
-- execution's deadline; a completed answer ('done') with idempotency_ttl_s.

CREATE TABLE idempotency_entry (
    tenant text NOT NULL,
    extension_id text NOT NULL,
    key text NOT NULL,
    token text NOT NULL,
    state text NOT NULL,
    response jsonb,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, extension_id, key)
);
CREATE INDEX idempotency_entry_expiry ON idempotency_entry (expires_at);
