//! What a sample of a CSV file says before DataFusion infers its types: the dialect (delimiter,
//! quote, whether the first row is a header) and the columns that must stay text although
//! their values look like numbers.
//!
//! DataFusion's inference reads `00002143380` as the number 2143380: an NDC, a ZIP or an
//! account number loses its leading zeros, and a 10-digit NPI becomes a number that sums. A
//! column whose sampled values include a digit string with a leading zero, or whose digit
//! strings all have one fixed width of 10 or more, is kept as text (DuckDB does the same).
//! Reads only the first lines of each file (decompressed: the rows inference reads, at least
//! `SAMPLE_BYTES`, at most `MAX_SAMPLE_BYTES`) and must not decide anything a table's
//! settings say explicitly.

use crate::catalog::{Compression, CsvDialect};
use crate::error::{Error, Result};
use datafusion::error::DataFusionError;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Bytes read from the start of a file to sniff it at least: enough for the 1,000 rows
/// inference reads by default of claims-like files (about 130 bytes a row).
pub(crate) const SAMPLE_BYTES: u64 = 1 << 20;
/// Bytes read at most, however many rows `--infer-rows` asks for: the sample is held in
/// memory, outside the memory pool.
pub(crate) const MAX_SAMPLE_BYTES: u64 = 64 << 20;

/// Delimiters tried, in order of preference when two fit equally.
const DELIMITERS: [u8; 4] = [b',', b'|', b'\t', b';'];

/// The first lines of a file, decompressed, cut after its last complete line: at least
/// `SAMPLE_BYTES`, and on until it holds a header and `rows` rows (the rows DataFusion's
/// inference reads), or `MAX_SAMPLE_BYTES`.
pub(crate) async fn sample(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    compression: Compression,
    rows: usize,
) -> Result<Vec<u8>> {
    let in_file = |e: DataFusionError| Error::from(e).context(format!("file `{}`", meta.location));
    let from_store = |e: object_store::Error| DataFusionError::ObjectStore(Box::new(e));
    let mut sample = Sample {
        bytes: Vec::new(),
        lines: 0,
        wanted_lines: rows.saturating_add(1),
    };
    let whole;
    if compression == Compression::None {
        // Ranged reads: one request of a megabyte for the usual case, never the whole object.
        let mut end = meta.size.min(SAMPLE_BYTES);
        loop {
            let start = sample.bytes.len() as u64;
            let mut enough = false;
            if start < end {
                let chunk = store
                    .get_range(&meta.location, start..end)
                    .await
                    .map_err(|e| in_file(from_store(e)))?;
                enough = sample.add(&chunk);
            }
            if end == meta.size || enough {
                whole = end == meta.size;
                break;
            }
            end = (end * 2).min(meta.size).min(MAX_SAMPLE_BYTES);
        }
    } else {
        let stream = store
            .get(&meta.location)
            .await
            .map_err(|e| in_file(from_store(e)))?
            .into_stream()
            .map_err(from_store)
            .boxed();
        let mut stream = compression
            .file_type()
            .convert_stream(stream)
            .map_err(in_file)?;
        loop {
            match stream.next().await {
                Some(chunk) => {
                    if sample.add(&chunk.map_err(in_file)?) {
                        whole = false;
                        break;
                    }
                }
                None => {
                    whole = true;
                    break;
                }
            }
        }
    }
    let mut bytes = sample.bytes;
    if !whole {
        match bytes.iter().rposition(|b| *b == b'\n') {
            Some(last) => bytes.truncate(last + 1),
            None => bytes.clear(),
        }
    }
    Ok(bytes)
}

/// The first bytes of a file as they are read, and how many lines they hold.
struct Sample {
    bytes: Vec<u8>,
    lines: usize,
    wanted_lines: usize,
}

impl Sample {
    /// Take the next chunk; whether the sample is now long enough.
    fn add(&mut self, chunk: &[u8]) -> bool {
        self.lines += chunk.iter().filter(|b| **b == b'\n').count();
        self.bytes.extend_from_slice(chunk);
        let taken = self.bytes.len() as u64;
        taken >= MAX_SAMPLE_BYTES || (taken >= SAMPLE_BYTES && self.lines >= self.wanted_lines)
    }
}

