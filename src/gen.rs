//! Deterministic synthetic data: the pharmacy-claims table and the H2O db-benchmark group-by table.
//!
//! # Model
//!
//! Every row is a pure function of `(seed, row index)`. A counter-based random number generator
//! (a splitmix64 mix of a seed-derived key and the row index) gives each row its own stream, and no
//! state is shared between rows. That is what makes the output byte-identical for a given seed
//! whatever the number of threads, and lets any slice of rows be regenerated on its own.
//!
//! The rows are split into `files` contiguous ranges, one file each (`claims-00000.csv`,
//! `h2o-00003.parquet`, ...). Worker threads (scoped `std` threads) pull file indices from an atomic
//! counter, so files are written in parallel. Each file is first written under a temporary name in
//! the output directory (`.claims-00000.csv.tmp`) and renamed when complete: an interrupted run
//! never leaves a truncated file under a final name.
//!
//! One generator, two encoders: rows are generated once into a small struct of numbers and
//! catalogue indices, then either formatted by hand into a reused CSV byte buffer (the fast path:
//! no allocation per row) or appended to per-column vectors that become Arrow arrays, written to
//! Parquet with snappy compression.
//!
//! The claims "world" (drugs, diagnoses, prescribers, pharmacies, plans and the attributes of each
//! member) is a fixed catalogue that does not depend on the seed: datasets generated with different
//! seeds describe the same drugs, members and plans, so they can be combined (say, as two months
//! of claims). The seed chooses the claims.
//!
//! This module must not depend on the engine: it writes files with `std`, Arrow and Parquet only,
//! and never builds a `SessionContext`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, StringArray,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

// ---------------------------------------------------------------------------------------------
// Public interface
// ---------------------------------------------------------------------------------------------

/// File format of generated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenFormat {
    /// CSV with a header row; dates as `YYYY-MM-DD`, decimals with exactly their scale digits.
    Csv,
    /// Parquet with snappy compression and row groups of about 512k rows.
    Parquet,
}

impl GenFormat {
    /// File name extension (without the dot) of files in this format.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            GenFormat::Csv => "csv",
            GenFormat::Parquet => "parquet",
        }
    }
}

/// What `spillway gen claims` writes: the synthetic pharmacy-claims table.
#[derive(Debug, Clone)]
pub(crate) struct ClaimsOptions {
    /// Number of claims (rows); claim ids are `1..=rows`.
    pub(crate) rows: u64,
    /// Number of files the rows are split into (contiguous claim-id ranges).
    pub(crate) files: usize,
    /// Output file format.
    pub(crate) format: GenFormat,
    /// Output directory, created if missing.
    pub(crate) out: PathBuf,
    /// Seed: the same seed gives byte-identical files.
    pub(crate) seed: u64,
    /// First possible fill date.
    pub(crate) start: NaiveDate,
    /// Number of days fill dates are spread over (`start .. start + days`).
    pub(crate) days: u32,
    /// Number of worker threads (files are written in parallel).
    pub(crate) threads: usize,
}

/// What `spillway gen h2o` writes: the db-benchmark group-by table (`id1..id6`, `v1..v3`).
#[derive(Debug, Clone)]
pub(crate) struct H2oOptions {
    /// Number of rows (N).
    pub(crate) rows: u64,
    /// Number of groups (K): `id1`, `id2`, `id4`, `id5` take K values; `id3`, `id6` take N/K.
    pub(crate) groups: u64,
    /// Number of files the rows are split into.
    pub(crate) files: usize,
    /// Output file format.
    pub(crate) format: GenFormat,
    /// Output directory, created if missing.
    pub(crate) out: PathBuf,
    /// Seed: the same seed gives byte-identical files.
    pub(crate) seed: u64,
    /// Number of worker threads (files are written in parallel).
    pub(crate) threads: usize,
}

/// What a generator run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenSummary {
    /// Total number of rows written.
    pub(crate) rows: u64,
    /// Final paths of the files written, in row order.
    pub(crate) files: Vec<PathBuf>,
    /// Total size of the files written, in bytes.
    pub(crate) bytes: u64,
}

/// Why a generator run failed. Every variant names the option or the file involved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GenError {
    /// An option is out of range; `option` is the CLI flag name without the dashes.
    #[error("invalid --{option}: {reason}")]
    InvalidOption {
        /// The flag, e.g. `rows`.
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `create directory`.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet writer failed.
    #[error("cannot write Parquet file {}: {source}", path.display())]
    Parquet {
        /// The (temporary) file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ParquetError,
    },
    /// Building an Arrow batch failed (an internal inconsistency between schema and arrays).
    #[error("cannot build Arrow batch for {}: {source}", path.display())]
    Arrow {
        /// The (temporary) file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ArrowError,
    },
    /// A worker thread panicked (a bug); the files it was writing are incomplete.
    #[error("a data generator worker thread panicked")]
    WorkerPanicked,
}

/// Arrow schema of the claims table; column names and types are part of the interface.
pub(crate) fn claims_schema() -> SchemaRef {
    let string = |name: &str| Field::new(name, DataType::Utf8, false);
    let decimal = |name: &str, precision: u8, scale: i8| {
        Field::new(name, DataType::Decimal128(precision, scale), false)
    };
    Arc::new(Schema::new(vec![
        Field::new("claim_id", DataType::Int64, false),
        string("member_id"),
        Field::new("fill_date", DataType::Date32, false),
        string("ndc"),
        string("brand_generic"),
        string("diagnosis_code"),
        string("prescriber_npi"),
        string("pharmacy_npi"),
        string("plan_id"),
        string("member_state"),
        Field::new("days_supply", DataType::Int32, false),
        decimal("quantity", 10, 3),
        decimal("ingredient_cost", 12, 2),
        decimal("dispensing_fee", 8, 2),
        decimal("copay", 10, 2),
        decimal("plan_paid", 12, 2),
        decimal("total_cost", 12, 2),
    ]))
}

/// Arrow schema of the H2O db-benchmark group-by table.
pub(crate) fn h2o_schema() -> SchemaRef {
    let string = |name: &str| Field::new(name, DataType::Utf8, false);
    let int = |name: &str| Field::new(name, DataType::Int32, false);
    Arc::new(Schema::new(vec![
        string("id1"),
        string("id2"),
        string("id3"),
        int("id4"),
        int("id5"),
        int("id6"),
        int("v1"),
        int("v2"),
        Field::new("v3", DataType::Float64, false),
    ]))
}

