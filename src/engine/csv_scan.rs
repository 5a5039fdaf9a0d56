//! A faster decoder for CSV scans, with arrow-csv's results.
//!
//! DataFusion 55 reads CSV through arrow-csv, whose `csv_core` state machine walks every byte
//! and copies every field before a single value is parsed: on the H2O group-by files that is
//! about half of a scan's CPU time. Most analytical CSV (every file `spillway gen` writes,
//! and most exports) has no quoting at all, so [`FastCsvScan`] puts [`FastCsvSource`] in place
//! of `CsvSource` in every plan. Its decoder finds field bounds with a word-at-a-time scan for
//! the delimiter and the newline, and parses only the projected columns, with the parsers
//! arrow-csv itself uses, so values, NULLs (an empty field), types and nullability checks are
//! the same.
//!
//! Owns: deciding which scans qualify, the plain-CSV decoder, and handing a stream over to
//! arrow-csv's decoder the moment a quote or a carriage return appears (from then on arrow-csv
//! decodes that stream, so quoted fields, CRLF lines and embedded newlines read exactly as
//! before). Must not change what a scan returns: rows, values, schema and errors (ours name
//! the line and the column, like arrow-csv's).

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, NullArray, PrimitiveArray, RecordBatch, RecordBatchOptions,
    StringBuilder, StringViewArray,
};
use datafusion::arrow::compute::kernels::cast_utils::{parse_decimal, Parser};
use datafusion::arrow::csv::reader::Decoder as ArrowCsvDecoder;
use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::*;
use datafusion::arrow::error::ArrowError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{exec_datafusion_err, DataFusionError};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::physical_plan::{
    CsvSource, FileOpenFuture, FileOpener, FileScanConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExprs;
use datafusion::physical_plan::{DisplayFormatType, ExecutionPlan};
use datafusion_datasource::boundary_stream::AlignedBoundaryStream;
use datafusion_datasource::decoder::{deserialize_stream, Decoder, DecoderDeserializer};
use datafusion_datasource::{FileRange, PartitionedFile};
use futures::StreamExt;
use object_store::{GetOptions, GetResultPayload, ObjectStore};
use std::fmt;
use std::io::BufRead;
use std::sync::Arc;

type DfResult<T> = datafusion::common::Result<T>;

/// Bytes read at a time from a local file (arrow-csv's reader reads 8 KiB; larger reads halve
/// the system calls and keep the decoder's inner loops long).
const READ_CHUNK: usize = 1 << 20;

/// The physical rule that swaps every qualifying `CsvSource` for a [`FastCsvSource`].
///
/// It runs after DataFusion's own rules, when projections are already pushed into the scan.
#[derive(Debug, Default)]
pub(crate) struct FastCsvScan;

impl FastCsvScan {
    pub(crate) const NAME: &'static str = "spillway_fast_csv_scan";
}

impl PhysicalOptimizerRule for FastCsvScan {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(scan) = exec.data_source().downcast_ref::<FileScanConfig>() else {
                return Ok(Transformed::no(node));
            };
            let Some(csv) = scan.file_source.downcast_ref::<CsvSource>() else {
                return Ok(Transformed::no(node));
            };
            if !plain_dialect(csv) {
                return Ok(Transformed::no(node));
            }
            let mut scan = scan.clone();
            scan.file_source = Arc::new(FastCsvSource::new(csv.clone(), None));
            let exec: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(scan);
            Ok(Transformed::yes(exec))
        })
        .data()
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Dialects the plain decoder can read when no quote or carriage return appears: no comment
/// lines, no truncated rows, `\n` (or CRLF, which hands over) ending records.
fn plain_dialect(csv: &CsvSource) -> bool {
    let delimiter = csv.delimiter();
    csv.comment().is_none()
        && !csv.truncate_rows()
        && matches!(csv.terminator(), None | Some(b'\n'))
        && delimiter != b'\n'
        && delimiter != b'\r'
        && delimiter != csv.quote()
}

/// Column types the plain decoder parses, each exactly as arrow-csv does.
fn plain_type(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Null | Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float32
            | Float64
            | Date32
            | Date64
            | Decimal32(_, _)
            | Decimal64(_, _)
            | Decimal128(_, _)
            | Decimal256(_, _)
            | Utf8
            | Utf8View
    )
}