/// The records of a sample under a dialect (at most `limit`).
fn records(sample: &[u8], delimiter: u8, quote: u8, limit: usize) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .quote(quote)
        .flexible(true)
        .from_reader(sample);
    reader
        .records()
        .take(limit)
        .filter_map(|record| record.ok())
        .map(|record| record.iter().map(str::to_string).collect())
        .collect()
}

/// Fill in what the table's settings leave open: the quote (`"`, or `'` when more of the
/// sample's fields are wrapped in it), the delimiter (`,` `|` tab `;`, whichever splits the
/// sample's rows into the same number of fields, more than one) and whether the
/// first row is a header (it is when some column's values below are numbers or dates and its
/// first value is not, or when every first value is text and differs from the rest).
pub(crate) fn dialect(sample: &[u8], mut dialect: CsvDialect) -> CsvDialect {
    if sample.is_empty() {
        return dialect;
    }
    if !dialect.quote_set {
        dialect.quote = best_quote(sample, dialect.delimiter);
    }
    if dialect.delimiter.is_none() {
        dialect.delimiter = best_delimiter(sample, dialect.quote);
    }
    if !dialect.header_set {
        let delimiter = dialect.delimiter.unwrap_or(b',');
        let rows = records(sample, delimiter, dialect.quote, 200);
        dialect.header = looks_like_header(&rows);
    }
    dialect
}

/// Quotes tried; `"` wins a tie (RFC 4180).
const QUOTES: [u8; 2] = [b'"', b'\''];

/// The quote that wraps the most whole fields of the sample, each field found under the
/// delimiter that quote makes the best (or the table's own).
fn best_quote(sample: &[u8], delimiter: Option<u8>) -> u8 {
    let mut best = (QUOTES[0], 0);
    for quote in QUOTES {
        let Some(delimiter) = delimiter.or_else(|| best_delimiter(sample, quote)) else {
            continue;
        };
        let wrapped = wrapped_fields(sample, delimiter, quote);
        if wrapped > best.1 {
            best = (quote, wrapped);
        }
    }
    best.0
}

/// Fields of the sample's first 200 lines that begin and end with `quote`, read with no
/// quoting at all (a delimiter inside quotes splits such a field in two, and neither half
/// counts, so a wrong guess scores low).
fn wrapped_fields(sample: &[u8], delimiter: u8, quote: u8) -> usize {
    sample
        .split(|b| *b == b'\n')
        .take(200)
        .flat_map(|line| {
            line.strip_suffix(b"\r")
                .unwrap_or(line)
                .split(move |b| *b == delimiter)
        })
        .filter(|field| field.len() >= 2 && field[0] == quote && field[field.len() - 1] == quote)
        .count()
}

fn best_delimiter(sample: &[u8], quote: u8) -> Option<u8> {
    let mut best: Option<(u8, usize, usize)> = None;
    for delimiter in DELIMITERS {
        let rows = records(sample, delimiter, quote, 200);
        if rows.len() < 1 {
            continue;
        }
        let width = rows[0].len();
        if width < 2 {
            continue;
        }
        let consistent = rows.iter().filter(|row| row.len() == width).count();
        // Every row (a ragged last line aside) must split the same way.
        if consistent + 1 < rows.len() {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, best_width, best_rows)) => (consistent, width) > (best_rows, best_width),
        };
        if better {
            best = Some((delimiter, width, consistent));
        }
    }
    best.map(|(delimiter, _, _)| delimiter)
}

/// What a value looks like, for telling a header from data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Number,
    Date,
    Text,
}

fn kind(value: &str) -> Kind {
    let value = value.trim();
    if value.is_empty() {
        return Kind::Empty;
    }
    if value.parse::<f64>().is_ok() {
        return Kind::Number;
    }
    let bytes = value.as_bytes();
    if bytes.len() >= 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[..4].iter().all(u8::is_ascii_digit)
    {
        return Kind::Date;
    }
    Kind::Text
}

