//! The shared token buckets of the `rate_limit` processor's fleet policy: one row per API key in
//! `rate_limit_buckets`, from which every replica leases a few tokens at a time.
//!
//! A lease is one statement on a connection kept for leases alone: through the pool, each query
//! would also pay a ping when the connection is handed back, and would queue behind the batches
//! the exporter writes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;

use super::PgStore;

/// Connections kept for leases; a key always uses the same one, so leases of different keys
/// need not wait for each other as much.
const LEASE_CONNECTIONS: usize = 2;

/// The bucket refilled for the time since it was last touched (never backwards: a statement
/// that waited for the row lock may have started before the one it waited for), capped at the
/// limit. `$2` is the limit per minute; a row that is not there yet is a full bucket.
macro_rules! refilled {
    () => {
        "LEAST($2::float8, tokens + $2::float8 / 60 * \
         GREATEST(0, EXTRACT(EPOCH FROM now() - updated_at)::float8))"
    };
}

/// Refills and grants in one statement: the CTE locks the row, so the grant and what is left
/// are computed from its latest version, whoever updated it last.
const LEASE: &str = concat!(
    "WITH current AS (SELECT key_id, ",
    refilled!(),
    " AS tokens, GREATEST(updated_at, now()) AS at \
     FROM rate_limit_buckets WHERE key_id = $1 FOR UPDATE) \
     UPDATE rate_limit_buckets AS b \
     SET tokens = c.tokens - LEAST($3, floor(c.tokens)), updated_at = c.at \
     FROM current AS c WHERE b.key_id = c.key_id \
     RETURNING LEAST($3, floor(c.tokens)) AS granted, b.tokens AS left"
);

/// A key's first lease anywhere: its bucket starts full.
const FIRST_LEASE: &str = "INSERT INTO rate_limit_buckets (key_id, tokens, updated_at) \
     VALUES ($1, $2 - LEAST($3, floor($2)), now()) \
     ON CONFLICT (key_id) DO NOTHING \
     RETURNING LEAST($3, floor($2)) AS granted, tokens AS left";

const PEEK: &str = concat!(
    "SELECT ",
    refilled!(),
    " FROM rate_limit_buckets WHERE key_id = $1"
);

/// What a lease took from a key's shared bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// Whole tokens granted: at most those asked for, at most those the bucket held.
    pub granted: u32,
    /// What the bucket holds after the grant.
    pub left: f64,
}

pub(super) struct LeaseConnections {
    options: PgConnectOptions,
    slots: [Mutex<Option<PgConnection>>; LEASE_CONNECTIONS],
}

impl fmt::Debug for LeaseConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseConnections").finish_non_exhaustive()
    }
}

type Query<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

impl LeaseConnections {
    /// Connects on first use, so a replica whose keys never lease opens none.
    pub(super) fn new(url: &str) -> Result<LeaseConnections, sqlx::Error> {
        Ok(LeaseConnections {
            options: PgConnectOptions::from_str(url)?,
            slots: std::array::from_fn(|_| Mutex::new(None)),
        })
    }

    pub(super) async fn close(&self) {
        for slot in &self.slots {
            if let Some(connection) = slot.lock().await.take() {
                let _ = connection.close().await;
            }
        }
    }

    /// Runs `query` on the connection for `key_id`, connecting first if it has none. The
    /// connection is kept only when the query succeeded: one that failed or was abandoned (a
    /// caller's timeout drops this future) may be mid-statement or dead, so the next use
    /// connects afresh.
    async fn on<T>(
        &self,
        key_id: i64,
        query: impl for<'c> FnOnce(&'c mut PgConnection) -> Query<'c, T>,
    ) -> Result<T, sqlx::Error> {
        let slot = &self.slots[key_id.rem_euclid(LEASE_CONNECTIONS as i64) as usize];
        let mut slot = slot.lock().await;
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => PgConnection::connect_with(&self.options).await?,
        };
        let result = query(&mut connection).await;
        if result.is_ok() {
            *slot = Some(connection);
        }
        result
    }
}

impl PgStore {
    /// Takes up to `want` whole tokens from key `key_id`'s bucket, refilled first at
    /// `per_minute` a minute for the time since it was last touched and capped at `per_minute`.
    /// A key without a bucket yet starts with a full one. Replicas leasing at once take turns on
    /// the row's lock, so no token is granted twice.
    pub async fn lease_tokens(
        &self,
        key_id: i64,
        per_minute: u32,
        want: u32,
    ) -> Result<Lease, sqlx::Error> {
        let (limit, want) = (f64::from(per_minute), f64::from(want));
        self.leases
            .on(key_id, |connection| {
                Box::pin(async move {
                    loop {
                        let row = sqlx::query(LEASE)
                            .bind(key_id)
                            .bind(limit)
                            .bind(want)
                            .fetch_optional(&mut *connection)
                            .await?;
                        if let Some(row) = row {
                            return lease_of(&row);
                        }
                        // Another replica may make the row at the same moment; then this one
                        // takes from that row instead.
                        let row = sqlx::query(FIRST_LEASE)
                            .bind(key_id)
                            .bind(limit)
                            .bind(want)
                            .fetch_optional(&mut *connection)
                            .await?;
                        if let Some(row) = row {
                            return lease_of(&row);
                        }
                    }
                })
            })
            .await
    }

    /// What key `key_id`'s bucket holds now, without taking any (`GET /rate-limit`).
    pub async fn peek_tokens(&self, key_id: i64, per_minute: u32) -> Result<f64, sqlx::Error> {
        let limit = f64::from(per_minute);
        self.leases
            .on(key_id, |connection| {
                Box::pin(async move {
                    let tokens: Option<f64> = sqlx::query_scalar(PEEK)
                        .bind(key_id)
                        .bind(limit)
                        .fetch_optional(&mut *connection)
                        .await?;
                    Ok(tokens.unwrap_or(limit))
                })
            })
            .await
    }

    /// Whether leases can be taken again, after they failed: every lease connection answers.
    pub async fn ping_leases(&self) -> Result<(), sqlx::Error> {
        for slot in 0..LEASE_CONNECTIONS as i64 {
            self.leases
                .on(slot, |connection| Box::pin(connection.ping()))
                .await?;
        }
        Ok(())
    }
}

fn lease_of(row: &sqlx::postgres::PgRow) -> Result<Lease, sqlx::Error> {
    let granted: f64 = row.try_get("granted")?;
    Ok(Lease {
        // Whole and at most the u32 asked for, by the statement.
        granted: granted as u32,
        left: row.try_get("left")?,
    })
}