/// DataFusion's `CsvSource` with the plain decoder behind its opener. Everything but opening a
/// file is the wrapped source's (its projection, metrics, display), so plans read the same.
#[derive(Clone)]
pub(crate) struct FastCsvSource {
    inner: CsvSource,
    /// `CsvSource` keeps its batch size private; it is recorded here as it passes through.
    batch_size: Option<usize>,
}

impl FastCsvSource {
    fn new(inner: CsvSource, batch_size: Option<usize>) -> Self {
        FastCsvSource { inner, batch_size }
    }

    /// Wrap what the inner source returns, so the wrapper survives every rewrite.
    fn rewrap(
        &self,
        source: Arc<dyn FileSource>,
        batch_size: Option<usize>,
    ) -> Arc<dyn FileSource> {
        match source.downcast_ref::<CsvSource>() {
            Some(csv) => Arc::new(FastCsvSource::new(csv.clone(), batch_size)),
            None => source,
        }
    }
}

impl FileSource for FastCsvSource {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition: usize,
    ) -> DfResult<Arc<dyn FileOpener>> {
        let file_schema = self.inner.table_schema().file_schema().clone();
        let projection = match self.inner.projection() {
            Some(projection) => SplitProjection::new(&file_schema, projection),
            None => SplitProjection::unprojected(self.inner.table_schema()),
        };
        let batch_size = self.batch_size.unwrap_or(crate::engine::DEFAULT_BATCH_SIZE);
        let qualifies = projection
            .file_indices
            .iter()
            .all(|&index| plain_type(file_schema.field(index).data_type()));
        if !qualifies {
            return self.inner.with_batch_size(batch_size).create_file_opener(
                object_store,
                base_config,
                partition,
            );
        }
        let settings = Arc::new(PlainCsv {
            file_schema: file_schema.clone(),
            projection: projection.file_indices.clone(),
            projected_schema: Arc::new(file_schema.project(&projection.file_indices)?),
            batch_size,
            header: self.inner.has_header(),
            delimiter: self.inner.delimiter(),
            quote: self.inner.quote(),
            escape: self.inner.escape(),
            terminator: self.inner.terminator(),
        });
        let opener = Arc::new(FastCsvOpener {
            settings,
            compression: base_config.file_compression_type,
            store: object_store,
        });
        ProjectionOpener::try_new(projection, opener, &file_schema)
    }

    fn table_schema(&self) -> &TableSchema {
        self.inner.table_schema()
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        self.rewrap(self.inner.with_batch_size(batch_size), Some(batch_size))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        self.inner.projection()
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        self.inner.metrics()
    }

    fn file_type(&self) -> &str {
        self.inner.file_type()
    }

    fn fmt_extra(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_extra(t, f)
    }

    fn supports_repartitioning(&self) -> bool {
        self.inner.supports_repartitioning()
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> DfResult<Option<Arc<dyn FileSource>>> {
        Ok(self
            .inner
            .try_pushdown_projection(projection)?
            .map(|source| self.rewrap(source, self.batch_size)))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }
}

/// What a plain decoder needs to know, shared by the openers of one scan.
#[derive(Debug)]
struct PlainCsv {
    file_schema: SchemaRef,
    /// File columns read, in order.
    projection: Vec<usize>,
    projected_schema: SchemaRef,
    batch_size: usize,
    header: bool,
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    terminator: Option<u8>,
}

impl PlainCsv {
    /// arrow-csv's decoder with the same settings, for a stream that must be handed over.
    fn arrow_decoder(&self, header: bool) -> ArrowCsvDecoder {
        let mut builder = ReaderBuilder::new(self.file_schema.clone())
            .with_delimiter(self.delimiter)
            .with_batch_size(self.batch_size)
            .with_header(header)
            .with_quote(self.quote)
            .with_projection(self.projection.clone());
        if let Some(terminator) = self.terminator {
            builder = builder.with_terminator(terminator);
        }
        if let Some(escape) = self.escape {
            builder = builder.with_escape(escape);
        }
        builder.build_decoder()
    }
}

/// Opens one file or byte range of a file, as DataFusion's `CsvOpener` does (a range skips to
/// the first whole line after its start and reads through the line that holds its end).
struct FastCsvOpener {
    settings: Arc<PlainCsv>,
    compression: FileCompressionType,
    store: Arc<dyn ObjectStore>,
}

