//! How a metric's JSON values become typed columns, alike in every database: the contract's
//! mapping from `dimensions` and `metadata` to the typed tables' columns.

use serde_json::{Map, Value};

/// The service of the API key, as the `enrich` processor records it (`service_identity: record`).
pub fn authenticated_service(metadata: &Map<String, Value>) -> Option<String> {
    text(metadata.get("authenticated_service"))
}

pub fn json_text(map: &Map<String, Value>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

/// A TEXT column from a JSON value: strings as they are, other scalars as written, null as NULL.
pub fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A BOOLEAN column: true/false, 1/0, or their spellings as strings.
pub fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|n| n != 0.0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An INTEGER column: whole numbers, or strings that hold one.
pub fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A REAL column: numbers, or strings that hold one.
pub fn real(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn column_conversions() {
        assert_eq!(text(Some(&json!("jwt"))), Some("jwt".into()));
        assert_eq!(text(Some(&json!(404))), Some("404".into()));
        assert_eq!(text(Some(&json!(null))), None);
        assert_eq!(boolean(Some(&json!("False"))), Some(false));
        assert_eq!(boolean(Some(&json!(1))), Some(true));
        assert_eq!(integer(Some(&json!(5.0))), Some(5));
        assert_eq!(integer(Some(&json!("12"))), Some(12));
        assert_eq!(integer(Some(&json!(1.5))), None);
        assert_eq!(real(Some(&json!("2.5"))), Some(2.5));
    }
}
