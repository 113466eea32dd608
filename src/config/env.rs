//! `${env:VAR}` and `${env:VAR:-default}` in config values, as the OpenTelemetry Collector
//! writes them. `$${` stands for a literal `${`.

use serde_yaml::Value;

/// Replaces every placeholder in the string values below `value`; returns one message per
/// variable that is unset and has no default, with the key path where it stands.
pub fn substitute(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    walk(value, path, lookup, &mut problems);
    problems
}

/// Returns whether `value` is a placeholder that could not be filled: its key is then dropped,
/// so that the component reports only the unset variable, not a wrong type besides.
fn walk(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> bool {
    match value {
        Value::String(text) if text.contains("${") => match expand(text, lookup) {
            Ok(expanded) => *value = typed(text, expanded),
            Err(message) => {
                problems.push(format!("{path}: {message}"));
                return true;
            }
        },
        Value::Mapping(map) => map.retain(|key, item| {
            let key = key
                .as_str()
                .map_or_else(|| format!("{key:?}"), str::to_owned);
            let below = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            !walk(item, &below, lookup, problems)
        }),
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{index}]"), lookup, problems);
            }
        }
        _ => {}
    }
    false
}

/// A value that is one placeholder alone takes the type its text reads as (`port: ${env:PORT}`
/// gives a number, an empty variable gives null); anything else stays a string.
fn typed(original: &str, expanded: String) -> Value {
    let alone = original.starts_with("${env:")
        && original.ends_with('}')
        && original.matches("${").count() == 1;
    if alone
        && let Ok(scalar) = serde_yaml::from_str::<Value>(&expanded)
        && matches!(
            scalar,
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)
        )
    {
        return scalar;
    }
    Value::String(expanded)
}

fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end =
                closing_brace(tail).ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
            out.push_str(&resolve(&tail[..end], lookup)?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the placeholder that `text` is the inside of ends: placeholders nest in defaults
/// (`${env:DATABASE_URL:-${env:SQLITE_DB_PATH:-./data/metrics.db}}`).
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    for (at, byte) in bytes.iter().enumerate() {
        match byte {
            b'{' if at > 0 && bytes[at - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(at),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn resolve(placeholder: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let Some(spec) = placeholder.strip_prefix("env:") else {
        return Err(format!(
            "unknown placeholder ${{{placeholder}}}; write ${{env:NAME}} or ${{env:NAME:-default}}"
        ));
    };
    let (name, default) = match spec.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (spec, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{name:?} is not an environment variable name"));
    }
    match (lookup(name), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => expand(default, lookup),
        (None, None) => Err(format!(
            "environment variable {name} is not set and has no default (write ${{env:{name}:-default}})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9000".into()),
            "HOST" => Some("127.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(yaml: &str) -> (Value, Vec<String>) {
        let mut value: Value = serde_yaml::from_str(yaml).unwrap();
        let problems = substitute(&mut value, "", &env);
        (value, problems)
    }

    #[test]
    fn a_lone_placeholder_takes_the_type_of_its_value() {
        let (value, problems) =
            run("port: ${env:PORT}\nflag: ${env:NOPE:-true}\nnone: ${env:EMPTY}");
        assert!(problems.is_empty());
        assert_eq!(value["port"], Value::from(9000));
        assert_eq!(value["flag"], Value::from(true));
        assert_eq!(value["none"], Value::Null);
    }

    #[test]
    fn embedded_placeholders_make_strings() {
        let (value, _) = run("url: http://${env:HOST}:${env:PORT}/x\nraw: $${env:PORT}");
        assert_eq!(value["url"], Value::from("http://127.0.0.1:9000/x"));
        assert_eq!(value["raw"], Value::from("${env:PORT}"));
    }

    #[test]
    fn defaults_apply_only_when_unset() {
        let (value, _) = run("a: ${env:PORT:-1}\nb: ${env:UNSET:-./data/x.db}");
        assert_eq!(value["a"], Value::from(9000));
        assert_eq!(value["b"], Value::from("./data/x.db"));
    }

    #[test]
    fn defaults_nest() {
        let (value, problems) = run(
            "a: ${env:UNSET:-${env:HOST:-x}}\nb: ${env:UNSET:-${env:NOPE:-./data/m.db}}\n\
             c: ${env:PORT:-${env:HOST}}/x",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(value["a"], Value::from("127.0.0.1"));
        assert_eq!(value["b"], Value::from("./data/m.db"));
        assert_eq!(value["c"], Value::from("9000/x"));
    }

    #[test]
    fn unset_without_default_names_the_key_path() {
        let (_, problems) = run("exporters:\n  sqlite:\n    path: ${env:DB_FILE}");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("exporters.sqlite.path: environment variable DB_FILE"),
            "{problems:?}"
        );
    }
}
