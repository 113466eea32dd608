//! `mcp-metrics`: run the service, check a config, list component types, manage API keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcp_metrics::config::{self, EMBEDDED_DEFAULT, ServiceConfig};
use mcp_metrics::{ConfigSource, Service, Signals};
use mcp_metrics_store::{Database, migrate};

#[derive(Parser)]
#[command(
    name = "mcp-metrics",
    version,
    about = "Metrics collection for the MCP Gateway Registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default when no command is given).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the effective configuration (environment substituted, defaults filled in,
        /// secrets masked) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Check a config and print every error in it; exit 1 if there is any.
    Validate(ConfigArg),
    /// List every component type with its config keys and defaults.
    Components,
    /// Ask a running service whether it is healthy (exit 0) or not (exit 1), for a container's
    /// HEALTHCHECK.
    Health {
        /// Default: http://$METRICS_SERVICE_HOST:$METRICS_SERVICE_PORT/health (127.0.0.1, 8890).
        #[arg(long)]
        url: Option<String>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        /// The database that holds the keys: `postgres://user:pass@host/db`, `sqlite:///path`
        /// or a SQLite file path. Default: DATABASE_URL, else SQLITE_DB_PATH, else
        /// ./data/metrics.db, as the service itself reads them.
        #[arg(long, global = true)]
        database: Option<String>,
    },
    /// Copy every row (keys, retention policies, metrics) from a SQLite file into PostgreSQL.
    /// Keys already there are left as they are; metric rows get new ids, so replicas may be
    /// writing meanwhile. Run it once: a second run copies the metric rows again.
    Migrate {
        /// The SQLite file to read: `sqlite:///path` or a path.
        #[arg(long)]
        from: String,
        /// The PostgreSQL database to write (migrated first): `postgres://user:pass@host/db`.
        #[arg(long)]
        to: String,
    },
}

#[derive(clap::Args, Default)]
struct ConfigArg {
    /// The pipelines file; without it, ./pipelines.yaml, or the built-in default if there is none.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key for a service; prints the key once, as the last line.
    Create {
        #[arg(long)]
        service: String,
        /// Requests per minute, at least 1; without it the key follows the service's default
        /// (the rate_limit processor's `default_limit`, METRICS_RATE_LIMIT in the default config).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate_limit: Option<u32>,
        /// May use the /admin endpoints.
        #[arg(long)]
        admin: bool,
    },
    /// List the keys (never the keys themselves: only their digests are stored).
    List,
    /// Deactivate a key by id.
    Revoke { id: i64 },
}

