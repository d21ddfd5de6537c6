//! Bulk API 2.0 CSV rows → the JSON rows the REST API sends for the same query.
//!
//! CSV is text: every value arrives as a string and null as an empty cell. Each column is
//! typed from `describe`, so that a row read through a bulk job is the very row a REST query
//! page holds and the store keeps identical versions whichever API read it: booleans and
//! numbers become JSON booleans and numbers, datetimes are rewritten from the bulk form
//! (`…T09:15:00.000Z`) to the REST form (`…T09:15:00.000+0000`), dates and text stay text,
//! empty cells become null. Whole numbers stay whole and decimals (currency, percent, double)
//! become floats, as REST writes them. The sync selects the object's own fields only, so
//! there are no parent (`Owner.Name`) columns to nest.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

/// How one column's text becomes a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Text,
    Boolean,
    /// `int`, `long`: whole numbers, as REST writes them.
    Integer,
    /// `double`, `currency`, `percent`: REST writes them with a fraction (`5000.0`) where CSV
    /// may not (`5000`); typed as floats, both paths store the same value and content hash.
    Decimal,
    DateTime,
}

impl ValueKind {
    /// The kind of a `describe` field type.
    fn of(describe_type: &str) -> ValueKind {
        match describe_type {
            "boolean" => ValueKind::Boolean,
            "int" | "long" => ValueKind::Integer,
            "double" | "currency" | "percent" => ValueKind::Decimal,
            "datetime" => ValueKind::DateTime,
            _ => ValueKind::Text,
        }
    }
}

/// One CSV column: the field it holds, and how it is typed.
#[derive(Debug)]
struct Column {
    name: String,
    kind: ValueKind,
}

/// The columns of one result set, read from its header row.
#[derive(Debug)]
pub(crate) struct CsvColumns {
    columns: Vec<Column>,
}

/// A cell that does not read as its field's type.
#[derive(Debug)]
pub(crate) struct BadCell {
    /// The column (`Amount`).
    pub column: String,
    /// What is wrong with it.
    pub reason: String,
}

impl CsvColumns {
    /// The columns of a header row; `types` maps the object's field names to their `describe`
    /// types.
    pub(crate) fn new<'h>(
        header: impl IntoIterator<Item = &'h str>,
        types: &HashMap<String, String>,
    ) -> CsvColumns {
        let columns = header
            .into_iter()
            .map(|name| Column {
                name: name.to_string(),
                kind: types
                    .get(name)
                    .map_or(ValueKind::Text, |t| ValueKind::of(t)),
            })
            .collect();
        CsvColumns { columns }
    }

    /// One CSV record as the JSON row REST would have sent (without `attributes`).
    pub(crate) fn row<'r>(
        &self,
        record: impl IntoIterator<Item = &'r str>,
    ) -> Result<Map<String, Value>, BadCell> {
        let mut row = Map::with_capacity(self.columns.len());
        for (column, cell) in self.columns.iter().zip(record) {
            let value = typed(cell, column.kind).map_err(|reason| BadCell {
                column: column.name.clone(),
                reason,
            })?;
            row.insert(column.name.clone(), value);
        }
        Ok(row)
    }
}

/// A cell's value in its column's type; an empty cell is null.
fn typed(cell: &str, kind: ValueKind) -> Result<Value, String> {
    if cell.is_empty() {
        return Ok(Value::Null);
    }
    match kind {
        ValueKind::Text => Ok(Value::String(cell.to_string())),
        ValueKind::Boolean => match cell {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("is not a boolean: {cell:?}")),
        },
        ValueKind::Integer => cell
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("is not a whole number: {cell:?}")),
        ValueKind::Decimal => cell
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("is not a number: {cell:?}")),
        ValueKind::DateTime => rest_datetime(cell)
            .map(Value::String)
            .ok_or_else(|| format!("is not a datetime: {cell:?}")),
    }
}

/// A bulk datetime (`2024-01-31T09:15:00.000Z`) in the REST API's form
/// (`2024-01-31T09:15:00.000+0000`).
fn rest_datetime(text: &str) -> Option<String> {
    // The form bulk results use: rewrite the zone without parsing (a backfill has millions).
    if let Some(local) = text.strip_suffix('Z') {
        if has_shape(local, "0000-00-00T00:00:00.000") {
            return Some(format!("{local}+0000"));
        }
    }
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()?;
    Some(
        at.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
            .to_string(),
    )
}

/// Whether `text` has the shape of `pattern`, where `0` stands for any digit.
fn has_shape(text: &str, pattern: &str) -> bool {
    text.len() == pattern.len()
        && text.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
            b'0' => c.is_ascii_digit(),
            _ => c == p,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types() -> HashMap<String, String> {
        [
            ("Id", "id"),
            ("Amount", "currency"),
            ("IsWon", "boolean"),
            ("CloseDate", "date"),
            ("SystemModstamp", "datetime"),
            ("NumberOfEmployees", "int"),
        ]
        .into_iter()
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
    }

    #[test]
    fn cells_are_typed_as_rest_writes_them() {
        let header = [
            "Id",
            "Amount",
            "IsWon",
            "CloseDate",
            "SystemModstamp",
            "NumberOfEmployees",
        ];
        let columns = CsvColumns::new(header, &types());
        let row = columns
            .row([
                "006A",
                // Bulk may write a whole currency amount without its fraction.
                "12000",
                "false",
                "2024-01-31",
                "2024-01-31T09:15:00.000Z",
                "42",
            ])
            .unwrap();
        let rest: Value = serde_json::from_str(
            r#"{"Id":"006A","Amount":12000.0,"IsWon":false,"CloseDate":"2024-01-31",
                "SystemModstamp":"2024-01-31T09:15:00.000+0000","NumberOfEmployees":42}"#,
        )
        .unwrap();
        assert_eq!(Value::Object(row), rest);
    }

    #[test]
    fn empty_cells_are_null() {
        let columns = CsvColumns::new(["Id", "Amount", "IsWon"], &types());
        let row = columns.row(["006A", "", ""]).unwrap();
        assert_eq!(
            Value::Object(row),
            json!({"Id": "006A", "Amount": null, "IsWon": null})
        );
    }

    #[test]
    fn a_cell_of_the_wrong_type_names_its_column() {
        let columns = CsvColumns::new(["Id", "Amount"], &types());
        let bad = columns.row(["006A", "lots"]).unwrap_err();
        assert_eq!(bad.column, "Amount");
        let columns = CsvColumns::new(["Id", "SystemModstamp"], &types());
        let bad = columns.row(["006A", "2024-13-45 nonsense"]).unwrap_err();
        assert_eq!(bad.column, "SystemModstamp");
        let columns = CsvColumns::new(["Id", "Amount"], &types());
        let bad = columns.row(["006A", "lots"]).unwrap_err();
        assert_eq!(bad.column, "Amount");
        assert!(bad.reason.contains("not a number"), "{}", bad.reason);
    }
}
