//! `mcp-metrics components`: every registered component type with its keys at their defaults.

use mcp_metrics_plugin::{
    ExporterRegistration, ExtensionRegistration, ProcessorRegistration, ReceiverRegistration,
};
use serde_yaml::{Mapping, Value};

use crate::queue::{QueueSettings, RetrySettings};

/// Every registered component type, with its config keys at their defaults.
pub fn describe_components() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut kind = |title: &str, entries: Vec<(&str, &str, Value)>| {
        let _ = writeln!(out, "{title}:");
        for (name, description, defaults) in entries {
            let _ = writeln!(out, "  {name}: {description}");
            let yaml = serde_yaml::to_string(&defaults).unwrap_or_default();
            for line in yaml.lines().filter(|l| *l != "{}") {
                let _ = writeln!(out, "      {line}");
            }
        }
        out.push('\n');
    };
    kind(
        "extensions",
        ExtensionRegistration::all()
            .iter()
            .map(|r| (r.type_name, r.description, r.defaults()))
            .collect(),
    );
    kind(
        "receivers",
        ReceiverRegistration::all()
            .iter()
            .map(|r| (r.type_name, r.description, r.defaults()))
            .collect(),
    );
    kind(
        "processors",
        ProcessorRegistration::all()
            .iter()
            .map(|r| (r.type_name, r.description, r.defaults()))
            .collect(),
    );
    kind(
        "exporters",
        ExporterRegistration::all()
            .iter()
            .map(|r| (r.type_name, r.description, r.defaults()))
            .collect(),
    );
    let mut engine = Mapping::new();
    engine.insert(
        "sending_queue".into(),
        serde_yaml::to_value(QueueSettings::default()).unwrap_or_default(),
    );
    engine.insert(
        "retry_on_failure".into(),
        serde_yaml::to_value(RetrySettings::default()).unwrap_or_default(),
    );
    kind(
        "every exporter also takes",
        vec![(
            "(engine)",
            "the queue and retries the engine wraps each exporter in",
            Value::Mapping(engine),
        )],
    );
    out
}
