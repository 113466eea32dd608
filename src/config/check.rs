//! Checking a config: every section, component and pipeline, all errors at once with their place
//! (a line where the text has one) and a did-you-mean where one fits.

use std::collections::{BTreeMap, BTreeSet};

use mcp_metrics_plugin::{
    ConfigIssue, ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig, Registration,
    closest, hint_unknown_field,
};
use serde_yaml::{Mapping, Value};

use super::{
    ConfigError, ExporterSettings, PipelineConfig, ServiceConfig, ServiceSettings, env, locate,
};
use crate::queue::{QueueSettings, RetrySettings};

/// The checked config, or every error found in it.
pub(super) fn check(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServiceConfig, Vec<ConfigError>> {
    let mut checker = Checker {
        text,
        errors: Vec::new(),
        defined: BTreeMap::new(),
        fingerprints: BTreeMap::new(),
    };
    match checker.check(env) {
        Some(config) if checker.errors.is_empty() => Ok(config),
        _ => Err(checker.errors),
    }
}

const SECTIONS: [&str; 5] = [
    "extensions",
    "receivers",
    "processors",
    "exporters",
    "service",
];

struct Checker<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
    /// Component ids as written per section, including those whose settings had errors, so a
    /// pipeline naming them is not told a second, misleading error.
    defined: BTreeMap<String, BTreeSet<String>>,
    fingerprints: BTreeMap<String, String>,
}

