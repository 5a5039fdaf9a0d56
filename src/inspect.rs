//! `describe` and `profile`: what a table holds, before a query is written.
//!
//! `describe` shows the columns and types a table is read with (as a ready-to-paste
//! `[tables.NAME]` block with `--toml`); `profile` computes, in one aggregation over the table
//! under the engine's memory ceiling, each column's nulls, min, max and approximate distinct
//! count, and for numbers the mean and quartiles (DuckDB's `SUMMARIZE`). Both take a
//! configured table's name or a location. Must not read data except through the engine.

use crate::catalog::{self, TableSpec};
use crate::engine::profile::text_batch;
use crate::engine::Engine;
use crate::error::Result;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;

/// The table `target` names: a configured table, or a location read as a table named after
/// its file name (`data/claims-*.csv` → `claims`).
pub(crate) fn target_spec(target: &str, specs: &[TableSpec], infer_rows: usize) -> TableSpec {
    if let Some(spec) = specs.iter().find(|spec| spec.name == target) {
        return spec.clone();
    }
    let mut spec = TableSpec::at(&name_for(target), target);
    spec.infer_rows = infer_rows;
    spec
}

/// A plain SQL name from a location's last part: letters, digits and `_` up to the first
/// other character (`claims-2024.csv` → `claims`), else `t`.
fn name_for(location: &str) -> String {
    let last = location
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    let name: String = last
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    match name.chars().next() {
        Some(first) if first.is_ascii_alphabetic() || first == '_' => name.to_ascii_lowercase(),
        _ => "t".into(),
    }
}

/// The columns and types of a registered table, one row each: `column`, `type`, `nullable`.
pub(crate) fn describe(schema: &SchemaRef) -> Result<RecordBatch> {
    let names: StringArray = schema
        .fields()
        .iter()
        .map(|f| Some(f.name().clone()))
        .collect();
    let types: StringArray = schema
        .fields()
        .iter()
        .map(|f| Some(catalog::config_type_name(f.data_type())))
        .collect();
    let nullable: StringArray = schema
        .fields()
        .iter()
        .map(|f| Some(if f.is_nullable() { "yes" } else { "no" }))
        .collect();
    text_batch(
        &["column", "type", "nullable"],
        vec![names, types, nullable],
    )
}

/// `[tables.NAME]` with the table's location, format and every column's type: pasted into
/// `spillway.toml`, the table is read with exactly these types, whatever later rows hold.
pub(crate) fn describe_toml(spec: &TableSpec, format: &str, schema: &SchemaRef) -> String {
    let mut text = format!(
        "[tables.{}]\nlocation = {}\nformat = \"{format}\"\n",
        spec.name,
        toml::Value::String(spec.location.clone())
    );
    if format == "csv" {
        if let Some(delimiter) = spec.csv.delimiter.filter(|d| *d != b',') {
            let shown = (delimiter as char).to_string();
            text.push_str(&format!("delimiter = {}\n", toml::Value::String(shown)));
        }
        if !spec.csv.header {
            text.push_str("header = false\n");
        }
        if spec.csv.quote != b'"' {
            let shown = (spec.csv.quote as char).to_string();
            text.push_str(&format!("quote = {}\n", toml::Value::String(shown)));
        }
    }
    if let Some(sheet) = spec.sheet.as_ref().filter(|_| format == "xlsx") {
        text.push_str(&format!("sheet = {}\n", toml::Value::String(sheet.clone())));
    }
    text.push_str(&format!("\n[tables.{}.schema]\n", spec.name));
    for field in schema.fields() {
        let name = field.name();
        let key = if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            name.clone()
        } else {
            toml::Value::String(name.clone()).to_string()
        };
        text.push_str(&format!(
            "{key} = \"{}\"\n",
            catalog::config_type_name(field.data_type())
        ));
    }
    text
}

/// `profile` of a registered table: see [`crate::engine::profile`].
pub(crate) async fn profile(engine: &Engine, table: &str) -> Result<RecordBatch> {
    let frame = engine.context().table(table).await?;
    crate::engine::profile::profile(frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_named_after_its_file_name() {
        assert_eq!(name_for("data/claims-*.csv"), "claims");
        assert_eq!(name_for("s3://b/x/Payer_Extract.txt"), "payer_extract");
        assert_eq!(name_for("data/2024.csv"), "t");
    }
}
