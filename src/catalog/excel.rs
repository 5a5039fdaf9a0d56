//! Excel workbooks (`.xlsx`) as tables: one sheet (the first, or `sheet = "..."`), its first
//! non-empty row the header, each column typed from its cells.
//!
//! Unlike CSV, Parquet and NDJSON, an Excel table is read whole here and registered as an
//! in-memory table: a workbook is a zip of XML that cannot be split or streamed by DataFusion's
//! listing scans, and calamine reads a sheet into memory anyway. That is bounded: a sheet holds
//! at most 1,048,576 rows and 16,384 columns, so the table is at most what Excel itself holds.
//! The bytes come through the engine's object store, so local paths and `s3://` both work.
//!
//! Types come from the cells, not from text: numbers whose every value is whole become
//! `int64`, other numbers `float64`, booleans `bool`, dates `date` (a date-time column whose
//! every value is at midnight) or `timestamp`, text `string`. A column whose cells mix kinds
//! (numbers and text, say) becomes text, each cell written as Excel shows it plainly; text
//! cells stay text even when they hold digits, so codes typed as text (`00123`) keep their
//! leading zeros, as `sniff` keeps them for CSV. Empty and error cells (`#N/A`) are NULL.
//! Must not: decide anything a table's settings say explicitly (a configured schema's types win).

use crate::catalog::TableSpec;
use crate::error::{Error, Result};
use calamine::{Data, Reader, Xlsx};
use chrono::{NaiveDate, NaiveDateTime, Timelike};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use std::io::Cursor;
use std::sync::Arc;

/// Rows per record batch of the in-memory table.
const BATCH_ROWS: usize = 8192;

/// Whole numbers beyond this are not exact in Excel's doubles: such a column stays `float64`.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// A sheet read into Arrow: its schema and batches, ready to be registered.
pub(crate) struct SheetTable {
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
}

impl SheetTable {
    /// The in-memory table DataFusion scans.
    pub(crate) fn into_provider(self) -> Result<MemTable> {
        Ok(MemTable::try_new(self.schema, vec![self.batches])?)
    }
}

/// Read the table's workbook (one file) through `store` and build its sheet as Arrow batches.
/// Errors name the file (and the sheet, or the sheets it has).
pub(crate) async fn read(
    store: &Arc<dyn ObjectStore>,
    spec: &TableSpec,
    file: &ObjectMeta,
) -> Result<SheetTable> {
    let path = file.location.to_string();
    let bytes = store
        .get(&file.location)
        .await
        .map_err(|e| crate::storage::store_error(&path, e))?
        .bytes()
        .await
        .map_err(|e| crate::storage::store_error(&path, e))?;
    let (sheet, schema) = (spec.sheet.clone(), spec.schema.clone());
    // `header = false` in the table's settings: the first row is data too.
    let header = spec.csv.header || !spec.csv.header_set;
    // Unzipping and parsing XML is CPU work: off the runtime's threads.
    tokio::task::spawn_blocking(move || {
        let (name, range) = read_sheet(bytes.to_vec(), sheet.as_deref(), &path)?;
        build_table(&range, header, schema.as_ref())
            .map_err(|e| e.context(format!("file `{path}`, sheet `{name}`")))
    })
    .await
    .map_err(|e| Error::Internal(format!("reading an Excel sheet: {e}")))?
}

/// The sheet's name and cells: `sheet`, or the workbook's first sheet.
fn read_sheet(
    bytes: Vec<u8>,
    sheet: Option<&str>,
    path: &str,
) -> Result<(String, calamine::Range<Data>)> {
    let mut workbook: Xlsx<_> = calamine::open_workbook_from_rs(Cursor::new(bytes))
        .map_err(|e| Error::Input(format!("file `{path}`: not a readable .xlsx workbook: {e}")))?;
    let names = workbook.sheet_names();
    let name = match sheet {
        Some(wanted) => names
            .iter()
            .find(|name| name.as_str() == wanted)
            .cloned()
            .ok_or_else(|| {
                let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                Error::Config(format!(
                    "file `{path}` has no sheet `{wanted}`; its sheets: {}",
                    quoted.join(", ")
                ))
            })?,
        None => names
            .first()
            .cloned()
            .ok_or_else(|| Error::Input(format!("file `{path}`: the workbook has no sheets")))?,
    };
    let range = workbook
        .worksheet_range(&name)
        .map_err(|e| Error::Input(format!("file `{path}`, sheet `{name}`: {e}")))?;
    Ok((name, range))
}

