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
//! The parts: [`writer`] (parallel file writing, the CSV and Parquet encoders' files, the output
//! layout), [`rng`] (the counter-based generator and pickers), [`encode`] (hand-written digit and
//! number encoding), [`claims`] and [`h2o`] (the two tables: schema and row generation). This file
//! holds the options, the errors and the entry points.
//!
//! This module must not depend on the engine: it writes files with `std`, Arrow and Parquet only,
//! and never builds a `SessionContext`.

mod claims;
mod encode;
mod h2o;
mod rng;
mod writer;

pub(crate) use claims::claims_schema;
#[allow(unused_imports)] // part of the interface beside `claims_schema`; used by the tests
pub(crate) use h2o::h2o_schema;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use datafusion::arrow::error::ArrowError;
use datafusion::parquet::errors::ParquetError;

use claims::{Calendar, ClaimsTable};
use h2o::H2oTable;
use writer::{write_table, OutputLayout};

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

impl ClaimsOptions {
    /// Where and how the claims files are written.
    fn layout(&self) -> OutputLayout<'_> {
        OutputLayout {
            out: &self.out,
            format: self.format,
            rows: self.rows,
            files: self.files,
            threads: self.threads,
        }
    }
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
    write_table(&table, &opts.layout(), progress)
}

/// The `[tables.claims]` section of a `spillway.toml` that reads the files [`generate_claims`]
/// writes with `opts`: their glob, their format and, for CSV, the explicit schema of
/// [`claims_schema`] (inference would read NDCs as numbers and drop their leading zeros; Parquet
/// files carry their own types). Written from the schema and the file layout, so it cannot
/// drift from the files.
pub(crate) fn claims_table_config(opts: &ClaimsOptions) -> String {
    let location = opts.layout().files_glob(claims::FILE_STEM);
    let mut text = format!(
        "[tables.claims]\nlocation = {}\nformat = \"{}\"\n",
        toml::Value::String(location.to_string_lossy().into_owned()),
        opts.format.extension()
    );
    if opts.format == GenFormat::Csv {
        text.push_str("\n[tables.claims.schema]\n");
        for field in claims_schema().fields() {
            let type_name = crate::catalog::config_type_name(field.data_type());
            text.push_str(&format!("{} = \"{type_name}\"\n", field.name()));
        }
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::csv::ReaderBuilder;
    use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int32Type, Int64Type, SchemaRef};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::fs::{self, File};
    use std::sync::Arc;

    pub(super) fn claims_options(
        out: &Path,
        rows: u64,
        files: usize,
        format: GenFormat,
    ) -> ClaimsOptions {
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

    pub(super) fn h2o_options(out: &Path, rows: u64, groups: u64, format: GenFormat) -> H2oOptions {
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

    pub(super) fn no_progress(_: u64) {}

    pub(super) fn file_bytes(summary: &GenSummary) -> Vec<Vec<u8>> {
        summary
            .files
            .iter()
            .map(|path| fs::read(path).unwrap())
            .collect()
    }

    /// All files of a run read back through Arrow's CSV reader with `schema`, as one batch.
    pub(super) fn read_csv(summary: &GenSummary, schema: SchemaRef) -> RecordBatch {
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

    pub(super) fn read_parquet(summary: &GenSummary, schema: SchemaRef) -> RecordBatch {
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

    pub(super) fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
        let column = batch.column_by_name(name).unwrap().as_string::<i32>();
        column
            .iter()
            .map(|value| value.unwrap().to_string())
            .collect()
    }

    pub(super) fn ints(batch: &RecordBatch, name: &str) -> Vec<i64> {
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
    fn the_claims_config_names_the_files_their_format_and_for_csv_the_schema() {
        let csv = claims_options(Path::new("data/claims"), 10, 1, GenFormat::Csv);
        let expected = r#"[tables.claims]
location = "data/claims/claims-*.csv"
format = "csv"

[tables.claims.schema]
claim_id = "int64"
member_id = "string"
fill_date = "date"
ndc = "string"
brand_generic = "string"
diagnosis_code = "string"
prescriber_npi = "string"
pharmacy_npi = "string"
plan_id = "string"
member_state = "string"
days_supply = "int32"
quantity = "decimal(10,3)"
ingredient_cost = "decimal(12,2)"
dispensing_fee = "decimal(8,2)"
copay = "decimal(10,2)"
plan_paid = "decimal(12,2)"
total_cost = "decimal(12,2)"
"#;
        assert_eq!(claims_table_config(&csv), expected);
        let parquet = claims_options(Path::new("out"), 10, 1, GenFormat::Parquet);
        assert_eq!(
            claims_table_config(&parquet),
            "[tables.claims]\nlocation = \"out/claims-*.parquet\"\nformat = \"parquet\"\n"
        );
        // Quotes and backslashes in the folder name stay TOML strings.
        let odd = claims_options(Path::new(r#"a "b" \c"#), 10, 1, GenFormat::Parquet);
        let config = crate::config::ConfigFile::parse(&claims_table_config(&odd)).unwrap();
        assert_eq!(
            config.tables["claims"].location,
            r#"a "b" \c/claims-*.parquet"#
        );
    }

    #[test]
    fn the_claims_config_loads_as_a_table_with_the_claims_schema() {
        let options = claims_options(Path::new("claims"), 10, 1, GenFormat::Csv);
        let config = crate::config::ConfigFile::parse(&claims_table_config(&options)).unwrap();
        let spec =
            crate::catalog::TableSpec::from_section("claims", &config.tables["claims"], 1000)
                .unwrap();
        let loaded = spec.schema.unwrap();
        let columns = |schema: &SchemaRef| -> Vec<(String, DataType)> {
            schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
        assert_eq!(columns(&loaded), columns(&claims_schema()));
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
}