impl FileOpener for FastCsvOpener {
    fn open(&self, file: PartitionedFile) -> DfResult<FileOpenFuture> {
        // Only the first range of a file holds its header.
        let header = self.settings.header
            && file
                .range
                .as_ref()
                .is_none_or(|FileRange { start, .. }| *start == 0);
        let decoder = PlainCsvDecoder::new(self.settings.clone(), header);
        let store = self.store.clone();
        let compression = self.compression;
        Ok(Box::pin(async move {
            let location = file.object_meta.location.clone();
            if let Some(range) = file.range.as_ref() {
                let start = u64::try_from(range.start)
                    .map_err(|_| exec_datafusion_err!("negative range start {}", range.start))?;
                let end = u64::try_from(range.end)
                    .map_err(|_| exec_datafusion_err!("negative range end {}", range.end))?;
                let aligned = AlignedBoundaryStream::new(
                    store,
                    location,
                    start,
                    end,
                    file.object_meta.size,
                    b'\n',
                )
                .await?;
                return decode_stream(aligned, compression, decoder);
            }
            let result = store.get_opts(&location, GetOptions::default()).await?;
            match result.payload {
                GetResultPayload::File(local, _) => {
                    let reader = std::io::BufReader::with_capacity(
                        READ_CHUNK,
                        compression.convert_read(local)?,
                    );
                    let batches = read_batches(reader, decoder);
                    Ok(futures::stream::iter(batches).boxed())
                }
                GetResultPayload::Stream(bytes) => decode_stream(bytes, compression, decoder),
            }
        }))
    }
}

/// Batches decoded from a stream of (possibly compressed) bytes.
fn decode_stream(
    bytes: impl futures::Stream<Item = object_store::Result<bytes::Bytes>> + Send + 'static,
    compression: FileCompressionType,
    decoder: PlainCsvDecoder,
) -> DfResult<futures::stream::BoxStream<'static, DfResult<RecordBatch>>> {
    let bytes = bytes.map(|chunk| chunk.map_err(DataFusionError::from));
    let input = compression.convert_stream(bytes.boxed())?.fuse();
    let stream = deserialize_stream(input, DecoderDeserializer::new(decoder));
    Ok(stream.map(|batch| batch.map_err(Into::into)).boxed())
}

/// Batches decoded from a reader of local bytes.
fn read_batches(
    mut reader: impl BufRead + Send + 'static,
    mut decoder: PlainCsvDecoder,
) -> impl Iterator<Item = DfResult<RecordBatch>> + Send {
    let mut next = move || -> DfResult<Option<RecordBatch>> {
        loop {
            let buf = reader.fill_buf()?;
            let at_end = buf.is_empty();
            let decoded = decoder.decode(buf)?;
            if decoded != 0 {
                reader.consume(decoded);
                continue;
            }
            // A batch of blank lines flushes to nothing: that is not the end of the input.
            match decoder.flush()? {
                None if !at_end => continue,
                batch => return Ok(batch),
            }
        }
    };
    std::iter::from_fn(move || next().transpose())
}

/// Decodes plain CSV bytes into batches of the projected columns; see the module comment.
///
/// Bytes are buffered up to `batch_size` whole lines; [`Decoder::flush`] splits and parses
/// them. A quote or a carriage return in the input hands the stream over to arrow-csv.
#[derive(Debug)]
pub(crate) struct PlainCsvDecoder {
    settings: Arc<PlainCsv>,
    /// The header line is still to be skipped.
    header_pending: bool,
    /// Buffered input: whole lines, and at the end of input possibly one unterminated line.
    data: Vec<u8>,
    /// Newlines in `data`.
    lines_buffered: usize,
    /// Newlines decoded before `data`, for the line numbers in errors.
    lines_before: usize,
    /// arrow-csv's decoder, once a quote or a carriage return was seen.
    handed_over: Option<ArrowCsvDecoder>,
    separators: Vec<u32>,
    ends: Vec<u32>,
    starts: Vec<u32>,
}

