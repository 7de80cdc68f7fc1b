//! Printing results as aligned text tables, `key: value` lines or JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::CliError;

/// Prints `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|err| CliError::Failed(format!("cannot encode JSON: {err}")))?;
    println!("{text}");
    Ok(())
}

/// Prints rows under headers with columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `key: value` lines with the keys aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    for (key, value) in fields {
        println!("{:<width$} {value}", format!("{key}:"));
    }
}

/// An optional time as RFC 3339 (seconds precision), or `-`.
pub fn time(value: Option<DateTime<Utc>>) -> String {
    value.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// An optional text, or `-`.
pub fn text(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}
