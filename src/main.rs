//! `mcp-metrics`: run the service, check a config, list component types, manage API keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcp_metrics::Service;
use mcp_metrics::config::{self, ConfigErrors, EMBEDDED_DEFAULT, ServiceConfig};
use mcp_metrics_store::Store;

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
    Run(ConfigArg),
    /// Check a config and print every error in it; exit 1 if there is any.
    Validate(ConfigArg),
    /// List every component type with its config keys and defaults.
    Components,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        /// The database that holds the keys.
        #[arg(
            long,
            global = true,
            env = "SQLITE_DB_PATH",
            default_value = "./data/metrics.db"
        )]
        database: PathBuf,
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
        /// Requests per minute.
        #[arg(long, default_value_t = 1000)]
        rate_limit: u32,
    },
    /// List the keys (never the keys themselves: only their digests are stored).
    List,
    /// Deactivate a key by id.
    Revoke { id: i64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The OpenTelemetry crates log every failed OTLP push; the `otlp` exporter says it
            // once and then sparingly, so theirs are off unless RUST_LOG asks for them.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,opentelemetry=off".into()),
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
        match cli.command.unwrap_or(Command::Run(ConfigArg::default())) {
            Command::Run(arg) => run(arg).await,
            Command::Validate(arg) => validate(arg),
            Command::Components => {
                print!("{}", config::describe_components());
                Ok(())
            }
            Command::Keys { command, database } => keys(command, &database).await,
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

/// The config named, else `./pipelines.yaml`, else the one built in.
fn load(arg: &ConfigArg) -> Result<ServiceConfig, ConfigErrors> {
    let default = Path::new("pipelines.yaml");
    match &arg.config {
        Some(path) => config::load_file(path),
        None if default.exists() => config::load_file(default),
        None => {
            tracing::info!("no ./pipelines.yaml; using the built-in default");
            config::parse(EMBEDDED_DEFAULT, "built-in pipelines.yaml", &|name| {
                std::env::var(name).ok()
            })
        }
    }
}

async fn run(arg: ConfigArg) -> anyhow::Result<()> {
    let config = load(&arg)?;
    let service = Service::start(config).await?;
    service.run_until_signal().await
}

fn validate(arg: ConfigArg) -> anyhow::Result<()> {
    let config = load(&arg)?;
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    println!("config is valid: {} pipeline(s)", config.pipelines.len());
    Ok(())
}

async fn keys(command: KeysCommand, database: &Path) -> anyhow::Result<()> {
    let store = Store::open(database).await?;
    match command {
        KeysCommand::Create {
            service,
            rate_limit,
        } => {
            let (record, key) = store.create_key(&service, rate_limit).await?;
            println!(
                "Created key {} for service {} ({} requests/minute). It is shown only now:",
                record.id, record.service_name, record.rate_limit
            );
            println!("{key}");
        }
        KeysCommand::List => {
            println!(
                "{:>4}  {:<24} {:<8} {:>10}  {:<27}  LAST USED",
                "ID", "SERVICE", "ACTIVE", "RATE/MIN", "CREATED"
            );
            for key in store.list_keys().await? {
                println!(
                    "{:>4}  {:<24} {:<8} {:>10}  {:<27}  {}",
                    key.id,
                    key.service_name,
                    if key.is_active { "yes" } else { "no" },
                    key.rate_limit,
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
