//! `describe` and `profile`: what a table holds, before a query is written.
//!
//! `describe` shows the columns and types a table is read with (as a ready-to-paste
//! `[tables.NAME]` block with `--toml`); `profile` computes, in one aggregation over the table
//! under the engine's memory ceiling, each column's nulls, min, max and approximate distinct
//! count, and for numbers the mean and quartiles (DuckDB's `SUMMARIZE`). Both take a
//! configured table's name or a location. Must not read data except through the engine.

use crate::catalog::{self, TableSpec};
use crate::engine::Engine;
use crate::error::{Error, Result};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::functions_aggregate::expr_fn::{
    approx_distinct, approx_percentile_cont, avg, count, max, min,
};
use datafusion::logical_expr::{cast, col, lit, Expr};
use std::sync::Arc;

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

/// What `profile` computes for a column of `data_type`.
fn measures(data_type: &DataType) -> (bool, bool) {
    let ordered = data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        );
    (ordered, data_type.is_numeric())
}

/// One aggregation over `table`: per column, its nulls, min, max, approximate distinct count,
/// and for numbers mean and quartiles; returned one row per column, every value as text.
pub(crate) async fn profile(engine: &Engine, table: &str) -> Result<RecordBatch> {
    let frame = engine.context().table(table).await?;
    let schema = frame.schema().inner().clone();
    let mut aggregates: Vec<Expr> = vec![count(lit(1)).alias("rows")];
    for (index, field) in schema.fields().iter().enumerate() {
        let column = col(datafusion::common::Column::from_name(field.name()));
        let (ordered, numeric) = measures(field.data_type());
        aggregates.push(count(column.clone()).alias(format!("c{index}_count")));
        if ordered {
            aggregates
                .push(cast(min(column.clone()), DataType::Utf8).alias(format!("c{index}_min")));
            aggregates
                .push(cast(max(column.clone()), DataType::Utf8).alias(format!("c{index}_max")));
            // DataFusion estimates distinct integers, dates and text; others as their text.
            let countable = field.data_type().is_integer()
                || matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Date32
                );
            let distinct_of = match countable {
                true => column.clone(),
                false => cast(column.clone(), DataType::Utf8),
            };
            aggregates.push(approx_distinct(distinct_of).alias(format!("c{index}_distinct")));
        }
        if numeric {
            let as_double = cast(column.clone(), DataType::Float64);
            aggregates.push(avg(as_double.clone()).alias(format!("c{index}_mean")));
            for (label, p) in [("q25", 0.25), ("q50", 0.5), ("q75", 0.75)] {
                aggregates.push(
                    approx_percentile_cont(as_double.clone().sort(true, false), lit(p), None)
                        .alias(format!("c{index}_{label}")),
                );
            }
        }
    }
    let batches = frame.aggregate(vec![], aggregates)?.collect().await?;
    let row = batches
        .iter()
        .find(|b| b.num_rows() == 1)
        .ok_or_else(|| Error::Internal("profile: the aggregation returned no row".into()))?;
    let value = |name: &str| -> Option<String> {
        let array = row.column_by_name(name)?;
        if array.is_null(0) {
            return None;
        }
        let text = datafusion::arrow::compute::cast(array, &DataType::Utf8).ok()?;
        let text = text.as_any().downcast_ref::<StringArray>()?;
        Some(text.value(0).to_string())
    };
    let rows: u64 = value("rows").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); 10];
    for (index, field) in schema.fields().iter().enumerate() {
        let present: u64 = value(&format!("c{index}_count"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cells = [
            Some(field.name().clone()),
            Some(catalog::config_type_name(field.data_type())),
            Some((rows - present).to_string()),
            value(&format!("c{index}_min")),
            value(&format!("c{index}_max")),
            value(&format!("c{index}_distinct")),
            value(&format!("c{index}_mean")).map(|v| round(&v)),
            value(&format!("c{index}_q25")).map(|v| round(&v)),
            value(&format!("c{index}_q50")).map(|v| round(&v)),
            value(&format!("c{index}_q75")).map(|v| round(&v)),
        ];
        for (column, cell) in columns.iter_mut().zip(cells) {
            column.push(cell);
        }
    }
    let arrays: Vec<StringArray> = columns.into_iter().map(StringArray::from).collect();
    text_batch(
        &[
            "column",
            "type",
            "nulls",
            "min",
            "max",
            "approx_distinct",
            "mean",
            "q25",
            "q50",
            "q75",
        ],
        arrays,
    )
}

/// A float as text with at most 6 significant decimals (`12.345678901` → `12.345679`).
fn round(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(value) if value.fract() != 0.0 => {
            let shown = format!("{value:.6}");
            shown
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        }
        _ => text.to_string(),
    }
}

fn text_batch(names: &[&str], arrays: Vec<StringArray>) -> Result<RecordBatch> {
    let fields: Vec<Field> = names
        .iter()
        .map(|name| Field::new(*name, DataType::Utf8, true))
        .collect();
    let arrays: Vec<ArrayRef> = arrays
        .into_iter()
        .map(|a| Arc::new(a) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::Internal(format!("describe: {e}")))
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

    #[test]
    fn quartiles_print_with_six_decimals_at_most() {
        assert_eq!(round("12.3456789012"), "12.345679");
        assert_eq!(round("30"), "30");
        assert_eq!(round("2.5"), "2.5");
    }
}