/// What a cell holds, for typing its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    Date,
    DateTime,
    Text,
}

fn kind(cell: &Data) -> Option<Kind> {
    match cell {
        Data::Empty | Data::Error(_) => None,
        Data::Int(_) => Some(Kind::Int),
        Data::Float(value) if value.fract() == 0.0 && value.abs() < EXACT_INTEGER => {
            Some(Kind::Int)
        }
        Data::Float(_) => Some(Kind::Float),
        Data::Bool(_) => Some(Kind::Bool),
        Data::DateTime(value) if value.is_datetime() => match value.as_datetime() {
            Some(time) if time.time() == chrono::NaiveTime::MIN => Some(Kind::Date),
            Some(_) => Some(Kind::DateTime),
            None => Some(Kind::Text),
        },
        // Durations, ISO date strings and text.
        Data::DateTime(_) | Data::DateTimeIso(_) | Data::DurationIso(_) | Data::String(_) => {
            Some(Kind::Text)
        }
    }
}

/// The kind a column of these two kinds is read as.
fn widen(a: Kind, b: Kind) -> Kind {
    use Kind::*;
    match (a, b) {
        _ if a == b => a,
        (Int, Float) | (Float, Int) => Float,
        (Date, DateTime) | (DateTime, Date) => DateTime,
        _ => Text,
    }
}

fn arrow_type(kind: Option<Kind>) -> DataType {
    match kind {
        Some(Kind::Int) => DataType::Int64,
        Some(Kind::Float) => DataType::Float64,
        Some(Kind::Bool) => DataType::Boolean,
        Some(Kind::Date) => DataType::Date32,
        Some(Kind::DateTime) => DataType::Timestamp(TimeUnit::Microsecond, None),
        Some(Kind::Text) | None => DataType::Utf8,
    }
}

/// Column names from the header row: blank ones become `column_N` (N counts from 1), and a
/// name seen before gets `_2`, `_3`, ... (DataFusion needs unique names).
fn column_names(header: &[Data]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for (index, cell) in header.iter().enumerate() {
        let text = as_text(cell).unwrap_or_default().trim().to_string();
        let base = if text.is_empty() {
            format!("column_{}", index + 1)
        } else {
            text
        };
        let mut name = base.clone();
        let mut suffix = 2;
        while names.contains(&name) {
            name = format!("{base}_{suffix}");
            suffix += 1;
        }
        names.push(name);
    }
    names
}

