//! Writing one synthetic table as many files on many threads: the output layout (contiguous row
//! ranges, file names, temporary names renamed into place), the worker loop, and the CSV and
//! Parquet file writers over a [`SyntheticTable`]. Must not know what a table's rows mean.

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

use super::{io_error, GenError, GenFormat, GenSummary};

/// Rows per CSV generation step; progress is reported once per step.
pub(super) const CSV_CHUNK_ROWS: u64 = 8 * 1024;
/// The CSV buffer is written out once it holds this much: large writes keep syscalls rare.
pub(super) const CSV_FLUSH_BYTES: usize = 4 << 20;
/// Rows per Arrow batch handed to the Parquet writer.
pub(super) const BATCH_ROWS: u64 = 64 * 1024;
/// Rows per Parquet row group.
pub(super) const ROW_GROUP_ROWS: usize = 512 * 1024;

/// A synthetic table: a row generator with a CSV and an Arrow encoder on top.
///
/// Both encoders call the same per-row generator, so CSV and Parquet hold the same rows.
pub(super) trait SyntheticTable: Sync {
    /// File name stem: files are `{stem}-00000.{ext}`.
    fn file_stem(&self) -> &'static str;
    /// The Arrow schema of the table.
    fn schema(&self) -> SchemaRef;
    /// Appends rows `rows` (0-based row indices) as CSV lines.
    fn write_csv_rows(&self, rows: Range<u64>, out: &mut Vec<u8>);
    /// Builds rows `rows` as one Arrow batch.
    fn build_batch(&self, rows: Range<u64>) -> Result<RecordBatch, ArrowError>;
    /// Columns with (nearly) unique values, where Parquet dictionary encoding only wastes time.
    fn high_cardinality_columns(&self) -> &'static [&'static str];
}

/// Where and how the rows of one run are written.
pub(super) struct OutputLayout<'a> {
    pub(super) out: &'a Path,
    pub(super) format: GenFormat,
    pub(super) rows: u64,
    pub(super) files: usize,
    pub(super) threads: usize,
}

impl OutputLayout<'_> {
    /// Row indices of file `index`: contiguous ranges that differ in size by at most one row.
    pub(super) fn file_rows(&self, index: usize) -> Range<u64> {
        let bound = |i: usize| (self.rows as u128 * i as u128 / self.files as u128) as u64;
        bound(index)..bound(index + 1)
    }

    pub(super) fn file_name(&self, stem: &str, index: usize) -> String {
        format!("{stem}-{index:05}.{}", self.format.extension())
    }

    /// A glob of every file of the run, and of no temporary one (those start with a dot).
    pub(super) fn files_glob(&self, stem: &str) -> PathBuf {
        self.out
            .join(format!("{stem}-*.{}", self.format.extension()))
    }

    pub(super) fn final_path(&self, stem: &str, index: usize) -> PathBuf {
        self.out.join(self.file_name(stem, index))
    }

    /// Hidden name in the same directory, so the final rename is atomic (same file system).
    pub(super) fn temp_path(&self, stem: &str, index: usize) -> PathBuf {
        self.out
            .join(format!(".{}.tmp", self.file_name(stem, index)))
    }
}

/// Writes all files of `table`, in parallel, and sums up what was written.
pub(super) fn write_table(
    table: &dyn SyntheticTable,
    layout: &OutputLayout,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<GenSummary, GenError> {
    fs::create_dir_all(layout.out).map_err(io_error("create directory", layout.out))?;
    let next_file = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = layout.threads.min(layout.files);
    let outcomes: Vec<Result<Vec<(usize, u64)>, GenError>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| run_worker(table, layout, &next_file, &failed, progress)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Err(GenError::WorkerPanicked)))
            .collect()
    });
    let mut bytes = 0;
    for outcome in outcomes {
        bytes += outcome?.iter().map(|&(_, size)| size).sum::<u64>();
    }
    let files = (0..layout.files)
        .map(|index| layout.final_path(table.file_stem(), index))
        .collect();
    Ok(GenSummary {
        rows: layout.rows,
        files,
        bytes,
    })
}