/// Writes the synthetic claims table into `opts.out`.
///
/// `progress` is called from worker threads with the number of rows just written (for a progress
/// bar); it must be `Sync`.
pub(crate) fn generate_claims(
    opts: &ClaimsOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<GenSummary, GenError> {
    validate_layout(opts.rows, opts.files, opts.threads)?;
    let calendar = Calendar::new(opts.start, opts.days)?;
    let table = ClaimsTable::new(opts.seed, opts.rows, calendar);
    let layout = OutputLayout {
        out: &opts.out,
        format: opts.format,
        rows: opts.rows,
        files: opts.files,
        threads: opts.threads,
    };
    write_table(&table, &layout, progress)
}

/// Writes the H2O db-benchmark group-by table into `opts.out`.
///
/// `progress` is called from worker threads with the number of rows just written (for a progress
/// bar); it must be `Sync`.
pub(crate) fn generate_h2o(
    opts: &H2oOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<GenSummary, GenError> {
    validate_layout(opts.rows, opts.files, opts.threads)?;
    let table = H2oTable::new(opts.seed, opts.rows, opts.groups)?;
    let layout = OutputLayout {
        out: &opts.out,
        format: opts.format,
        rows: opts.rows,
        files: opts.files,
        threads: opts.threads,
    };
    write_table(&table, &layout, progress)
}

/// Checks the options every generator shares.
fn validate_layout(rows: u64, files: usize, threads: usize) -> Result<(), GenError> {
    if rows == 0 {
        return Err(invalid("rows", "must be at least 1".to_string()));
    }
    // Claim ids are int64: keep them positive.
    if rows > i64::MAX as u64 {
        return Err(invalid("rows", format!("must be at most {}", i64::MAX)));
    }
    if files == 0 {
        return Err(invalid("files", "must be at least 1".to_string()));
    }
    if files as u64 > rows {
        return Err(invalid(
            "files",
            format!("{files} is more than --rows {rows}: every file needs at least one row"),
        ));
    }
    if threads == 0 {
        return Err(invalid("threads", "must be at least 1".to_string()));
    }
    Ok(())
}

fn invalid(option: &'static str, reason: String) -> GenError {
    GenError::InvalidOption { option, reason }
}

/// Wraps an I/O error with what was being done and to which path.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GenError {
    let path = path.to_path_buf();
    move |source| GenError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Writing files: one table, many files, many threads
// ---------------------------------------------------------------------------------------------

/// Rows per CSV generation step; progress is reported once per step.
const CSV_CHUNK_ROWS: u64 = 8 * 1024;
/// The CSV buffer is written out once it holds this much: large writes keep syscalls rare.
const CSV_FLUSH_BYTES: usize = 4 << 20;
/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: u64 = 64 * 1024;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 512 * 1024;

/// A synthetic table: a row generator with a CSV and an Arrow encoder on top.
///
/// Both encoders call the same per-row generator, so CSV and Parquet hold the same rows.
trait SyntheticTable: Sync {
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
struct OutputLayout<'a> {
    out: &'a Path,
    format: GenFormat,
    rows: u64,
    files: usize,
    threads: usize,
}

impl OutputLayout<'_> {
    /// Row indices of file `index`: contiguous ranges that differ in size by at most one row.
    fn file_rows(&self, index: usize) -> Range<u64> {
        let bound = |i: usize| (self.rows as u128 * i as u128 / self.files as u128) as u64;
        bound(index)..bound(index + 1)
    }

    fn file_name(&self, stem: &str, index: usize) -> String {
        format!("{stem}-{index:05}.{}", self.format.extension())
    }

    fn final_path(&self, stem: &str, index: usize) -> PathBuf {
        self.out.join(self.file_name(stem, index))
    }

    /// Hidden name in the same directory, so the final rename is atomic (same file system).
    fn temp_path(&self, stem: &str, index: usize) -> PathBuf {
        self.out
            .join(format!(".{}.tmp", self.file_name(stem, index)))
    }
}

/// Writes all files of `table`, in parallel, and sums up what was written.
fn write_table(
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
fn run_worker(
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
fn write_one_file(
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
fn chunks(rows: Range<u64>, size: u64) -> impl Iterator<Item = Range<u64>> {
    let end = rows.end;
    (rows.start..end)
        .step_by(size as usize)
        .map(move |start| start..end.min(start + size))
}

/// Writes rows `rows` of `table` as a CSV file at `path`; returns its size in bytes.
fn write_csv_file(
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
fn write_csv_header(schema: &Schema, out: &mut Vec<u8>) {
    for (position, field) in schema.fields().iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        out.extend_from_slice(field.name().as_bytes());
    }
    out.push(b'\n');
}

/// Writes rows `rows` of `table` as a Parquet file at `path`; returns its size in bytes.
fn write_parquet_file(
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
fn parquet_properties(high_cardinality_columns: &[&str]) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for &column in high_cardinality_columns {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    builder.build()
}

// ---------------------------------------------------------------------------------------------
// Counter-based random numbers
// ---------------------------------------------------------------------------------------------

/// The splitmix64 increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: a bijective mix where every input bit affects every output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key of one independent family of streams (one per seed and purpose, e.g. claim rows).
fn stream_key(seed: u64, domain: u64) -> u64 {
    mix64(seed ^ mix64(domain))
}

/// The random stream of one row (or one catalogue entry): splitmix64 started at a state derived
/// from `(key, index)`. Nothing is shared between rows, so rows can be generated in any order.
struct RowRng(u64);

impl RowRng {
    fn new(key: u64, index: u64) -> Self {
        RowRng(mix64(key ^ index.wrapping_mul(GOLDEN_GAMMA)))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our `n`).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    fn standard_normal(&mut self) -> f64 {
        // 1 - unit is in (0, 1]: the logarithm stays finite.
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// Picks indices with given (relative) weights by binary search on the cumulative distribution.
struct WeightedPicker {
    /// Normalised running totals; the last one is 1.
    cumulative: Vec<f64>,
}

impl WeightedPicker {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = weights
            .into_iter()
            .map(|weight| {
                total += weight;
                total
            })
            .collect();
        for value in &mut cumulative {
            *value /= total;
        }
        WeightedPicker { cumulative }
    }

    /// Zipf-Mandelbrot popularity `1 / (rank + offset)^exponent`: a few very popular entries and a
    /// long tail; the offset keeps the top entry from dominating.
    fn zipf(count: usize, offset: f64, exponent: f64) -> Self {
        Self::new((0..count).map(|rank| (rank as f64 + offset).powf(-exponent)))
    }

    fn pick(&self, rng: &mut RowRng) -> usize {
        let u = rng.unit();
        let index = self.cumulative.partition_point(|&c| c <= u);
        index.min(self.cumulative.len() - 1)
    }
}

/// Picks an index in `0..count` from popularity tiers: tier `t` holds a `share` of the indices
/// and receives `percent` of the picks, uniformly within the tier. Cheap for millions of entries
/// (no table), and gives the "few heavy users, many light ones" shape of real claims.
struct TieredPicker {
    /// Tier boundaries: tier `t` is `starts[t]..starts[t + 1]`.
    starts: [u64; 5],
    /// Running totals of the tiers' percentages.
    cumulative_percent: [u64; 4],
    count: u64,
}

impl TieredPicker {
    /// `tiers` is `(share of indices, percent of picks)`; shares sum to 1, percentages to 100.
    fn new(count: u64, tiers: [(f64, u64); 4]) -> Self {
        let mut starts = [0; 5];
        let mut cumulative_percent = [0; 4];
        let (mut share_total, mut percent_total) = (0.0, 0);
        for (tier, (share, percent)) in tiers.into_iter().enumerate() {
            share_total += share;
            percent_total += percent;
            starts[tier + 1] = ((count as f64 * share_total).round() as u64).min(count);
            cumulative_percent[tier] = percent_total;
        }
        starts[4] = count;
        TieredPicker {
            starts,
            cumulative_percent,
            count,
        }
    }

    fn pick(&self, rng: &mut RowRng) -> u64 {
        let percent = rng.below(100);
        let tier = self
            .cumulative_percent
            .partition_point(|&c| c <= percent)
            .min(3);
        let (start, end) = (self.starts[tier], self.starts[tier + 1]);
        if start == end {
            // Too few entries for this tier (tiny tables): fall back to uniform.
            return rng.below(self.count);
        }
        start + rng.below(end - start)
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written text encoding (no `format!` per value, no allocation per row)
// ---------------------------------------------------------------------------------------------

/// Number of decimal digits of `value` (1 for 0).
fn decimal_digits(value: u64) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Fills `slot` with the last `slot.len()` decimal digits of `value`, zero-padded.
fn fill_digits(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Appends the decimal digits of `value`.
fn push_u64(out: &mut Vec<u8>, value: u64) {
    push_u64_padded(out, value, 1);
}

/// Appends `value` zero-padded to at least `width` digits (like `%0*d`).
fn push_u64_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut count = decimal_digits(value).max(width);
    // A u64 has at most 20 digits; wider fields are leading zeros.
    if count > 20 {
        out.extend(std::iter::repeat_n(b'0', count - 20));
        count = 20;
    }
    // Append a constant 20 bytes and cut back: a fixed-size copy compiles to a few stores, where
    // a copy of a variable handful of bytes would be a call to memmove (measured: a third of the
    // CSV encoder's time).
    let start = out.len();
    out.extend_from_slice(&[b'0'; 20]);
    fill_digits(&mut out[start..start + count], value);
    out.truncate(start + count);
}

/// Appends a fixed-point number stored in units of `10^-scale`, with exactly `scale` decimals.
fn push_fixed(out: &mut Vec<u8>, units: u64, scale: u32) {
    let unit = 10u64.pow(scale);
    push_u64(out, units / unit);
    out.push(b'.');
    push_u64_padded(out, units % unit, scale as usize);
}

/// `value` as exactly `N` zero-padded digits (for fixed-width codes such as NDCs and NPIs).
fn digit_array<const N: usize>(value: u64) -> [u8; N] {
    let mut digits = [b'0'; N];
    fill_digits(&mut digits, value);
    digits
}

/// Longest variable-length code we store ([`ShortCode`]).
const SHORT_CODE_BYTES: usize = 8;

/// A code of at most 8 ASCII bytes (diagnosis codes), stored inline.
#[derive(Clone, Copy)]
struct ShortCode {
    bytes: [u8; SHORT_CODE_BYTES],
    len: u8,
}

impl ShortCode {
    /// `None` if `text` is longer than 8 bytes.
    fn new(text: &[u8]) -> Option<Self> {
        let mut bytes = [b' '; SHORT_CODE_BYTES];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(ShortCode {
            bytes,
            len: text.len() as u8,
        })
    }

    /// Appends the code: copies all 8 bytes and cuts back (a constant-size copy, see
    /// [`push_u64_padded`]).
    fn push_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes);
        out.truncate(out.len() - (SHORT_CODE_BYTES - self.len as usize));
    }
}

/// An Arrow UTF-8 column built from raw bytes with the same writers as the CSV encoder.
struct StringColumn {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl StringColumn {
    fn with_capacity(rows: usize, bytes_per_row: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        StringColumn {
            values: Vec::with_capacity(rows * bytes_per_row),
            offsets,
        }
    }

    /// Ends the value whose bytes were appended to `values` since the last call.
    fn end_value(&mut self) {
        // A batch is at most BATCH_ROWS short strings, far below i32::MAX bytes.
        self.offsets.push(self.values.len() as i32);
    }

    fn push(&mut self, text: &[u8]) {
        self.values.extend_from_slice(text);
        self.end_value();
    }

    fn push_code(&mut self, code: &ShortCode) {
        code.push_to(&mut self.values);
        self.end_value();
    }

    /// Validates UTF-8 once for the whole column (cheap for ASCII) and builds the array.
    fn finish(self) -> Result<ArrayRef, ArrowError> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let array = StringArray::try_new(offsets, Buffer::from_vec(self.values), None)?;
        Ok(Arc::new(array))
    }
}

/// A decimal column from integer units (cents, thousandths).
fn decimal_array(units: Vec<i128>, precision: u8, scale: i8) -> Result<ArrayRef, ArrowError> {
    let array = Decimal128Array::from(units).with_precision_and_scale(precision, scale)?;
    Ok(Arc::new(array))
}

// ---------------------------------------------------------------------------------------------
// Claims: the fixed catalogue
// ---------------------------------------------------------------------------------------------

/// Stream domains: each purpose gets its own family of streams.
const DOMAIN_CLAIM_ROWS: u64 = 1;
const DOMAIN_H2O_ROWS: u64 = 2;
const DOMAIN_MEMBERS: u64 = 3;
const DOMAIN_DRUGS: u64 = 4;
const DOMAIN_DIAGNOSES: u64 = 5;
const DOMAIN_PHARMACIES: u64 = 6;
const DOMAIN_PLANS: u64 = 7;

/// The catalogue does not depend on the seed (see the module docs); this is its fixed seed.
const CATALOGUE_SEED: u64 = 0x5350_494C_4C57_4159; // "SPILLWAY"

const DRUG_COUNT: usize = 25_000;
const DIAGNOSIS_COUNT: usize = 15_000;
const PRESCRIBER_COUNT: u64 = 200_000;
const PHARMACY_COUNT: u64 = 60_000;
const CONTRACT_COUNT: usize = 800;
const PACKAGES_PER_CONTRACT: u64 = 6;
/// Members are about rows / 20 (3M members at 60M claims).
const CLAIMS_PER_MEMBER: u64 = 20;
/// Member numbers are a bijection of 0..10^9 (9 digits); more members would repeat ids.
const MAX_MEMBERS: u64 = 1_000_000_000;
/// Upper bound on one claim's ingredient cost ($500,000): keeps decimal(12,2) far from overflow.
const MAX_INGREDIENT_CENTS: u64 = 50_000_000;

/// Member activity: 2% of members fill 15% of the claims, ..., 60% fill 20%.
const MEMBER_TIERS: [(f64, u64); 4] = [(0.02, 15), (0.08, 25), (0.30, 40), (0.60, 20)];
/// Prescriber volume: a few high-volume practices, a long tail.
const PRESCRIBER_TIERS: [(f64, u64); 4] = [(0.01, 10), (0.09, 35), (0.40, 45), (0.50, 10)];
/// Pharmacy volume: chains and mail order dominate.
const PHARMACY_TIERS: [(f64, u64); 4] = [(0.02, 25), (0.13, 40), (0.35, 25), (0.50, 10)];
/// Plan enrolment: a few large contracts.
const CONTRACT_TIERS: [(f64, u64); 4] = [(0.02, 30), (0.08, 30), (0.30, 30), (0.60, 10)];

/// The 50 states, DC and five territories, with populations (thousands, 2020 census): members
/// live where people live.
const STATES: [(&str, u32); 56] = [
    ("AL", 5024),
    ("AK", 733),
    ("AZ", 7152),
    ("AR", 3012),
    ("CA", 39538),
    ("CO", 5774),
    ("CT", 3606),
    ("DE", 990),
    ("DC", 690),
    ("FL", 21538),
    ("GA", 10712),
    ("HI", 1455),
    ("ID", 1839),
    ("IL", 12813),
    ("IN", 6786),
    ("IA", 3190),
    ("KS", 2938),
    ("KY", 4506),
    ("LA", 4658),
    ("ME", 1362),
    ("MD", 6177),
    ("MA", 7030),
    ("MI", 10077),
    ("MN", 5706),
    ("MS", 2961),
    ("MO", 6155),
    ("MT", 1084),
    ("NE", 1962),
    ("NV", 3105),
    ("NH", 1378),
    ("NJ", 9289),
    ("NM", 2118),
    ("NY", 20201),
    ("NC", 10439),
    ("ND", 779),
    ("OH", 11799),
    ("OK", 3959),
    ("OR", 4237),
    ("PA", 13003),
    ("RI", 1097),
    ("SC", 5118),
    ("SD", 887),
    ("TN", 6911),
    ("TX", 29146),
    ("UT", 3272),
    ("VT", 643),
    ("VA", 8631),
    ("WA", 7705),
    ("WV", 1794),
    ("WI", 5894),
    ("WY", 577),
    ("PR", 3286),
    ("VI", 87),
    ("GU", 154),
    ("AS", 50),
    ("MP", 48),
];

/// Real labeler codes of large manufacturers and repackagers; many start with zeros.
const KNOWN_LABELERS: [u64; 30] = [
    2, 9, 24, 25, 69, 78, 93, 143, 172, 378, 591, 603, 781, 904, 16714, 16729, 27241, 29300, 31722,
    33342, 43547, 50090, 51407, 59762, 60505, 62332, 65862, 68180, 68382, 69097,
];
const LABELER_COUNT: usize = 400;
/// The most popular NDC: `00002-1433-80`.
const TOP_NDC: u64 = 2_143_380;
/// Package codes (last two NDC digits) seen most often.
const PACKAGE_CODES: [u64; 10] = [1, 1, 5, 10, 30, 60, 80, 82, 90, 20];

/// Very common ICD-10-CM codes take the top popularity ranks.
const COMMON_DIAGNOSES: [&str; 24] = [
    "I10", "E11.9", "E78.5", "J45.909", "F32.9", "E03.9", "K21.9", "F41.1", "M54.50", "G47.00",
    "N39.0", "J06.9", "E66.9", "R05.9", "Z79.4", "F90.0", "I25.10", "J44.9", "M19.90", "G43.909",
    "E55.9", "L40.0", "F41.9", "E11.65",
];
/// ICD-10-CM chapters start with any letter but `U` (reserved).
const ICD_LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTVWXYZ";

/// Drugs by popularity rank: NDC, brand flag and typical ingredient cost of a 30-day supply.
struct Drugs {
    ndc: Vec<[u8; 11]>,
    brand: Vec<bool>,
    median_cents_per_30_days: Vec<f64>,
    popularity: WeightedPicker,
}

impl Drugs {
    fn new() -> Self {
        let key = stream_key(CATALOGUE_SEED, DOMAIN_DRUGS);
        let labelers = labeler_codes(key);
        let labeler_popularity = WeightedPicker::zipf(labelers.len(), 2.0, 1.0);
        let mut seen = HashSet::with_capacity(DRUG_COUNT);
        let mut drugs = Drugs {
            ndc: Vec::with_capacity(DRUG_COUNT),
            brand: Vec::with_capacity(DRUG_COUNT),
            median_cents_per_30_days: Vec::with_capacity(DRUG_COUNT),
            popularity: WeightedPicker::zipf(DRUG_COUNT, 5.0, 1.05),
        };
        let mut attempt = 0;
        while drugs.brand.len() < DRUG_COUNT {
            let mut rng = RowRng::new(key, attempt);
            attempt += 1;
            let rank = drugs.brand.len();
            let ndc = if rank == 0 {
                TOP_NDC
            } else {
                let labeler = labelers[labeler_popularity.pick(&mut rng)];
                let product = rng.below(10_000);
                let package = PACKAGE_CODES[rng.below(PACKAGE_CODES.len() as u64) as usize];
                labeler * 1_000_000 + product * 100 + package
            };
            if !seen.insert(ndc) {
                continue;
            }
            drugs.ndc.push(digit_array(ndc));
            // Dulaglutide (the top NDC) is a brand; elsewhere brands are rare, so that about 90%
            // of claims are generics, as in real US pharmacy data.
            let brand = rank == 0 || rng.below(1000) < 70;
            let (median, spread) = if brand {
                (40_000.0, 0.8)
            } else {
                (1_200.0, 1.0)
            };
            drugs.brand.push(brand);
            drugs
                .median_cents_per_30_days
                .push(median * (spread * rng.standard_normal()).exp());
        }
        drugs
    }

    /// Ingredient cost of one fill: log-normal around the drug's typical cost, scaled by supply.
    fn claim_cost_cents(&self, drug: usize, days_supply: u32, rng: &mut RowRng) -> u64 {
        let supply = (days_supply as f64 / 30.0).max(0.1);
        let cents =
            self.median_cents_per_30_days[drug] * supply * (0.3 * rng.standard_normal()).exp();
        (cents.round() as u64).clamp(1, MAX_INGREDIENT_CENTS)
    }
}

/// Five-digit labeler codes: the known ones, then random ones of which about 40% start with 0.
fn labeler_codes(key: u64) -> Vec<u64> {
    let mut codes: Vec<u64> = KNOWN_LABELERS.to_vec();
    let mut seen: HashSet<u64> = codes.iter().copied().collect();
    let mut rng = RowRng::new(key, u64::MAX);
    while codes.len() < LABELER_COUNT {
        let code = if rng.below(100) < 40 {
            1 + rng.below(9_999)
        } else {
            10_000 + rng.below(90_000)
        };
        if seen.insert(code) {
            codes.push(code);
        }
    }
    codes
}

/// ICD-10-CM-shaped diagnosis codes by popularity rank.
struct Diagnoses {
    code: Vec<ShortCode>,
    popularity: WeightedPicker,
}

impl Diagnoses {
    fn new() -> Self {
        let key = stream_key(CATALOGUE_SEED, DOMAIN_DIAGNOSES);
        let mut code = Vec::with_capacity(DIAGNOSIS_COUNT);
        let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(DIAGNOSIS_COUNT);
        let common = COMMON_DIAGNOSES.iter().map(|text| text.as_bytes().to_vec());
        let generated = (0..).map(|attempt| random_icd10(&mut RowRng::new(key, attempt)));
        for text in common.chain(generated) {
            if code.len() == DIAGNOSIS_COUNT {
                break;
            }
            // Every code is at most 8 bytes by construction, so `ShortCode::new` never declines.
            let Some(short) = ShortCode::new(&text) else {
                continue;
            };
            if seen.insert(text) {
                code.push(short);
            }
        }
        Diagnoses {
            code,
            popularity: WeightedPicker::zipf(DIAGNOSIS_COUNT, 3.0, 1.0),
        }
    }
}

/// A code shaped like ICD-10-CM: letter, two digits, then optionally `.` and 1..4 characters
/// (`I10`, `E11.9`, `J45.909`, `S72.001A`).
fn random_icd10(rng: &mut RowRng) -> Vec<u8> {
    let mut text = Vec::with_capacity(8);
    let letter = ICD_LETTERS[rng.below(ICD_LETTERS.len() as u64) as usize];
    text.push(letter);
    push_u64_padded(&mut text, rng.below(100), 2);
    let subcode_length = match rng.below(100) {
        0..=14 => 0,
        15..=49 => 1,
        50..=74 => 2,
        75..=92 => 3,
        _ => 4,
    };
    if subcode_length > 0 {
        text.push(b'.');
        for _ in 0..subcode_length.min(3) {
            text.push(b'0' + rng.below(10) as u8);
        }
        if subcode_length == 4 {
            // The seventh character: an encounter letter for injuries, a digit elsewhere.
            let seventh = if matches!(letter, b'S' | b'T') {
                b"ADS"[rng.below(3) as usize]
            } else {
                b'0' + rng.below(10) as u8
            };
            text.push(seventh);
        }
    }
    text
}

/// The NPI check digit: Luhn over `80840` + the 9-digit base (24 accounts for the prefix).
fn npi_check_digit(base: u64) -> u64 {
    let mut sum = 24;
    let mut rest = base;
    for position in 0..9 {
        let digit = rest % 10;
        rest /= 10;
        // The base's rightmost digit and every second one to its left are doubled.
        sum += if position % 2 == 0 {
            let doubled = digit * 2;
            doubled / 10 + doubled % 10
        } else {
            digit
        };
    }
    (10 - sum % 10) % 10
}

/// Valid-looking NPIs: `1`, 8 digits from a bijective scramble of the index (offset by `block`
/// so prescribers and pharmacies never share a number), and the check digit.
fn npi_table(count: u64, block: u64, multiplier: u64, increment: u64) -> Vec<[u8; 10]> {
    (0..count)
        .map(|index| {
            let body = block + (index * multiplier + increment) % 50_000_000;
            let base = 100_000_000 + body;
            digit_array(base * 10 + npi_check_digit(base))
        })
        .collect()
}

/// Per-plan copays: a flat copay per tier, and a share of fills under coinsurance instead.
struct PlanBenefit {
    generic_copay_cents: u64,
    brand_copay_cents: u64,
    coinsurance_percent: u64,
    coinsurance_share_percent: u64,
}

/// Plan ids (`H1234-001`: contract + benefit package) and their benefits.
struct Plans {
    id: Vec<[u8; 9]>,
    benefit: Vec<PlanBenefit>,
}

impl Plans {
    fn new() -> Self {
        let key = stream_key(CATALOGUE_SEED, DOMAIN_PLANS);
        let mut seen = HashSet::with_capacity(CONTRACT_COUNT);
        let mut plans = Plans {
            id: Vec::with_capacity(CONTRACT_COUNT * PACKAGES_PER_CONTRACT as usize),
            benefit: Vec::new(),
        };
        let mut attempt = 0;
        while seen.len() < CONTRACT_COUNT {
            let mut rng = RowRng::new(key, attempt);
            attempt += 1;
            // H: Medicare Advantage, S: stand-alone drug plans, R: regional PPOs.
            let letter = match rng.below(100) {
                0..=74 => b'H',
                75..=94 => b'S',
                _ => b'R',
            };
            let number = rng.below(10_000);
            if !seen.insert((letter, number)) {
                continue;
            }
            for package in 1..=PACKAGES_PER_CONTRACT {
                let mut id = *b"H0000-000";
                id[0] = letter;
                fill_digits(&mut id[1..5], number);
                fill_digits(&mut id[6..], package);
                plans.id.push(id);
                plans.benefit.push(random_benefit(&mut rng));
            }
        }
        plans
    }
}

fn random_benefit(rng: &mut RowRng) -> PlanBenefit {
    const GENERIC: [u64; 5] = [0, 300, 500, 1_000, 1_500];
    const BRAND: [u64; 5] = [2_500, 3_500, 4_700, 5_000, 10_000];
    const COINSURANCE: [u64; 3] = [20, 25, 33];
    PlanBenefit {
        generic_copay_cents: GENERIC[rng.below(5) as usize],
        brand_copay_cents: BRAND[rng.below(5) as usize],
        coinsurance_percent: COINSURANCE[rng.below(3) as usize],
        coinsurance_share_percent: 5 + rng.below(20),
    }
}

/// Everything about the claims world that does not change from claim to claim.
struct Catalogue {
    drugs: Drugs,
    diagnoses: Diagnoses,
    prescriber_npi: Vec<[u8; 10]>,
    prescriber_popularity: TieredPicker,
    pharmacy_npi: Vec<[u8; 10]>,
    pharmacy_popularity: TieredPicker,
    /// Dispensing fee of each pharmacy (a property of the pharmacy, 0..=15.00).
    pharmacy_fee_cents: Vec<u64>,
    plans: Plans,
    contract_popularity: TieredPicker,
    state_population: WeightedPicker,
}

impl Catalogue {
    fn new() -> Self {
        let fee_key = stream_key(CATALOGUE_SEED, DOMAIN_PHARMACIES);
        let pharmacy_fee_cents = (0..PHARMACY_COUNT)
            .map(|pharmacy| {
                let u = RowRng::new(fee_key, pharmacy).unit();
                // Skewed low: most pharmacies charge a dollar or two, a few up to $15.
                (1_500.0 * u * u).round() as u64
            })
            .collect();
        Catalogue {
            drugs: Drugs::new(),
            diagnoses: Diagnoses::new(),
            prescriber_npi: npi_table(PRESCRIBER_COUNT, 0, 14_348_907, 7_919_113),
            prescriber_popularity: TieredPicker::new(PRESCRIBER_COUNT, PRESCRIBER_TIERS),
            pharmacy_npi: npi_table(PHARMACY_COUNT, 50_000_000, 1_594_323, 31_337_017),
            pharmacy_popularity: TieredPicker::new(PHARMACY_COUNT, PHARMACY_TIERS),
            pharmacy_fee_cents,
            plans: Plans::new(),
            contract_popularity: TieredPicker::new(CONTRACT_COUNT as u64, CONTRACT_TIERS),
            state_population: WeightedPicker::new(STATES.iter().map(|&(_, p)| p as f64)),
        }
    }
}

/// Fill dates: the days of the range with weekday weights (pharmacies are quieter at weekends).
struct Calendar {
    /// Running totals of the day weights.
    cumulative_weight: Vec<u64>,
    /// Days since 1970-01-01 (Arrow's Date32).
    epoch_days: Vec<i32>,
    /// `YYYY-MM-DD` of each day.
    text: Vec<[u8; 10]>,
}

/// Relative fill volume Monday..Sunday.
const WEEKDAY_WEIGHTS: [u64; 7] = [100, 100, 100, 100, 105, 55, 25];
/// A century of days is plenty and keeps the calendar table small.
const MAX_DAYS: u32 = 36_525;

impl Calendar {
    fn new(start: NaiveDate, days: u32) -> Result<Self, GenError> {
        if days == 0 || days > MAX_DAYS {
            return Err(invalid("days", format!("must be in 1..={MAX_DAYS}")));
        }
        let unix_epoch_ce = 719_163; // days from 0001-01-01 (CE day 1) to 1970-01-01
        let mut calendar = Calendar {
            cumulative_weight: Vec::with_capacity(days as usize),
            epoch_days: Vec::with_capacity(days as usize),
            text: Vec::with_capacity(days as usize),
        };
        let mut total = 0;
        for date in start.iter_days().take(days as usize) {
            // Four-digit years keep `YYYY-MM-DD` (and CSV parsing) unambiguous.
            if !(1..=9999).contains(&date.year()) {
                let reason = format!("fill dates must stay within years 1..=9999, {date} is not");
                return Err(invalid("start", reason));
            }
            total += WEEKDAY_WEIGHTS[date.weekday().num_days_from_monday() as usize];
            calendar.cumulative_weight.push(total);
            calendar
                .epoch_days
                .push(date.num_days_from_ce() - unix_epoch_ce);
            let mut text = *b"0000-00-00";
            fill_digits(&mut text[0..4], date.year() as u64);
            fill_digits(&mut text[5..7], date.month() as u64);
            fill_digits(&mut text[8..10], date.day() as u64);
            calendar.text.push(text);
        }
        Ok(calendar)
    }

    fn pick(&self, rng: &mut RowRng) -> usize {
        let total = self.cumulative_weight.last().copied().unwrap_or(1);
        let r = rng.below(total);
        self.cumulative_weight.partition_point(|&c| c <= r)
    }
}

// ---------------------------------------------------------------------------------------------
// Claims: one row
// ---------------------------------------------------------------------------------------------

/// The attributes of a member, which every claim of that member shares.
struct Member {
    /// The 9 digits of `member_id`.
    number: u64,
    state: usize,
    plan: usize,
    /// Members mostly fill at their usual pharmacy.
    home_pharmacy: usize,
}

/// One generated claim: numbers and catalogue indices; the encoders turn it into text or arrays.
/// Money is integer cents, so `total = ingredient + fee` and `plan_paid = total - copay` hold
/// exactly.
struct Claim {
    claim_id: u64,
    member: Member,
    fill_day: usize,
    drug: usize,
    diagnosis: usize,
    prescriber: usize,
    pharmacy: usize,
    days_supply: u32,
    quantity_thousandths: u64,
    ingredient_cents: u64,
    fee_cents: u64,
    copay_cents: u64,
}

impl Claim {
    fn total_cents(&self) -> u64 {
        self.ingredient_cents + self.fee_cents
    }

    fn plan_paid_cents(&self) -> u64 {
        // copay is capped at the total when generated, so this cannot underflow.
        self.total_cents() - self.copay_cents
    }
}

/// The claims table of one run: the catalogue plus the seed-dependent row streams.
struct ClaimsTable {
    catalogue: Catalogue,
    calendar: Calendar,
    row_key: u64,
    member_key: u64,
    member_activity: TieredPicker,
    schema: SchemaRef,
}

impl ClaimsTable {
    fn new(seed: u64, rows: u64, calendar: Calendar) -> Self {
        let member_count = (rows / CLAIMS_PER_MEMBER).clamp(1, MAX_MEMBERS);
        ClaimsTable {
            catalogue: Catalogue::new(),
            calendar,
            row_key: stream_key(seed, DOMAIN_CLAIM_ROWS),
            member_key: stream_key(CATALOGUE_SEED, DOMAIN_MEMBERS),
            member_activity: TieredPicker::new(member_count, MEMBER_TIERS),
            schema: claims_schema(),
        }
    }

    /// Member `index`'s attributes, from the member's own stream (the same in every claim).
    fn member(&self, index: u64) -> Member {
        let catalogue = &self.catalogue;
        let mut rng = RowRng::new(self.member_key, index);
        let contract = catalogue.contract_popularity.pick(&mut rng);
        let package = rng.below(PACKAGES_PER_CONTRACT);
        Member {
            // An affine map with a multiplier coprime to 10^9 is a bijection: unique ids, but
            // heavy members are not simply the smallest numbers.
            number: (index * 387_420_489 + 123_456_789) % MAX_MEMBERS,
            state: catalogue.state_population.pick(&mut rng),
            plan: (contract * PACKAGES_PER_CONTRACT + package) as usize,
            home_pharmacy: catalogue.pharmacy_popularity.pick(&mut rng) as usize,
        }
    }

    /// Claim number `row` (0-based): a pure function of the seed and `row`.
    fn claim(&self, row: u64) -> Claim {
        let catalogue = &self.catalogue;
        let mut rng = RowRng::new(self.row_key, row);
        let member = self.member(self.member_activity.pick(&mut rng));
        let drug = catalogue.drugs.popularity.pick(&mut rng);
        let days_supply = pick_days_supply(&mut rng);
        let pharmacy = if rng.below(100) < 80 {
            member.home_pharmacy
        } else {
            catalogue.pharmacy_popularity.pick(&mut rng) as usize
        };
        let ingredient_cents = catalogue
            .drugs
            .claim_cost_cents(drug, days_supply, &mut rng);
        let fee_cents = catalogue.pharmacy_fee_cents[pharmacy];
        let benefit = &catalogue.plans.benefit[member.plan];
        let copay_cents = pick_copay_cents(
            benefit,
            catalogue.drugs.brand[drug],
            ingredient_cents + fee_cents,
            &mut rng,
        );
        Claim {
            claim_id: row + 1,
            fill_day: self.calendar.pick(&mut rng),
            drug,
            diagnosis: catalogue.diagnoses.popularity.pick(&mut rng),
            prescriber: catalogue.prescriber_popularity.pick(&mut rng) as usize,
            pharmacy,
            days_supply,
            quantity_thousandths: pick_quantity_thousandths(days_supply, &mut rng),
            ingredient_cents,
            fee_cents,
            copay_cents,
            member,
        }
    }

    /// Appends one claim as a CSV line (column order of [`claims_schema`]).
    fn push_csv(&self, claim: &Claim, out: &mut Vec<u8>) {
        let catalogue = &self.catalogue;
        push_u64(out, claim.claim_id);
        out.extend_from_slice(b",M");
        push_u64_padded(out, claim.member.number, 9);
        out.push(b',');
        out.extend_from_slice(&self.calendar.text[claim.fill_day]);
        out.push(b',');
        out.extend_from_slice(&catalogue.drugs.ndc[claim.drug]);
        out.extend_from_slice(brand_generic(catalogue.drugs.brand[claim.drug]));
        catalogue.diagnoses.code[claim.diagnosis].push_to(out);
        out.push(b',');
        out.extend_from_slice(&catalogue.prescriber_npi[claim.prescriber]);
        out.push(b',');
        out.extend_from_slice(&catalogue.pharmacy_npi[claim.pharmacy]);
        out.push(b',');
        out.extend_from_slice(&catalogue.plans.id[claim.member.plan]);
        out.push(b',');
        out.extend_from_slice(STATES[claim.member.state].0.as_bytes());
        out.push(b',');
        push_u64(out, claim.days_supply as u64);
        out.push(b',');
        push_fixed(out, claim.quantity_thousandths, 3);
        for cents in [
            claim.ingredient_cents,
            claim.fee_cents,
            claim.copay_cents,
            claim.plan_paid_cents(),
            claim.total_cents(),
        ] {
            out.push(b',');
            push_fixed(out, cents, 2);
        }
        out.push(b'\n');
    }
}

/// The `brand_generic` value with the commas around it (saves two pushes on the hot path).
fn brand_generic(brand: bool) -> &'static [u8] {
    if brand {
        b",B,"
    } else {
        b",G,"
    }
}

/// Mostly 30 days, some 90 (maintenance drugs, mail order), the rest anywhere in 1..=365.
fn pick_days_supply(rng: &mut RowRng) -> u32 {
    match rng.below(100) {
        0..=67 => 30,
        68..=85 => 90,
        _ => 1 + rng.below(365) as u32,
    }
}

/// Quantity in thousandths of a unit, 1..=1000 units, skewed to small counts: mostly tablets
/// (whole or half, per day of supply), sometimes a measured amount (liquids, creams).
fn pick_quantity_thousandths(days_supply: u32, rng: &mut RowRng) -> u64 {
    const TABLETS_PER_DAY: [u64; 8] = [1, 1, 1, 1, 2, 2, 3, 4];
    let thousandths = match rng.below(100) {
        0..=69 => days_supply as u64 * 1_000 * TABLETS_PER_DAY[rng.below(8) as usize],
        70..=79 => days_supply as u64 * 500,
        _ => {
            let u = rng.unit();
            1_000 + (999_000.0 * u * u * u) as u64
        }
    };
    thousandths.clamp(1_000, 1_000_000)
}

/// The member's share of a fill under the plan's benefit, never more than the total.
fn pick_copay_cents(benefit: &PlanBenefit, brand: bool, total: u64, rng: &mut RowRng) -> u64 {
    let copay = if rng.below(100) < benefit.coinsurance_share_percent {
        total * benefit.coinsurance_percent / 100
    } else if brand {
        benefit.brand_copay_cents
    } else {
        benefit.generic_copay_cents
    };
    copay.min(total)
}

/// Column vectors for one Arrow batch of claims.
struct ClaimColumns {
    claim_id: Vec<i64>,
    member_id: StringColumn,
    fill_date: Vec<i32>,
    ndc: StringColumn,
    brand_generic: StringColumn,
    diagnosis_code: StringColumn,
    prescriber_npi: StringColumn,
    pharmacy_npi: StringColumn,
    plan_id: StringColumn,
    member_state: StringColumn,
    days_supply: Vec<i32>,
    quantity: Vec<i128>,
    ingredient_cost: Vec<i128>,
    dispensing_fee: Vec<i128>,
    copay: Vec<i128>,
    plan_paid: Vec<i128>,
    total_cost: Vec<i128>,
}

impl ClaimColumns {
    fn with_capacity(rows: usize) -> Self {
        ClaimColumns {
            claim_id: Vec::with_capacity(rows),
            member_id: StringColumn::with_capacity(rows, 10),
            fill_date: Vec::with_capacity(rows),
            ndc: StringColumn::with_capacity(rows, 11),
            brand_generic: StringColumn::with_capacity(rows, 1),
            diagnosis_code: StringColumn::with_capacity(rows, 8),
            prescriber_npi: StringColumn::with_capacity(rows, 10),
            pharmacy_npi: StringColumn::with_capacity(rows, 10),
            plan_id: StringColumn::with_capacity(rows, 9),
            member_state: StringColumn::with_capacity(rows, 2),
            days_supply: Vec::with_capacity(rows),
            quantity: Vec::with_capacity(rows),
            ingredient_cost: Vec::with_capacity(rows),
            dispensing_fee: Vec::with_capacity(rows),
            copay: Vec::with_capacity(rows),
            plan_paid: Vec::with_capacity(rows),
            total_cost: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, table: &ClaimsTable, claim: &Claim) {
        let catalogue = &table.catalogue;
        // claim ids are at most rows <= i64::MAX (validated).
        self.claim_id.push(claim.claim_id as i64);
        self.member_id.values.push(b'M');
        push_u64_padded(&mut self.member_id.values, claim.member.number, 9);
        self.member_id.end_value();
        self.fill_date
            .push(table.calendar.epoch_days[claim.fill_day]);
        self.ndc.push(&catalogue.drugs.ndc[claim.drug]);
        let brand = catalogue.drugs.brand[claim.drug];
        self.brand_generic.push(if brand { b"B" } else { b"G" });
        self.diagnosis_code
            .push_code(&catalogue.diagnoses.code[claim.diagnosis]);
        self.prescriber_npi
            .push(&catalogue.prescriber_npi[claim.prescriber]);
        self.pharmacy_npi
            .push(&catalogue.pharmacy_npi[claim.pharmacy]);
        self.plan_id.push(&catalogue.plans.id[claim.member.plan]);
        self.member_state
            .push(STATES[claim.member.state].0.as_bytes());
        self.days_supply.push(claim.days_supply as i32);
        self.quantity.push(claim.quantity_thousandths as i128);
        self.ingredient_cost.push(claim.ingredient_cents as i128);
        self.dispensing_fee.push(claim.fee_cents as i128);
        self.copay.push(claim.copay_cents as i128);
        self.plan_paid.push(claim.plan_paid_cents() as i128);
        self.total_cost.push(claim.total_cents() as i128);
    }

    fn finish(self, schema: SchemaRef) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.claim_id)),
            self.member_id.finish()?,
            Arc::new(Date32Array::from(self.fill_date)),
            self.ndc.finish()?,
            self.brand_generic.finish()?,
            self.diagnosis_code.finish()?,
            self.prescriber_npi.finish()?,
            self.pharmacy_npi.finish()?,
            self.plan_id.finish()?,
            self.member_state.finish()?,
            Arc::new(Int32Array::from(self.days_supply)),
            decimal_array(self.quantity, 10, 3)?,
            decimal_array(self.ingredient_cost, 12, 2)?,
            decimal_array(self.dispensing_fee, 8, 2)?,
            decimal_array(self.copay, 10, 2)?,
            decimal_array(self.plan_paid, 12, 2)?,
            decimal_array(self.total_cost, 12, 2)?,
        ];
        RecordBatch::try_new(schema, columns)
    }
}

impl SyntheticTable for ClaimsTable {
    fn file_stem(&self) -> &'static str {
        "claims"
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn write_csv_rows(&self, rows: Range<u64>, out: &mut Vec<u8>) {
        for row in rows {
            self.push_csv(&self.claim(row), out);
        }
    }

    fn build_batch(&self, rows: Range<u64>) -> Result<RecordBatch, ArrowError> {
        let mut columns = ClaimColumns::with_capacity((rows.end - rows.start) as usize);
        for row in rows {
            columns.push(self, &self.claim(row));
        }
        columns.finish(self.schema())
    }

    fn high_cardinality_columns(&self) -> &'static [&'static str] {
        &["claim_id", "ingredient_cost", "plan_paid", "total_cost"]
    }
}

// ---------------------------------------------------------------------------------------------
// H2O db-benchmark group-by table
// ---------------------------------------------------------------------------------------------

/// One H2O row, as in db-benchmark's `groupby-datagen.R`: `sample()` with replacement for the
/// ids and small integers, `round(runif(N, max = 100), 6)` for `v3` (kept as integer millionths).
struct H2oRow {
    id1: u64,
    id2: u64,
    id3: u64,
    id4: u64,
    id5: u64,
    id6: u64,
    v1: u64,
    v2: u64,
    v3_millionths: u64,
}

/// The H2O table of one run.
struct H2oTable {
    row_key: u64,
    /// K: values of id1, id2, id4, id5.
    groups: u64,
    /// N / K (integer division, as R's `1:(N/K)`): values of id3 and id6.
    small_groups: u64,
    schema: SchemaRef,
}

impl H2oTable {
    fn new(seed: u64, rows: u64, groups: u64) -> Result<Self, GenError> {
        if groups == 0 {
            return Err(invalid("groups", "must be at least 1".to_string()));
        }
        if groups > rows {
            let reason =
                format!("{groups} is more than --rows {rows}: id3 and id6 take rows/groups values");
            return Err(invalid("groups", reason));
        }
        let small_groups = rows / groups;
        // id4..id6 are int32.
        if groups > i32::MAX as u64 || small_groups > i32::MAX as u64 {
            let reason = format!("groups and rows/groups must be at most {}", i32::MAX);
            return Err(invalid("groups", reason));
        }
        Ok(H2oTable {
            row_key: stream_key(seed, DOMAIN_H2O_ROWS),
            groups,
            small_groups,
            schema: h2o_schema(),
        })
    }

    /// Row number `row` (0-based): a pure function of the seed and `row`.
    fn row(&self, row: u64) -> H2oRow {
        let mut rng = RowRng::new(self.row_key, row);
        H2oRow {
            id1: 1 + rng.below(self.groups),
            id2: 1 + rng.below(self.groups),
            id3: 1 + rng.below(self.small_groups),
            id4: 1 + rng.below(self.groups),
            id5: 1 + rng.below(self.groups),
            id6: 1 + rng.below(self.small_groups),
            v1: 1 + rng.below(5),
            v2: 1 + rng.below(15),
            v3_millionths: (rng.unit() * 100_000_000.0).round() as u64,
        }
    }
}

/// `sprintf("id%03d", n)`, or `id%010d` for id3.
fn push_h2o_id(out: &mut Vec<u8>, value: u64, width: usize) {
    out.extend_from_slice(b"id");
    push_u64_padded(out, value, width);
}

/// `v3` as the shortest decimal text (up to 6 decimals, no trailing zeros), like R's `fwrite`.
fn push_millionths(out: &mut Vec<u8>, millionths: u64) {
    push_u64(out, millionths / 1_000_000);
    let mut fraction = millionths % 1_000_000;
    if fraction == 0 {
        return;
    }
    let mut width = 6;
    while fraction % 10 == 0 {
        fraction /= 10;
        width -= 1;
    }
    out.push(b'.');
    push_u64_padded(out, fraction, width);
}

impl SyntheticTable for H2oTable {
    fn file_stem(&self) -> &'static str {
        "h2o"
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn write_csv_rows(&self, rows: Range<u64>, out: &mut Vec<u8>) {
        for index in rows {
            let row = self.row(index);
            push_h2o_id(out, row.id1, 3);
            out.push(b',');
            push_h2o_id(out, row.id2, 3);
            out.push(b',');
            push_h2o_id(out, row.id3, 10);
            for value in [row.id4, row.id5, row.id6, row.v1, row.v2] {
                out.push(b',');
                push_u64(out, value);
            }
            out.push(b',');
            push_millionths(out, row.v3_millionths);
            out.push(b'\n');
        }
    }

    fn build_batch(&self, rows: Range<u64>) -> Result<RecordBatch, ArrowError> {
        let count = (rows.end - rows.start) as usize;
        let mut ids = [
            StringColumn::with_capacity(count, 5),
            StringColumn::with_capacity(count, 5),
            StringColumn::with_capacity(count, 12),
        ];
        let mut ints: [Vec<i32>; 5] = std::array::from_fn(|_| Vec::with_capacity(count));
        let mut v3 = Vec::with_capacity(count);
        for index in rows {
            let row = self.row(index);
            for (column, (value, width)) in
                ids.iter_mut()
                    .zip([(row.id1, 3), (row.id2, 3), (row.id3, 10)])
            {
                push_h2o_id(&mut column.values, value, width);
                column.end_value();
            }
            // All at most i32::MAX (validated in `new`).
            for (column, value) in ints
                .iter_mut()
                .zip([row.id4, row.id5, row.id6, row.v1, row.v2])
            {
                column.push(value as i32);
            }
            // Division of two exact integers rounds once: the same double a CSV reader parses
            // from the decimal text.
            v3.push(row.v3_millionths as f64 / 1_000_000.0);
        }
        let mut columns = Vec::with_capacity(9);
        for column in ids {
            columns.push(column.finish()?);
        }
        for column in ints {
            columns.push(Arc::new(Int32Array::from(column)) as ArrayRef);
        }
        columns.push(Arc::new(Float64Array::from(v3)));
        RecordBatch::try_new(self.schema(), columns)
    }

    fn high_cardinality_columns(&self) -> &'static [&'static str] {
        &["v3"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::csv::ReaderBuilder;
    use datafusion::arrow::datatypes::{
        Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type,
    };
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU64;

    fn claims_options(out: &Path, rows: u64, files: usize, format: GenFormat) -> ClaimsOptions {
        ClaimsOptions {
            rows,
            files,
            format,
            out: out.to_path_buf(),
            seed: 42,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            days: 366,
            threads: 1,
        }
    }

    fn h2o_options(out: &Path, rows: u64, groups: u64, format: GenFormat) -> H2oOptions {
        H2oOptions {
            rows,
            groups,
            files: 2,
            format,
            out: out.to_path_buf(),
            seed: 7,
            threads: 2,
        }
    }

    fn no_progress(_: u64) {}

    fn file_bytes(summary: &GenSummary) -> Vec<Vec<u8>> {
        summary
            .files
            .iter()
            .map(|path| fs::read(path).unwrap())
            .collect()
    }

    /// All files of a run read back through Arrow's CSV reader with `schema`, as one batch.
    fn read_csv(summary: &GenSummary, schema: SchemaRef) -> RecordBatch {
        let mut batches = Vec::new();
        for path in &summary.files {
            let reader = ReaderBuilder::new(Arc::clone(&schema))
                .with_header(true)
                .build(File::open(path).unwrap())
                .unwrap();
            for batch in reader {
                batches.push(batch.unwrap());
            }
        }
        concat_batches(&schema, &batches).unwrap()
    }

    fn read_parquet(summary: &GenSummary, schema: SchemaRef) -> RecordBatch {
        let mut batches = Vec::new();
        for path in &summary.files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                batches.push(batch.unwrap());
            }
        }
        concat_batches(&schema, &batches).unwrap()
    }

    fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
        let column = batch.column_by_name(name).unwrap().as_string::<i32>();
        column
            .iter()
            .map(|value| value.unwrap().to_string())
            .collect()
    }

    fn ints(batch: &RecordBatch, name: &str) -> Vec<i64> {
        let column = batch.column_by_name(name).unwrap();
        match column.data_type() {
            DataType::Int32 => column
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .map(|&v| v as i64)
                .collect(),
            DataType::Int64 => column.as_primitive::<Int64Type>().values().to_vec(),
            DataType::Decimal128(_, _) => column
                .as_primitive::<Decimal128Type>()
                .values()
                .iter()
                .map(|&v| i64::try_from(v).unwrap())
                .collect(),
            other => panic!("{name}: unexpected type {other}"),
        }
    }

    #[test]
    fn digits_match_format() {
        for value in [0u64, 7, 10, 99, 12_345, 1_000_000, u64::MAX] {
            for width in [0usize, 1, 3, 9, 11, 25] {
                let mut out = Vec::new();
                push_u64_padded(&mut out, value, width);
                assert_eq!(String::from_utf8(out).unwrap(), format!("{value:0width$}"));
            }
        }
        let mut out = Vec::new();
        push_fixed(&mut out, 1250, 2);
        out.push(b' ');
        push_fixed(&mut out, 3000, 3);
        out.push(b' ');
        push_fixed(&mut out, 5, 2);
        assert_eq!(out, b"12.50 3.000 0.05");
        let mut out = Vec::new();
        for millionths in [0, 100_000_000, 23_574_912, 5_100_000, 1] {
            push_millionths(&mut out, millionths);
            out.push(b' ');
        }
        assert_eq!(out, b"0 100 23.574912 5.1 0.000001 ");
    }

    #[test]
    fn npi_check_digit_matches_cms_example() {
        // CMS's worked example: 123456789 -> check digit 3 (NPI 1234567893).
        assert_eq!(npi_check_digit(123_456_789), 3);
        // And an independent Luhn check over the 15-digit `80840` form of generated NPIs.
        for base in [100_000_000u64, 149_999_999, 150_000_123, 187_654_321] {
            let npi = base * 10 + npi_check_digit(base);
            let full = format!("80840{npi}");
            let sum: u32 = full
                .bytes()
                .rev()
                .enumerate()
                .map(|(i, b)| {
                    let d = (b - b'0') as u32;
                    if i % 2 == 1 {
                        if d * 2 > 9 {
                            d * 2 - 9
                        } else {
                            d * 2
                        }
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{full} fails Luhn");
        }
    }

    #[test]
    fn same_seed_same_bytes_whatever_the_threads() {
        for format in [GenFormat::Csv, GenFormat::Parquet] {
            let one = tempfile::tempdir().unwrap();
            let two = tempfile::tempdir().unwrap();
            let mut options = claims_options(one.path(), 5_000, 3, format);
            let first = generate_claims(&options, &no_progress).unwrap();
            options.out = two.path().to_path_buf();
            options.threads = 2;
            let second = generate_claims(&options, &no_progress).unwrap();
            assert_eq!(file_bytes(&first), file_bytes(&second));
            assert_eq!(first.bytes, second.bytes);
            let names: Vec<_> = second
                .files
                .iter()
                .map(|p| p.file_name().unwrap().to_owned())
                .collect();
            let ext = format.extension();
            let expected: Vec<_> = (0..3)
                .map(|i| format!("claims-0000{i}.{ext}").into())
                .collect::<Vec<std::ffi::OsString>>();
            assert_eq!(names, expected);
        }
    }

    #[test]
    fn different_seed_different_bytes() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let mut options = claims_options(one.path(), 1_000, 1, GenFormat::Csv);
        let first = generate_claims(&options, &no_progress).unwrap();
        options.out = two.path().to_path_buf();
        options.seed = 43;
        let second = generate_claims(&options, &no_progress).unwrap();
        assert_ne!(file_bytes(&first), file_bytes(&second));
    }

    #[test]
    fn a_slice_is_the_same_rows_as_in_the_whole() {
        // 3 files of 1,000 rows vs 1 file: the second file is rows 1001..=2000 of the single one.
        let whole_dir = tempfile::tempdir().unwrap();
        let split_dir = tempfile::tempdir().unwrap();
        let whole = generate_claims(
            &claims_options(whole_dir.path(), 3_000, 1, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let split = generate_claims(
            &claims_options(split_dir.path(), 3_000, 3, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let whole_text = String::from_utf8(fs::read(&whole.files[0]).unwrap()).unwrap();
        let middle_text = String::from_utf8(fs::read(&split.files[1]).unwrap()).unwrap();
        let whole_lines: Vec<&str> = whole_text.lines().collect();
        let middle_lines: Vec<&str> = middle_text.lines().collect();
        assert_eq!(middle_lines[0], whole_lines[0], "header");
        assert_eq!(&middle_lines[1..], &whole_lines[1001..2001]);
    }

    #[test]
    fn claims_csv_reads_back_with_the_schema_and_holds_the_invariants() {
        let dir = tempfile::tempdir().unwrap();
        let rows = 20_000;
        let reported = AtomicU64::new(0);
        let progress = |n: u64| {
            reported.fetch_add(n, Ordering::Relaxed);
        };
        let summary = generate_claims(
            &claims_options(dir.path(), rows, 4, GenFormat::Csv),
            &progress,
        )
        .unwrap();
        assert_eq!(summary.rows, rows);
        assert_eq!(reported.load(Ordering::Relaxed), rows);
        let on_disk: u64 = summary
            .files
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(summary.bytes, on_disk);
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let batch = read_csv(&summary, claims_schema());
        assert_eq!(batch.num_rows() as u64, rows);

        let claim_ids = ints(&batch, "claim_id");
        assert_eq!(claim_ids, (1..=rows as i64).collect::<Vec<_>>());

        // Money identities, on every row, in integer cents.
        let ingredient = ints(&batch, "ingredient_cost");
        let fee = ints(&batch, "dispensing_fee");
        let copay = ints(&batch, "copay");
        let plan_paid = ints(&batch, "plan_paid");
        let total = ints(&batch, "total_cost");
        for i in 0..batch.num_rows() {
            assert_eq!(total[i], ingredient[i] + fee[i], "row {i}");
            assert_eq!(plan_paid[i], total[i] - copay[i], "row {i}");
            assert!(copay[i] >= 0 && copay[i] <= total[i], "row {i}");
            assert!(ingredient[i] > 0, "row {i}");
            assert!((0..=1_500).contains(&fee[i]), "row {i}");
        }
        for quantity in ints(&batch, "quantity") {
            assert!((1_000..=1_000_000).contains(&quantity), "{quantity}");
        }
        let days_supply = ints(&batch, "days_supply");
        assert!(days_supply.iter().all(|d| (1..=365).contains(d)));
        let thirty = days_supply.iter().filter(|&&d| d == 30).count();
        let ninety = days_supply.iter().filter(|&&d| d == 90).count();
        assert!(
            thirty > rows as usize / 2 && ninety > rows as usize / 10,
            "{thirty} {ninety}"
        );

        // fill_date within start .. start + days.
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let first_day = (start - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32;
        let dates = batch
            .column_by_name("fill_date")
            .unwrap()
            .as_primitive::<Date32Type>();
        assert!(dates
            .values()
            .iter()
            .all(|&d| d >= first_day && d < first_day + 366));
        // Weekends are rarer: 2024-01-06 is a Saturday, 2024-01-07 a Sunday.
        let weekday_of = |d: i32| (d - first_day + 0) % 7; // 0 = Monday (2024-01-01 is a Monday)
        let weekday_count = dates
            .values()
            .iter()
            .filter(|&&d| weekday_of(d) < 5)
            .count() as f64
            / 5.0;
        let sunday_count = dates
            .values()
            .iter()
            .filter(|&&d| weekday_of(d) == 6)
            .count() as f64;
        assert!(
            sunday_count < weekday_count * 0.5,
            "{sunday_count} vs {weekday_count}"
        );

        // Shapes of the string columns.
        let is_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let ndc = strings(&batch, "ndc");
        assert!(ndc.iter().all(|s| is_digits(s, 11)));
        let leading_zero = ndc.iter().filter(|s| s.starts_with('0')).count();
        assert!(leading_zero > ndc.len() / 10, "{leading_zero}");
        assert!(ndc.iter().any(|s| s == "00002143380"));
        let most_common = ndc
            .iter()
            .fold(std::collections::HashMap::new(), |mut counts, s| {
                *counts.entry(s.as_str()).or_insert(0) += 1;
                counts
            });
        let top = most_common.iter().max_by_key(|(_, c)| **c).unwrap();
        assert_eq!(*top.0, "00002143380");

        let members = strings(&batch, "member_id");
        assert!(members
            .iter()
            .all(|s| s.starts_with('M') && is_digits(&s[1..], 9)));
        let distinct_members: HashSet<_> = members.iter().collect();
        let expected_members = rows / CLAIMS_PER_MEMBER;
        assert!(
            distinct_members.len() as u64 > expected_members * 9 / 10,
            "{}",
            distinct_members.len()
        );
        assert!(distinct_members.len() as u64 <= expected_members);

        let brand = strings(&batch, "brand_generic");
        let generic_share = brand.iter().filter(|s| *s == "G").count() as f64 / rows as f64;
        assert!(brand.iter().all(|s| s == "B" || s == "G"));
        assert!((0.85..0.95).contains(&generic_share), "{generic_share}");

        for code in strings(&batch, "diagnosis_code") {
            let b = code.as_bytes();
            let shaped = b[0].is_ascii_uppercase()
                && b[1].is_ascii_digit()
                && b[2].is_ascii_digit()
                && (b.len() == 3
                    || (b[3] == b'.'
                        && (5..=8).contains(&b.len())
                        && b[4..].iter().all(|c| c.is_ascii_alphanumeric())));
            assert!(shaped, "{code}");
        }
        for npi in strings(&batch, "prescriber_npi")
            .iter()
            .chain(&strings(&batch, "pharmacy_npi"))
        {
            assert!(is_digits(npi, 10), "{npi}");
            let base: u64 = npi[..9].parse().unwrap();
            assert_eq!(
                npi_check_digit(base),
                (npi.as_bytes()[9] - b'0') as u64,
                "{npi}"
            );
        }
        for plan in strings(&batch, "plan_id") {
            let b = plan.as_bytes();
            assert!(
                b.len() == 9 && b[0].is_ascii_uppercase() && b[5] == b'-',
                "{plan}"
            );
            assert!(
                b[1..5].iter().chain(&b[6..]).all(u8::is_ascii_digit),
                "{plan}"
            );
            assert!(
                (1..=6).contains(&plan[6..].parse::<u32>().unwrap()),
                "{plan}"
            );
        }
        let states: HashSet<String> = STATES.iter().map(|(code, _)| code.to_string()).collect();
        assert_eq!(states.len(), 56);
        // member_state and plan_id are properties of the member.
        let member_state = strings(&batch, "member_state");
        let plan_id = strings(&batch, "plan_id");
        let mut member_attributes = std::collections::HashMap::new();
        for i in 0..batch.num_rows() {
            assert!(states.contains(&member_state[i]), "{}", member_state[i]);
            let attributes = (member_state[i].clone(), plan_id[i].clone());
            let previous = member_attributes
                .entry(members[i].clone())
                .or_insert_with(|| attributes.clone());
            assert_eq!(*previous, attributes, "member {}", members[i]);
        }
        // brand_generic is a property of the drug.
        let mut drug_brand = std::collections::HashMap::new();
        for (code, flag) in ndc.iter().zip(&brand) {
            assert_eq!(drug_brand.entry(code).or_insert(flag), &flag, "{code}");
        }
    }

    #[test]
    fn csv_text_formats() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate_claims(
            &claims_options(dir.path(), 50, 1, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let text = String::from_utf8(fs::read(&summary.files[0]).unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "claim_id,member_id,fill_date,ndc,brand_generic,diagnosis_code,prescriber_npi,pharmacy_npi,plan_id,member_state,days_supply,quantity,ingredient_cost,dispensing_fee,copay,plan_paid,total_cost"
        );
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 17, "{line}");
            assert!(
                NaiveDate::parse_from_str(fields[2], "%Y-%m-%d").is_ok(),
                "{line}"
            );
            let decimals = |field: &str| field.split_once('.').map(|(_, f)| f.len());
            assert_eq!(decimals(fields[11]), Some(3), "{line}");
            for money in &fields[12..] {
                assert_eq!(decimals(money), Some(2), "{line}");
            }
        }
    }

    #[test]
    fn parquet_holds_the_same_rows_as_csv() {
        let csv_dir = tempfile::tempdir().unwrap();
        let parquet_dir = tempfile::tempdir().unwrap();
        // More than one batch per file, so batch boundaries are exercised too.
        let rows = 2 * BATCH_ROWS + 123;
        let csv = generate_claims(
            &claims_options(csv_dir.path(), rows, 2, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let parquet = generate_claims(
            &claims_options(parquet_dir.path(), rows, 2, GenFormat::Parquet),
            &no_progress,
        )
        .unwrap();
        assert_eq!(
            parquet.files[0].file_name().unwrap(),
            "claims-00000.parquet"
        );
        let from_csv = read_csv(&csv, claims_schema());
        let from_parquet = read_parquet(&parquet, claims_schema());
        assert_eq!(from_parquet.schema().fields(), claims_schema().fields());
        assert_eq!(from_csv.num_rows() as u64, rows);
        for (i, field) in claims_schema().fields().iter().enumerate() {
            assert_eq!(
                from_csv.column(i).to_data(),
                from_parquet.column(i).to_data(),
                "{}",
                field.name()
            );
        }
    }

    #[test]
    fn h2o_values_follow_db_benchmark() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, groups) = (10_000u64, 100u64);
        let summary = generate_h2o(
            &h2o_options(dir.path(), rows, groups, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        assert_eq!(
            summary
                .files
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            ["h2o-00000.csv", "h2o-00001.csv"]
        );
        let batch = read_csv(&summary, h2o_schema());
        assert_eq!(batch.num_rows() as u64, rows);

        let expected_ids = |count: u64, width: usize| -> BTreeSet<String> {
            (1..=count).map(|n| format!("id{n:0width$}")).collect()
        };
        for (name, count, width) in [
            ("id1", groups, 3),
            ("id2", groups, 3),
            ("id3", rows / groups, 10),
        ] {
            let seen: BTreeSet<String> = strings(&batch, name).into_iter().collect();
            assert_eq!(seen, expected_ids(count, width), "{name}");
        }
        for (name, max) in [
            ("id4", groups),
            ("id5", groups),
            ("id6", rows / groups),
            ("v1", 5),
            ("v2", 15),
        ] {
            let seen: BTreeSet<i64> = ints(&batch, name).into_iter().collect();
            assert_eq!(seen, (1..=max as i64).collect(), "{name}");
        }
        let v3 = batch
            .column_by_name("v3")
            .unwrap()
            .as_primitive::<Float64Type>();
        for &value in v3.values() {
            assert!((0.0..=100.0).contains(&value));
            let scaled = value * 1e6;
            assert!(
                (scaled - scaled.round()).abs() < 1e-6,
                "{value} has more than 6 decimals"
            );
        }
        let mean = v3.values().iter().sum::<f64>() / rows as f64;
        assert!((mean - 50.0).abs() < 2.0, "{mean}");
    }

    #[test]
    fn h2o_parquet_equals_csv_and_is_thread_independent() {
        let csv_dir = tempfile::tempdir().unwrap();
        let one_dir = tempfile::tempdir().unwrap();
        let two_dir = tempfile::tempdir().unwrap();
        let csv = generate_h2o(
            &h2o_options(csv_dir.path(), 5_000, 10, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let mut options = h2o_options(one_dir.path(), 5_000, 10, GenFormat::Parquet);
        options.threads = 1;
        let one = generate_h2o(&options, &no_progress).unwrap();
        options.threads = 2;
        options.out = two_dir.path().to_path_buf();
        let two = generate_h2o(&options, &no_progress).unwrap();
        assert_eq!(file_bytes(&one), file_bytes(&two));
        let from_csv = read_csv(&csv, h2o_schema());
        let from_parquet = read_parquet(&one, h2o_schema());
        for i in 0..from_csv.num_columns() {
            // Exact equality, v3 included: text and binary hold the same doubles.
            assert_eq!(
                from_csv.column(i).to_data(),
                from_parquet.column(i).to_data(),
                "column {i}"
            );
        }
    }

    #[test]
    fn invalid_options_are_rejected_with_the_flag_name() {
        let dir = tempfile::tempdir().unwrap();
        let flag = |result: Result<GenSummary, GenError>| match result {
            Err(GenError::InvalidOption { option, .. }) => option,
            other => panic!("expected an invalid option, got {other:?}"),
        };
        let base = claims_options(dir.path(), 10, 1, GenFormat::Csv);
        assert_eq!(
            flag(generate_claims(
                &ClaimsOptions {
                    rows: 0,
                    ..base.clone()
                },
                &no_progress
            )),
            "rows"
        );
        assert_eq!(
            flag(generate_claims(
                &ClaimsOptions {
                    files: 0,
                    ..base.clone()
                },
                &no_progress
            )),
            "files"
        );
        assert_eq!(
            flag(generate_claims(
                &ClaimsOptions {
                    files: 11,
                    ..base.clone()
                },
                &no_progress
            )),
            "files"
        );
        assert_eq!(
            flag(generate_claims(
                &ClaimsOptions {
                    threads: 0,
                    ..base.clone()
                },
                &no_progress
            )),
            "threads"
        );
        assert_eq!(
            flag(generate_claims(
                &ClaimsOptions {
                    days: 0,
                    ..base.clone()
                },
                &no_progress
            )),
            "days"
        );
        let late = NaiveDate::from_ymd_opt(9999, 12, 1).unwrap();
        assert_eq!(
            flag(generate_claims(
                &ClaimsOptions {
                    start: late,
                    days: 60,
                    ..base.clone()
                },
                &no_progress
            )),
            "start"
        );
        let h2o = h2o_options(dir.path(), 10, 1, GenFormat::Csv);
        assert_eq!(
            flag(generate_h2o(
                &H2oOptions {
                    groups: 0,
                    ..h2o.clone()
                },
                &no_progress
            )),
            "groups"
        );
        assert_eq!(
            flag(generate_h2o(
                &H2oOptions {
                    groups: 11,
                    ..h2o.clone()
                },
                &no_progress
            )),
            "groups"
        );
        // Nothing was written for rejected options.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn io_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-directory");
        fs::write(&blocker, b"x").unwrap();
        let options = claims_options(&blocker.join("out"), 10, 1, GenFormat::Csv);
        let error = generate_claims(&options, &no_progress).unwrap_err();
        assert!(matches!(error, GenError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("not-a-directory"), "{error}");
    }

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
