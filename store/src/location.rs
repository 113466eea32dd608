//! Where the database is: `DATABASE_URL`'s forms, or a plain SQLite file path.

use std::fmt;
use std::path::PathBuf;

use mcp_metrics_plugin::redact_url_credentials;

/// A database named by a URL or a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A SQLite file: a plain path, `sqlite:///abs/path`, `sqlite://rel/path` or `sqlite:path`.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by every replica: `postgres://` or `postgresql://`.
    Postgres(String),
}

impl Location {
    /// Reads a `DATABASE_URL` or a path. An unknown scheme is an error rather than a file of
    /// that name: `mysql://...` must not quietly become a SQLite file called `mysql:`.
    pub fn parse(text: &str) -> Result<Location, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("names no database: give a SQLite file path or a URL".into());
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Location::Postgres(text.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            // `sqlite:///abs` is the absolute path `/abs`; `sqlite://rel` and `sqlite:rel` are
            // relative. A query (`?mode=rwc`) is sqlx's business, not part of the path.
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(format!("{text:?} names no file"));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "unknown database scheme {scheme:?}: use postgres://user:pass@host/db or a SQLite \
                 file (a path or sqlite:///path)"
            ));
        }
        Ok(Location::Sqlite(PathBuf::from(text)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// Shown with the password masked, so logs and errors never carry it.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redact_url_credentials(url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_database_url() {
        let sqlite = |p: &str| Ok(Location::Sqlite(PathBuf::from(p)));
        assert_eq!(
            Location::parse("./data/metrics.db"),
            sqlite("./data/metrics.db")
        );
        assert_eq!(
            Location::parse("sqlite:///var/lib/sqlite/metrics.db"),
            sqlite("/var/lib/sqlite/metrics.db")
        );
        assert_eq!(Location::parse("sqlite://data/m.db"), sqlite("data/m.db"));
        assert_eq!(Location::parse("sqlite:m.db?mode=rwc"), sqlite("m.db"));
        assert_eq!(
            Location::parse("postgres://u:p@db:5432/metrics"),
            Ok(Location::Postgres("postgres://u:p@db:5432/metrics".into()))
        );
        assert!(
            Location::parse("postgresql://db/metrics")
                .unwrap()
                .is_postgres()
        );
        assert!(
            Location::parse("mysql://db/x")
                .unwrap_err()
                .contains("mysql")
        );
        assert!(Location::parse(" ").is_err());
        assert!(Location::parse("sqlite://").is_err());
    }

    #[test]
    fn passwords_are_masked() {
        let location = Location::parse("postgres://metrics:s3cret@db:5432/m").unwrap();
        assert!(!location.to_string().contains("s3cret"), "{location}");
        assert!(location.to_string().ends_with("@db:5432/m"), "{location}");
    }
}