/// The sheet as Arrow batches: its first row names the columns (without `header`, they are
/// `column_1`, `column_2`, ... and every row is data). A configured schema's columns (matched
/// by name) take its types, cast from what the cells hold; the others keep inferred types.
fn build_table(
    range: &calamine::Range<Data>,
    header: bool,
    configured: Option<&SchemaRef>,
) -> Result<SheetTable> {
    let mut rows = range.rows();
    let names =
        match header {
            true => match rows.next() {
                Some(header) => column_names(header),
                None => return Err(Error::Input(
                    "the sheet is empty: an Excel table needs a header row (or `header = false` \
                     and at least one row)"
                        .into(),
                )),
            },
            false if range.is_empty() => {
                return Err(Error::Input("the sheet is empty".into()));
            }
            false => column_names(&vec![Data::Empty; range.width()]),
        };
    let data: Vec<&[Data]> = rows.collect();
    let kinds: Vec<Option<Kind>> = (0..names.len())
        .map(|column| {
            data.iter()
                .filter_map(|row| row.get(column).and_then(kind))
                .reduce(widen)
        })
        .collect();
    let mut fields = Vec::with_capacity(names.len());
    for (name, kind) in names.iter().zip(&kinds) {
        let wanted = configured.and_then(|schema| schema.field_with_name(name).ok());
        let data_type = wanted.map_or_else(|| arrow_type(*kind), |f| f.data_type().clone());
        fields.push(Field::new(name, data_type, true));
    }
    if let Some(schema) = configured {
        let missing: Vec<String> = schema
            .fields()
            .iter()
            .filter(|field| !names.contains(field.name()))
            .map(|field| format!("`{}`", field.name()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "the schema names {} that the sheet does not have (its columns: {})",
                missing.join(", "),
                names.join(", ")
            )));
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut batches = Vec::with_capacity(data.len().div_ceil(BATCH_ROWS));
    for chunk in data.chunks(BATCH_ROWS) {
        let mut columns = Vec::with_capacity(names.len());
        for (index, field) in schema.fields().iter().enumerate() {
            let inferred = arrow_type(kinds[index]);
            let array = column_array(chunk, index, &inferred);
            let array = match field.data_type() == &inferred {
                true => array,
                false => cast(&array, field.data_type()).map_err(|e| {
                    Error::Input(format!(
                        "column `{}`: cannot read its cells as {}: {e}",
                        field.name(),
                        field.data_type()
                    ))
                })?,
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building a batch of the sheet: {e}")))?;
        batches.push(batch);
    }
    Ok(SheetTable { schema, batches })
}

/// One column of a chunk of rows as an array of `data_type` (one of [`arrow_type`]'s).
fn column_array(rows: &[&[Data]], column: usize, data_type: &DataType) -> ArrayRef {
    let cells = rows
        .iter()
        .map(|row| row.get(column).unwrap_or(&Data::Empty));
    match data_type {
        DataType::Int64 => {
            let mut builder = Int64Builder::with_capacity(rows.len());
            cells.for_each(|cell| builder.append_option(as_f64(cell).map(|v| v as i64)));
            Arc::new(builder.finish())
        }
        DataType::Float64 => {
            let mut builder = Float64Builder::with_capacity(rows.len());
            cells.for_each(|cell| builder.append_option(as_f64(cell)));
            Arc::new(builder.finish())
        }
        DataType::Boolean => {
            let mut builder = BooleanBuilder::with_capacity(rows.len());
            cells.for_each(|cell| {
                builder.append_option(match cell {
                    Data::Bool(value) => Some(*value),
                    _ => None,
                })
            });
            Arc::new(builder.finish())
        }
        DataType::Date32 => {
            let mut builder = Date32Builder::with_capacity(rows.len());
            cells.for_each(|cell| builder.append_option(as_datetime(cell).map(days_since_epoch)));
            Arc::new(builder.finish())
        }
        DataType::Timestamp(..) => {
            let mut builder = TimestampMicrosecondBuilder::with_capacity(rows.len());
            cells.for_each(|cell| {
                builder.append_option(as_datetime(cell).map(|t| t.and_utc().timestamp_micros()))
            });
            Arc::new(builder.finish())
        }
        _ => {
            let mut builder = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
            cells.for_each(|cell| builder.append_option(as_text(cell)));
            Arc::new(builder.finish())
        }
    }
}

fn as_f64(cell: &Data) -> Option<f64> {
    match cell {
        Data::Int(value) => Some(*value as f64),
        Data::Float(value) => Some(*value),
        _ => None,
    }
}

fn as_datetime(cell: &Data) -> Option<NaiveDateTime> {
    match cell {
        Data::DateTime(value) if value.is_datetime() => value.as_datetime(),
        _ => None,
    }
}

fn days_since_epoch(time: NaiveDateTime) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (time.date() - epoch).num_days() as i32
}

/// A cell as text in a text column: as Excel shows it without a number format (`42`, not
/// `42.0`; dates in ISO form). `None` for empty and error cells.
fn as_text(cell: &Data) -> Option<String> {
    Some(match cell {
        Data::Empty | Data::Error(_) => return None,
        Data::String(text) | Data::DateTimeIso(text) | Data::DurationIso(text) => text.clone(),
        Data::Int(value) => value.to_string(),
        Data::Float(value) if value.fract() == 0.0 && value.abs() < EXACT_INTEGER => {
            format!("{}", *value as i64)
        }
        Data::Float(value) => value.to_string(),
        Data::Bool(value) => value.to_string(),
        Data::DateTime(value) => match value.as_datetime() {
            Some(time) if value.is_datetime() && time.time() == chrono::NaiveTime::MIN => {
                time.date().to_string()
            }
            Some(time) if value.is_datetime() => match time.nanosecond() {
                0 => time.format("%Y-%m-%d %H:%M:%S").to_string(),
                _ => time.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            },
            // A duration: as a number of days, which is what the cell holds.
            _ => value.as_f64().to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{ExcelDateTime, ExcelDateTimeType};
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Date32Type, Float64Type, Int64Type};

    fn date(serial: f64) -> Data {
        Data::DateTime(ExcelDateTime::new(
            serial,
            ExcelDateTimeType::DateTime,
            false,
        ))
    }

    fn sheet(rows: Vec<Vec<Data>>) -> calamine::Range<Data> {
        let height = rows.len() as u32;
        let width = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
        let mut range = calamine::Range::new((0, 0), (height - 1, width - 1));
        for (r, row) in rows.into_iter().enumerate() {
            for (c, cell) in row.into_iter().enumerate() {
                range.set_value((r as u32, c as u32), cell);
            }
        }
        range
    }

    fn text(value: &str) -> Data {
        Data::String(value.into())
    }

    #[test]
    fn columns_are_typed_from_their_cells_and_mixed_columns_become_text() {
        // 45292 is 2024-01-01 in Excel's 1900 system; .5 is noon.
        let range = sheet(vec![
            vec![
                text("id"),
                text("cost"),
                text("ok"),
                text("day"),
                text("at"),
                text("code"),
                text("mix"),
                text(""),
            ],
            vec![
                Data::Float(1.0),
                Data::Float(2.5),
                Data::Bool(true),
                date(45292.0),
                date(45292.5),
                text("00123"),
                Data::Float(7.0),
                Data::Empty,
            ],
            vec![
                Data::Float(2.0),
                Data::Float(3.0),
                Data::Empty,
                date(45293.0),
                date(45293.0),
                text("00456"),
                text("x"),
                Data::Empty,
            ],
            vec![
                Data::Empty,
                Data::Error(calamine::CellErrorType::NA),
                Data::Bool(false),
                Data::Empty,
                Data::Empty,
                Data::Empty,
                Data::Bool(true),
                Data::Empty,
            ],
        ]);
        let table = build_table(&range, true, None).unwrap();
        let types: Vec<(&str, &DataType)> = table
            .schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .collect();
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(
            types,
            [
                ("id", &DataType::Int64),
                ("cost", &DataType::Float64),
                ("ok", &DataType::Boolean),
                ("day", &DataType::Date32),
                ("at", &timestamp),
                ("code", &DataType::Utf8),
                ("mix", &DataType::Utf8),
                ("column_8", &DataType::Utf8),
            ]
        );
        let batch = &table.batches[0];
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!((ids.value(0), ids.value(1), ids.is_null(2)), (1, 2, true));
        let costs = batch.column(1).as_primitive::<Float64Type>();
        assert_eq!((costs.value(0), costs.is_null(2)), (2.5, true));
        // 2024-01-01 is day 19723 of the Unix epoch.
        let days = batch.column(3).as_primitive::<Date32Type>();
        assert_eq!((days.value(0), days.value(1)), (19723, 19724));
        let codes = batch.column(5).as_string::<i32>();
        assert_eq!((codes.value(0), codes.value(1)), ("00123", "00456"));
        let mixed = batch.column(6).as_string::<i32>();
        assert_eq!(
            (mixed.value(0), mixed.value(1), mixed.value(2)),
            ("7", "x", "true")
        );
    }

    #[test]
    fn repeated_and_blank_header_names_are_made_unique() {
        let names = column_names(&[text("a"), text("a"), Data::Empty, text(" b ")]);
        assert_eq!(names, ["a", "a_2", "column_3", "b"]);
    }

    #[test]
    fn a_configured_type_wins_and_a_column_it_names_must_exist() {
        let range = sheet(vec![
            vec![text("zip"), text("n")],
            vec![Data::Float(2138.0), Data::Float(1.0)],
        ]);
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Float64, true)]));
        let table = build_table(&range, true, Some(&schema)).unwrap();
        assert_eq!(table.schema.field(1).data_type(), &DataType::Float64);
        assert_eq!(table.schema.field(0).data_type(), &DataType::Int64);
        let wrong: SchemaRef = Arc::new(Schema::new(vec![Field::new("zap", DataType::Utf8, true)]));
        let error = build_table(&range, true, Some(&wrong))
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("`zap`") && error.contains("zip, n"),
            "{error}"
        );
    }
}
