//! The running service: start the graph, wait for a signal, then drain in order — receivers stop
//! taking requests and finish the ones in flight, processors hand on what they hold, exporter
//! queues export everything queued — within the shutdown deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use mcp_metrics_plugin::{CancellationToken, Processor};
use tokio::task::JoinSet;

use crate::config::ServiceConfig;
use crate::control::Control;
use crate::pipeline;
use crate::queue::ExporterQueue;

pub struct Service {
    receivers: JoinSet<(String, Result<(), mcp_metrics_plugin::BoxError>)>,
    receiver_addrs: Vec<(String, SocketAddr)>,
    processors: Vec<(String, Vec<Arc<dyn Processor>>)>,
    exporters: Vec<Arc<ExporterQueue>>,
    /// Cancelled first: receivers stop taking input.
    stop_receiving: CancellationToken,
    /// Cancelled last: components' background tasks stop.
    stop_components: CancellationToken,
    shutdown_timeout: Duration,
}

impl Service {
    /// Builds every component and starts the receivers. On error nothing is left running.
    pub async fn start(config: ServiceConfig) -> anyhow::Result<Service> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let stop_components = CancellationToken::new();
        let control = Arc::new(Control::default());
        let graph = match pipeline::build(&config, &stop_components, control.clone()).await {
            Ok(graph) => graph,
            Err(error) => {
                stop_components.cancel();
                return Err(error);
            }
        };
        let processors = graph
            .processors
            .iter()
            .flat_map(|(_, chain)| chain.iter().cloned());
        control.set(processors.collect(), graph.exporters.clone());
        let stop_receiving = CancellationToken::new();
        let mut receivers = JoinSet::new();
        let mut receiver_addrs = Vec::new();
        for (id, receiver, next) in graph.receivers {
            if let Some(addr) = receiver.local_addr() {
                receiver_addrs.push((id.clone(), addr));
            }
            let stop = stop_receiving.clone();
            receivers.spawn(async move { (id, receiver.run(next, stop).await) });
        }
        tracing::info!(pipelines = config.pipelines.len(), "mcp-metrics started");
        Ok(Service {
            receivers,
            receiver_addrs,
            processors: graph.processors,
            exporters: graph.exporters,
            stop_receiving,
            stop_components,
            shutdown_timeout: config.settings.shutdown_timeout,
        })
    }

    /// The address a receiver listens on, by its id in the config.
    pub fn receiver_addr(&self, id: &str) -> Option<SocketAddr> {
        self.receiver_addrs
            .iter()
            .find(|(rid, _)| rid == id)
            .map(|(_, addr)| *addr)
    }

    /// The address an exporter serves on (a scrape endpoint), by its id in the config.
    pub fn exporter_addr(&self, id: &str) -> Option<SocketAddr> {
        self.exporters
            .iter()
            .find(|e| e.id() == id)
            .and_then(|e| e.exporter().local_addr())
    }

    /// Runs until SIGTERM or Ctrl-C (or a receiver fails), then shuts down.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        tokio::select! {
            signal = shutdown_signal() => tracing::info!("{signal}: shutting down"),
            Some(ended) = self.receivers.join_next() => {
                match ended {
                    Ok((id, Err(error))) => tracing::error!(receiver = %id, %error, "receiver failed; shutting down"),
                    Ok((id, Ok(()))) => tracing::warn!(receiver = %id, "receiver stopped; shutting down"),
                    Err(error) => tracing::error!(%error, "receiver panicked; shutting down"),
                }
            }
        }
        self.shutdown().await
    }

    /// Stops taking metrics and delivers everything taken, within the shutdown deadline.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let deadline = self.shutdown_timeout;
        self.stop_receiving.cancel();
        let drained = tokio::time::timeout(deadline, self.drain()).await;
        self.stop_components.cancel();
        if drained.is_err() {
            let left: usize = self.exporters.iter().map(|e| e.queued()).sum();
            bail!("shutdown deadline of {deadline:?} passed with {left} metrics not yet exported");
        }
        tracing::info!("mcp-metrics stopped; every accepted metric was handed to its exporters");
        Ok(())
    }

    async fn drain(&mut self) {
        while let Some(ended) = self.receivers.join_next().await {
            if let Ok((id, Err(error))) = ended {
                tracing::warn!(receiver = %id, %error, "receiver ended with an error");
            }
        }
        for (_, chain) in &self.processors {
            for processor in chain {
                processor.shutdown().await;
            }
        }
        for exporter in &self.exporters {
            exporter.drain().await;
        }
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
