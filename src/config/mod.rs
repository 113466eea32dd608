//! `pipelines.yaml`: read, substitute the environment, check everything, and say every problem at
//! once with its place, before anything is started. What a checked config is lives here; how it is
//! checked in `check`, the component listing in `describe`, the effective config in `effective`.

mod check;
mod describe;
mod effective;
mod env;
mod locate;

pub use describe::describe_components;
pub use effective::effective;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use mcp_metrics_plugin::bounds::{DAY, HOUR, MILLISECOND, MINUTE, out_of_range};
use mcp_metrics_plugin::{ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig};
use serde::{Deserialize, Serialize};

use crate::queue::{QueueSettings, RetrySettings};

/// The configuration shipped in the repository, used when there is no `./pipelines.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../pipelines.yaml");

/// A configuration every part of which was checked.
pub struct ServiceConfig {
    /// What the components share and name by id (the database).
    pub extensions: BTreeMap<String, Box<dyn ExtensionConfig>>,
    pub receivers: BTreeMap<String, Box<dyn ReceiverConfig>>,
    pub processors: BTreeMap<String, Box<dyn ProcessorConfig>>,
    pub exporters: BTreeMap<String, ExporterSettings>,
    pub pipelines: BTreeMap<String, PipelineConfig>,
    pub settings: ServiceSettings,
    /// Things worth saying that do not stop the service (unused components).
    pub warnings: Vec<String>,
    /// Each component's settings as written (environment substituted), by `section.id`: a reload
    /// rebuilds a component only if its fingerprint changed.
    pub fingerprints: BTreeMap<String, String>,
    /// The text it was read from, to tell when a watched file changes.
    pub text: String,
}

impl ServiceConfig {
    pub fn fingerprint(&self, section: &str, id: &str) -> &str {
        self.fingerprints
            .get(&format!("{section}.{id}"))
            .map_or("", String::as_str)
    }
}

/// An exporter's own config and the queue and retry settings the engine wraps it in.
pub struct ExporterSettings {
    pub config: Box<dyn ExporterConfig>,
    pub sending_queue: QueueSettings,
    pub retry_on_failure: RetrySettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub receivers: Vec<String>,
    #[serde(default)]
    pub processors: Vec<String>,
    #[serde(default)]
    pub exporters: Vec<String>,
}

/// `service:` settings besides the pipelines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// How long shutdown may take to drain every queue through every exporter; 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `/health` reports unhealthy once an exporter's exports have failed for this long; 0 to
    /// 30d.
    #[serde(with = "humantime_serde")]
    pub export_failure_threshold: Duration,
    /// Reload when the config file changes (besides SIGHUP and `POST /admin/reload`).
    pub watch_config: bool,
    /// How often a watched config file is looked at; 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// How long a request may wait, from its head and before its body is read, for room in a
    /// full pipeline before it is refused with 503. Room frees up a whole export at a time, so a
    /// short wait turns a client's immediate resend into one request taken; 0 refuses at once.
    /// At most 1m.
    #[serde(with = "humantime_serde")]
    pub admission_wait: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            shutdown_timeout: Duration::from_secs(30),
            export_failure_threshold: Duration::from_secs(30),
            watch_config: false,
            watch_interval: Duration::from_secs(2),
            admission_wait: Duration::from_millis(250),
        }
    }
}

impl ServiceSettings {
    /// The keys out of their ranges, each message starting with its key.
    pub fn problems(&self) -> Vec<String> {
        [
            out_of_range(
                "shutdown_timeout",
                self.shutdown_timeout,
                MILLISECOND..=HOUR,
            ),
            out_of_range(
                "export_failure_threshold",
                self.export_failure_threshold,
                Duration::ZERO..=30 * DAY,
            ),
            // A timer of this period is made even when nothing is watched; zero panics it.
            out_of_range("watch_interval", self.watch_interval, MILLISECOND..=HOUR),
            // Every request adds it to the clock (past what an `Instant` holds, a panic), and
            // may wait that long holding a connection.
            out_of_range(
                "admission_wait",
                self.admission_wait,
                Duration::ZERO..=MINUTE,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `exporters.sqlite.path`, or `service.pipelines.metrics`.
    pub place: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        writeln!(
            f,
            "{} has {count} error{}:",
            self.source,
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            let line = error.line.map(|l| format!(":{l}")).unwrap_or_default();
            if error.place.is_empty() {
                writeln!(f, "  {}{line}: {}", self.source, error.message)?;
            } else {
                writeln!(
                    f,
                    "  {}{line}: {}: {}",
                    self.source, error.place, error.message
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn unreadable(source: String, error: &std::io::Error) -> ConfigErrors {
        ConfigErrors {
            source,
            errors: vec![ConfigError {
                place: String::new(),
                line: None,
                message: format!("cannot read: {error}"),
            }],
        }
    }
}

/// Reads and checks a config file.
pub fn load_file(path: &Path) -> Result<ServiceConfig, ConfigErrors> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &source, &|name| std::env::var(name).ok()),
        Err(error) => Err(ConfigErrors::unreadable(source, &error)),
    }
}

/// Checks config text; `env` looks up environment variables.
pub fn parse(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServiceConfig, ConfigErrors> {
    match check::check(text, env) {
        Ok(config) => Ok(config),
        Err(errors) => Err(ConfigErrors {
            source: source.to_owned(),
            errors,
        }),
    }
}
