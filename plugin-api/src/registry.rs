//! How components are found by type name: each registers a [`Registration`] with `inventory`,
//! and the engine decodes the YAML of a component into its typed config through it.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::component::{BoxError, Consumer, Exporter, Processor, Receiver, ServiceControl};
use crate::listeners::Listeners;
use crate::telemetry::Telemetry;

/// A component's typed config: the front door of the component. Implementors derive
/// `Deserialize` with `#[serde(deny_unknown_fields, default)]` so a typo is an error.
pub trait ComponentConfig: DeserializeOwned + Serialize + Default + Send + Sync + 'static {
    /// Checks that go beyond types (ranges, combinations); one message per problem, each
    /// starting with the key it is about.
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a component is told when it is built.
#[derive(Clone)]
pub struct BuildContext {
    /// Its id in the config, `type` or `type/name`.
    pub id: String,
    /// Cancelled when the service shuts down; background tasks of the component stop on it.
    pub shutdown: CancellationToken,
    /// Where components that listen get their sockets (kept across reloads).
    pub listeners: Arc<Listeners>,
    /// The service's own telemetry, where a component records what it did.
    pub telemetry: Telemetry,
    /// The extensions of the config (`extensions:`), which components refer to by id.
    pub extensions: Arc<Extensions>,
}

/// What an extension offers the components that name it: the database, say. Components find it
/// by id and by the type they expect.
pub type Extension = Arc<dyn Any + Send + Sync>;

/// The built extensions, by id.
#[derive(Default)]
pub struct Extensions(BTreeMap<String, Extension>);

impl Extensions {
    pub fn new(built: BTreeMap<String, Extension>) -> Extensions {
        Extensions(built)
    }

    /// The extension `id`, if there is one and it offers a `T`.
    pub fn get<T: Any + Send + Sync + Clone>(&self, id: &str) -> Option<T> {
        self.0.get(id)?.downcast_ref::<T>().cloned()
    }
}

/// Something the components share rather than each making their own (the Collector's
/// `extensions:`): built before them, offered to them by id through [`BuildContext::extensions`].
#[async_trait]
pub trait ExtensionConfig: Send + Sync {
    async fn build(&self, cx: &BuildContext) -> Result<Extension, BoxError>;
}

#[async_trait]
pub trait ReceiverConfig: Send + Sync {
    /// Builds the receiver; `control` is the running service, for a receiver that serves
    /// operators (flush, reload, health).
    async fn build(
        &self,
        cx: &BuildContext,
        control: Arc<dyn ServiceControl>,
    ) -> Result<Box<dyn Receiver>, BoxError>;
}

#[async_trait]
pub trait ProcessorConfig: Send + Sync {
    async fn build(
        &self,
        cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError>;
}

#[async_trait]
pub trait ExporterConfig: Send + Sync {
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError>;
}

/// A problem with one component's config, at a key path below the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path below the component, empty for the component as a whole.
    pub path: String,
    pub message: String,
}

/// A component type known to the engine: its name and how to read its config.
pub struct Registration<C: ?Sized + 'static> {
    pub type_name: &'static str,
    pub description: &'static str,
    decode: fn(serde_yaml::Value) -> Result<Box<C>, Vec<ConfigIssue>>,
    defaults: fn() -> serde_yaml::Value,
    effective: fn(serde_yaml::Value) -> Result<serde_yaml::Value, Vec<ConfigIssue>>,
}

pub type ReceiverRegistration = Registration<dyn ReceiverConfig>;
pub type ProcessorRegistration = Registration<dyn ProcessorConfig>;
pub type ExporterRegistration = Registration<dyn ExporterConfig>;
pub type ExtensionRegistration = Registration<dyn ExtensionConfig>;

inventory::collect!(ReceiverRegistration);
inventory::collect!(ProcessorRegistration);
inventory::collect!(ExporterRegistration);
inventory::collect!(ExtensionRegistration);

impl<C: ?Sized + 'static> Registration<C> {
    /// Reads the component's YAML (null for none) into its typed, validated config.
    pub fn decode(&self, value: serde_yaml::Value) -> Result<Box<C>, Vec<ConfigIssue>> {
        (self.decode)(value)
    }

    /// The config with every key at its default, for `mcp-metrics components`.
    pub fn defaults(&self) -> serde_yaml::Value {
        (self.defaults)()
    }

    /// The config as the component sees it: every key, defaults filled in.
    pub fn effective(
        &self,
        value: serde_yaml::Value,
    ) -> Result<serde_yaml::Value, Vec<ConfigIssue>> {
        (self.effective)(value)
    }

    /// Every registered component of this kind, sorted by type name.
    pub fn all() -> Vec<&'static Registration<C>>
    where
        Registration<C>: inventory::Collect,
    {
        let mut all: Vec<_> = inventory::iter::<Registration<C>>.into_iter().collect();
        all.sort_by_key(|r| r.type_name);
        all
    }

    pub fn find(type_name: &str) -> Option<&'static Registration<C>>
    where
        Registration<C>: inventory::Collect,
    {
        inventory::iter::<Registration<C>>
            .into_iter()
            .find(|r| r.type_name == type_name)
    }
}

