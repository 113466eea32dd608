//! The database the components share, whichever engine holds it: a SQLite file on one box, or
//! PostgreSQL shared by several replicas. `DATABASE_URL` (or a path) picks it.

use std::collections::HashMap;
use std::sync::Arc;

use mcp_metrics_plugin::{
    Batch, BoxError, BuildContext, ComponentConfig, Extension, ExtensionConfig,
    ExtensionRegistration, KeyInfo, async_trait, inventory,
};

use crate::postgres::PgStore;
use crate::{
    DatabaseSize, EnvKeyChange, KeyRecord, Location, RetentionPolicy, RetentionRun, Store,
    TableStats, WriteError,
};

#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(Arc<Store>),
    Postgres(Arc<PgStore>),
}

/// The same call on whichever engine it is.
macro_rules! on_either {
    ($database:expr, $store:ident => $call:expr) => {
        match $database {
            Database::Sqlite($store) => $call,
            Database::Postgres($store) => $call,
        }
    };
}

impl Database {
    /// Opens (and migrates) the database a `DATABASE_URL` or a SQLite path names, or returns the
    /// one this process already has open.
    pub async fn open(url_or_path: &str) -> anyhow::Result<Database> {
        let location = Location::parse(url_or_path).map_err(anyhow::Error::msg)?;
        Database::open_at(&location).await
    }

    pub async fn open_at(location: &Location) -> anyhow::Result<Database> {
        Ok(match location {
            Location::Sqlite(path) => Database::Sqlite(Store::open(path).await?),
            Location::Postgres(url) => Database::Postgres(PgStore::open(url).await?),
        })
    }

    pub fn location(&self) -> Location {
        match self {
            Database::Sqlite(store) => Location::Sqlite(store.path().to_owned()),
            Database::Postgres(store) => store.location().clone(),
        }
    }

    pub async fn write_batch(&self, batch: &Batch) -> Result<(), WriteError> {
        match self {
            Database::Sqlite(store) => store.write_batch(batch).await,
            Database::Postgres(store) => Ok(store.write_batch(batch).await?),
        }
    }

    pub async fn create_key(
        &self,
        service_name: &str,
        rate_limit: Option<u32>,
        is_admin: bool,
    ) -> anyhow::Result<(KeyRecord, String)> {
        on_either!(self, store => store.create_key(service_name, rate_limit, is_admin).await)
    }

    pub async fn register_env_key(
        &self,
        service_name: &str,
        key: &str,
    ) -> anyhow::Result<EnvKeyChange> {
        on_either!(self, store => store.register_env_key(service_name, key).await)
    }

    pub async fn list_keys(&self) -> anyhow::Result<Vec<KeyRecord>> {
        on_either!(self, store => store.list_keys().await)
    }

    pub async fn revoke_key(&self, id: i64) -> anyhow::Result<bool> {
        on_either!(self, store => store.revoke_key(id).await)
    }

    pub async fn active_keys(&self) -> anyhow::Result<Vec<(String, KeyInfo)>> {
        on_either!(self, store => store.active_keys().await)
    }

    pub async fn find_active_key(&self, key_hash: &str) -> anyhow::Result<Option<KeyInfo>> {
        on_either!(self, store => store.find_active_key(key_hash).await)
    }

    pub async fn touch_keys(&self, ids: &[i64]) -> anyhow::Result<()> {
        on_either!(self, store => store.touch_keys(ids).await)
    }

    pub async fn seed_retention(&self, retention_days: u32) -> Result<(), sqlx::Error> {
        on_either!(self, store => store.seed_retention(retention_days).await)
    }

    pub async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, sqlx::Error> {
        on_either!(self, store => store.retention_policies().await)
    }

    pub async fn set_retention_policy(
        &self,
        table: &'static str,
        retention_days: u32,
        is_active: bool,
    ) -> Result<(), sqlx::Error> {
        on_either!(self, store => store.set_retention_policy(table, retention_days, is_active).await)
    }

    pub async fn apply_retention(
        &self,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<RetentionRun>, sqlx::Error> {
        on_either!(self, store => store.apply_retention(only, dry_run).await)
    }

    pub async fn table_stats(&self) -> Result<Vec<TableStats>, sqlx::Error> {
        on_either!(self, store => store.table_stats().await)
    }

    pub async fn size(&self) -> Result<DatabaseSize, sqlx::Error> {
        on_either!(self, store => store.size().await)
    }

    pub async fn row_counts(&self) -> anyhow::Result<HashMap<&'static str, i64>> {
        on_either!(self, store => store.row_counts().await)
    }

    /// Leaves the database complete on its own: SQLite folds its write-ahead log into the file;
    /// PostgreSQL needs nothing.
    pub async fn checkpoint(&self) -> Result<(), sqlx::Error> {
        if let Database::Sqlite(store) = self {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(store.pool())
                .await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        on_either!(self, store => store.close().await)
    }
}

/// `extensions: database: {url: ...}`: the database named once, which the key check, the
/// operator endpoints, the rate limiter and the `database` exporter refer to by id.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseExtension {
    /// `postgres://user:pass@host:5432/db` (PostgreSQL, shared by replicas), `sqlite:///path` or
    /// a SQLite file path.
    pub url: String,
}

impl Default for DatabaseExtension {
    fn default() -> Self {
        DatabaseExtension {
            url: "./data/metrics.db".into(),
        }
    }
}

impl ComponentConfig for DatabaseExtension {
    fn validate(&self) -> Vec<String> {
        match Location::parse(&self.url) {
            Ok(_) => Vec::new(),
            Err(problem) => vec![format!("url: {problem}")],
        }
    }
}

#[async_trait]
impl ExtensionConfig for DatabaseExtension {
    async fn build(&self, _cx: &BuildContext) -> Result<Extension, BoxError> {
        Ok(Arc::new(Database::open(&self.url).await?))
    }
}

inventory::submit!(ExtensionRegistration::of::<DatabaseExtension>(
    "database",
    "the database the components share (DATABASE_URL): a SQLite file, or PostgreSQL shared by \
     replicas; opened and migrated once"
));

impl Database {
    /// The database a component's `database` key names: the id of an extension, or else a URL
    /// or a path. A bare word (no `/`, `.` or `:`) that is no extension is an error rather than
    /// a new SQLite file of that name: it is a misspelt id.
    pub async fn named(name: &str, cx: &BuildContext) -> anyhow::Result<Database> {
        if let Some(database) = cx.extensions.get::<Database>(name) {
            return Ok(database);
        }
        if is_bare_word(name) {
            anyhow::bail!(
                "no extension `{name}`: define it under `extensions:` ({name}: {{url: ...}}), \
                 or give a URL or a path such as ./{name}.db"
            );
        }
        Database::open(name).await
    }
}

/// Whether `name` reads as an extension's id rather than a URL or a path.
pub fn is_bare_word(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '.', ':'])
}
