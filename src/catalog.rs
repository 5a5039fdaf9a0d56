//! Table specs and how they become DataFusion listing tables.
//!
//! A [`TableSpec`] says where a table's files are and how to read them (format, CSV dialect,
//! compression, hive partition columns, explicit schema or bounded inference, the CSV dialect
//! and digit-string columns sniffed from a sample: `sniff`). [`register`]
//! resolves its location through `storage`, settles the format and the schema, checks that the
//! files agree with each other (naming both files and the column when they do not), and
//! registers a `ListingTable`. Must not read table data beyond the bounded schema sample, except
//! for Excel workbooks, which are read whole into an in-memory table (`excel` says why that is
//! bounded).

pub(crate) mod excel;
pub(crate) mod sniff;

use crate::config::{single_byte, ColumnType, TableSection, TableStorage};
use crate::error::{Error, Result};
use crate::storage::{self, Location, ResolvedLocation};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::logical_expr::{cast, when, Expr};
use datafusion::prelude::{ident, lit, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Rows read per file to infer a schema when none is given.
pub(crate) const DEFAULT_INFER_ROWS: usize = 1000;

/// How many files' schemas are inferred at once when checking that they agree.
const SCHEMA_CHECK_CONCURRENCY: usize = 8;

/// A file format Spillway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableFormat {
    Csv,
    Parquet,
    NdJson,
    /// An Excel workbook (`.xlsx`): one sheet, read whole (see `excel`).
    Xlsx,
}

impl TableFormat {
    /// The name `spillway.toml` uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TableFormat::Csv => "csv",
            TableFormat::Parquet => "parquet",
            TableFormat::NdJson => "ndjson",
            TableFormat::Xlsx => "xlsx",
        }
    }

    /// Parse a format name from the config or a flag.
    pub(crate) fn parse(text: &str) -> std::result::Result<TableFormat, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "csv" | "tsv" => Ok(TableFormat::Csv),
            "parquet" => Ok(TableFormat::Parquet),
            "ndjson" | "jsonl" | "json" => Ok(TableFormat::NdJson),
            "xlsx" | "excel" => Ok(TableFormat::Xlsx),
            other => Err(format!(
                "unknown table format `{other}` (expected csv, parquet, ndjson or xlsx)"
            )),
        }
    }
}

/// A compression of CSV or NDJSON files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    /// Parse a compression name from the config.
    pub(crate) fn parse(text: &str) -> std::result::Result<Compression, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            "bzip2" | "bz2" => Ok(Compression::Bzip2),
            "xz" => Ok(Compression::Xz),
            other => Err(format!(
                "unknown compression `{other}` (expected gzip, zstd, bzip2, xz or none)"
            )),
        }
    }

    fn file_type(self) -> FileCompressionType {
        match self {
            Compression::None => FileCompressionType::UNCOMPRESSED,
            Compression::Gzip => FileCompressionType::GZIP,
            Compression::Zstd => FileCompressionType::ZSTD,
            Compression::Bzip2 => FileCompressionType::BZIP2,
            Compression::Xz => FileCompressionType::XZ,
        }
    }
}

/// Format and compression as told by a file name: `claims.csv.gz` → (Csv, Gzip, tab = false).
fn detect_from_name(name: &str) -> Option<(TableFormat, Compression, bool)> {
    let lower = name.to_ascii_lowercase();
    let (stem, compression) = [
        (".gz", Compression::Gzip),
        (".zst", Compression::Zstd),
        (".bz2", Compression::Bzip2),
        (".xz", Compression::Xz),
    ]
    .iter()
    .find_map(|(suffix, compression)| lower.strip_suffix(suffix).map(|stem| (stem, *compression)))
    .unwrap_or((lower.as_str(), Compression::None));
    let extension = stem.rsplit_once('.')?.1;
    let (format, tab) = match extension {
        "csv" | "txt" => (TableFormat::Csv, false),
        "tsv" => (TableFormat::Csv, true),
        "parquet" | "parq" => (TableFormat::Parquet, false),
        "ndjson" | "jsonl" | "json" => (TableFormat::NdJson, false),
        "xlsx" => (TableFormat::Xlsx, false),
        _ => return None,
    };
    Some((format, compression, tab))
}

/// How to read CSV files.
#[derive(Debug, Clone)]
pub(crate) struct CsvDialect {
    pub(crate) header: bool,
    /// Whether the table's settings say `header` (else it is sniffed from the first file).
    pub(crate) header_set: bool,
    pub(crate) delimiter: Option<u8>,
    pub(crate) quote: u8,
    /// Whether the table's settings say `quote` (else `"` or `'` is sniffed).
    pub(crate) quote_set: bool,
    pub(crate) escape: Option<u8>,
    /// Values read as NULL.
    pub(crate) null_values: Vec<String>,
}

