-- Schema 4: admission in one statement. The same steps as the transaction schema 3's hosts run
-- (they keep working against this schema): under the tenant's advisory lock, refill the token
-- buckets by the database's clock and take a token from each, count the running leases against
-- the caps, insert this execution's lease; run as one statement, so one round trip.
--
-- keys, rates, bursts: the buckets (a rate of 0 is no limit). Returns the outcome
-- ('admitted', 'rate_limited', 'quota_exceeded') and, when rate limited, the bucket's tokens and
-- rate (the caller computes the wait).

CREATE FUNCTION alga_admit(
    p_tenant text, p_extension text, p_host text, p_lease text,
    p_keys text[], p_rates float8[], p_bursts float8[],
    p_tenant_cap int, p_extension_cap int, p_lease_ms float8)
RETURNS TABLE (outcome text, tokens float8, rate float8)
LANGUAGE plpgsql AS $$
DECLARE
    i int;
    left_after float8[] := '{}';
    t float8;
    age float8;
    running_tenant bigint;
    running_extension bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant, 7));
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        IF p_rates[i] > 0 THEN
            SELECT b.tokens, extract(epoch FROM clock_timestamp() - b.at)::float8 INTO t, age
                FROM quota_bucket b WHERE b.key = p_keys[i];
            IF NOT FOUND THEN
                t := p_bursts[i];
            ELSE
                t := least(t + greatest(age, 0) * p_rates[i], p_bursts[i]);
            END IF;
            IF t < 1 THEN
                RETURN QUERY SELECT 'rate_limited'::text, t, p_rates[i];
                RETURN;
            END IF;
            left_after[i] := t - 1;
        END IF;
    END LOOP;
    IF p_tenant_cap > 0 OR p_extension_cap > 0 THEN
        SELECT count(*), count(*) FILTER (WHERE l.extension_id = p_extension)
            INTO running_tenant, running_extension
            FROM quota_lease l WHERE l.tenant = p_tenant AND l.expires_at > now();
        IF (p_tenant_cap > 0 AND running_tenant >= p_tenant_cap)
            OR (p_extension_cap > 0 AND running_extension >= p_extension_cap) THEN
            RETURN QUERY SELECT 'quota_exceeded'::text, 0::float8, 0::float8;
            RETURN;
        END IF;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        IF p_rates[i] > 0 THEN
            INSERT INTO quota_bucket AS b (key, tokens, at) VALUES (p_keys[i], left_after[i], clock_timestamp())
                ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at = greatest(b.at, excluded.at);
        END IF;
    END LOOP;
    INSERT INTO quota_lease (lease_id, host_id, tenant, extension_id, expires_at)
        VALUES (p_lease, p_host, p_tenant, p_extension, now() + p_lease_ms * interval '1 millisecond');
    RETURN QUERY SELECT 'admitted'::text, 0::float8, 0::float8;
END
$$;