fn looks_like_header(rows: &[Vec<String>]) -> bool {
    let Some((first, rest)) = rows.split_first() else {
        return true;
    };
    if rest.is_empty() {
        // One row: a header if every value is text.
        return first.iter().all(|v| kind(v) == Kind::Text);
    }
    if first
        .iter()
        .any(|v| matches!(kind(v), Kind::Number | Kind::Date | Kind::Empty))
    {
        return false;
    }
    let mut votes_for = 0;
    let mut votes_against = 0;
    for (column, name) in first.iter().enumerate() {
        let below: Vec<Kind> = rest
            .iter()
            .filter_map(|row| row.get(column))
            .map(|v| kind(v))
            .filter(|k| *k != Kind::Empty)
            .collect();
        let Some(&common) = below.first() else {
            continue;
        };
        if below.iter().all(|k| *k == common) && common != Kind::Text {
            votes_for += 1;
        } else if rest.iter().any(|row| row.get(column) == Some(name)) {
            votes_against += 1;
        } else {
            votes_for += 1;
        }
    }
    votes_for > votes_against
}

/// The columns (by index) whose sampled values must stay text: a digit string with a leading
/// zero anywhere, or digit strings of one fixed width of 10 or more in every non-empty value.
pub(crate) fn text_columns(sample: &[u8], dialect: &CsvDialect, limit: usize) -> BTreeSet<usize> {
    let delimiter = dialect.delimiter.unwrap_or(b',');
    let rows = records(sample, delimiter, dialect.quote, limit + 1);
    let data = if dialect.header {
        rows.get(1..).unwrap_or(&[])
    } else {
        &rows[..]
    };
    let width = data.iter().map(Vec::len).max().unwrap_or(0);
    let mut keep = BTreeSet::new();
    for column in 0..width {
        let values: Vec<&str> = data
            .iter()
            .filter_map(|row| row.get(column))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty() && !dialect.null_values.iter().any(|n| n == v))
            .collect();
        if values.is_empty() {
            continue;
        }
        let digits = |v: &&str| v.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = values
            .iter()
            .any(|v| v.len() > 1 && v.starts_with('0') && digits(v));
        let fixed_wide = values.iter().all(digits)
            && values[0].len() >= 10
            && values.iter().all(|v| v.len() == values[0].len());
        if leading_zero || fixed_wide {
            keep.insert(column);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(text: &str) -> CsvDialect {
        dialect(text.as_bytes(), CsvDialect::default())
    }

    #[test]
    fn single_quotes_are_sniffed_when_they_wrap_fields_and_double_quotes_win_a_tie() {
        let single = sniff("id;name;city\n1;'Smith; John';'Boston'\n2;'Doe';'Salem'\n");
        assert_eq!((single.quote, single.delimiter), (b'\'', Some(b';')));
        let rows = records(b"1;'Smith; John';'Boston'\n", b';', single.quote, 10);
        assert_eq!(rows, [["1", "Smith; John", "Boston"]]);
        let double = sniff("id,name\n1,\"O'Brien, Pat\"\n2,\"Doe\"\n");
        assert_eq!((double.quote, double.delimiter), (b'"', Some(b',')));
        assert_eq!(sniff("a,b\n1,2\n").quote, b'"');
    }

    #[test]
    fn the_delimiter_is_the_one_that_splits_every_row_alike() {
        assert_eq!(sniff("a|b|c\n1|2,5|3\n4|5|6\n").delimiter, Some(b'|'));
        assert_eq!(sniff("a\tb\n1\t2\n").delimiter, Some(b'\t'));
        assert_eq!(sniff("a;b\n1,5;2\n3;4\n").delimiter, Some(b';'));
        assert_eq!(sniff("a,b\n\"x;y\",2\n").delimiter, Some(b','));
    }

    #[test]
    fn a_header_is_text_above_numbers_and_a_numeric_first_row_is_data() {
        assert!(sniff("claim_id,member_id,cost\n1,M1,2.5\n2,M2,3\n").header);
        assert!(!sniff("1,M1,2.5\n2,M2,3\n").header);
        assert!(!sniff("00002143380,2024-01-01\n00003143380,2024-01-02\n").header);
        let mut given = CsvDialect::default();
        given.header = false;
        given.header_set = true;
        assert!(!dialect(b"a,b\n1,2\n", given).header);
    }

    #[test]
    fn leading_zeros_and_wide_fixed_width_digits_stay_text() {
        let sample = b"ndc,npi,days,zip,amount\n00002143380,1234567890,30,02139,10\n51234567890,1987654321,90,94105,20\n";
        let dialect = sniff(std::str::from_utf8(sample).unwrap());
        assert_eq!(
            text_columns(sample, &dialect, 1000),
            BTreeSet::from([0, 1, 3])
        );
    }
}