impl PlainCsvDecoder {
    fn new(settings: Arc<PlainCsv>, header: bool) -> Self {
        PlainCsvDecoder {
            settings,
            header_pending: header,
            data: Vec::new(),
            lines_buffered: 0,
            lines_before: 0,
            handed_over: None,
            separators: Vec::new(),
            ends: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Give arrow-csv everything buffered so far, then `buf`.
    fn hand_over(&mut self, buf: &[u8]) -> std::result::Result<usize, ArrowError> {
        let mut arrow = self.settings.arrow_decoder(self.header_pending);
        let mut rest = &self.data[..];
        while !rest.is_empty() {
            let decoded = arrow.decode(rest)?;
            if decoded == 0 {
                // Fewer than a batch of lines is buffered, so arrow-csv takes them all.
                return Err(ArrowError::CsvError(
                    "internal: CSV decoder refused buffered lines".to_string(),
                ));
            }
            rest = &rest[decoded..];
        }
        self.data = Vec::new();
        let decoded = arrow.decode(buf);
        self.handed_over = Some(arrow);
        decoded
    }

    /// Drop the header line from the front of `data` once it is whole (blank lines before it
    /// are skipped, as csv_core skips them).
    fn skip_header(&mut self) {
        let Some(first) = self.data.iter().position(|&byte| byte != b'\n') else {
            return;
        };
        let Some(end) = memchr::memchr(b'\n', &self.data[first..]) else {
            return;
        };
        let skipped = first + end + 1;
        self.data.drain(..skipped);
        self.lines_buffered -= first + 1;
        self.lines_before += first + 1;
        self.header_pending = false;
    }

    fn parse(&mut self) -> std::result::Result<Option<RecordBatch>, ArrowError> {
        let text = std::str::from_utf8(&self.data).map_err(|e| {
            let line = self.line_at(e.valid_up_to());
            ArrowError::CsvError(format!("Encountered invalid UTF8 data for line {line}"))
        })?;
        if text.len() >= 1 << 31 {
            return Err(ArrowError::CsvError(format!(
                "a CSV line after line {} is longer than 2 GiB",
                self.lines_before
            )));
        }
        let columns = self.settings.file_schema.fields().len();
        find_separators(
            text.as_bytes(),
            self.settings.delimiter,
            &mut self.separators,
        );
        let rows = split_rows(
            text.len(),
            &self.separators,
            columns,
            &mut self.ends,
            &mut self.starts,
        )
        .map_err(|bad| {
            let line = self.line_at(bad.row_start);
            let got = 1 + text.as_bytes()[bad.row_start..]
                .iter()
                .take_while(|&&byte| byte != b'\n')
                .filter(|&&byte| byte == self.settings.delimiter)
                .count();
            ArrowError::CsvError(format!(
                "incorrect number of fields for line {line}, expected {columns} got {got}"
            ))
        })?;
        if rows == 0 {
            return Ok(None);
        }
        let fields = Fields {
            text,
            ends: &self.ends,
            starts: &self.starts,
            columns,
        };
        let arrays = self
            .settings
            .projection
            .iter()
            .map(|&column| {
                let field = self.settings.file_schema.field(column);
                parse_column(&fields, rows, column, field.data_type()).map_err(|failure| {
                    match failure {
                        Failure::Value(row) => {
                            let line = self.line_at(self.starts[row] as usize);
                            ArrowError::ParseError(format!(
                                "Error while parsing value '{}' as type '{}' for column {column} \
                                 (`{}`) at line {line}",
                                fields.get(row, column),
                                field.data_type(),
                                field.name()
                            ))
                        }
                        Failure::Arrow(e) => e,
                    }
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new()
            .with_match_field_names(true)
            .with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.settings.projected_schema.clone(), arrays, &options)
            .map(Some)
    }

    /// The line (1-based, within this stream) holding byte `offset` of `data`.
    fn line_at(&self, offset: usize) -> usize {
        self.lines_before + memchr::memchr_iter(b'\n', &self.data[..offset]).count() + 1
    }
}

impl Decoder for PlainCsvDecoder {
    fn decode(&mut self, buf: &[u8]) -> std::result::Result<usize, ArrowError> {
        if let Some(arrow) = self.handed_over.as_mut() {
            return arrow.decode(buf);
        }
        let header = usize::from(self.header_pending);
        if buf.is_empty() || self.lines_buffered >= self.settings.batch_size + header {
            return Ok(0);
        }
        if memchr::memchr2(self.settings.quote, b'\r', buf).is_some() {
            return self.hand_over(buf);
        }
        let wanted = self.settings.batch_size + header - self.lines_buffered;
        let mut consumed = buf.len();
        let mut newlines = 0;
        for position in memchr::memchr_iter(b'\n', buf) {
            newlines += 1;
            if newlines == wanted {
                consumed = position + 1;
                break;
            }
        }
        self.data.extend_from_slice(&buf[..consumed]);
        self.lines_buffered += newlines;
        if self.header_pending {
            self.skip_header();
        }
        Ok(consumed)
    }

    fn flush(&mut self) -> std::result::Result<Option<RecordBatch>, ArrowError> {
        if let Some(arrow) = self.handed_over.as_mut() {
            return arrow.flush();
        }
        if self.header_pending {
            // Input ended inside the header line: there are no rows.
            self.data.clear();
            return Ok(None);
        }
        if self.data.is_empty() {
            return Ok(None);
        }
        let batch = self.parse();
        self.lines_before += self.lines_buffered;
        self.lines_buffered = 0;
        self.data.clear();
        batch
    }

    fn can_flush_early(&self) -> bool {
        false
    }
}

/// Positions of every delimiter and newline in `data`, each as `position << 1 | is_newline`,
/// in order. Eight bytes at a time: a byte equal to the target becomes zero after XOR, and
/// [`zero_bytes`] marks zero bytes without a branch per byte.
fn find_separators(data: &[u8], delimiter: u8, out: &mut Vec<u32>) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    out.clear();
    out.reserve(data.len() / 4);
    let delimiters = ONES * u64::from(delimiter);
    let newlines = ONES * u64::from(b'\n');
    let mut chunks = data.chunks_exact(8);
    let mut base = 0u32;
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        let newline_bits = zero_bytes(word ^ newlines);
        let mut all = zero_bytes(word ^ delimiters) | newline_bits;
        while all != 0 {
            let bit = all.trailing_zeros();
            let is_newline = ((newline_bits >> bit) & 1) as u32;
            out.push(((base + bit / 8) << 1) | is_newline);
            all &= all - 1;
        }
        base += 8;
    }
    for (offset, &byte) in chunks.remainder().iter().enumerate() {
        let position = base + offset as u32;
        if byte == delimiter {
            out.push(position << 1);
        } else if byte == b'\n' {
            out.push((position << 1) | 1);
        }
    }
}

/// The high bit of every byte of `word` that is zero, and no other bit. No carry crosses a
/// byte: `(b & 0x7f) + 0x7f` is at most 0xfe.
fn zero_bytes(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((word & LOW7) + LOW7) | word | LOW7)
}

/// A line whose field count is wrong: where it starts in the buffer.
#[derive(Debug, PartialEq)]
struct BadLine {
    row_start: usize,
}

/// Group separators into rows of exactly `columns` fields: `ends[row * columns + column]` is
/// the end of each field, `starts[row]` the start of each row. Blank lines are skipped, as
/// csv_core skips them; a last line without a newline is a row. Returns the row count.
fn split_rows(
    len: usize,
    separators: &[u32],
    columns: usize,
    ends: &mut Vec<u32>,
    starts: &mut Vec<u32>,
) -> std::result::Result<usize, BadLine> {
    ends.clear();
    starts.clear();
    let mut field = 0;
    let mut row_start = 0u32;
    for &separator in separators {
        let position = separator >> 1;
        let is_newline = separator & 1 == 1;
        if is_newline && field == 0 && position == row_start {
            row_start = position + 1;
            continue;
        }
        if is_newline != (field + 1 == columns) {
            return Err(BadLine {
                row_start: row_start as usize,
            });
        }
        ends.push(position);
        if is_newline {
            starts.push(row_start);
            field = 0;
            row_start = position + 1;
        } else {
            field += 1;
        }
    }
    if (row_start as usize) < len {
        if field + 1 != columns {
            return Err(BadLine {
                row_start: row_start as usize,
            });
        }
        ends.push(len as u32);
        starts.push(row_start);
    }
    Ok(starts.len())
}

/// The fields of a split buffer.
struct Fields<'a> {
    text: &'a str,
    ends: &'a [u32],
    starts: &'a [u32],
    columns: usize,
}

impl<'a> Fields<'a> {
    fn get(&self, row: usize, column: usize) -> &'a str {
        let at = row * self.columns + column;
        let start = if column == 0 {
            self.starts[row]
        } else {
            self.ends[at - 1] + 1
        };
        // Separators are ASCII, so both bounds are character boundaries.
        &self.text[start as usize..self.ends[at] as usize]
    }
}

