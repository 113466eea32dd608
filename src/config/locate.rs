//! Finds the line of a key path in the config text, so an error can point at it. The parsed
//! YAML keeps no positions; block-style YAML, which is what people write, is easy to scan.

/// The 1-based line of the deepest key of `path` that can be found, if any.
pub fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let mut from = 0;
    let mut parent_indent: Option<usize> = None;
    for key in path {
        let hit = lines
            .iter()
            .enumerate()
            .skip(from)
            .find_map(|(number, line)| {
                let trimmed = line.trim_start();
                let indent = line.len() - trimmed.len();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    return None;
                }
                if parent_indent.is_some_and(|parent| indent <= parent) {
                    return Some(None); // left the parent's block
                }
                let is_key = [
                    format!("{key}:"),
                    format!("\"{key}\":"),
                    format!("'{key}':"),
                ]
                .iter()
                .any(|k| {
                    trimmed.starts_with(k.as_str())
                        || trimmed
                            .strip_prefix("- ")
                            .is_some_and(|t| t.starts_with(k.as_str()))
                });
                is_key.then_some(Some((number, indent)))
            });
        match hit.flatten() {
            Some((number, indent)) => {
                found = Some(number + 1);
                from = number + 1;
                parent_indent = Some(indent);
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "receivers:\n  http:\n    port: 1\nexporters:\n  sqlite:\n    # comment\n    path: x\n  sqlite/b:\n    path: y\n";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(line_of(TEXT, &["exporters", "sqlite", "path"]), Some(7));
        assert_eq!(line_of(TEXT, &["exporters", "sqlite/b", "path"]), Some(9));
    }

    #[test]
    fn stops_at_the_deepest_key_found() {
        assert_eq!(line_of(TEXT, &["receivers", "http", "nope"]), Some(2));
        assert_eq!(line_of(TEXT, &["nothing"]), None);
    }
}
