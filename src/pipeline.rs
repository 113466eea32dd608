//! Builds the running graph from a checked config, through the registry alone: exporters (each
//! behind its queue, shared by every pipeline that names it), then each pipeline's processors
//! from last to first, then the receivers, each fanning out to the pipelines that name it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use mcp_metrics_plugin::{
    BuildContext, CancellationToken, Consumer, Processor, Receiver, ServiceControl,
};

use crate::config::ServiceConfig;
use crate::fanout::Fanout;
use crate::queue::ExporterQueue;

/// A receiver, its id, and what it feeds.
pub type BuiltReceiver = (String, Box<dyn Receiver>, Arc<dyn Consumer>);

/// Everything built, not yet running.
pub struct Graph {
    pub receivers: Vec<BuiltReceiver>,
    /// Per pipeline, its processors in pipeline order.
    pub processors: Vec<(String, Vec<Arc<dyn Processor>>)>,
    pub exporters: Vec<Arc<ExporterQueue>>,
}

pub async fn build(
    config: &ServiceConfig,
    components: &CancellationToken,
    control: Arc<dyn ServiceControl>,
) -> anyhow::Result<Graph> {
    let cx = |id: &str| BuildContext {
        id: id.to_owned(),
        shutdown: components.clone(),
        control: control.clone(),
    };
    let mut exporters = BTreeMap::new();
    for (id, settings) in &config.exporters {
        let exporter = settings
            .config
            .build(&cx(id))
            .await
            .map_err(|e| anyhow!("exporters.{id}: {e}"))?;
        let queue = ExporterQueue::start(
            id.clone(),
            exporter,
            &settings.sending_queue,
            &settings.retry_on_failure,
        );
        exporters.insert(id.clone(), queue);
    }

    let mut entries: BTreeMap<&str, Vec<Arc<dyn Consumer>>> = BTreeMap::new();
    let mut processors = Vec::new();
    for (name, pipeline) in &config.pipelines {
        let mut next = Fanout::of(
            pipeline
                .exporters
                .iter()
                .map(|id| exporters[id].clone() as Arc<dyn Consumer>)
                .collect(),
        );
        let mut chain = Vec::new();
        for id in pipeline.processors.iter().rev() {
            let processor = config.processors[id]
                .build(&cx(id), next)
                .await
                .map_err(|e| anyhow!("processors.{id} (pipeline {name}): {e}"))?;
            next = processor.clone();
            chain.push(processor);
        }
        chain.reverse();
        processors.push((name.clone(), chain));
        for id in &pipeline.receivers {
            entries.entry(id).or_default().push(next.clone());
        }
    }

    let mut receivers = Vec::new();
    for (id, consumers) in entries {
        let receiver = config.receivers[id]
            .build(&cx(id))
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("receivers.{id}"))?;
        receivers.push((id.to_owned(), receiver, Fanout::of(consumers)));
    }
    Ok(Graph {
        receivers,
        processors,
        exporters: exporters.into_values().collect(),
    })
}