/// One worker: writes files until none are left or another worker failed.
/// Returns `(file index, bytes)` of the files it wrote.
pub(super) fn run_worker(
    table: &dyn SyntheticTable,
    layout: &OutputLayout,
    next_file: &AtomicUsize,
    failed: &AtomicBool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(usize, u64)>, GenError> {
    let mut written = Vec::new();
    // Stop early after a failure elsewhere: the run fails anyway, more files only waste time.
    while !failed.load(Ordering::Relaxed) {
        let index = next_file.fetch_add(1, Ordering::Relaxed);
        if index >= layout.files {
            break;
        }
        match write_one_file(table, layout, index, progress) {
            Ok(bytes) => written.push((index, bytes)),
            Err(error) => {
                failed.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
    }
    Ok(written)
}

/// Writes file `index` under its temporary name, then renames it to its final name.
pub(super) fn write_one_file(
    table: &dyn SyntheticTable,
    layout: &OutputLayout,
    index: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, GenError> {
    let stem = table.file_stem();
    let temp_path = layout.temp_path(stem, index);
    let final_path = layout.final_path(stem, index);
    let rows = layout.file_rows(index);
    let written = match layout.format {
        GenFormat::Csv => write_csv_file(table, rows, &temp_path, progress),
        GenFormat::Parquet => write_parquet_file(table, rows, &temp_path, progress),
    }
    .and_then(|bytes| {
        fs::rename(&temp_path, &final_path).map_err(io_error("rename into place", &final_path))?;
        Ok(bytes)
    });
    if written.is_err() {
        // Best effort: the error being returned matters more than a failed clean-up.
        let _ = fs::remove_file(&temp_path);
    }
    written
}

/// Splits `rows` into consecutive ranges of at most `size` rows.
pub(super) fn chunks(rows: Range<u64>, size: u64) -> impl Iterator<Item = Range<u64>> {
    let end = rows.end;
    (rows.start..end)
        .step_by(size as usize)
        .map(move |start| start..end.min(start + size))
}

/// Writes rows `rows` of `table` as a CSV file at `path`; returns its size in bytes.
pub(super) fn write_csv_file(
    table: &dyn SyntheticTable,
    rows: Range<u64>,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, GenError> {
    let mut file = File::create(path).map_err(io_error("create", path))?;
    let mut buffer = Vec::with_capacity(CSV_FLUSH_BYTES + (1 << 20));
    write_csv_header(&table.schema(), &mut buffer);
    let mut bytes = 0;
    for chunk in chunks(rows, CSV_CHUNK_ROWS) {
        table.write_csv_rows(chunk.clone(), &mut buffer);
        if buffer.len() >= CSV_FLUSH_BYTES {
            file.write_all(&buffer).map_err(io_error("write", path))?;
            bytes += buffer.len() as u64;
            buffer.clear();
        }
        progress(chunk.end - chunk.start);
    }
    file.write_all(&buffer).map_err(io_error("write", path))?;
    bytes += buffer.len() as u64;
    // No fsync: the rename protects against interrupted runs, which is what matters for
    // regenerable test data, and syncing would dominate the run time.
    Ok(bytes)
}

/// The header line: column names from the schema, so it cannot drift from the Arrow encoder.
pub(super) fn write_csv_header(schema: &Schema, out: &mut Vec<u8>) {
    for (position, field) in schema.fields().iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        out.extend_from_slice(field.name().as_bytes());
    }
    out.push(b'\n');
}

/// Writes rows `rows` of `table` as a Parquet file at `path`; returns its size in bytes.
pub(super) fn write_parquet_file(
    table: &dyn SyntheticTable,
    rows: Range<u64>,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, GenError> {
    let parquet_error = |source| GenError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_error("create", path))?;
    let properties = parquet_properties(table.high_cardinality_columns());
    let mut writer =
        ArrowWriter::try_new(file, table.schema(), Some(properties)).map_err(parquet_error)?;
    for chunk in chunks(rows, BATCH_ROWS) {
        let batch = table
            .build_batch(chunk.clone())
            .map_err(|source| GenError::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
        writer.write(&batch).map_err(parquet_error)?;
        progress(chunk.end - chunk.start);
    }
    // `into_inner` writes the footer and flushes the writer's internal buffer.
    let file = writer.into_inner().map_err(parquet_error)?;
    let metadata = file
        .metadata()
        .map_err(io_error("read metadata of", path))?;
    Ok(metadata.len())
}

/// Snappy, ~512k-row groups, no dictionary on columns where it would never pay off.
pub(super) fn parquet_properties(high_cardinality_columns: &[&str]) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for &column in high_cardinality_columns {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ranges_cover_all_rows_contiguously() {
        let layout = OutputLayout {
            out: Path::new("."),
            format: GenFormat::Csv,
            rows: 10,
            files: 3,
            threads: 1,
        };
        let ranges: Vec<_> = (0..3).map(|i| layout.file_rows(i)).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..10]);
    }
}
