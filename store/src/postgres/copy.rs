//! Rows written with `COPY ... FROM STDIN` in its text format: PostgreSQL's bulk-load path.

use std::fmt::Write;

use sqlx::{Postgres, Transaction};

use super::rows::Row;
use crate::columns::{Field, TABLES};

/// Every row into `metrics`, the typed ones also into their table, in the transaction `tx`.
pub(super) async fn copy_rows(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    let mut row = Vec::new();
    for table in TABLES {
        let mut data = String::new();
        for &(context, metric) in rows.iter().filter(|(_, m)| table.takes(m)) {
            table.row_of(context, metric, &mut row);
            encode(&mut data, &row);
        }
        if data.is_empty() {
            continue;
        }
        let statement = format!("COPY {} ({}) FROM STDIN", table.name, table.column_list());
        let mut copy = tx.copy_in_raw(&statement).await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
    }
    Ok(())
}

/// One line of COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn encode(out: &mut String, fields: &[Field<'_>]) {
    for (at, field) in fields.iter().enumerate() {
        if at > 0 {
            out.push('\t');
        }
        let _ = match field {
            Field::Text(Some(text)) => {
                for c in text.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
                Ok(())
            }
            Field::Real(Some(n)) => write!(out, "{n}"),
            Field::Integer(Some(n)) => write!(out, "{n}"),
            Field::Bool(Some(b)) => write!(out, "{}", if *b { 't' } else { 'f' }),
            _ => write!(out, "\\N"),
        };
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_and_nulls() {
        let mut out = String::new();
        encode(
            &mut out,
            &[
                Field::Text(Some("a\tb\\c\nd".into())),
                Field::Text(None),
                Field::Real(Some(1.5)),
                Field::Bool(Some(false)),
            ],
        );
        assert_eq!(out, "a\\tb\\\\c\\nd\t\\N\t1.5\tf\n");
    }
}
