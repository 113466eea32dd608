//! What the admin endpoints tell about the database: rows per table, their time span, sizes.

use sqlx::{AssertSqlSafe, Row};

use crate::{METRIC_TABLES, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStats {
    pub table_name: &'static str,
    pub rows: i64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSize {
    pub path: String,
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub page_size: i64,
    pub page_count: i64,
    pub free_pages: i64,
}

impl Store {
    pub async fn table_stats(&self) -> Result<Vec<TableStats>, sqlx::Error> {
        let mut stats = Vec::new();
        for table in METRIC_TABLES {
            let sql = format!(
                "SELECT COUNT(*) AS n, MIN(timestamp) AS oldest, MAX(timestamp) AS newest FROM {table}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .fetch_one(self.pool())
                .await?;
            stats.push(TableStats {
                table_name: table,
                rows: row.try_get("n")?,
                oldest: row.try_get("oldest")?,
                newest: row.try_get("newest")?,
            });
        }
        Ok(stats)
    }

    pub async fn size(&self) -> Result<DatabaseSize, sqlx::Error> {
        let pragma = |name: &'static str| sqlx::query_scalar::<_, i64>(name).fetch_one(self.pool());
        let page_size = pragma("PRAGMA page_size").await?;
        let page_count = pragma("PRAGMA page_count").await?;
        let free_pages = pragma("PRAGMA freelist_count").await?;
        let file_len = |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
        let mut wal = self.path().as_os_str().to_owned();
        wal.push("-wal");
        Ok(DatabaseSize {
            path: self.path().display().to_string(),
            file_bytes: file_len(self.path().to_owned()),
            wal_bytes: file_len(wal.into()),
            page_size,
            page_count,
            free_pages,
        })
    }
}