/// Why a column did not parse: the row of a value its type's parser refused, or arrow's error.
enum Failure {
    Value(usize),
    Arrow(ArrowError),
}

/// One column as arrow-csv builds it: an empty field is NULL, anything else goes through the
/// type's arrow parser.
fn parse_column(
    fields: &Fields<'_>,
    rows: usize,
    column: usize,
    data_type: &DataType,
) -> std::result::Result<ArrayRef, Failure> {
    let values = (0..rows).map(|row| fields.get(row, column));
    Ok(match data_type {
        DataType::Null => Arc::new(NullArray::new(rows)),
        DataType::Boolean => {
            let mut builder = BooleanBuilder::with_capacity(rows);
            for (row, value) in values.enumerate() {
                if value.is_empty() {
                    builder.append_null();
                } else if value.eq_ignore_ascii_case("true") {
                    builder.append_value(true);
                } else if value.eq_ignore_ascii_case("false") {
                    builder.append_value(false);
                } else {
                    return Err(Failure::Value(row));
                }
            }
            Arc::new(builder.finish())
        }
        DataType::Int8 => primitive::<Int8Type>(values, rows)?,
        DataType::Int16 => primitive::<Int16Type>(values, rows)?,
        DataType::Int32 => primitive::<Int32Type>(values, rows)?,
        DataType::Int64 => primitive::<Int64Type>(values, rows)?,
        DataType::UInt8 => primitive::<UInt8Type>(values, rows)?,
        DataType::UInt16 => primitive::<UInt16Type>(values, rows)?,
        DataType::UInt32 => primitive::<UInt32Type>(values, rows)?,
        DataType::UInt64 => primitive::<UInt64Type>(values, rows)?,
        DataType::Float32 => primitive::<Float32Type>(values, rows)?,
        DataType::Float64 => primitive::<Float64Type>(values, rows)?,
        DataType::Date32 => primitive::<Date32Type>(values, rows)?,
        DataType::Date64 => primitive::<Date64Type>(values, rows)?,
        DataType::Decimal32(p, s) => decimal::<Decimal32Type>(values, rows, *p, *s)?,
        DataType::Decimal64(p, s) => decimal::<Decimal64Type>(values, rows, *p, *s)?,
        DataType::Decimal128(p, s) => decimal::<Decimal128Type>(values, rows, *p, *s)?,
        DataType::Decimal256(p, s) => decimal::<Decimal256Type>(values, rows, *p, *s)?,
        DataType::Utf8 => {
            let bytes = values.clone().map(str::len).sum();
            let mut builder = StringBuilder::with_capacity(rows, bytes);
            builder.extend(values.map(non_empty));
            Arc::new(builder.finish())
        }
        DataType::Utf8View => Arc::new(values.map(non_empty).collect::<StringViewArray>()),
        other => {
            return Err(Failure::Arrow(ArrowError::ParseError(format!(
                "Unsupported data type {other:?}"
            ))))
        }
    })
}

