//! The `.xlsx` result writer: one sheet of typed cells under a frozen, bold header row, and for
//! a report a second sheet, `About`, with the report's name, parameters, run time and the
//! fingerprints (path, size, modification time, ETag) of the files it read.
//!
//! Streaming: the data sheet is a rust_xlsxwriter "constant memory" worksheet, whose rows go
//! to an anonymous temporary file as they are written (nothing of them stays in memory), and
//! the workbook is zipped at close straight into the sink's counted target (a stream, no
//! seeking), so the hidden temporary file, the hash for the manifest and the atomic rename all
//! work as for the other formats. An Excel sheet holds 1,048,576 rows, the header included: a
//! result with more rows is refused as soon as a batch would pass the limit, before the target
//! is renamed into place, so nothing is published.
//!
//! Types: integers, floats and decimals are numbers (Excel holds doubles: integers beyond 2^53
//! and decimals beyond 15 significant digits are rounded, as Excel itself would), decimals shown
//! with their scale (`0.00` for `decimal(12,2)`); dates and timestamps are Excel dates
//! (`yyyy-mm-dd`, `yyyy-mm-dd hh:mm:ss`, timestamps with a zone in that zone's local time);
//! dates Excel cannot hold (before 1900, after 9999) are ISO text; booleans are booleans; text
//! is text; anything else (lists, structs, intervals, binary) is text as Arrow displays it.
//! NULLs are empty cells. Must not: hold the rows in memory, or write past the row limit.

use super::{classify_io, WriteError};
use crate::error::Error;
use crate::privacy::audit::InputFile;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float64Type, SchemaRef, Time64MicrosecondType, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};
use std::io::Write;
use std::time::Instant;

/// Rows in an Excel sheet, the header row included.
pub(crate) const MAX_SHEET_ROWS: u32 = 1_048_576;

/// Columns in an Excel sheet.
const MAX_SHEET_COLUMNS: usize = 16_384;

/// The name of the report's second sheet.
pub(crate) const ABOUT_SHEET: &str = "About";

/// What a report's workbook says about its run, on the `About` sheet. The writer adds the run
/// time (from opening the output to closing it: the query and the write) and the row count.
#[derive(Debug, Clone)]
pub(crate) struct WorkbookAbout {
    pub(crate) report: String,
    pub(crate) description: Option<String>,
    /// Parameter names and values, as bound.
    pub(crate) parameters: Vec<(String, String)>,
    pub(crate) scheduled_for: Option<DateTime<Utc>>,
    pub(crate) started: DateTime<Utc>,
    /// The files behind the tables the report read.
    pub(crate) inputs: Vec<InputFile>,
}

/// How a column's cells are written, settled once from its Arrow type.
#[derive(Debug, Clone)]
enum CellKind {
    Number,
    /// A decimal: a number shown with its scale.
    Decimal(Format),
    Boolean,
    Date,
    /// A timestamp, shown in its zone's local time (UTC when it has none).
    Timestamp(Option<datafusion::arrow::array::timezone::Tz>),
    Time,
    Text,
    /// Anything else, as Arrow displays it.
    Displayed,
}

impl CellKind {
    fn of(data_type: &DataType) -> Result<CellKind, String> {
        use DataType::*;
        Ok(match data_type {
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float16 | Float32
            | Float64 => CellKind::Number,
            Decimal32(_, scale)
            | Decimal64(_, scale)
            | Decimal128(_, scale)
            | Decimal256(_, scale) => CellKind::Decimal(number_format(*scale)),
            Boolean => CellKind::Boolean,
            Date32 | Date64 => CellKind::Date,
            Timestamp(_, zone) => CellKind::Timestamp(match zone {
                Some(zone) => Some(
                    zone.parse()
                        .map_err(|e| format!("time zone `{zone}`: {e}"))?,
                ),
                None => None,
            }),
            Time32(_) | Time64(_) => CellKind::Time,
            Utf8 | LargeUtf8 | Utf8View => CellKind::Text,
            Dictionary(_, values) => CellKind::of(values)?,
            _ => CellKind::Displayed,
        })
    }

