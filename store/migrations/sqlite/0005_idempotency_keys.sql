-- Requests sent with an `Idempotency-Key`: one row per request (per part of a request larger
-- than one batch), written in the transaction that writes its metrics, so a resend finds it and
-- stores nothing again. Rows older than a day are deleted by retention.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_id INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    first_index INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, idempotency_key, first_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_idempotency_created ON idempotency_keys(created_at);