/// Metrics arrive as many small JSON maps: a fast allocator that hands memory back keeps the hot
/// path quick and the resident size low (the profile showed glibc's malloc and free at a third of
/// the service's CPU). mimalloc 2 (`v2`) held less memory than mimalloc 3 under the same load.
/// Without transparent huge pages a touched byte costs 4 KiB of memory, not 2 MiB: an idle
/// service held 20 MiB of huge pages for 2 MiB of heap. `no_thp` stops mimalloc asking for them,
/// which is enough where the host gives them only on request (`madvise`, Debian's default);
/// [`no_transparent_huge_pages`] covers hosts that give them always.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (see [`ALLOCATOR`]).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets a flag of this process only.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| log_filter(None).into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let default = Command::Run {
            config: ConfigArg::default(),
            print_config: false,
        };
        match cli.command.unwrap_or(default) {
            Command::Run {
                config,
                print_config: true,
            } => {
                let (text, source) = config_text(&config)?;
                print!("{}", config::effective(&text, &source, &environment)?);
                Ok(())
            }
            Command::Run { config, .. } => run(config).await,
            Command::Validate(arg) => validate(arg),
            Command::Health { url } => {
                let url = url.unwrap_or_else(|| {
                    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                    let port = var("METRICS_SERVICE_PORT").unwrap_or_else(|| "8890".into());
                    // Listening on every interface means loopback answers too.
                    let host = var("METRICS_SERVICE_HOST")
                        .filter(|host| host != "0.0.0.0" && host != "::")
                        .unwrap_or_else(|| "127.0.0.1".into());
                    format!("http://{host}:{port}/health")
                });
                let body = mcp_metrics::probe::probe(&url, std::time::Duration::from_secs(3))
                    .map_err(|why| anyhow::anyhow!("unhealthy: {why}"))?;
                println!("{body}");
                Ok(())
            }
            Command::Components => {
                print!("{}", config::describe_components());
                Ok(())
            }
            Command::Keys { command, database } => keys(command, database).await,
            Command::Migrate { from, to } => migrate_rows(&from, &to).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// RUST_LOG (else `info`) with the OpenTelemetry crates' own logs off unless it names them: they
/// log every failed OTLP push, which the `otlp` exporter says once and then sparingly. A target
/// matches by prefix, so `opentelemetry` also covers `opentelemetry_sdk` and `opentelemetry-otlp`.
fn log_filter(rust_log: Option<&str>) -> String {
    match rust_log
        .map(str::trim)
        .filter(|directives| !directives.is_empty())
    {
        Some(directives) if directives.contains("opentelemetry") => directives.to_owned(),
        Some(directives) => format!("{directives},opentelemetry=off"),
        None => "info,opentelemetry=off".to_owned(),
    }
}

fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The config named, else `./pipelines.yaml`, else the one built in.
fn config_source(arg: &ConfigArg) -> ConfigSource {
    let default = Path::new("pipelines.yaml");
    match &arg.config {
        Some(path) => ConfigSource::File(path.clone()),
        None if default.exists() => ConfigSource::File(default.to_owned()),
        None => {
            tracing::info!("no ./pipelines.yaml; using the built-in default");
            ConfigSource::Text {
                text: EMBEDDED_DEFAULT.to_owned(),
                name: "built-in pipelines.yaml".to_owned(),
            }
        }
    }
}

/// The text of the config and its name for messages.
fn config_text(arg: &ConfigArg) -> anyhow::Result<(String, String)> {
    config_source(arg).read().map_err(anyhow::Error::msg)
}

fn load(arg: &ConfigArg) -> anyhow::Result<ServiceConfig> {
    let (text, source) = config_text(arg)?;
    Ok(config::parse(&text, &source, &environment)?)
}

async fn run(arg: ConfigArg) -> anyhow::Result<()> {
    let source = config_source(&arg);
    let (text, name) = source.read().map_err(anyhow::Error::msg)?;
    let config = config::parse(&text, &name, &environment)?;
    let signals = Signals::new()?;
    let service = Service::start_from(config, Some(source)).await?;
    service.run_until_signal(signals).await
}

fn validate(arg: ConfigArg) -> anyhow::Result<()> {
    let config = load(&arg)?;
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    println!("config is valid: {} pipeline(s)", config.pipelines.len());
    Ok(())
}

/// The database the service would use when none is given: DATABASE_URL, else SQLITE_DB_PATH,
/// else ./data/metrics.db (as in the embedded `pipelines.yaml`).
fn default_database() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    var("DATABASE_URL")
        .or_else(|| var("SQLITE_DB_PATH"))
        .unwrap_or_else(|| "./data/metrics.db".into())
}

async fn keys(command: KeysCommand, database: Option<String>) -> anyhow::Result<()> {
    let store = Database::open(&database.unwrap_or_else(default_database)).await?;
    match command {
        KeysCommand::Create {
            service,
            rate_limit,
            admin,
        } => {
            let (record, key) = store.create_key(&service, rate_limit, admin).await?;
            println!(
                "Created {}key {} for service {} ({} requests/minute). It is shown only now:",
                if admin { "admin " } else { "" },
                record.id,
                record.service_name,
                limit_text(record.rate_limit)
            );
            println!("{key}");
        }
        KeysCommand::List => {
            println!(
                "{:>4}  {:<24} {:<8} {:<6} {:>10}  {:<4} {:<27}  LAST USED",
                "ID", "SERVICE", "ACTIVE", "ADMIN", "RATE/MIN", "FROM", "CREATED"
            );
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            for key in store.list_keys().await? {
                println!(
                    "{:>4}  {:<24} {:<8} {:<6} {:>10}  {:<4} {:<27}  {}",
                    key.id,
                    key.service_name,
                    yes_no(key.is_active),
                    yes_no(key.is_admin),
                    limit_text(key.rate_limit),
                    key.source.as_deref().unwrap_or("cli"),
                    key.created_at,
                    key.last_used_at.as_deref().unwrap_or("never"),
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_key(id).await? {
                anyhow::bail!("no key with id {id}");
            }
            println!("Key {id} revoked; the service refuses it within its refresh interval.");
        }
    }
    Ok(())
}

async fn migrate_rows(from: &str, to: &str) -> anyhow::Result<()> {
    let source = Database::open(from).await?;
    let target = Database::open(to).await?;
    println!("Copying {} into {}", source.location(), target.location());
    for (table, rows) in migrate(&source, &target).await? {
        println!("{table:>20}: {rows} rows");
    }
    println!("Done.");
    Ok(())
}

fn limit_text(limit: Option<u32>) -> String {
    limit.map_or_else(|| "default".to_owned(), |n| n.to_string())
}