impl Default for CsvDialect {
    fn default() -> Self {
        Self {
            header: true,
            header_set: false,
            delimiter: None,
            quote: b'"',
            quote_set: false,
            escape: None,
            null_values: Vec::new(),
        }
    }
}

/// Everything needed to register one table.
#[derive(Debug, Clone)]
pub(crate) struct TableSpec {
    pub(crate) name: String,
    pub(crate) location: String,
    pub(crate) format: Option<TableFormat>,
    pub(crate) compression: Option<Compression>,
    pub(crate) csv: CsvDialect,
    pub(crate) partition_columns: Vec<String>,
    /// An explicit schema; `None` infers one from a bounded sample of each file. For CSV with a
    /// header, a schema naming only some of the columns types those and the rest are inferred
    /// (see [`table_schema`]).
    pub(crate) schema: Option<SchemaRef>,
    pub(crate) infer_rows: usize,
    /// Store settings of this table's bucket, container or server, over `[storage.*]`.
    pub(crate) storage: TableStorage,
    /// The sheet an Excel table reads (`None`: the first).
    pub(crate) sheet: Option<String>,
}

impl TableSpec {
    /// A table at a location with everything else detected.
    pub(crate) fn at(name: &str, location: &str) -> TableSpec {
        TableSpec {
            name: name.to_string(),
            location: location.to_string(),
            format: None,
            compression: None,
            csv: CsvDialect::default(),
            partition_columns: Vec::new(),
            schema: None,
            infer_rows: DEFAULT_INFER_ROWS,
            storage: TableStorage::default(),
            sheet: None,
        }
    }

    /// Build a spec from `[tables.NAME]`; errors name the key at fault.
    pub(crate) fn from_section(
        name: &str,
        section: &TableSection,
        infer_rows: usize,
    ) -> Result<TableSpec> {
        let key = |field: &str| format!("tables.{name}.{field}");
        let config_error =
            |field: &str, message: String| Error::Config(format!("{}: {message}", key(field)));
        let mut spec = TableSpec::at(name, &section.location);
        if section.location.trim().is_empty() {
            return Err(config_error(
                "location",
                "must name a file, folder or glob".into(),
            ));
        }
        spec.format = match &section.format {
            Some(text) => Some(TableFormat::parse(text).map_err(|e| config_error("format", e))?),
            None => None,
        };
        spec.compression = match &section.compression {
            Some(text) => {
                Some(Compression::parse(text).map_err(|e| config_error("compression", e))?)
            }
            None => None,
        };
        if let Some(header) = section.header {
            spec.csv.header = header;
            spec.csv.header_set = true;
        }
        if let Some(delimiter) = &section.delimiter {
            spec.csv.delimiter = Some(single_byte(&key("delimiter"), delimiter)?);
        }
        if let Some(quote) = &section.quote {
            spec.csv.quote = single_byte(&key("quote"), quote)?;
            spec.csv.quote_set = true;
        }
        if let Some(escape) = &section.escape {
            spec.csv.escape = Some(single_byte(&key("escape"), escape)?);
        }
        spec.csv.null_values = section.null_values.clone().unwrap_or_default();
        spec.partition_columns = section.partition_columns.clone();
        spec.schema = section.columns(name)?.as_deref().map(explicit_schema);
        spec.infer_rows = section.infer_rows.unwrap_or(infer_rows);
        spec.storage = section.storage();
        spec.sheet = section.sheet.clone();
        if spec.infer_rows == 0 {
            return Err(config_error("infer_rows", "must be at least 1".into()));
        }
        Ok(spec)
    }
}

/// What was registered for a table: its resolved files (for progress totals and diagnostics).
#[derive(Debug, Clone)]
pub(crate) struct RegisteredTable {
    /// As registered: with the CSV dialect sniffed from the first file filled in.
    pub(crate) spec: TableSpec,
    pub(crate) format: TableFormat,
    pub(crate) resolved: ResolvedLocation,
    pub(crate) schema: SchemaRef,
    /// DataFusion's reader of the files; `None` for an Excel table (read whole, in memory).
    listing_format: Option<Arc<dyn FileFormat>>,
}

