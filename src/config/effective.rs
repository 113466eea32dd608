//! `run --print-config`: the configuration as the components see it, secrets masked.

use mcp_metrics_plugin::{
    ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig, Registration,
};
use serde_yaml::{Mapping, Value};

use super::{ConfigErrors, env, parse};
use crate::queue::{QueueSettings, RetrySettings};

/// The configuration as the components see it: the environment substituted, every key of every
/// component at its value or default, secrets masked. For `run --print-config`.
pub fn effective(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    parse(text, source, env)?;
    let mut root: Value = serde_yaml::from_str(text).unwrap_or(Value::Null);
    env::substitute(&mut root, "", env);
    if let Some(root) = root.as_mapping_mut() {
        fill_defaults::<dyn ExtensionConfig>(root, "extensions", |_| {});
        fill_defaults::<dyn ReceiverConfig>(root, "receivers", |_| {});
        fill_defaults::<dyn ProcessorConfig>(root, "processors", |_| {});
        fill_defaults::<dyn ExporterConfig>(root, "exporters", |settings| {
            for (key, defaults) in [
                (
                    "sending_queue",
                    serde_yaml::to_value(QueueSettings::default()),
                ),
                (
                    "retry_on_failure",
                    serde_yaml::to_value(RetrySettings::default()),
                ),
            ] {
                let mut merged = defaults.unwrap_or(Value::Null);
                if let (Some(merged), Some(Value::Mapping(given))) =
                    (merged.as_mapping_mut(), settings.get(key))
                {
                    for (k, v) in given {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                settings.insert(key.into(), merged);
            }
        });
    }
    mask_secrets(&mut root, false);
    Ok(serde_yaml::to_string(&root).unwrap_or_default())
}

/// Replaces each component's settings by its effective config; `engine` adds the settings the
/// engine takes for every component of the section.
fn fill_defaults<C: ?Sized + 'static>(
    root: &mut Mapping,
    section: &str,
    engine: impl Fn(&mut Mapping),
) where
    Registration<C>: inventory::Collect,
{
    let Some(Value::Mapping(components)) = root.get_mut(section) else {
        return;
    };
    for (id, value) in components.iter_mut() {
        let type_name = id
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default();
        let Some(registration) = Registration::<C>::find(type_name) else {
            continue;
        };
        let mut own = value.clone();
        let mut engine_keys = Mapping::new();
        if let Some(map) = own.as_mapping_mut() {
            for key in ["sending_queue", "retry_on_failure"] {
                if let Some(given) = map.remove(key) {
                    engine_keys.insert(key.into(), given);
                }
            }
        }
        if let Ok(Value::Mapping(mut effective)) = registration.effective(own) {
            engine(&mut engine_keys);
            effective.extend(engine_keys);
            *value = Value::Mapping(effective);
        }
    }
}

/// Masks values under keys that name secrets (API keys, tokens, passwords, headers, which
/// carry auth tokens), and the credentials of URLs anywhere (`http://user:pass@host`).
fn mask_secrets(value: &mut Value, secret: bool) {
    match value {
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let name = key.as_str().unwrap_or_default().to_ascii_lowercase();
                let secret = secret
                    || ["key", "api_key", "headers", "authorization"].contains(&name.as_str())
                    || ["token", "password", "secret"]
                        .iter()
                        .any(|word| name.contains(word));
                mask_secrets(item, secret);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|item| mask_secrets(item, secret)),
        Value::String(_) | Value::Number(_) if secret => *value = Value::from("********"),
        Value::String(text) => {
            if let std::borrow::Cow::Owned(redacted) =
                mcp_metrics_plugin::redact_url_credentials(text)
            {
                *text = redacted;
            }
        }
        _ => {}
    }
}