impl Checker<'_> {
    fn error(&mut self, path: &[&str], message: impl Into<String>) {
        self.errors.push(ConfigError {
            place: path.join("."),
            line: locate::line_of(self.text, path),
            message: message.into(),
        });
    }

    /// An error about the key a "key: message" names, below `path`: placed at `path`, with the
    /// key's line where it is written.
    fn key_error(&mut self, path: &[&str], message: String) {
        let mut located = path.to_vec();
        if let Some((key, _)) = message.split_once(": ").filter(|(k, _)| !k.contains(' ')) {
            located.extend(key.split('.'));
        }
        self.errors.push(ConfigError {
            place: path.join("."),
            line: locate::line_of(self.text, &located),
            message,
        });
    }

    fn check(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Option<ServiceConfig> {
        let mut root: Value = match serde_yaml::from_str(self.text) {
            Ok(Value::Null) => Value::Mapping(Mapping::new()),
            Ok(root) => root,
            Err(error) => {
                self.errors.push(ConfigError {
                    place: String::new(),
                    line: error.location().map(|l| l.line()),
                    message: format!("not valid YAML: {error}"),
                });
                return None;
            }
        };
        for problem in env::substitute(&mut root, "", env) {
            let (place, message) = problem.split_once(": ").unwrap_or(("", &problem));
            let path: Vec<&str> = place.split('.').collect();
            let (place, message) = (place.to_owned(), message.to_owned());
            self.errors.push(ConfigError {
                line: locate::line_of(self.text, &path),
                place,
                message,
            });
        }
        let Value::Mapping(mut root) = root else {
            self.error(
                &[],
                "must be a mapping with extensions, receivers, processors, exporters and service",
            );
            return None;
        };
        for key in root.keys() {
            let key = key.as_str().unwrap_or_default();
            // `x-...` keys hold YAML anchors for the sections to refer to, as in Compose files.
            if !SECTIONS.contains(&key) && !key.starts_with("x-") {
                let hint = suggestion(key, SECTIONS);
                self.error(
                    &[key],
                    format!(
                        "unknown section; expected one of {}{hint}",
                        SECTIONS.join(", ")
                    ),
                );
            }
        }
        let extensions =
            self.components::<dyn ExtensionConfig>(&mut root, "extensions", "extension");
        let receivers = self.components::<dyn ReceiverConfig>(&mut root, "receivers", "receiver");
        let processors =
            self.components::<dyn ProcessorConfig>(&mut root, "processors", "processor");
        let exporters = self.exporters(&mut root);
        let (pipelines, settings) = self.service(&mut root)?;
        let mut warnings = Vec::new();
        self.check_pipelines(
            &pipelines,
            &receivers,
            &processors,
            &exporters,
            &mut warnings,
        );
        self.fingerprint_extensions_into_components();
        Some(ServiceConfig {
            extensions,
            receivers,
            processors,
            exporters,
            pipelines,
            settings,
            warnings,
            fingerprints: std::mem::take(&mut self.fingerprints),
            text: self.text.to_owned(),
        })
    }

    /// A component may use any extension, so a changed extension counts as a change of every
    /// component: a reload then rebuilds them on the new one.
    fn fingerprint_extensions_into_components(&mut self) {
        let extensions: String = self
            .fingerprints
            .iter()
            .filter(|(key, _)| key.starts_with("extensions."))
            .map(|(key, written)| format!("{key}: {written}"))
            .collect();
        for (key, written) in self.fingerprints.iter_mut() {
            if !key.starts_with("extensions.") {
                written.push_str(&extensions);
            }
        }
    }

    /// Decodes every component of a section through the registry.
    fn components<C: ?Sized + 'static>(
        &mut self,
        root: &mut Mapping,
        section: &str,
        kind: &str,
    ) -> BTreeMap<String, Box<C>>
    where
        Registration<C>: inventory::Collect,
    {
        let mut built = BTreeMap::new();
        for (id, value) in self.section(root, section) {
            if let Some(config) = self.decode::<C>(section, kind, &id, value) {
                built.insert(id, config);
            }
        }
        built
    }

    fn section(&mut self, root: &mut Mapping, section: &str) -> Vec<(String, Value)> {
        let entries: Vec<(String, Value)> = match root.remove(section) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Mapping(map)) => map
                .into_iter()
                .map(|(key, value)| (key.as_str().unwrap_or_default().to_owned(), value))
                .collect(),
            Some(_) => {
                self.error(
                    &[section],
                    "must be a mapping of component ids to their settings",
                );
                Vec::new()
            }
        };
        let ids = entries.iter().map(|(id, _)| id.clone()).collect();
        self.defined.insert(section.to_owned(), ids);
        for (id, value) in &entries {
            let written = serde_yaml::to_string(value).unwrap_or_default();
            self.fingerprints.insert(format!("{section}.{id}"), written);
        }
        entries
    }

    fn decode<C: ?Sized + 'static>(
        &mut self,
        section: &str,
        kind: &str,
        id: &str,
        value: Value,
    ) -> Option<Box<C>>
    where
        Registration<C>: inventory::Collect,
    {
        let type_name = id.split_once('/').map_or(id, |(type_name, _)| type_name);
        let Some(registration) = Registration::<C>::find(type_name) else {
            let known: Vec<&str> = Registration::<C>::all()
                .iter()
                .map(|r| r.type_name)
                .collect();
            let hint = suggestion(type_name, known.iter().copied());
            self.error(
                &[section, id],
                format!(
                    "unknown {kind} type `{type_name}`{hint}; known types: {}",
                    known.join(", ")
                ),
            );
            return None;
        };
        match registration.decode(value) {
            Ok(config) => Some(config),
            Err(issues) => {
                self.issues(section, id, issues);
                None
            }
        }
    }

    fn issues(&mut self, section: &str, id: &str, issues: Vec<ConfigIssue>) {
        for issue in issues {
            let mut path = vec![section, id];
            path.extend(issue.path.split('.').filter(|p| !p.is_empty()));
            // A key-level check says "key: message"; point at that key.
            let key = issue
                .message
                .split_once(": ")
                .map(|(key, _)| key)
                .filter(|k| !k.contains(' '));
            let mut located = path.clone();
            if let Some(key) = key.filter(|_| issue.path.is_empty()) {
                located.push(key);
            }
            self.errors.push(ConfigError {
                place: path.join("."),
                line: locate::line_of(self.text, &located),
                message: issue.message,
            });
        }
    }

    fn exporters(&mut self, root: &mut Mapping) -> BTreeMap<String, ExporterSettings> {
        let mut built = BTreeMap::new();
        for (id, mut value) in self.section(root, "exporters") {
            let sending_queue =
                self.engine_setting::<QueueSettings>(&id, &mut value, "sending_queue");
            let retry_on_failure =
                self.engine_setting::<RetrySettings>(&id, &mut value, "retry_on_failure");
            let config = self.decode::<dyn ExporterConfig>("exporters", "exporter", &id, value);
            if let (Some(config), Some(sending_queue), Some(retry_on_failure)) =
                (config, sending_queue, retry_on_failure)
            {
                built.insert(
                    id,
                    ExporterSettings {
                        config,
                        sending_queue,
                        retry_on_failure,
                    },
                );
            }
        }
        built
    }

    /// Takes a setting the engine gives every exporter out of the exporter's own keys.
    fn engine_setting<T: mcp_metrics_plugin::ComponentConfig>(
        &mut self,
        id: &str,
        value: &mut Value,
        key: &str,
    ) -> Option<T> {
        let setting = value
            .as_mapping_mut()
            .and_then(|map| map.remove(key))
            .unwrap_or(Value::Null);
        let setting = if setting.is_null() {
            Value::Mapping(Mapping::new())
        } else {
            setting
        };
        match serde_path_to_error::deserialize::<_, T>(setting) {
            Ok(settings) => {
                let problems = settings.validate();
                let ok = problems.is_empty();
                for problem in problems {
                    self.key_error(&["exporters", id, key], problem);
                }
                ok.then_some(settings)
            }
            Err(error) => {
                let mut path = vec!["exporters", id, key];
                let inner = error.path().to_string();
                path.extend(inner.split('.').filter(|p| !p.is_empty() && *p != "?"));
                self.error(&path, error.inner().to_string());
                None
            }
        }
    }

    fn service(
        &mut self,
        root: &mut Mapping,
    ) -> Option<(BTreeMap<String, PipelineConfig>, ServiceSettings)> {
        let service = match root.remove("service") {
            Some(Value::Mapping(map)) => map,
            _ => {
                self.error(
                    &["service"],
                    "missing: `service.pipelines` must wire at least one pipeline",
                );
                return None;
            }
        };
        let mut pipelines = BTreeMap::new();
        let mut rest = Mapping::new();
        for (key, value) in service {
            if key.as_str() == Some("pipelines") {
                match value {
                    Value::Mapping(map) => {
                        for (name, pipeline) in map {
                            let name = name.as_str().unwrap_or_default().to_owned();
                            match serde_path_to_error::deserialize::<_, PipelineConfig>(pipeline) {
                                Ok(pipeline) => {
                                    pipelines.insert(name, pipeline);
                                }
                                Err(error) => {
                                    let path = ["service", "pipelines", &name];
                                    self.error(
                                        &path,
                                        hint_unknown_field(&error.inner().to_string()),
                                    );
                                }
                            }
                        }
                    }
                    _ => self.error(
                        &["service", "pipelines"],
                        "must be a mapping of pipeline names to their components",
                    ),
                }
            } else {
                rest.insert(key, value);
            }
        }
        let settings =
            match serde_path_to_error::deserialize::<_, ServiceSettings>(Value::Mapping(rest)) {
                Ok(settings) => {
                    for problem in settings.problems() {
                        self.key_error(&["service"], problem);
                    }
                    settings
                }
                Err(error) => {
                    let key = error.path().to_string();
                    self.error(
                        &["service", &key],
                        hint_unknown_field(&format!(
                            "{}; `service` also takes `pipelines`",
                            error.inner()
                        )),
                    );
                    ServiceSettings::default()
                }
            };
        if pipelines.is_empty()
            && !self
                .errors
                .iter()
                .any(|e| e.place.starts_with("service.pipelines"))
        {
            self.error(
                &["service", "pipelines"],
                "no pipeline: wire at least one receiver to one exporter",
            );
        }
        Some((pipelines, settings))
    }

    fn check_pipelines(
        &mut self,
        pipelines: &BTreeMap<String, PipelineConfig>,
        receivers: &BTreeMap<String, Box<dyn ReceiverConfig>>,
        processors: &BTreeMap<String, Box<dyn ProcessorConfig>>,
        exporters: &BTreeMap<String, ExporterSettings>,
        warnings: &mut Vec<String>,
    ) {
        let defined = |section: &str| self.defined.get(section).cloned().unwrap_or_default();
        let sections = [
            ("receivers", "receiver", defined("receivers")),
            ("processors", "processor", defined("processors")),
            ("exporters", "exporter", defined("exporters")),
        ];
        let mut used: BTreeSet<(usize, String)> = BTreeSet::new();
        for (name, pipeline) in pipelines {
            let lists = [
                &pipeline.receivers,
                &pipeline.processors,
                &pipeline.exporters,
            ];
            for (slot, (section, kind, ids)) in sections.iter().enumerate() {
                let list = lists[slot];
                let place = ["service", "pipelines", name.as_str(), section];
                if list.is_empty() && slot != 1 {
                    self.error(&place, format!("a pipeline needs at least one {kind}"));
                }
                let mut seen = BTreeSet::new();
                for id in list {
                    if !seen.insert(id) {
                        self.error(&place, format!("{kind} `{id}` is listed twice"));
                    } else if !ids.contains(id) {
                        let hint = suggestion(id, ids.iter().map(String::as_str));
                        self.error(
                            &place,
                            format!("{kind} `{id}` is not defined under `{section}:`{hint}"),
                        );
                    }
                    used.insert((slot, id.clone()));
                }
            }
        }
        let built: [Vec<&String>; 3] = [
            receivers.keys().collect(),
            processors.keys().collect(),
            exporters.keys().collect(),
        ];
        for (slot, ids) in built.iter().enumerate() {
            for id in ids {
                if !used.contains(&(slot, (*id).clone())) {
                    warnings.push(format!(
                        "{}.{id} is defined but no pipeline uses it",
                        sections[slot].0
                    ));
                }
            }
        }
    }
}

fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}
