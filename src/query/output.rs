//! How a query's answer is written: aligned tables for people, JSON or CSV for tools.
//!
//! JSON is the answer's own structure (the same the HTTP API returns). Tables and CSV are
//! flat views of it that each query lays out in [`Report::tables`]; CSV writes the tables one
//! after another, each with its header row, separated by an empty line.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

/// Output format of `pipewarden query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// The answer as one JSON document.
    Json,
    /// Comma-separated values, one section per table.
    Csv,
}

/// One flat view of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// What the table shows.
    pub title: String,
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these headers.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

/// An answer that can be written in every [`Format`].
pub trait Report: Serialize {
    /// The answer as tables, most important first.
    fn tables(&self) -> Vec<Table>;
}

/// Writes `report` in `format`.
pub fn render(report: &impl Report, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report).map_err(std::io::Error::other)?;
            writeln!(out)
        }
        Format::Csv => {
            for (index, table) in report.tables().iter().enumerate() {
                if index > 0 {
                    writeln!(out)?;
                }
                write_csv(table, out)?;
            }
            Ok(())
        }
        Format::Table => {
            for (index, table) in report.tables().iter().enumerate() {
                if index > 0 {
                    writeln!(out)?;
                }
                write_aligned(table, out)?;
            }
            Ok(())
        }
    }
}

fn write_csv(table: &Table, out: &mut impl Write) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(&table.columns)?;
    for row in &table.rows {
        for cell in row {
            writer.write_field(inert_in_spreadsheets(cell).as_ref())?;
        }
        writer.write_record(None::<&[u8]>)?;
    }
    writer.flush()
}

/// A cell that a spreadsheet will show as text: CRM values are typed by anyone with edit
/// rights, and a deal named `=HYPERLINK(…)` must not become a live formula when RevOps opens
/// the export. Numbers (including negative ones) stay numbers.
fn inert_in_spreadsheets(cell: &str) -> Cow<'_, str> {
    let starts_formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if starts_formula && cell.parse::<f64>().is_err() {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

fn write_aligned(table: &Table, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", table.title)?;
    let mut widths: Vec<usize> = table.columns.iter().map(|c| c.chars().count()).collect();
    for row in &table.rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(table.columns.iter().map(String::as_str).collect())
    )?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", line(rule.iter().map(String::as_str).collect()))?;
    if table.rows.is_empty() {
        writeln!(out, "(none)")?;
    }
    for row in &table.rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Deals;

    impl Report for Deals {
        fn tables(&self) -> Vec<Table> {
            let mut table = Table::new("Deals", &["name", "amount"]);
            table.push(vec!["=HYPERLINK(\"http://x\")".into(), "-1200.50".into()]);
            table.push(vec!["Acme, Inc.".into(), "@SUM(A1)".into()]);
            vec![table]
        }
    }

    #[test]
    fn csv_quotes_cells_and_defuses_formulas_but_not_negative_numbers() {
        let mut out = Vec::new();
        render(&Deals, Format::Csv, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name,amount\n\"'=HYPERLINK(\"\"http://x\"\")\",-1200.50\n\"Acme, Inc.\",'@SUM(A1)\n"
        );
    }
}