    /// A column width (in characters) that shows this kind's values whole.
    fn width(&self) -> usize {
        match self {
            CellKind::Date => 11,
            CellKind::Timestamp(_) => 20,
            CellKind::Decimal(_) | CellKind::Number => 12,
            _ => 10,
        }
    }
}

/// Excel's number format for a decimal of `scale`: `0`, `0.0`, `0.00`, ...
fn number_format(scale: i8) -> Format {
    let decimals = usize::try_from(scale).unwrap_or(0);
    let text = match decimals {
        0 => "0".to_string(),
        n => format!("0.{}", "0".repeat(n)),
    };
    Format::new().set_num_format(text)
}

/// A batch's column, cast to the one Arrow type its [`CellKind`] reads.
enum Prepared {
    Number(ArrayRef),
    Boolean(ArrayRef),
    Date(ArrayRef),
    Timestamp(ArrayRef),
    Time(ArrayRef),
    Text(ArrayRef),
}

/// The writer of one workbook over `W` (the sink's counted target).
pub(super) struct XlsxWriter<W: Write + Send> {
    workbook: Workbook,
    sheet: Worksheet,
    names: Vec<String>,
    kinds: Vec<CellKind>,
    date: Format,
    timestamp: Format,
    time: Format,
    /// The next sheet row to write (0 is the header).
    next_row: u32,
    about: Option<WorkbookAbout>,
    opened: Instant,
    out: W,
    /// The destination, for error messages.
    described: String,
}

