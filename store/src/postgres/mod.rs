//! The PostgreSQL database several replicas share: the same tables as the SQLite file in
//! PostgreSQL's types, kept by migrations that are safe when replicas start at once (sqlx takes
//! an advisory lock around them).

mod admin;
mod copy;
mod keys;
mod rate_limit;
mod rows;

pub use rows::PgWrite;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::Location;
use crate::shared::OpenOnce;

pub use rate_limit::Lease;
use rate_limit::LeaseConnections;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel a change to `api_keys` is announced on (by a trigger, whoever changes it).
pub const KEYS_CHANGED: &str = "mcp_metrics_api_keys";

/// An open, migrated PostgreSQL database.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    location: Location,
    /// The `rate_limit` processor's connections for leasing tokens.
    leases: LeaseConnections,
}

/// Databases open in this process, by URL: every component naming one shares its pool.
static OPEN: OpenOnce<String, PgStore> = OpenOnce::new();

impl PgStore {
    /// Connects to and migrates the database at `url`, or returns the one this process has open.
    pub async fn open(url: &str) -> anyhow::Result<Arc<PgStore>> {
        OPEN.get_or_make(url.to_owned(), || async {
            let location = Location::Postgres(url.to_owned());
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .min_connections(1)
                // A database that is down fails an export (to be retried) within 2 s, not hangs it.
                .acquire_timeout(Duration::from_secs(2))
                .connect(url)
                .await
                .with_context(|| format!("cannot connect to {location}"))?;
            MIGRATOR
                .run(&pool)
                .await
                .with_context(|| format!("cannot migrate {location}"))?;
            let leases = LeaseConnections::new(url)?;
            Ok(Arc::new(PgStore {
                pool,
                location,
                leases,
            }))
        })
        .await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub async fn close(&self) {
        self.leases.close().await;
        self.pool.close().await;
    }
}
