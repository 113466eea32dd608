-- The `rate_limit` processor's fleet policy: one token bucket per API key shared by every
-- replica. A replica leases a few tokens at a time (refilling the bucket by the time elapsed
-- since `updated_at` in the same statement), then spends them without asking again. Keyed by
-- the key's id without a foreign key: a lease for a key deleted meanwhile must not fail.
--
-- UNLOGGED: a lease writes no WAL and its commit waits for no flush, which is most of what a
-- lease costs the server. The price is soft state: after a crash of PostgreSQL (or on a
-- promoted standby) the table is empty, and every key starts with a full bucket again, as on a
-- restart of one replica.
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_buckets (
    key_id BIGINT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