macro_rules! registration_constructor {
    ($config_trait:ident, $decode:ident) => {
        impl Registration<dyn $config_trait> {
            pub const fn of<T: ComponentConfig + $config_trait>(
                type_name: &'static str,
                description: &'static str,
            ) -> Self {
                Registration {
                    type_name,
                    description,
                    decode: $decode::<T>,
                    defaults: defaults::<T>,
                    effective: effective::<T>,
                }
            }
        }

        fn $decode<T: ComponentConfig + $config_trait>(
            value: serde_yaml::Value,
        ) -> Result<Box<dyn $config_trait>, Vec<ConfigIssue>> {
            decode::<T>(value).map(|config| Box::new(config) as Box<dyn $config_trait>)
        }
    };
}

registration_constructor!(ReceiverConfig, decode_receiver);
registration_constructor!(ProcessorConfig, decode_processor);
registration_constructor!(ExporterConfig, decode_exporter);
registration_constructor!(ExtensionConfig, decode_extension);

fn defaults<T: ComponentConfig>() -> serde_yaml::Value {
    serde_yaml::to_value(T::default()).unwrap_or(serde_yaml::Value::Null)
}

fn effective<T: ComponentConfig>(
    value: serde_yaml::Value,
) -> Result<serde_yaml::Value, Vec<ConfigIssue>> {
    let config = decode::<T>(value)?;
    Ok(serde_yaml::to_value(config).unwrap_or(serde_yaml::Value::Null))
}

fn decode<T: ComponentConfig>(value: serde_yaml::Value) -> Result<T, Vec<ConfigIssue>> {
    // `http:` with nothing after it means "all defaults".
    let mut value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        other => other,
    };
    // serde stops at the first error; an unknown key is taken out and the rest decoded again,
    // so one look at the errors shows every typo.
    let mut issues = Vec::new();
    let config: T = loop {
        let error = match serde_path_to_error::deserialize(value.clone()) {
            Ok(config) if issues.is_empty() => break config,
            Ok(_) => return Err(issues),
            Err(error) => error,
        };
        let path = error.path().to_string();
        let message = error.inner().to_string();
        let unknown = message.starts_with("unknown field `") && remove(&mut value, &path);
        issues.push(ConfigIssue {
            path: if path == "." { String::new() } else { path },
            message: hint_unknown_field(&message),
        });
        if !unknown {
            return Err(issues);
        }
    };
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems
            .into_iter()
            .map(|message| ConfigIssue {
                path: String::new(),
                message,
            })
            .collect())
    }
}

/// Removes the key at a dotted `path` of mappings; false if there is none.
fn remove(value: &mut serde_yaml::Value, path: &str) -> bool {
    let mut keys: Vec<&str> = path.split('.').collect();
    let Some(last) = keys.pop() else {
        return false;
    };
    let mut at = value;
    for key in keys {
        match at.get_mut(key) {
            Some(inner) => at = inner,
            None => return false,
        }
    }
    at.as_mapping_mut()
        // Keeping the order of the rest, so errors come in the order of the file.
        .is_some_and(|map| map.shift_remove(last).is_some())
}

/// serde says "unknown field `pth`, expected one of `path`, ..." (or "unknown variant"); this
/// adds the likely intent.
pub fn hint_unknown_field(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(unknown, known) {
        Some(intent) => format!("{message} (did you mean `{intent}`?)"),
        None => message.to_owned(),
    }
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        path: String,
        busy_timeout_ms: u64,
    }

    impl ComponentConfig for Sample {
        fn validate(&self) -> Vec<String> {
            if self.path.is_empty() {
                vec!["path: must not be empty".into()]
            } else {
                vec![]
            }
        }
    }

    #[test]
    fn unknown_key_suggests_the_known_one() {
        let value = serde_yaml::from_str("{pth: x}").unwrap();
        let issues = decode::<Sample>(value).unwrap_err();
        assert!(
            issues[0].message.contains("did you mean `path`?"),
            "{issues:?}"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_at_once() {
        let value =
            serde_yaml::from_str("{pth: x, busy_timeout: 5, busy_timeout_ms: soon}").unwrap();
        let issues = decode::<Sample>(value).unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["pth", "busy_timeout", "busy_timeout_ms"],
            "{issues:?}"
        );
        assert!(
            issues[1]
                .message
                .contains("did you mean `busy_timeout_ms`?")
        );
    }

    #[test]
    fn mistyped_value_names_its_path() {
        let value = serde_yaml::from_str("{path: x, busy_timeout_ms: soon}").unwrap();
        let issues = decode::<Sample>(value).unwrap_err();
        assert_eq!(issues[0].path, "busy_timeout_ms");
    }

    #[test]
    fn semantic_checks_run_after_decoding() {
        let issues = decode::<Sample>(serde_yaml::Value::Null).unwrap_err();
        assert_eq!(issues[0].message, "path: must not be empty");
    }
}
