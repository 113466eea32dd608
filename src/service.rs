//! The running service: build the graph, serve until a signal, reload on SIGHUP (or a file
//! change, or `POST /admin/reload`), then drain in order — receivers stop taking requests and
//! finish the ones in flight, processors hand on what they hold, exporter queues export
//! everything queued — within the shutdown deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use futures::future::join_all;
use mcp_metrics_plugin::{CancellationToken, Listeners, Telemetry};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{self, ServiceConfig, ServiceSettings};
use crate::control::{Control, ReloadRequest};
use crate::graph::{Base, Graph, Plan};

/// Where the configuration comes from, to read it again on reload.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// Text with no file behind it (the built-in default): a reload finds nothing new.
    Text {
        text: String,
        name: String,
    },
}

impl ConfigSource {
    /// The text, and its name for messages.
    pub fn read(&self) -> Result<(String, String), String> {
        match self {
            ConfigSource::File(path) => std::fs::read_to_string(path)
                .map(|text| (text, path.display().to_string()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            ConfigSource::Text { text, name } => Ok((text.clone(), name.clone())),
        }
    }
}

pub struct Service {
    graph: Graph,
    base: Base,
    control: Arc<Control>,
    source: Option<ConfigSource>,
    settings: ServiceSettings,
    reloads: mpsc::Receiver<ReloadRequest>,
    receiver_failures: mpsc::UnboundedReceiver<(String, String)>,
    /// The config text last read, to tell when a watched file changes.
    text: String,
    /// What earlier reloads replaced, still draining; shutdown waits for them.
    draining: Vec<JoinHandle<()>>,
}

impl Service {
    /// Builds every component and starts the receivers. On error nothing is left running.
    pub async fn start(config: ServiceConfig) -> anyhow::Result<Service> {
        Service::start_from(config, None).await
    }

    /// As [`Service::start`], able to reload from `source`.
    pub async fn start_from(
        config: ServiceConfig,
        source: Option<ConfigSource>,
    ) -> anyhow::Result<Service> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let (reload_requests, reloads) = mpsc::channel(4);
        let (failures, receiver_failures) = mpsc::unbounded_channel();
        let telemetry = Telemetry::default();
        let control = Arc::new(Control::new(reload_requests, telemetry.clone()));
        let base = Base {
            components: CancellationToken::new(),
            control: control.clone(),
            listeners: Arc::new(Listeners::default()),
            telemetry,
            receiver_failures: failures,
        };
        let plan = match Plan::build(&config, None, &base).await {
            Ok(plan) => plan,
            Err(error) => {
                base.components.cancel();
                return Err(error);
            }
        };
        let (graph, _) = Graph::commit(plan, Graph::default(), &base);
        control.set(
            graph.processors(),
            graph.queues(),
            config.settings.export_failure_threshold,
        );
        tracing::info!(pipelines = config.pipelines.len(), "mcp-metrics started");
        Ok(Service {
            graph,
            base,
            control,
            source,
            settings: config.settings,
            reloads,
            receiver_failures,
            text: config.text,
            draining: Vec::new(),
        })
    }

    /// The address a receiver listens on, by its id in the config.
    pub fn receiver_addr(&self, id: &str) -> Option<SocketAddr> {
        self.graph.receivers.get(id).and_then(|r| r.addr)
    }

    /// The address an exporter serves on (a scrape endpoint), by its id in the config.
    pub fn exporter_addr(&self, id: &str) -> Option<SocketAddr> {
        self.graph
            .exporters
            .get(id)
            .and_then(|e| e.queue.exporter().local_addr())
    }

    /// Reads the configuration again and applies it as a diff: only components whose settings
    /// changed are rebuilt, the rest go on, and what was replaced drains in the background (it
    /// may be serving the very request that asked for the reload). A configuration with errors is
    /// refused whole and the running pipelines go on; the errors are returned.
    pub async fn reload(&mut self) -> Result<String, String> {
        let Some(source) = &self.source else {
            return Err(
                "this service was not started from a configuration it can read again".into(),
            );
        };
        let (text, name) = source.read()?;
        self.text.clone_from(&text);
        let config = config::parse(&text, &name, &|var| std::env::var(var).ok())
            .map_err(|e| e.to_string())?;
        let plan = match Plan::build(&config, Some(&self.graph), &self.base).await {
            Ok(plan) => plan,
            Err(error) => {
                // Let go of any socket the failed build opened.
                self.base.listeners.keep_serving(&self.graph.addrs());
                return Err(format!("{error:#}"));
            }
        };
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let previous = std::mem::take(&mut self.graph);
        let (graph, retired) = Graph::commit(plan, previous, &self.base);
        self.graph = graph;
        self.settings = config.settings;
        self.control.set(
            self.graph.processors(),
            self.graph.queues(),
            self.settings.export_failure_threshold,
        );
        let replaced = retired.count();
        self.draining.retain(|drain| !drain.is_finished());
        self.draining.push(tokio::spawn(retired.drain()));
        self.base.listeners.keep_serving(&self.graph.addrs());
        Ok(format!(
            "reloaded {name}: {replaced} component(s) replaced or removed, the rest kept"
        ))
    }

    /// Runs until SIGTERM or Ctrl-C (or a receiver fails), reloading on SIGHUP, then shuts down.
    /// `signals` were caught since before the service started (see [`Signals`]).
    pub async fn run_until_signal(mut self, mut signals: Signals) -> anyhow::Result<()> {
        let mut watch = tokio::time::interval(self.settings.watch_interval);
        loop {
            if watch.period() != self.settings.watch_interval {
                watch = tokio::time::interval(self.settings.watch_interval);
            }
            tokio::select! {
                signal = signals.next() => match signal {
                    Signal::Hangup => self.reload_and_log("SIGHUP").await,
                    Signal::Stop(name) => {
                        tracing::info!("{name}: shutting down");
                        break;
                    }
                },
                Some(reply) = self.reloads.recv() => {
                    let result = self.reload().await;
                    log_reload("POST /admin/reload", &result);
                    let _ = reply.send(result);
                }
                _ = watch.tick(), if self.settings.watch_config => {
                    let text = self.source.as_ref().and_then(|s| s.read().ok()).map(|(text, _)| text);
                    if text.is_some_and(|text| text != self.text) {
                        self.reload_and_log("config file changed").await;
                    }
                }
                Some((id, why)) = self.receiver_failures.recv() => {
                    tracing::error!(receiver = %id, %why, "receiver stopped; shutting down");
                    break;
                }
            }
        }
        self.shutdown().await
    }

    async fn reload_and_log(&mut self, cause: &str) {
        let result = self.reload().await;
        log_reload(cause, &result);
    }

    /// Stops taking metrics and delivers everything taken, within the shutdown deadline.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let deadline = self.settings.shutdown_timeout;
        self.control.stopping();
        // Only the receivers hold their sockets now: once they stop, connections are refused
        // rather than left waiting in the backlog.
        self.base.listeners.keep_serving(&[]);
        let queues = self.graph.queues();
        let retired = std::mem::take(&mut self.graph).retire();
        let earlier = std::mem::take(&mut self.draining);
        let everything = async {
            retired.drain().await;
            join_all(earlier).await;
        };
        let drained = tokio::time::timeout(deadline, everything).await;
        self.base.components.cancel();
        if drained.is_err() {
            let left: usize = queues.iter().map(|q| q.queued()).sum();
            bail!("shutdown deadline of {deadline:?} passed with {left} metrics not yet exported");
        }
        tracing::info!("mcp-metrics stopped; every accepted metric was handed to its exporters");
        Ok(())
    }
}

fn log_reload(cause: &str, result: &Result<String, String>) {
    match result {
        Ok(summary) => tracing::info!("{cause}: {summary}"),
        Err(errors) => tracing::error!(
            "{cause}: configuration refused, the running pipelines go on:\n{errors}"
        ),
    }
}

/// The signals the service acts on, caught from when this is made. Make it before the service
/// starts: its receivers answer requests at once, and a SIGTERM (or SIGINT, SIGHUP) arriving
/// before the handlers would take the default action, killing the process with what it had
/// acknowledged still in memory.
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    #[cfg(not(unix))]
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signal::Stop("Ctrl-C"),
            _ = self.hangup.recv() => Signal::Hangup,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop("Ctrl-C")
        }
    }
}

enum Signal {
    /// Shut down.
    Stop(&'static str),
    /// Reload the configuration.
    Hangup,
}
