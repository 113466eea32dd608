//! The PostgreSQL database several replicas share: the same tables as the SQLite file in
//! PostgreSQL's types, kept by migrations that are safe when replicas start at once (sqlx takes
//! an advisory lock around them).

mod admin;
mod copy;
mod keys;
mod rate_limit;
mod rows;

pub use rows::PgWrite;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::Location;

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
static OPEN: Mutex<Vec<(String, Weak<PgStore>)>> = Mutex::new(Vec::new());
static OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl PgStore {
    /// Connects to and migrates the database at `url`, or returns the one this process has open.
    pub async fn open(url: &str) -> anyhow::Result<Arc<PgStore>> {
        let _one_at_a_time = OPENING.lock().await;
        if let Some(store) = Self::already_open(url) {
            return Ok(store);
        }
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
        let store = Arc::new(PgStore {
            pool,
            location,
            leases,
        });
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, weak)| weak.strong_count() > 0);
        open.push((url.to_owned(), Arc::downgrade(&store)));
        Ok(store)
    }

    fn already_open(url: &str) -> Option<Arc<PgStore>> {
        let open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .find(|(open_url, _)| open_url == url)
            .and_then(|(_, weak)| weak.upgrade())
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