impl<W: Write + Send> XlsxWriter<W> {
    /// Start the workbook and write the header row. Fails on a schema Excel cannot hold (too
    /// many columns) or a temporary folder that cannot be written.
    pub(super) fn new(
        schema: &SchemaRef,
        about: Option<WorkbookAbout>,
        out: W,
        described: &str,
    ) -> Result<XlsxWriter<W>, Error> {
        let failed = |e: &dyn std::fmt::Display| Error::Output(format!("{described}: {e}"));
        if schema.fields().len() > MAX_SHEET_COLUMNS {
            return Err(failed(&format!(
                "the result has {} columns, and an Excel sheet holds {MAX_SHEET_COLUMNS}",
                schema.fields().len()
            )));
        }
        let kinds = schema
            .fields()
            .iter()
            .map(|field| {
                CellKind::of(field.data_type())
                    .map_err(|e| failed(&format!("column `{}`: {e}", field.name())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut workbook = Workbook::new();
        let mut sheet = workbook
            .new_worksheet_with_constant_memory()
            .map_err(|e| failed(&format!("cannot start the sheet's temporary file: {e}")))?;
        let bold = Format::new().set_bold();
        for (column, (field, kind)) in schema.fields().iter().zip(&kinds).enumerate() {
            // Fits: the column count was checked against Excel's 16,384 above.
            let column = column as u16;
            let width = kind.width().max(field.name().chars().count() + 2).min(60);
            sheet
                .set_column_width(column, width as f64)
                .and_then(|sheet| sheet.write_string_with_format(0, column, field.name(), &bold))
                .map_err(|e| failed(&format!("column `{}`: {e}", field.name())))?;
        }
        // The header stays in view while scrolling.
        sheet.set_freeze_panes(1, 0).map_err(|e| failed(&e))?;
        Ok(XlsxWriter {
            workbook,
            sheet,
            names: schema.fields().iter().map(|f| f.name().clone()).collect(),
            kinds,
            date: Format::new().set_num_format("yyyy-mm-dd"),
            timestamp: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
            time: Format::new().set_num_format("hh:mm:ss"),
            next_row: 1,
            about,
            opened: Instant::now(),
            out,
            described: described.to_string(),
        })
    }

    /// Write a batch's rows below the previous ones; refuse it whole if it would pass Excel's
    /// row limit (the caller then drops the writer, and the temporary file with it).
    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        let rows = batch.num_rows();
        if u64::from(self.next_row) + rows as u64 > u64::from(MAX_SHEET_ROWS) {
            return Err(WriteError::Failed(Error::Output(format!(
                "{}: the result has more than {} rows, and an Excel sheet holds {} with the \
                 header; nothing was published (write CSV or Parquet, or narrow the query)",
                self.described,
                group_digits(u64::from(MAX_SHEET_ROWS) - 1),
                group_digits(u64::from(MAX_SHEET_ROWS)),
            ))));
        }
        let columns = batch
            .columns()
            .iter()
            .zip(&self.kinds)
            .zip(&self.names)
            .map(|((array, kind), name)| {
                prepare(array, kind).map_err(|e| self.failed(name, None, &e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for index in 0..rows {
            let row = self.next_row;
            for (column, prepared) in columns.iter().enumerate() {
                self.write_cell(row, column, index, prepared)
                    .map_err(|e| self.failed(&self.names[column], Some(row), &e))?;
            }
            self.next_row += 1;
        }
        Ok(())
    }

    fn failed(&self, column: &str, row: Option<u32>, error: &dyn std::fmt::Display) -> WriteError {
        let row = row
            .map(|row| format!(", row {}", row + 1))
            .unwrap_or_default();
        WriteError::Failed(Error::Output(format!(
            "{}: column `{column}`{row}: {error}",
            self.described
        )))
    }

    /// One cell: row `row` of the sheet, value `index` of the prepared column; NULL is empty.
    fn write_cell(
        &mut self,
        row: u32,
        column: usize,
        index: usize,
        prepared: &Prepared,
    ) -> Result<(), XlsxError> {
        let array: &ArrayRef = match prepared {
            Prepared::Number(a)
            | Prepared::Boolean(a)
            | Prepared::Date(a)
            | Prepared::Timestamp(a)
            | Prepared::Time(a)
            | Prepared::Text(a) => a,
        };
        if array.is_null(index) {
            return Ok(());
        }
        // Fits: the column count was checked against Excel's 16,384 when the writer started.
        let col = column as u16;
        let sheet = &mut self.sheet;
        match (prepared, &self.kinds[column]) {
            (Prepared::Number(a), CellKind::Decimal(format)) => {
                let value = a.as_primitive::<Float64Type>().value(index);
                sheet.write_number_with_format(row, col, value, format)?;
            }
            (Prepared::Number(a), _) => {
                sheet.write_number(row, col, a.as_primitive::<Float64Type>().value(index))?;
            }
            (Prepared::Boolean(a), _) => {
                sheet.write_boolean(row, col, a.as_boolean().value(index))?;
            }
            (Prepared::Date(a), _) => {
                let days = a.as_primitive::<Date32Type>().value(index);
                match date_from_days(days).filter(excel_holds) {
                    Some(date) => sheet.write_datetime_with_format(row, col, date, &self.date)?,
                    None => sheet.write_string(row, col, iso_date(days))?,
                };
            }
            (Prepared::Timestamp(a), CellKind::Timestamp(zone)) => {
                let micros = a.as_primitive::<TimestampMicrosecondType>().value(index);
                let utc = DateTime::<Utc>::from_timestamp_micros(micros);
                let local = match zone {
                    Some(zone) => utc.map(|t| t.with_timezone(zone).naive_local()),
                    None => utc.map(|t| t.naive_utc()),
                };
                match local.filter(|t| excel_holds(&t.date())) {
                    Some(time) => {
                        sheet.write_datetime_with_format(row, col, time, &self.timestamp)?
                    }
                    None => sheet.write_string(row, col, displayed(a, index))?,
                };
            }
            (Prepared::Time(a), _) => {
                let micros = a.as_primitive::<Time64MicrosecondType>().value(index);
                let seconds = u32::try_from(micros.div_euclid(1_000_000)).unwrap_or(0);
                let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
                match NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos) {
                    Some(time) => sheet.write_datetime_with_format(row, col, time, &self.time)?,
                    None => sheet.write_string(row, col, displayed(a, index))?,
                };
            }
            (Prepared::Text(a), _) => {
                sheet.write_string(row, col, a.as_string::<i32>().value(index))?;
            }
            (Prepared::Timestamp(a), _) => {
                sheet.write_string(row, col, displayed(a, index))?;
            }
        }
        Ok(())
    }

    /// Add the `About` sheet (for a report), zip the workbook into the target, and hand the
    /// target back for publishing.
    pub(super) fn close(mut self) -> Result<W, WriteError> {
        let rows = u64::from(self.next_row - 1);
        self.workbook.push_worksheet(self.sheet);
        if let Some(about) = &self.about {
            let elapsed = self.opened.elapsed().as_secs_f64();
            write_about(self.workbook.add_worksheet(), about, elapsed, rows).map_err(|e| {
                WriteError::Failed(Error::Output(format!(
                    "{}: the {ABOUT_SHEET} sheet: {e}",
                    self.described
                )))
            })?;
        }
        match self.workbook.save_to_writer(&mut self.out) {
            Ok(()) => Ok(self.out),
            Err(XlsxError::IoError(error)) => Err(classify_io(error)),
            Err(error) => Err(WriteError::Failed(Error::Output(format!(
                "{}: {error}",
                self.described
            )))),
        }
    }
}

/// Cast a column to the type its kind reads (dictionaries to their values first).
fn prepare(array: &ArrayRef, kind: &CellKind) -> Result<Prepared, String> {
    let to = |data_type: DataType| cast(array, &data_type).map_err(|e| e.to_string());
    Ok(match kind {
        CellKind::Number | CellKind::Decimal(_) => Prepared::Number(to(DataType::Float64)?),
        CellKind::Boolean => Prepared::Boolean(to(DataType::Boolean)?),
        CellKind::Date => Prepared::Date(to(DataType::Date32)?),
        CellKind::Timestamp(_) => {
            let zone = match array.data_type() {
                DataType::Timestamp(_, zone) => zone.clone(),
                DataType::Dictionary(_, values) => match values.as_ref() {
                    DataType::Timestamp(_, zone) => zone.clone(),
                    _ => None,
                },
                _ => None,
            };
            Prepared::Timestamp(to(DataType::Timestamp(TimeUnit::Microsecond, zone))?)
        }
        CellKind::Time => Prepared::Time(to(DataType::Time64(TimeUnit::Microsecond))?),
        CellKind::Text => Prepared::Text(to(DataType::Utf8)?),
        CellKind::Displayed => {
            let options = FormatOptions::default().with_null("");
            let formatter =
                ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| e.to_string())?;
            let text: datafusion::arrow::array::StringArray = (0..array.len())
                .map(|i| (!array.is_null(i)).then(|| formatter.value(i).to_string()))
                .collect();
            Prepared::Text(std::sync::Arc::new(text))
        }
    })
}

/// A value as Arrow displays it (for timestamps Excel cannot hold).
fn displayed(array: &ArrayRef, index: usize) -> String {
    ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
        .map(|formatter| formatter.value(index).to_string())
        .unwrap_or_default()
}

fn date_from_days(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::days(days.into()))
}

fn iso_date(days: i32) -> String {
    date_from_days(days).map_or_else(|| days.to_string(), |date| date.to_string())
}

/// Excel's dates run from 1900-01-01 to 9999-12-31.
fn excel_holds(date: &NaiveDate) -> bool {
    (1900..=9999).contains(&chrono::Datelike::year(date))
}

/// `1048576` as `1,048,576`.
fn group_digits(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// The `About` sheet: the run's facts as name/value rows, then one row per input file.
fn write_about(
    sheet: &mut Worksheet,
    about: &WorkbookAbout,
    elapsed_seconds: f64,
    rows: u64,
) -> Result<(), XlsxError> {
    sheet.set_name(ABOUT_SHEET)?;
    let bold = Format::new().set_bold();
    let when = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    let seconds = Format::new().set_num_format("0.000");
    sheet.set_column_width(0, 22)?;
    sheet.set_column_width(1, 40)?;
    let mut row = 0u32;
    let mut fact = |sheet: &mut Worksheet, name: &str| -> Result<u32, XlsxError> {
        sheet.write_string_with_format(row, 0, name, &bold)?;
        row += 1;
        Ok(row - 1)
    };
    let at = fact(sheet, "report")?;
    sheet.write_string(at, 1, &about.report)?;
    if let Some(description) = &about.description {
        let at = fact(sheet, "description")?;
        sheet.write_string(at, 1, description)?;
    }
    for (name, value) in &about.parameters {
        let at = fact(sheet, &format!("parameter {name}"))?;
        sheet.write_string(at, 1, value)?;
    }
    if let Some(scheduled) = about.scheduled_for {
        let at = fact(sheet, "scheduled for (UTC)")?;
        sheet.write_datetime_with_format(at, 1, scheduled.naive_utc(), &when)?;
    }
    let at = fact(sheet, "run started (UTC)")?;
    sheet.write_datetime_with_format(at, 1, about.started.naive_utc(), &when)?;
    let at = fact(sheet, "run time (seconds)")?;
    sheet.write_number_with_format(at, 1, elapsed_seconds, &seconds)?;
    let at = fact(sheet, "rows")?;
    sheet.write_number(at, 1, rows as f64)?;
    let at = fact(sheet, "spillway version")?;
    sheet.write_string(at, 1, env!("CARGO_PKG_VERSION"))?;
    // The input fingerprints: a table of their own below a blank row.
    let header = row + 1;
    for (column, name) in ["input table", "file", "bytes", "modified", "etag"]
        .iter()
        .enumerate()
    {
        sheet.write_string_with_format(header, column as u16, *name, &bold)?;
    }
    sheet.set_column_width(3, 26)?;
    for (offset, input) in about.inputs.iter().enumerate() {
        let at = header + 1 + offset as u32;
        sheet.write_string(at, 0, &input.table)?;
        sheet.write_string(at, 1, &input.path)?;
        sheet.write_number(at, 2, input.size as f64)?;
        sheet.write_string(at, 3, &input.modified)?;
        if let Some(etag) = &input.etag {
            sheet.write_string(at, 4, etag)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Date32Array, Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("cost", DataType::Decimal128(12, 2), true),
            Field::new("day", DataType::Date32, true),
            Field::new("code", DataType::Utf8, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1234), None])
                        .with_precision_and_scale(12, 2)
                        .unwrap(),
                ),
                // 1850-01-01 is before Excel's first date: written as text.
                Arc::new(Date32Array::from(vec![Some(19723), Some(-43829)])),
                Arc::new(StringArray::from(vec![Some("00123"), None])),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(0), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_workbook_is_a_zip_and_the_row_limit_refuses_a_batch_whole() {
        let batch = batch();
        let mut writer = XlsxWriter::new(&batch.schema(), None, Vec::new(), "out.xlsx").unwrap();
        assert!(writer.write(&batch).is_ok());
        let bytes = writer.close().ok().unwrap();
        assert_eq!(&bytes[..2], b"PK");

        let mut writer = XlsxWriter::new(&batch.schema(), None, Vec::new(), "out.xlsx").unwrap();
        writer.next_row = MAX_SHEET_ROWS - 1;
        match writer.write(&batch) {
            Err(WriteError::Failed(Error::Output(message))) => assert_eq!(
                message,
                "out.xlsx: the result has more than 1,048,575 rows, and an Excel sheet holds \
                 1,048,576 with the header; nothing was published (write CSV or Parquet, or \
                 narrow the query)"
            ),
            _ => panic!("expected the row limit"),
        }
        assert_eq!(writer.next_row, MAX_SHEET_ROWS - 1);
    }

    #[test]
    fn decimal_formats_follow_the_scale_and_digits_are_grouped() {
        assert_eq!(number_format(0), Format::new().set_num_format("0"));
        assert_eq!(number_format(3), Format::new().set_num_format("0.000"));
        assert_eq!(group_digits(1_048_576), "1,048,576");
        assert_eq!(group_digits(999), "999");
        assert_eq!(iso_date(-43829), "1850-01-01");
    }
}