impl RegisteredTable {
    /// A listing table over one of this table's files only: used to find which file holds a
    /// malformed record (DataFusion's CSV errors do not name the file).
    pub(crate) fn single_file_table(&self, file: &ObjectMeta) -> Result<ListingTable> {
        let url = self.resolved.location.file_url(&file.location)?;
        let Some(listing_format) = &self.listing_format else {
            return Err(Error::Internal(format!(
                "table `{}` is not a listing table",
                self.spec.name
            )));
        };
        let options = ListingOptions::new(listing_format.clone()).with_file_extension("");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(self.schema.clone());
        Ok(ListingTable::try_new(config)?)
    }
}

/// A value that breaks its column's inferred type: say which schema line fixes it. The
/// message names the column by position (DataFusion's reader) or by name (Spillway's).
pub(crate) fn suggest_schema(error: Error, table: &RegisteredTable) -> Error {
    let error = match error {
        Error::Input(message) if table.format == TableFormat::Csv => {
            Error::Input(physical_line_numbers(&message))
        }
        other => other,
    };
    let Error::Input(message) = &error else {
        return error;
    };
    if !message.contains("Error while parsing value") {
        return error;
    }
    let column = message
        .split("for column ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<usize>().ok())
        .and_then(|index| table.schema.fields().get(index))
        .map(|field| field.name().clone());
    match column {
        Some(name) if table.spec.schema.is_none() => Error::Input(format!(
            "{message}; the type was inferred from the first rows: if `{name}` holds text, add `{name} = \"string\"` under [tables.{}.schema] in spillway.toml (`spillway describe --toml` prints the whole block)",
            table.spec.name
        )),
        _ => error,
    }
}

/// arrow-csv's `at line N` counts a whole file's lines from 0 (the header is line 0): say the
/// line as editors and `sed -n Np` count it, from 1, as Spillway's own CSV decoder does.
fn physical_line_numbers(message: &str) -> String {
    const AT_LINE: &str = "at line ";
    // The first mention only: the row's own data, quoted after it, may say anything.
    let Some(at) = message.find(AT_LINE) else {
        return message.to_string();
    };
    let (before, after) = message.split_at(at + AT_LINE.len());
    let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    match after[..digits].parse::<u64>() {
        Ok(line) => format!("{before}{}{}", line + 1, &after[digits..]),
        Err(_) => message.to_string(),
    }
}

/// Where a table's files are listed from: its location, or for a hive-partitioned table its
/// root folder. Errors name the table.
pub(crate) fn listing_location(spec: &TableSpec) -> Result<Location> {
    let in_table = |e: Error| e.context(format!("table `{}`", spec.name));
    let mut location = Location::parse(&spec.location).map_err(in_table)?;
    if !spec.partition_columns.is_empty() {
        if location.pattern.is_some() {
            return Err(in_table(Error::Usage(format!(
                "a hive-partitioned table takes its root folder as location, not the glob `{}`",
                spec.location
            ))));
        }
        location = location.as_folder();
    }
    Ok(location)
}

/// The files behind a table now: its listing location resolved in `store`. The one listing
/// path from spec to files: registration and the server's change detection both go through
/// it. Errors name the table.
pub(crate) async fn list_files(
    store: &Arc<dyn ObjectStore>,
    spec: &TableSpec,
) -> Result<(Location, ResolvedLocation)> {
    let location = listing_location(spec)?;
    let resolved = storage::resolve(store, &location)
        .await
        .map_err(|e| e.context(format!("table `{}`", spec.name)))?;
    Ok((location, resolved))
}

/// Resolve a table's files, settle its format and schema, and register it in `ctx`.
pub(crate) async fn register(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
    spec: &TableSpec,
) -> Result<RegisteredTable> {
    let in_table = |e: Error| e.context(format!("table `{}`", spec.name));
    let (location, mut resolved) = list_files(store, spec).await?;
    let (format, compression, tab) = settle_format(spec, &resolved).map_err(in_table)?;
    if spec.sheet.is_some() && format != TableFormat::Xlsx {
        return Err(Error::Config(format!(
            "tables.{}.sheet: only Excel (.xlsx) tables have sheets; `{}` is {}",
            spec.name,
            spec.location,
            format.name()
        )));
    }
    if format == TableFormat::Xlsx {
        return register_excel(ctx, store, spec, &location, resolved)
            .await
            .map_err(in_table);
    }
    let sniffing = format == TableFormat::Csv;
    let spec = &match (sniffing, resolved.files.first()) {
        (true, Some(first)) => {
            let mut sniffed = spec.clone();
            if tab {
                sniffed.csv.delimiter.get_or_insert(b'\t');
            }
            let sample = sniff::sample(store, first, compression, spec.infer_rows)
                .await
                .map_err(in_table)?;
            sniffed.csv = sniff::dialect(&sample, sniffed.csv);
            sniffed
        }
        _ => spec.clone(),
    };
    let extension = data_extension(&resolved, format, compression, tab);
    if location.is_folder() && location.pattern.is_none() {
        resolved
            .files
            .retain(|meta| has_extension(meta, &extension));
    }
    let listing_format = file_format(spec, format, compression, tab)?;
    let schema = table_schema(
        ctx,
        store,
        spec,
        (format, compression, tab),
        &listing_format,
        &resolved,
    )
    .await
    .map_err(in_table)?;
    let schema = match sniffing
        && spec
            .schema
            .as_ref()
            .is_none_or(|named| named.fields().len() != schema.fields().len())
    {
        true => keep_digit_strings_as_text(store, spec, &resolved, compression, schema)
            .await
            .map_err(in_table)?,
        false => schema,
    };
    let partition_columns = spec
        .partition_columns
        .iter()
        .map(|name| (name.clone(), DataType::Utf8))
        .collect();
    let (urls, listing_extension) = if spec.partition_columns.is_empty() {
        let urls = resolved
            .files
            .iter()
            .map(|meta| location.file_url(&meta.location))
            .collect::<Result<Vec<_>>>()?;
        (urls, String::new())
    } else {
        (vec![location.folder_url()?], extension.clone())
    };
    let options = ListingOptions::new(listing_format.clone())
        .with_file_extension(listing_extension)
        .with_table_partition_cols(partition_columns);
    // DataFusion 55's CSV reader ignores `null_regex` (only inference uses it), so configured
    // NULL strings are applied by a view over a table read as text.
    let null_values = format == TableFormat::Csv && !spec.csv.null_values.is_empty();
    let file_schema = if null_values {
        as_text(&schema)
    } else {
        schema.clone()
    };
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(file_schema.clone());
    let table: Arc<dyn TableProvider> =
        Arc::new(ListingTable::try_new(config).map_err(|e| in_table(e.into()))?);
    let provider = if null_values {
        null_values_view(ctx, table, &schema, &spec.csv.null_values).map_err(in_table)?
    } else {
        table
    };
    ctx.register_table(spec.name.as_str(), provider)
        .map_err(|e| in_table(e.into()))?;
    Ok(RegisteredTable {
        spec: spec.clone(),
        format,
        resolved,
        schema: file_schema,
        listing_format: Some(listing_format),
    })
}

/// Register an Excel table: its one workbook's sheet, read whole into an in-memory table.
async fn register_excel(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
    spec: &TableSpec,
    location: &Location,
    mut resolved: ResolvedLocation,
) -> Result<RegisteredTable> {
    if location.is_folder() && location.pattern.is_none() {
        resolved.files.retain(|meta| has_extension(meta, ".xlsx"));
    }
    let file = match resolved.files.as_slice() {
        [file] => file.clone(),
        files => {
            return Err(Error::Usage(format!(
                "an Excel table reads one workbook, and `{}` names {} files; point it at one \
                 .xlsx file",
                spec.location,
                files.len()
            )))
        }
    };
    let sheet = excel::read(store, spec, &file).await?;
    let schema = sheet.schema.clone();
    ctx.register_table(spec.name.as_str(), Arc::new(sheet.into_provider()?))?;
    Ok(RegisteredTable {
        spec: spec.clone(),
        format: TableFormat::Xlsx,
        resolved,
        schema,
        listing_format: None,
    })
}

/// The inferred schema with the columns whose sampled values are digit strings that must
/// stay text (leading zeros, wide fixed-width codes: see `sniff`) read as text; columns a
/// (partial) schema names keep their configured types.
async fn keep_digit_strings_as_text(
    store: &Arc<dyn ObjectStore>,
    spec: &TableSpec,
    resolved: &ResolvedLocation,
    compression: Compression,
    schema: SchemaRef,
) -> Result<SchemaRef> {
    let columns: BTreeSet<usize> = futures::stream::iter(resolved.files.clone())
        .map(|meta| {
            let (store, dialect, rows) = (store.clone(), spec.csv.clone(), spec.infer_rows);
            async move {
                let sample = sniff::sample(&store, &meta, compression, rows).await?;
                Ok::<_, Error>(sniff::text_columns(&sample, &dialect, rows))
            }
        })
        .buffered(SCHEMA_CHECK_CONCURRENCY)
        .try_fold(BTreeSet::new(), |mut all, some| async move {
            all.extend(some);
            Ok(all)
        })
        .await?;
    let named = |name: &str| {
        spec.schema
            .as_ref()
            .is_some_and(|named| named.field_with_name(name).is_ok())
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let numeric = field.data_type().is_numeric();
            if columns.contains(&index) && numeric && !named(field.name()) {
                Field::new(field.name(), DataType::Utf8, true)
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// The same columns, all read as text.
fn as_text(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| Field::new(field.name(), DataType::Utf8, true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// A view over a text-typed table that turns the configured NULL strings into NULL and casts
/// every other value to its column's type. Partition columns pass through unchanged.
fn null_values_view(
    ctx: &SessionContext,
    text_table: Arc<dyn TableProvider>,
    schema: &SchemaRef,
    null_values: &[String],
) -> Result<Arc<dyn TableProvider>> {
    let frame = ctx.read_table(text_table)?;
    let nulls: Vec<Expr> = null_values
        .iter()
        .map(|value| lit(value.as_str()))
        .collect();
    let mut columns = Vec::new();
    for field in frame.schema().fields() {
        let name = field.name();
        let column = match schema.field_with_name(name) {
            Ok(target) => {
                let typed_null = lit(ScalarValue::try_from(target.data_type())?);
                when(ident(name).in_list(nulls.clone(), false), typed_null)
                    .otherwise(cast(ident(name), target.data_type().clone()))?
            }
            Err(_) => ident(name),
        };
        columns.push(column.alias(name));
    }
    Ok(frame.select(columns)?.into_view())
}

/// The format, compression and tab-delimitedness of a table: as configured, else from the
/// first file name that tells.
fn settle_format(
    spec: &TableSpec,
    resolved: &ResolvedLocation,
) -> Result<(TableFormat, Compression, bool)> {
    let detected = std::iter::once(spec.location.as_str())
        .chain(resolved.files.iter().map(|meta| meta.location.as_ref()))
        .find_map(detect_from_name);
    if spec.format.is_none() && spec.compression.is_none() && resolved.location.pattern.is_some() {
        check_one_kind(&resolved.files)?;
    }
    let format = spec
        .format
        .or(detected.map(|(format, _, _)| format))
        .ok_or_else(|| {
            Error::Usage(format!(
                "cannot tell the format of `{}` from its file names: set it with \
             --table-format {}=csv|parquet|ndjson or `format` in [tables.{}]",
                spec.location, spec.name, spec.name
            ))
        })?;
    let compression = spec
        .compression
        .or(detected.map(|(_, compression, _)| compression))
        .unwrap_or(Compression::None);
    if matches!(format, TableFormat::Parquet | TableFormat::Xlsx)
        && compression != Compression::None
    {
        return Err(Error::Usage(format!(
            "{} files carry their own compression: remove `compression`",
            if format == TableFormat::Xlsx {
                "Excel"
            } else {
                "Parquet"
            }
        )));
    }
    let tab = detected.is_some_and(|(_, _, tab)| tab);
    Ok((format, compression, tab))
}

/// A glob's files must share one format and compression: DataFusion reads a table one way.
fn check_one_kind(files: &[ObjectMeta]) -> Result<()> {
    let mut first: Option<(&ObjectMeta, (TableFormat, Compression))> = None;
    for meta in files {
        let Some((format, compression, _)) = meta.location.filename().and_then(detect_from_name)
        else {
            continue;
        };
        match first {
            None => first = Some((meta, (format, compression))),
            Some((seen, kind)) if kind != (format, compression) => {
                return Err(Error::Input(format!(
                    "files `{}` and `{}` are of different formats or compressions; \
                     narrow the glob so one table reads one kind of file",
                    seen.location, meta.location
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The file name ending that a folder's data files have: `.csv.gz`, `.parquet`, ...
fn data_extension(
    resolved: &ResolvedLocation,
    format: TableFormat,
    compression: Compression,
    tab: bool,
) -> String {
    let detected = resolved.files.iter().find_map(|meta| {
        let name = meta.location.filename()?;
        let (file_format, file_compression, _) = detect_from_name(name)?;
        (file_format == format && file_compression == compression).then(|| {
            let lower = name.to_ascii_lowercase();
            let dot = lower.find('.').unwrap_or(0);
            lower[dot..].to_string()
        })
    });
    detected.unwrap_or_else(|| {
        let base = match (format, tab) {
            (TableFormat::Csv, true) => ".tsv",
            (TableFormat::Csv, false) => ".csv",
            (TableFormat::Parquet, _) => ".parquet",
            (TableFormat::NdJson, _) => ".json",
            (TableFormat::Xlsx, _) => ".xlsx",
        };
        let suffix = match compression {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
            Compression::Xz => ".xz",
        };
        format!("{base}{suffix}")
    })
}

fn has_extension(meta: &ObjectMeta, extension: &str) -> bool {
    meta.location
        .filename()
        .is_some_and(|name| name.to_ascii_lowercase().ends_with(extension))
}

/// Bytes read from the end of a Parquet file in the hope of finding its whole footer.
const PARQUET_FOOTER_HINT: usize = 64 << 10;

/// DataFusion's reader for the format, set up from the spec.
fn file_format(
    spec: &TableSpec,
    format: TableFormat,
    compression: Compression,
    tab: bool,
) -> Result<Arc<dyn FileFormat>> {
    Ok(match format {
        TableFormat::Csv => Arc::new(csv_format(spec, compression, tab, spec.infer_rows)),
        // DataFusion reads the last 512 KiB of every file to find its footer; footers of
        // claims and H2O files are 5-20 KiB, and the larger read costs page faults per file
        // at every start (a longer footer still works: it is read again, whole).
        TableFormat::Parquet => {
            Arc::new(ParquetFormat::default().with_metadata_size_hint(Some(PARQUET_FOOTER_HINT)))
        }
        TableFormat::NdJson => Arc::new(
            JsonFormat::default()
                .with_schema_infer_max_rec(spec.infer_rows)
                .with_file_compression_type(compression.file_type()),
        ),
        TableFormat::Xlsx => {
            return Err(Error::Internal(
                "Excel tables are read whole, not through a listing".into(),
            ))
        }
    })
}

/// DataFusion's CSV reader for the spec's dialect, inferring types from `infer_rows` rows (0: only
/// the header is read, and every column is text).
fn csv_format(
    spec: &TableSpec,
    compression: Compression,
    tab: bool,
    infer_rows: usize,
) -> CsvFormat {
    let delimiter = spec.csv.delimiter.unwrap_or(if tab { b'\t' } else { b',' });
    CsvFormat::default()
        .with_has_header(spec.csv.header)
        .with_delimiter(delimiter)
        .with_quote(spec.csv.quote)
        .with_escape(spec.csv.escape)
        .with_null_regex(null_regex(&spec.csv.null_values))
        .with_schema_infer_max_rec(infer_rows)
        .with_file_compression_type(compression.file_type())
}

/// One anchored regex matching exactly the configured NULL strings.
fn null_regex(values: &[String]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = values.iter().map(|value| escape_regex(value)).collect();
    Some(format!("^(?:{})$", alternatives.join("|")))
}

fn escape_regex(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The Arrow schema for an explicit column list. Columns are nullable: files may hold NULLs.
pub(crate) fn explicit_schema(columns: &[(String, ColumnType)]) -> SchemaRef {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, column_type)| Field::new(name, arrow_type(*column_type), true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The name `spillway.toml` gives a column type (`string`, `int64`, `decimal(12,2)`, ...);
/// types it has no name for are shown as Arrow names them.
pub(crate) fn config_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "bool".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::Decimal128(precision, scale) => format!("decimal({precision},{scale})"),
        other => other.to_string(),
    }
}

fn arrow_type(column_type: ColumnType) -> DataType {
    match column_type {
        ColumnType::String => DataType::Utf8,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

/// The schema a table is read with.
///
/// Without a configured schema, the inferred one. A configured schema is used as it is (as it
/// always was: positionally for CSV, by name for Parquet and NDJSON, where naming a subset of
/// the columns already reads just those) unless the table is CSV with a header and the schema
/// names a different number of columns than the first file's header has: then it is a partial
/// schema, like DuckDB's `types=`. The columns it names must all be in the header; they get
/// its types, the others are inferred, and the order is the file's. Telling the two apart costs
/// one read of the first file's header; a partial schema costs the inference pass it replaces.
async fn table_schema(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
    spec: &TableSpec,
    (format, compression, tab): (TableFormat, Compression, bool),
    listing_format: &Arc<dyn FileFormat>,
    resolved: &ResolvedLocation,
) -> Result<SchemaRef> {
    let Some(named) = &spec.schema else {
        return infer_schema(ctx, store, listing_format, format, resolved).await;
    };
    let first = match resolved.files.first() {
        Some(first) if format == TableFormat::Csv && spec.csv.header => first,
        _ => return Ok(named.clone()),
    };
    let header_format = csv_format(spec, compression, tab, 0);
    let header = header_format
        .infer_schema(&ctx.state(), store, std::slice::from_ref(first))
        .await
        .map_err(|e| Error::from(e).context(format!("file `{}`", first.location)))?;
    let columns: Vec<String> = header.fields().iter().map(|f| f.name().clone()).collect();
    // An empty first file has no header to compare with: read it as before.
    if columns.is_empty() || columns.len() == named.fields().len() {
        return Ok(named.clone());
    }
    let missing = columns_not_in(named, &columns);
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "the schema names {} that `{}` does not have (its columns: {}); a schema names \
             columns of the file, to give them a type, and the others are inferred",
            list_columns("column", &missing),
            first.location,
            columns.join(", ")
        )));
    }
    let inferred = infer_schema(ctx, store, listing_format, format, resolved).await?;
    Ok(with_named_types(&inferred, named))
}

/// The names of `named`'s columns that `columns` lacks, in the schema's order.
fn columns_not_in(named: &SchemaRef, columns: &[String]) -> Vec<String> {
    named
        .fields()
        .iter()
        .map(|field| field.name().clone())
        .filter(|name| !columns.contains(name))
        .collect()
}

/// "column `a`" or "columns `a`, `b`".
fn list_columns(noun: &str, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("{noun}{plural} {}", quoted.join(", "))
}

/// The inferred schema, with the columns `named` names taking its types (order and the other
/// columns as inferred).
fn with_named_types(inferred: &SchemaRef, named: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|field| match named.field_with_name(field.name()) {
            Ok(typed) => typed.clone(),
            Err(_) => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Infer each file's schema from a bounded sample and check that they agree; the result is
/// their common schema (numbers widened where files differ only in int vs float).
async fn infer_schema(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
    format: &Arc<dyn FileFormat>,
    table_format: TableFormat,
    resolved: &ResolvedLocation,
) -> Result<SchemaRef> {
    // Each future owns what it uses: futures that borrow from a closure's environment are not
    // provably `Send`, and report runs execute on spawned tasks.
    let state = Arc::new(ctx.state());
    let schemas: Vec<(String, SchemaRef)> = futures::stream::iter(resolved.files.clone())
        .map(|meta| {
            let (state, store, format) = (state.clone(), store.clone(), format.clone());
            async move {
                let schema = format
                    .infer_schema(state.as_ref(), &store, std::slice::from_ref(&meta))
                    .await
                    .map_err(|e| Error::from(e).context(format!("file `{}`", meta.location)))?;
                Ok::<_, Error>((meta.location.to_string(), schema))
            }
        })
        .buffered(SCHEMA_CHECK_CONCURRENCY)
        .try_collect()
        .await?;
    let ordered = table_format == TableFormat::Csv;
    let mut merged = schemas[0].1.clone();
    for (path, schema) in &schemas[1..] {
        merged = merge_schemas(&schemas[0].0, &merged, path, schema, ordered)?;
    }
    Ok(merged)
}

/// Merge the schema of `other_file` into the schema so far (first seen in `first_file`).
/// `ordered`: columns are matched by position (CSV), not only by name.
fn merge_schemas(
    first_file: &str,
    merged: &SchemaRef,
    other_file: &str,
    other: &SchemaRef,
    ordered: bool,
) -> Result<SchemaRef> {
    let disagree = |message: String| {
        Error::Input(format!(
            "files `{first_file}` and `{other_file}` disagree: {message}; \
             give the table an explicit schema or fix the files"
        ))
    };
    let names = |schema: &SchemaRef| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    if ordered && names(merged) != names(other) {
        let position = names(merged)
            .iter()
            .zip(names(other))
            .position(|(a, b)| *a != b)
            .unwrap_or(merged.fields().len().min(other.fields().len()));
        let column = |schema: &SchemaRef| {
            schema
                .fields()
                .get(position)
                .map(|f| format!("`{}`", f.name()))
                .unwrap_or_else(|| "no column".into())
        };
        return Err(disagree(format!(
            "column {} is {} in the first and {} in the second",
            position + 1,
            column(merged),
            column(other)
        )));
    }
    let mut fields = Vec::with_capacity(merged.fields().len());
    for field in merged.fields() {
        let Ok(other_field) = other.field_with_name(field.name()) else {
            return Err(disagree(format!(
                "column `{}` is missing from the second",
                field.name()
            )));
        };
        let data_type =
            common_type(field.data_type(), other_field.data_type()).ok_or_else(|| {
                disagree(format!(
                    "column `{}` is {} in the first and {} in the second",
                    field.name(),
                    field.data_type(),
                    other_field.data_type()
                ))
            })?;
        // NULLs are possible where either file allows them; Parquet files that declare a column
        // required keep it non-nullable, which lets plans skip NULL handling (and lets
        // `group_keys` pack integer GROUP BY columns).
        let nullable = field.is_nullable() || other_field.is_nullable();
        fields.push(Field::new(field.name(), data_type, nullable));
    }
    if let Some(extra) = other
        .fields()
        .iter()
        .find(|f| merged.field_with_name(f.name()).is_err())
    {
        return Err(disagree(format!(
            "column `{}` is missing from the first",
            extra.name()
        )));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The type both files' values fit in, if the difference is only one of sampling.
fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    match (a, b) {
        _ if a == b => Some(a.clone()),
        (Null, other) | (other, Null) => Some(other.clone()),
        (Int64, Float64) | (Float64, Int64) => Some(Float64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn arrow_csv_line_numbers_are_said_from_one() {
        assert_eq!(
            super::physical_line_numbers(
                "Error while parsing value 'X7' as type 'Int64' for column 1 at line 3000. Row data: 'at line 9'"
            ),
            "Error while parsing value 'X7' as type 'Int64' for column 1 at line 3001. Row data: 'at line 9'"
        );
    }

    use super::*;

    #[test]
    fn file_names_tell_format_and_compression() {
        assert_eq!(
            detect_from_name("a.csv.gz"),
            Some((TableFormat::Csv, Compression::Gzip, false))
        );
        assert_eq!(
            detect_from_name("a.tsv"),
            Some((TableFormat::Csv, Compression::None, true))
        );
        assert_eq!(
            detect_from_name("x.PARQUET"),
            Some((TableFormat::Parquet, Compression::None, false))
        );
        assert_eq!(
            detect_from_name("e.jsonl.zst"),
            Some((TableFormat::NdJson, Compression::Zstd, false))
        );
        assert_eq!(
            detect_from_name("Book1.XLSX"),
            Some((TableFormat::Xlsx, Compression::None, false))
        );
        assert_eq!(detect_from_name("README"), None);
    }

    #[test]
    fn null_values_become_one_anchored_regex() {
        assert_eq!(
            null_regex(&["".into(), "N/A".into()]).unwrap(),
            "^(?:|N/A)$"
        );
        assert_eq!(null_regex(&["a.b".into()]).unwrap(), "^(?:a\\.b)$");
    }

    #[test]
    fn disagreeing_files_name_both_files_and_the_column() {
        let a: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let b: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
        let error = merge_schemas("a.csv", &a, "b.csv", &b, true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a.csv") && error.contains("b.csv") && error.contains("`x`"),
            "{error}"
        );
        let c: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
        let merged = merge_schemas("a.csv", &a, "c.csv", &c, true).unwrap();
        assert_eq!(merged.field(0).data_type(), &DataType::Float64);
    }

    #[test]
    fn a_partial_schema_types_the_columns_it_names_and_keeps_the_rest_in_file_order() {
        let inferred: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ndc", DataType::Int64, true),
            Field::new("cost", DataType::Float64, true),
        ]));
        let named: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("cost", DataType::Decimal128(12, 2), true),
            Field::new("ndc", DataType::Utf8, true),
        ]));
        let merged = with_named_types(&inferred, &named);
        let columns: Vec<(String, DataType)> = merged
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            columns,
            [
                ("id".to_string(), DataType::Int64),
                ("ndc".to_string(), DataType::Utf8),
                ("cost".to_string(), DataType::Decimal128(12, 2)),
            ]
        );
    }

    #[test]
    fn columns_a_schema_names_but_the_file_lacks_are_listed_in_schema_order() {
        let named: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("zip", DataType::Utf8, true),
            Field::new("ndc", DataType::Utf8, true),
            Field::new("npi", DataType::Utf8, true),
        ]));
        let columns = ["id".to_string(), "ndc".to_string()];
        let missing = columns_not_in(&named, &columns);
        assert_eq!(missing, ["zip", "npi"]);
        assert_eq!(list_columns("column", &missing), "columns `zip`, `npi`");
        assert_eq!(list_columns("column", &missing[..1]), "column `zip`");
    }

    #[test]
    fn a_column_is_nullable_in_the_table_when_any_file_allows_nulls() {
        let schema = |id_nullable: bool| -> SchemaRef {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int32, id_nullable),
                Field::new("v", DataType::Float64, true),
            ]))
        };
        let nullability = |merged: SchemaRef| -> Vec<bool> {
            merged.fields().iter().map(|f| f.is_nullable()).collect()
        };
        let both_required = merge_schemas("a", &schema(false), "b", &schema(false), false);
        assert_eq!(nullability(both_required.unwrap()), [false, true]);
        let one_optional = merge_schemas("a", &schema(false), "b", &schema(true), false);
        assert_eq!(nullability(one_optional.unwrap()), [true, true]);
    }
}