/// An empty field is NULL, as arrow-csv reads it without a null regex.
fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

fn primitive<'a, T: Parser>(
    values: impl Iterator<Item = &'a str>,
    rows: usize,
) -> std::result::Result<ArrayRef, Failure> {
    let array = parse_values::<T>(values, rows, |row, value| {
        T::parse(value).ok_or(Failure::Value(row))
    })?;
    Ok(Arc::new(array))
}

fn decimal<'a, T: DecimalType>(
    values: impl Iterator<Item = &'a str>,
    rows: usize,
    precision: u8,
    scale: i8,
) -> std::result::Result<ArrayRef, Failure> {
    let array = parse_values::<T>(values, rows, |_, value| {
        parse_decimal::<T>(value, precision, scale).map_err(Failure::Arrow)
    })?;
    let array = array
        .with_precision_and_scale(precision, scale)
        .map_err(Failure::Arrow)?;
    Ok(Arc::new(array))
}

/// A primitive array of `rows` values: NULL for an empty field, `parse(row, value)` otherwise.
fn parse_values<'a, T: ArrowPrimitiveType>(
    values: impl Iterator<Item = &'a str>,
    rows: usize,
    parse: impl Fn(usize, &str) -> std::result::Result<T::Native, Failure>,
) -> std::result::Result<PrimitiveArray<T>, Failure> {
    let mut parsed = Vec::with_capacity(rows);
    let mut nulls = NullBufferBuilder::new(rows);
    for (row, value) in values.enumerate() {
        if value.is_empty() {
            parsed.push(T::Native::default());
            nulls.append_null();
        } else {
            parsed.push(parse(row, value)?);
            nulls.append_non_null();
        }
    }
    Ok(PrimitiveArray::<T>::new(parsed.into(), nulls.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{CsvReadOptions, SessionConfig, SessionContext};
    use std::io::Cursor;

    fn settings(schema: SchemaRef, projection: Vec<usize>, batch_size: usize) -> Arc<PlainCsv> {
        Arc::new(PlainCsv {
            projected_schema: Arc::new(schema.project(&projection).unwrap()),
            file_schema: schema,
            projection,
            batch_size,
            header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            terminator: None,
        })
    }

    /// Decode `input` read `chunk` bytes at a time, all batches in one.
    fn plain(settings: &Arc<PlainCsv>, input: &str, chunk: usize) -> Result<RecordBatch, String> {
        let reader = std::io::BufReader::with_capacity(chunk, Cursor::new(input.to_string()));
        let decoder = PlainCsvDecoder::new(settings.clone(), true);
        let batches = read_batches(reader, decoder)
            .collect::<DfResult<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        Ok(concat_batches(&settings.projected_schema, &batches).unwrap())
    }

    /// The same input through arrow-csv's own reader.
    fn arrow_csv(settings: &PlainCsv, input: &str) -> RecordBatch {
        let reader = ReaderBuilder::new(settings.file_schema.clone())
            .with_header(true)
            .with_batch_size(settings.batch_size)
            .with_projection(settings.projection.clone())
            .build(Cursor::new(input.to_string()))
            .unwrap();
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>().unwrap();
        concat_batches(&settings.projected_schema, &batches).unwrap()
    }

    fn claims_like() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("member", DataType::Utf8, true),
            Field::new("cost", DataType::Decimal128(10, 2), true),
            Field::new("ratio", DataType::Float64, true),
            Field::new("day", DataType::Date32, true),
            Field::new("generic", DataType::Boolean, true),
            Field::new("supply", DataType::Int32, true),
            Field::new("code", DataType::Utf8View, true),
        ]))
    }

    const PLAIN: &str = "id,member,cost,ratio,day,generic,supply,code\n\
        1,M001,12.50,0.25,2026-01-02,true,30,E11.9\n\
        2,,7.1,-1e3,2026-02-28,FALSE,,I10\n\
        \n\
        3,M003,,,,,90,\n\
        4,M004,1000.00,3.5,2026-12-31,True,1,J45.909-long-code\n\
        5,M005,0.01,1,2025-06-30,false,365,X\n\
        \n\
        6,M006,99.99,2.0,2026-03-01,true,30,Z";

    #[test]
    fn plain_rows_decode_as_arrow_csv_decodes_them_at_every_chunk_size() {
        for projection in [vec![0, 1, 2, 3, 4, 5, 6, 7], vec![2, 6], vec![7]] {
            for batch_size in [1, 2, 4, 100] {
                let settings = settings(claims_like(), projection.clone(), batch_size);
                let expected = arrow_csv(&settings, PLAIN);
                assert_eq!(expected.num_rows(), 6);
                for chunk in 1..=PLAIN.len() {
                    let got = plain(&settings, PLAIN, chunk).unwrap();
                    assert_eq!(got, expected, "projection {projection:?}, chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn a_quote_or_a_carriage_return_hands_the_stream_to_arrow_csv() {
        let quoted = "id,member,cost,ratio,day,generic,supply,code\n\
            1,M001,12.50,0.25,2026-01-02,true,30,E11.9\n\
            2,\"M,00\n2\",7.1,-1e3,2026-02-28,FALSE,,I10\n\
            3,M003,,,,,90,\"\"\"\"\n";
        let crlf = PLAIN.replace('\n', "\r\n");
        for input in [quoted, crlf.as_str()] {
            let settings = settings(claims_like(), vec![0, 1, 7], 2);
            let expected = arrow_csv(&settings, input);
            for chunk in 1..=input.len() {
                assert_eq!(plain(&settings, input, chunk).unwrap(), expected, "{chunk}");
            }
        }
    }

    #[test]
    fn a_line_with_the_wrong_field_count_is_named_by_its_line() {
        let two = Arc::new(Schema::new(vec![
            Field::new("dx", DataType::Utf8, true),
            Field::new("cost", DataType::Int64, true),
        ]));
        let settings = settings(two, vec![0, 1], 100);
        let short = plain(&settings, "dx,cost\nC,3\nD\nE,5\n", 4).unwrap_err();
        assert!(
            short.contains("incorrect number of fields for line 3, expected 2 got 1"),
            "{short}"
        );
        let long = plain(&settings, "dx,cost\nC,3\n\nE,5,6\n", 64).unwrap_err();
        assert!(long.contains("line 4, expected 2 got 3"), "{long}");
    }

    #[test]
    fn a_value_its_type_refuses_is_named_with_its_line_and_column() {
        let two = Arc::new(Schema::new(vec![
            Field::new("dx", DataType::Utf8, true),
            Field::new("cost", DataType::Int64, true),
        ]));
        let settings = settings(two, vec![1], 2);
        let err = plain(&settings, "dx,cost\nA,1\nB,2\nC,x7\n", 5).unwrap_err();
        assert!(err.contains("'x7'"), "{err}");
        assert!(err.contains("`cost`") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn an_empty_field_of_a_column_that_allows_no_nulls_is_refused_as_arrow_csv_refuses_it() {
        let strict = Arc::new(Schema::new(vec![
            Field::new("dx", DataType::Utf8, false),
            Field::new("cost", DataType::Int64, false),
        ]));
        let settings = settings(strict, vec![0, 1], 10);
        let err = plain(&settings, "dx,cost\nA,1\nB,\n", 64).unwrap_err();
        assert!(err.contains("non-nullable"), "{err}");
    }

    #[test]
    fn separators_are_found_as_a_byte_by_byte_scan_finds_them() {
        let mut state = 7u64;
        let mut random_byte = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            [b'a', b',', b'\n', b'9', 0x80, 0xff, b';'][(state >> 33) as usize % 7]
        };
        let mut found = Vec::new();
        for len in 0..80 {
            let data: Vec<u8> = (0..len).map(|_| random_byte()).collect();
            let expected: Vec<u32> = data
                .iter()
                .enumerate()
                .filter(|(_, byte)| **byte == b',' || **byte == b'\n')
                .map(|(at, byte)| ((at as u32) << 1) | u32::from(*byte == b'\n'))
                .collect();
            find_separators(&data, b',', &mut found);
            assert_eq!(found, expected, "{data:?}");
        }
    }

    #[tokio::test]
    async fn the_rule_puts_the_plain_decoder_in_csv_scans_and_results_stay_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut text = String::from("k,v\n");
        for row in 0..5000 {
            text.push_str(&format!("{},{}\n", row % 7, row));
        }
        std::fs::write(&path, text).unwrap();
        let sql = "SELECT k, sum(v) AS s FROM t GROUP BY k ORDER BY k";
        let config = SessionConfig::new()
            .with_target_partitions(3)
            .with_repartition_file_min_size(1024);
        let stock = SessionContext::new_with_config(config.clone());
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(FastCsvScan))
            .build();
        let fast = SessionContext::new_with_state(state);
        for ctx in [&stock, &fast] {
            ctx.register_csv("t", path.to_str().unwrap(), CsvReadOptions::new())
                .await
                .unwrap();
        }
        let plan = fast
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut plain_scans = 0;
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<DataSourceExec>() {
                let scan = exec.data_source().downcast_ref::<FileScanConfig>().unwrap();
                plain_scans +=
                    usize::from(scan.file_source.downcast_ref::<FastCsvSource>().is_some());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(plain_scans, 1);
        let got = fast.sql(sql).await.unwrap().collect().await.unwrap();
        let expected = stock.sql(sql).await.unwrap().collect().await.unwrap();
        assert_eq!(got, expected);
        // Sum of v over rows with v % 7 == 0: 0 + 7 + ... + 4998.
        let sums = got[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(sums.value(0), (0..5000).filter(|v| v % 7 == 0).sum::<i64>());
        assert_eq!(sums.len(), 7);
    }
}
