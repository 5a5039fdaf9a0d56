//! Saved, parameterised reports and the history of their runs.
//!
//! A report is a `.sql` file (usually under `queries/`) whose text opens with a block comment
//! whose first word is `report`. The rest of that comment is TOML: the report's name, a
//! description, typed parameters with defaults, an output path template, a format, a schedule,
//! retries and a timeout. Everything after the comment is the SQL, which names parameters as
//! DataFusion placeholders (`$month`). A `.sql` file without such a header is a plain query.
//!
//! ```sql
//! /* report
//! name = "cost_by_state"
//! output = "reports/{name}/{month}.csv"
//! schedule = { cron = "0 6 1 * *", timezone = "America/New_York" }
//! [params.month]
//! type = "date"
//! default = "2024-01-01"
//! */
//! SELECT member_state, sum(total_cost) FROM claims WHERE fill_date >= $month GROUP BY 1
//! ```
//!
//! Owns: finding and parsing report headers (every error names the file and the line, counted
//! from the top of the `.sql` file, not of the comment), binding `--param k=v` values to typed
//! [`ParamValue`]s, rendering output path templates, the run history (a SQLite file), the lock
//! that keeps two daemons off one history, and the manifest written beside each output.
//!
//! Must not: schedule anything (that is `schedule`), build a `SessionContext` or run SQL (the
//! engine does, binding each [`ParamValue`] through [`ParamValue::to_scalar`] as a DataFusion
//! placeholder value). The SQL text is never edited or spliced with values here: a value like
//! `'; DROP TABLE x; --` stays a value.

pub(crate) mod run;

use crate::schedule::CronSchedule;
use crate::units::parse_duration;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// One saved report: its header, parsed and checked, and its SQL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReportDefinition {
    /// Unique within a folder; letters, digits, `_` and `-` only (it is used in paths).
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// The `.sql` file it came from.
    pub(crate) path: PathBuf,
    /// The text after the header comment.
    pub(crate) sql: String,
    /// The 1-based line of the file on which `sql` starts, to translate SQL error positions.
    pub(crate) sql_line: usize,
    /// In the order the header declares them.
    pub(crate) params: Vec<ParamSpec>,
    /// The output path template (see [`ReportDefinition::render_output`]).
    pub(crate) output: Option<String>,
    /// The format written in the header, or else the one the output template's extension names;
    /// `None` when neither says (callers then use [`ReportDefinition::effective_format`]).
    pub(crate) format: Option<ReportFormat>,
    pub(crate) schedule: Option<ScheduleSpec>,
    /// How many times a failed scheduled run is tried again.
    pub(crate) retries: u32,
    pub(crate) timeout: Option<Duration>,
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParamSpec {
    /// A valid placeholder name: the SQL refers to it as `$name`.
    pub(crate) name: String,
    pub(crate) kind: ParamKind,
    /// `None` means the parameter is required.
    pub(crate) default: Option<ParamValue>,
    /// When not empty, the only values accepted. For a `list`, each element must be one of
    /// these (they are held as [`ParamValue::String`]).
    pub(crate) allowed: Vec<ParamValue>,
    pub(crate) description: Option<String>,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamKind {
    Date,
    Int,
    Float,
    String,
    /// A list of strings; given on the command line comma-separated.
    List,
}

/// A bound parameter value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ParamValue {
    Date(NaiveDate),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<String>),
}

/// What a report writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    Csv,
    Parquet,
    Json,
}

/// `schedule = { cron = "...", timezone = "..." }`, already checked to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleSpec {
    /// Five-field POSIX cron (or six with seconds, or `@daily` and friends).
    pub(crate) cron: String,
    /// An IANA zone name; `UTC` when the header gives none.
    pub(crate) timezone: String,
}

/// Everything that can go wrong with reports and their history.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bad report header; `line` counts from the top of the `.sql` file.
    #[error("{}:{line}: {message}", path.display())]
    Header {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A bad or missing parameter value at run time.
    #[error("report `{report}`, param `{param}`: {message}")]
    Param {
        report: String,
        param: String,
        message: String,
    },
    /// The output template could not be rendered.
    #[error("report `{report}`: output template: {message}")]
    Template { report: String, message: String },
    #[error(
        "two reports are named `{name}`: {} and {}",
        first.display(),
        second.display()
    )]
    DuplicateName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no report named `{name}` (known reports: {})", known_list(known))]
    UnknownReport { name: String, known: Vec<String> },
    #[error("run history {}: {message}", path.display())]
    History { path: PathBuf, message: String },
    #[error(
        "another spillway daemon holds {}{}; stop it first",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked { path: PathBuf, holder: Option<u32> },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}

impl From<ReportError> for crate::error::Error {
    fn from(error: ReportError) -> Self {
        use crate::error::Error;
        let message = error.to_string();
        match error {
            ReportError::Io { .. }
            | ReportError::Header { .. }
            | ReportError::Template { .. }
            | ReportError::DuplicateName { .. } => Error::Config(message),
            ReportError::Param { .. }
            | ReportError::UnknownReport { .. }
            | ReportError::Locked { .. } => Error::Usage(message),
            ReportError::History { .. } => Error::Output(message),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------------------------

impl ParamKind {
    fn parse(text: &str) -> Option<ParamKind> {
        match text {
            "date" => Some(ParamKind::Date),
            "int" => Some(ParamKind::Int),
            "float" => Some(ParamKind::Float),
            "string" => Some(ParamKind::String),
            "list" => Some(ParamKind::List),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ParamKind::Date => "date",
            ParamKind::Int => "int",
            ParamKind::Float => "float",
            ParamKind::String => "string",
            ParamKind::List => "list",
        }
    }
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ParamValue {
    /// The DataFusion value the engine binds to the `$name` placeholder: `Date32`, `Int64`,
    /// `Float64`, `Utf8`, or a `List` of `Utf8` (so `array_has($states, col)` works).
    pub(crate) fn to_scalar(&self) -> ScalarValue {
        match self {
            // NaiveDate's default is 1970-01-01, the Date32 epoch. Every NaiveDate is within
            // ±262,143 years, so the day count always fits an i32.
            ParamValue::Date(date) => ScalarValue::Date32(Some(
                date.signed_duration_since(NaiveDate::default()).num_days() as i32,
            )),
            ParamValue::Int(value) => ScalarValue::Int64(Some(*value)),
            ParamValue::Float(value) => ScalarValue::Float64(Some(*value)),
            ParamValue::String(value) => ScalarValue::Utf8(Some(value.clone())),
            ParamValue::List(items) => {
                let items: Vec<ScalarValue> = items
                    .iter()
                    .map(|item| ScalarValue::Utf8(Some(item.clone())))
                    .collect();
                ScalarValue::List(ScalarValue::new_list_nullable(&items, &DataType::Utf8))
            }
        }
    }

    /// The value as JSON, for manifests.
    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            ParamValue::Date(date) => Value::String(date.format("%Y-%m-%d").to_string()),
            ParamValue::Int(value) => Value::from(*value),
            // JSON has no NaN or infinity; such values cannot come from a header or `bind`.
            ParamValue::Float(value) => serde_json::Number::from_f64(*value)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            ParamValue::String(value) => Value::String(value.clone()),
            ParamValue::List(items) => {
                Value::Array(items.iter().cloned().map(Value::String).collect())
            }
        }
    }
}

/// Dates as `YYYY-MM-DD`, lists comma-separated (the form `--param` takes).
impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Date(date) => write!(f, "{}", date.format("%Y-%m-%d")),
            ParamValue::Int(value) => write!(f, "{value}"),
            ParamValue::Float(value) => write!(f, "{value}"),
            ParamValue::String(value) => f.write_str(value),
            ParamValue::List(items) => f.write_str(&items.join(",")),
        }
    }
}

impl ReportFormat {
    fn parse(text: &str) -> Option<ReportFormat> {
        match text.to_ascii_lowercase().as_str() {
            "csv" => Some(ReportFormat::Csv),
            "parquet" => Some(ReportFormat::Parquet),
            "json" | "ndjson" | "jsonl" => Some(ReportFormat::Json),
            _ => None,
        }
    }

    /// The format a path's extension names, if it names one.
    pub(crate) fn from_path(path: &str) -> Option<ReportFormat> {
        let file_name = path.rsplit('/').next().unwrap_or(path);
        let (_, extension) = file_name.rsplit_once('.')?;
        ReportFormat::parse(extension)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Parquet => "parquet",
            ReportFormat::Json => "json",
        }
    }
}

impl fmt::Display for ReportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------------

/// The header as TOML gives it; spans are byte offsets into the header text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    description: Option<String>,
    output: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    schedule: Option<Spanned<RawSchedule>>,
    retries: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "in_declaration_order")]
    params: Vec<(Spanned<String>, RawParam)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    default: Option<Spanned<toml::Value>>,
    allowed: Option<Vec<Spanned<toml::Value>>>,
    description: Option<String>,
}

/// `[params.*]` as a list, so parameters keep the order the author wrote them in.
fn in_declaration_order<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(Spanned<String>, RawParam)>, D::Error> {
    struct Ordered;
    impl<'de> Visitor<'de> for Ordered {
        type Value = Vec<(Spanned<String>, RawParam)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of parameters")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut params = Vec::new();
            while let Some(entry) = map.next_entry()? {
                params.push(entry);
            }
            Ok(params)
        }
    }
    deserializer.deserialize_map(Ordered)
}

/// Where the header's pieces lie in the file (byte offsets).
struct HeaderLayout {
    /// The `/*` that opens the header.
    open: usize,
    /// The TOML text: `toml_start..toml_end`.
    toml_start: usize,
    toml_end: usize,
    /// Where the SQL begins.
    sql_start: usize,
}

/// Turns header-relative spans into file lines and builds errors naming the file.
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
    toml_start: usize,
}

impl Located<'_> {
    fn error_at(&self, file_offset: usize, message: impl Into<String>) -> ReportError {
        ReportError::Header {
            path: self.path.to_path_buf(),
            line: line_of(self.text, file_offset),
            message: message.into(),
        }
    }

    /// An error at a span of the header text.
    fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ReportError {
        self.error_at(self.toml_start + spanned.span().start, message)
    }
}

/// The 1-based line holding a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Find the header comment, if the file starts with one. `Err` carries the offset and message
/// of an unterminated header.
fn find_header(text: &str) -> Result<Option<HeaderLayout>, (usize, String)> {
    // Leading blank lines (and a byte-order mark) may precede the header.
    let body = text.trim_start_matches('\u{feff}').trim_start();
    let open = text.len() - body.len();
    let Some(after_open) = body.strip_prefix("/*") else {
        return Ok(None);
    };
    let word_start = after_open.len() - after_open.trim_start().len();
    let candidate = &after_open[word_start..];
    let Some(after_word) = candidate.strip_prefix("report") else {
        return Ok(None);
    };
    // `/* reports ...` or `/* report_x` is some other comment, not a header.
    match after_word.chars().next() {
        Some(ch) if ch.is_whitespace() || ch == '*' => {}
        None => {}
        Some(_) => return Ok(None),
    }
    let toml_start = open + 2 + word_start + "report".len();
    let Some(close) = text[toml_start..].find("*/") else {
        return Err((
            open,
            "the report header opened here is never closed with `*/`".into(),
        ));
    };
    let toml_end = toml_start + close;
    let mut sql_start = toml_end + 2;
    // When the header ends its line, the SQL starts on the next one.
    let rest_of_line = text[sql_start..].split('\n').next().unwrap_or("");
    if rest_of_line.trim().is_empty() {
        sql_start = (sql_start + rest_of_line.len() + 1).min(text.len());
    }
    Ok(Some(HeaderLayout {
        open,
        toml_start,
        toml_end,
        sql_start,
    }))
}

/// Parse a `.sql` file's text. `Ok(None)` when it has no report header (a plain query).
pub(crate) fn parse_report(
    path: &Path,
    text: &str,
) -> Result<Option<ReportDefinition>, ReportError> {
    let layout = match find_header(text) {
        Ok(Some(layout)) => layout,
        Ok(None) => return Ok(None),
        Err((offset, message)) => {
            return Err(ReportError::Header {
                path: path.to_path_buf(),
                line: line_of(text, offset),
                message,
            })
        }
    };
    let at = Located {
        path,
        text,
        toml_start: layout.toml_start,
    };
    let toml_text = &text[layout.toml_start..layout.toml_end];
    let raw: RawHeader = toml::from_str(toml_text).map_err(|error| {
        // toml's own rendering counts lines from the comment; ours count from the file.
        let offset = error
            .span()
            .map(|span| layout.toml_start + span.start)
            .unwrap_or(layout.open);
        at.error_at(offset, format!("report header: {}", error.message().trim()))
    })?;
    build_definition(&at, &layout, raw).map(Some)
}

fn build_definition(
    at: &Located<'_>,
    layout: &HeaderLayout,
    raw: RawHeader,
) -> Result<ReportDefinition, ReportError> {
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        return Err(at.error(
            &raw.name,
            format!("name `{name}`: use only letters, digits, `_` and `-` (it is used in paths)"),
        ));
    }

    let mut params: Vec<ParamSpec> = Vec::with_capacity(raw.params.len());
    for (param_name, raw_param) in raw.params {
        let spec = build_param(at, &param_name, raw_param)?;
        if params.iter().any(|existing| existing.name == spec.name) {
            return Err(at.error(
                &param_name,
                format!("param `{}` is declared twice", spec.name),
            ));
        }
        params.push(spec);
    }

    let output = match raw.output {
        Some(template) => {
            let placeholders = template_placeholders(template.get_ref())
                .map_err(|message| at.error(&template, format!("output: {message}")))?;
            for placeholder in placeholders {
                let known = BUILT_IN_PLACEHOLDERS.contains(&placeholder.as_str())
                    || params.iter().any(|param| param.name == placeholder);
                if !known {
                    return Err(at.error(
                        &template,
                        format!(
                            "output: unknown placeholder `{{{placeholder}}}` (known: {})",
                            placeholder_names(&params).join(", ")
                        ),
                    ));
                }
            }
            Some(template.into_inner())
        }
        None => None,
    };

    let inferred = output.as_deref().and_then(ReportFormat::from_path);
    let format = match raw.format {
        Some(format) => {
            let parsed = ReportFormat::parse(format.get_ref()).ok_or_else(|| {
                at.error(
                    &format,
                    format!("format `{}`: use csv, parquet or json", format.get_ref()),
                )
            })?;
            if let Some(from_extension) = inferred.filter(|inferred| *inferred != parsed) {
                return Err(at.error(
                    &format,
                    format!("format is {parsed} but the output template ends in .{from_extension}"),
                ));
            }
            Some(parsed)
        }
        None => inferred,
    };

    let schedule = match raw.schedule {
        Some(schedule) => {
            let cron = schedule.get_ref().cron.clone();
            let timezone = schedule
                .get_ref()
                .timezone
                .clone()
                .unwrap_or_else(|| "UTC".to_string());
            // Checked now so that a typo fails at load with a line number, not in the daemon.
            CronSchedule::parse(&cron, &timezone)
                .map_err(|error| at.error(&schedule, format!("schedule: {error}")))?;
            Some(ScheduleSpec { cron, timezone })
        }
        None => None,
    };

    let retries = match raw.retries {
        Some(retries) => u32::try_from(*retries.get_ref()).map_err(|_| {
            at.error(
                &retries,
                format!(
                    "retries = {}: give a whole number, 0 or more",
                    retries.get_ref()
                ),
            )
        })?,
        None => 0,
    };

    let timeout = match raw.timeout {
        Some(timeout) => Some(
            parse_duration(timeout.get_ref())
                .map_err(|message| at.error(&timeout, format!("timeout: {message}")))?,
        ),
        None => None,
    };

    Ok(ReportDefinition {
        name,
        description: raw.description,
        path: at.path.to_path_buf(),
        sql: at.text[layout.sql_start..].to_string(),
        sql_line: line_of(at.text, layout.sql_start),
        params,
        output,
        format,
        schedule,
        retries,
        timeout,
    })
}

/// Placeholders every output template may use besides the parameters.
const BUILT_IN_PLACEHOLDERS: [&str; 3] = ["name", "scheduled_date", "run_id"];

fn placeholder_names(params: &[ParamSpec]) -> Vec<String> {
    BUILT_IN_PLACEHOLDERS
        .iter()
        .map(|name| format!("{{{name}}}"))
        .chain(params.iter().map(|param| format!("{{{}}}", param.name)))
        .collect()
}

fn build_param(
    at: &Located<'_>,
    name: &Spanned<String>,
    raw: RawParam,
) -> Result<ParamSpec, ReportError> {
    let param = name.get_ref().clone();
    let is_identifier = param
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && param
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !is_identifier {
        return Err(at.error(
            name,
            format!(
                "param `{param}`: the name must be letters, digits and `_` (SQL uses `${param}`)"
            ),
        ));
    }
    if BUILT_IN_PLACEHOLDERS.contains(&param.as_str()) {
        return Err(at.error(
            name,
            format!("param `{param}`: the name is reserved for the output template"),
        ));
    }
    let kind = ParamKind::parse(raw.kind.get_ref()).ok_or_else(|| {
        at.error(
            &raw.kind,
            format!(
                "param `{param}`: type `{}`: use date, int, float, string or list",
                raw.kind.get_ref()
            ),
        )
    })?;

    // For a list, `allowed` holds the permitted elements, so each is read as a string.
    let element_kind = if kind == ParamKind::List {
        ParamKind::String
    } else {
        kind
    };
    let mut allowed = Vec::new();
    for value in raw.allowed.unwrap_or_default() {
        let parsed = value_from_toml(element_kind, value.get_ref())
            .map_err(|message| at.error(&value, format!("param `{param}`: allowed: {message}")))?;
        allowed.push(parsed);
    }

    let default = match raw.default {
        Some(value) => {
            let parsed = value_from_toml(kind, value.get_ref()).map_err(|message| {
                at.error(&value, format!("param `{param}`: default: {message}"))
            })?;
            check_allowed(&parsed, &allowed).map_err(|message| {
                at.error(&value, format!("param `{param}`: default: {message}"))
            })?;
            Some(parsed)
        }
        None => None,
    };

    Ok(ParamSpec {
        name: param,
        kind,
        default,
        allowed,
        description: raw.description,
    })
}

/// A header value (TOML typed) as a parameter value of `kind`.
fn value_from_toml(kind: ParamKind, value: &toml::Value) -> Result<ParamValue, String> {
    use toml::Value;
    let wrong = || format!("{value} is not {}", kind_phrase(kind));
    match (kind, value) {
        (ParamKind::Date, Value::String(text)) => parse_value(kind, text),
        // A bare TOML date (`default = 2024-01-01`) is accepted as well as a string.
        (ParamKind::Date, Value::Datetime(datetime)) => match (datetime.date, datetime.time) {
            (Some(date), None) => NaiveDate::from_ymd_opt(
                i32::from(date.year),
                u32::from(date.month),
                u32::from(date.day),
            )
            .map(ParamValue::Date)
            .ok_or_else(wrong),
            _ => Err(wrong()),
        },
        (ParamKind::Int, Value::Integer(number)) => Ok(ParamValue::Int(*number)),
        (ParamKind::Float, Value::Float(number)) if number.is_finite() => {
            Ok(ParamValue::Float(*number))
        }
        (ParamKind::Float, Value::Integer(number)) => Ok(ParamValue::Float(*number as f64)),
        (ParamKind::String, Value::String(text)) => Ok(ParamValue::String(text.clone())),
        (ParamKind::List, Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(format!("{other} in a list is not a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ParamValue::List),
        _ => Err(wrong()),
    }
}

fn kind_phrase(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Date => "a date (YYYY-MM-DD)",
        ParamKind::Int => "a whole number",
        ParamKind::Float => "a number",
        ParamKind::String => "a string",
        ParamKind::List => "a list of strings",
    }
}

/// A raw `--param` value as a parameter value of `kind`. Lists are comma-separated, with
/// spaces around elements ignored; an empty text is an empty list.
fn parse_value(kind: ParamKind, text: &str) -> Result<ParamValue, String> {
    let wrong = || format!("`{text}` is not {}", kind_phrase(kind));
    match kind {
        ParamKind::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map(ParamValue::Date)
            .map_err(|_| wrong()),
        ParamKind::Int => text
            .trim()
            .parse()
            .map(ParamValue::Int)
            .map_err(|_| wrong()),
        ParamKind::Float => match text.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(ParamValue::Float(number)),
            _ => Err(wrong()),
        },
        // Strings are taken exactly as given: they are bound as values, never spliced into SQL.
        ParamKind::String => Ok(ParamValue::String(text.to_string())),
        ParamKind::List => {
            if text.trim().is_empty() {
                return Ok(ParamValue::List(Vec::new()));
            }
            let items: Vec<String> = text
                .split(',')
                .map(|item| item.trim().to_string())
                .collect();
            if items.iter().any(String::is_empty) {
                return Err(format!("`{text}` has an empty element"));
            }
            Ok(ParamValue::List(items))
        }
    }
}

/// Check a value against `allowed` (empty means anything goes).
fn check_allowed(value: &ParamValue, allowed: &[ParamValue]) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let choices = || {
        allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match value {
        ParamValue::List(items) => {
            for item in items {
                if !allowed.contains(&ParamValue::String(item.clone())) {
                    return Err(format!("`{item}` is not allowed (allowed: {})", choices()));
                }
            }
            Ok(())
        }
        other if allowed.contains(other) => Ok(()),
        other => Err(format!("`{other}` is not allowed (allowed: {})", choices())),
    }
}

/// Every report in a folder: each `*.sql` file (not in subfolders) that has a header, sorted by
/// name. Two files with one report name are an error naming both.
pub(crate) fn load_reports(folder: &Path) -> Result<Vec<ReportDefinition>, ReportError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(io_error(folder))? {
        let path = entry.map_err(io_error(folder))?.path();
        if path.extension().is_some_and(|extension| extension == "sql") && path.is_file() {
            files.push(path);
        }
    }
    // Sorted so that which of two duplicates is named "first" does not depend on the file system.
    files.sort();

    let mut reports: Vec<ReportDefinition> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let Some(report) = parse_report(&path, &text)? else {
            continue;
        };
        if let Some(existing) = reports.iter().find(|existing| existing.name == report.name) {
            return Err(ReportError::DuplicateName {
                name: report.name,
                first: existing.path.clone(),
                second: path,
            });
        }
        reports.push(report);
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(reports)
}

/// The report called `name`, or an error listing the known ones.
pub(crate) fn find_report<'a>(
    reports: &'a [ReportDefinition],
    name: &str,
) -> Result<&'a ReportDefinition, ReportError> {
    reports
        .iter()
        .find(|report| report.name == name)
        .ok_or_else(|| ReportError::UnknownReport {
            name: name.to_string(),
            known: reports.iter().map(|report| report.name.clone()).collect(),
        })
}

// ---------------------------------------------------------------------------------------------
// Binding and output templates
// ---------------------------------------------------------------------------------------------

impl ReportDefinition {
    /// Resolve every parameter's value, in declaration order. `given` are `--param k=v` pairs
    /// (raw text; lists comma-separated); defaults fill the rest. Unknown names, a name given
    /// twice, missing required params, unparsable values and values not in `allowed` are errors
    /// naming the report and the param.
    pub(crate) fn bind(
        &self,
        given: &[(String, String)],
    ) -> Result<Vec<(String, ParamValue)>, ReportError> {
        let param_error = |param: &str, message: String| ReportError::Param {
            report: self.name.clone(),
            param: param.to_string(),
            message,
        };
        for (index, (name, _)) in given.iter().enumerate() {
            if !self.params.iter().any(|param| &param.name == name) {
                let known: Vec<&str> = self
                    .params
                    .iter()
                    .map(|param| param.name.as_str())
                    .collect();
                let known = if known.is_empty() {
                    "the report takes no params".to_string()
                } else {
                    format!("known params: {}", known.join(", "))
                };
                return Err(param_error(name, format!("unknown param ({known})")));
            }
            if given[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(param_error(name, "given more than once".to_string()));
            }
        }

        let mut values = Vec::with_capacity(self.params.len());
        for param in &self.params {
            let value = match given.iter().find(|(name, _)| name == &param.name) {
                Some((_, raw)) => {
                    let value = parse_value(param.kind, raw)
                        .map_err(|message| param_error(&param.name, message))?;
                    check_allowed(&value, &param.allowed)
                        .map_err(|message| param_error(&param.name, message))?;
                    value
                }
                None => param.default.clone().ok_or_else(|| {
                    param_error(
                        &param.name,
                        format!(
                            "required (no default): give --param {}=<{}>",
                            param.name, param.kind
                        ),
                    )
                })?,
            };
            values.push((param.name.clone(), value));
        }
        Ok(values)
    }

    /// Render the output template. Placeholders: `{name}`, any param (`{month}` →
    /// `2024-01-01`, lists joined with `-`), `{scheduled_date}` (the caller passes the scheduled
    /// time's date in the schedule's zone, or the run's date) and `{run_id}`; `{{` and `}}` are
    /// literal braces. Values are made safe as path pieces: `/`, `\` and control characters
    /// become `_`, and so does `..`, so a value can never climb out of the template's folder.
    pub(crate) fn render_output(
        &self,
        values: &[(String, ParamValue)],
        scheduled_date: NaiveDate,
        run_id: &str,
    ) -> Result<String, ReportError> {
        let template_error = |message: String| ReportError::Template {
            report: self.name.clone(),
            message,
        };
        let template = self
            .output
            .as_deref()
            .ok_or_else(|| template_error("the report header has no `output`".to_string()))?;
        let value_of = |placeholder: &str| -> Result<String, ReportError> {
            match placeholder {
                "name" => Ok(self.name.clone()),
                "scheduled_date" => Ok(scheduled_date.format("%Y-%m-%d").to_string()),
                "run_id" => Ok(run_id.to_string()),
                param => match values.iter().find(|(name, _)| name == param) {
                    Some((_, ParamValue::List(items))) => Ok(items.join("-")),
                    Some((_, value)) => Ok(value.to_string()),
                    None if self.params.iter().any(|spec| spec.name == param) => Err(
                        template_error(format!("param `{param}` has no value to put in the path")),
                    ),
                    None => Err(template_error(format!(
                        "unknown placeholder `{{{param}}}` (known: {})",
                        placeholder_names(&self.params).join(", ")
                    ))),
                },
            }
        };
        let mut rendered = String::with_capacity(template.len() + 32);
        for piece in split_template(template).map_err(template_error)? {
            match piece {
                TemplatePiece::Text(text) => rendered.push_str(&text),
                TemplatePiece::Placeholder(name) => {
                    rendered.push_str(&sanitise_path_piece(&value_of(&name)?))
                }
            }
        }
        Ok(rendered)
    }

    /// The format to write: the header's (or the output extension's), else CSV.
    pub(crate) fn effective_format(&self) -> ReportFormat {
        self.format.unwrap_or(ReportFormat::Csv)
    }

    /// The scheduler's job for this report, if it has a schedule: its cron in its zone, its
    /// retries (with the default backoff) and its timeout. Building the job schedules nothing.
    pub(crate) fn job(
        &self,
    ) -> Result<Option<crate::schedule::Job>, crate::schedule::ScheduleError> {
        let Some(spec) = &self.schedule else {
            return Ok(None);
        };
        Ok(Some(crate::schedule::Job {
            name: self.name.clone(),
            schedule: CronSchedule::parse(&spec.cron, &spec.timezone)?,
            retry: crate::schedule::RetryPolicy {
                retries: self.retries,
                ..crate::schedule::RetryPolicy::default()
            },
            timeout: self.timeout,
        }))
    }
}

enum TemplatePiece {
    Text(String),
    Placeholder(String),
}

/// Split a template into literal text and `{placeholder}`s.
fn split_template(template: &str) -> Result<Vec<TemplatePiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => name.push(ch),
                        None => return Err(format!("`{{{name}` is never closed with `}}`")),
                    }
                }
                if name.is_empty() {
                    return Err("`{}` names no placeholder".to_string());
                }
                pieces.push(TemplatePiece::Text(std::mem::take(&mut text)));
                pieces.push(TemplatePiece::Placeholder(name));
            }
            '}' => return Err("a `}` without `{` (write `}}` for a literal brace)".to_string()),
            ch => text.push(ch),
        }
    }
    pieces.push(TemplatePiece::Text(text));
    Ok(pieces)
}

fn template_placeholders(template: &str) -> Result<Vec<String>, String> {
    Ok(split_template(template)?
        .into_iter()
        .filter_map(|piece| match piece {
            TemplatePiece::Placeholder(name) => Some(name),
            TemplatePiece::Text(_) => None,
        })
        .collect())
}

/// Make a value safe to put inside one path component.
fn sanitise_path_piece(value: &str) -> String {
    let mut piece: String = value
        .chars()
        .map(|ch| {
            if ch == '/' || ch == '\\' || ch.is_control() {
                '_'
            } else {
                ch
            }
        })
        .collect();
    while piece.contains("..") {
        piece = piece.replace("..", "_");
    }
    if piece.is_empty() {
        piece.push('_');
    }
    piece
}

// ---------------------------------------------------------------------------------------------
// Run history
// ---------------------------------------------------------------------------------------------

/// The state of one run in the history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Left `running` by a process that died (crash, kill, shutdown after the grace period).
    Incomplete,
    /// Not run: overlap with a previous run, or a missed firing under the skip policy.
    Skipped,
}

impl RunStatus {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "running" => Ok(RunStatus::Running),
            "succeeded" => Ok(RunStatus::Succeeded),
            "failed" => Ok(RunStatus::Failed),
            "incomplete" => Ok(RunStatus::Incomplete),
            "skipped" => Ok(RunStatus::Skipped),
            other => Err(format!("unknown run status `{other}`")),
        }
    }
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRecord {
    pub(crate) id: i64,
    pub(crate) report: String,
    /// `None` for a run started by hand.
    pub(crate) scheduled_for: Option<DateTime<Utc>>,
    pub(crate) started: DateTime<Utc>,
    pub(crate) finished: Option<DateTime<Utc>>,
    /// 1 for the first try, 2 for the first retry, ...; 0 for a skipped firing.
    pub(crate) attempt: u32,
    pub(crate) status: RunStatus,
    pub(crate) rows: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) output: Option<String>,
    /// The failure, or the reason for a skip.
    pub(crate) error: Option<String>,
    /// The process that ran it (to tell an abandoned `running` row from a live one).
    pub(crate) pid: u32,
}

/// The run history: a SQLite file in WAL mode, so `spillway report history` can read while a
/// daemon writes. The connection sits behind a mutex so one `History` can be shared by the
/// scheduler's tasks; each call is a single short statement.
pub(crate) struct History {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// The schema version this code writes (`PRAGMA user_version`).
const HISTORY_SCHEMA_VERSION: i64 = 1;

const HISTORY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    report        TEXT    NOT NULL,
    scheduled_for TEXT,
    started       TEXT    NOT NULL,
    finished      TEXT,
    attempt       INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    rows          INTEGER,
    bytes         INTEGER,
    output        TEXT,
    error         TEXT,
    pid           INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_report ON runs (report, scheduled_for);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
";

const RUN_COLUMNS: &str =
    "id, report, scheduled_for, started, finished, attempt, status, rows, bytes, output, error, pid";

/// Times are stored as fixed-width UTC text, so they read well in `sqlite3` and sort correctly
/// as text (`MAX(scheduled_for)`).
fn time_to_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn time_from_text(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.fZ")
        .ok()
        .map(|naive| naive.and_utc())
}

impl History {
    /// Open (creating if needed) the history at `path`, with its folder and schema.
    pub(crate) fn open(path: &Path) -> Result<History, ReportError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|source| ReportError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let failed = |error: rusqlite::Error| ReportError::History {
            path: path.to_path_buf(),
            message: error.to_string(),
        };
        let connection = Connection::open(path).map_err(failed)?;
        // Another process (a daemon, `report history`) may hold a write lock for a moment.
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(failed)?;
        // `journal_mode` answers with a row, so it is read rather than executed.
        let _mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(failed)?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed)?;
        if version > HISTORY_SCHEMA_VERSION {
            return Err(ReportError::History {
                path: path.to_path_buf(),
                message: format!(
                    "written by a newer spillway (schema {version}, this one knows {HISTORY_SCHEMA_VERSION})"
                ),
            });
        }
        connection.execute_batch(HISTORY_SCHEMA).map_err(failed)?;
        connection
            .pragma_update(None, "user_version", HISTORY_SCHEMA_VERSION)
            .map_err(failed)?;
        Ok(History {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    /// The file this history lives in.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: impl fmt::Display) -> ReportError {
        ReportError::History {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection itself intact: keep using it.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record the start of a run (status `running`, this process's pid); returns its id.
    pub(crate) fn start(
        &self,
        report: &str,
        scheduled_for: Option<DateTime<Utc>>,
        attempt: u32,
    ) -> Result<i64, ReportError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO runs (report, scheduled_for, started, attempt, status, pid)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![
                    report,
                    scheduled_for.map(time_to_text),
                    time_to_text(Utc::now()),
                    attempt,
                    std::process::id(),
                ],
            )
            .map_err(|error| self.error(error))?;
        Ok(connection.last_insert_rowid())
    }

    /// Mark a run succeeded with what it wrote.
    pub(crate) fn succeed(
        &self,
        id: i64,
        rows: u64,
        bytes: u64,
        output: &str,
    ) -> Result<(), ReportError> {
        let rows = i64::try_from(rows)
            .map_err(|_| self.error(format!("run {id}: row count too large")))?;
        let bytes = i64::try_from(bytes)
            .map_err(|_| self.error(format!("run {id}: byte count too large")))?;
        self.finish(
            id,
            "UPDATE runs SET status = 'succeeded', finished = ?2, rows = ?3, bytes = ?4, output = ?5
             WHERE id = ?1",
            params![id, time_to_text(Utc::now()), rows, bytes, output],
        )
    }

    /// Mark a run failed.
    pub(crate) fn fail(&self, id: i64, error: &str) -> Result<(), ReportError> {
        self.finish(
            id,
            "UPDATE runs SET status = 'failed', finished = ?2, error = ?3 WHERE id = ?1",
            params![id, time_to_text(Utc::now()), error],
        )
    }

    fn finish(&self, id: i64, sql: &str, values: impl rusqlite::Params) -> Result<(), ReportError> {
        let changed = self
            .connection()
            .execute(sql, values)
            .map_err(|error| self.error(error))?;
        if changed == 0 {
            return Err(self.error(format!("no run with id {id}")));
        }
        Ok(())
    }

    /// Record a firing that was not run, with the reason.
    pub(crate) fn skip(
        &self,
        report: &str,
        scheduled_for: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), ReportError> {
        let now = time_to_text(Utc::now());
        self.connection()
            .execute(
                "INSERT INTO runs (report, scheduled_for, started, finished, attempt, status, error, pid)
                 VALUES (?1, ?2, ?3, ?3, 0, 'skipped', ?4, ?5)",
                params![
                    report,
                    time_to_text(scheduled_for),
                    now,
                    reason,
                    std::process::id()
                ],
            )
            .map_err(|error| self.error(error))?;
        Ok(())
    }

    /// Runs left `running` by a process that no longer exists become `incomplete`; returns how
    /// many. Liveness is read from `/proc/<pid>`: where there is no `/proc`, nothing is changed
    /// (a live run must never be marked incomplete). A recycled pid keeps its row `running`
    /// until that process ends too.
    pub(crate) fn recover(&self) -> Result<usize, ReportError> {
        if !Path::new("/proc/self").exists() {
            return Ok(0);
        }
        let connection = self.connection();
        let running: Vec<(i64, u32)> = {
            let mut statement = connection
                .prepare("SELECT id, pid FROM runs WHERE status = 'running'")
                .map_err(|error| self.error(error))?;
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|error| self.error(error))?;
            rows.collect::<Result<_, _>>()
                .map_err(|error| self.error(error))?
        };
        let mut recovered = 0;
        for (id, pid) in running {
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            recovered += connection
                .execute(
                    "UPDATE runs SET status = 'incomplete', finished = ?2, error = ?3
                     WHERE id = ?1 AND status = 'running'",
                    params![
                        id,
                        time_to_text(Utc::now()),
                        format!("process {pid} ended before the run finished")
                    ],
                )
                .map_err(|error| self.error(error))?;
        }
        Ok(recovered)
    }

    /// The newest `limit` runs (of one report, or of all), newest first.
    pub(crate) fn list(
        &self,
        report: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, ReportError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let connection = self.connection();
        let mut statement = connection
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR report = ?1)
                 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(|error| self.error(error))?;
        let rows = statement
            .query_map(params![report, limit], RawRun::from_row)
            .map_err(|error| self.error(error))?;
        let mut records = Vec::new();
        for row in rows {
            let raw = row.map_err(|error| self.error(error))?;
            records.push(raw.into_record().map_err(|message| self.error(message))?);
        }
        Ok(records)
    }

    /// The latest `scheduled_for` of any run of `report` (whatever its status), for catch-up.
    pub(crate) fn last_scheduled(
        &self,
        report: &str,
    ) -> Result<Option<DateTime<Utc>>, ReportError> {
        let latest: Option<String> = self
            .connection()
            .query_row(
                "SELECT MAX(scheduled_for) FROM runs WHERE report = ?1",
                params![report],
                |row| row.get(0),
            )
            .optional()
            .map_err(|error| self.error(error))?
            .flatten();
        latest
            .map(|text| {
                time_from_text(&text)
                    .ok_or_else(|| self.error(format!("unreadable time `{text}` in scheduled_for")))
            })
            .transpose()
    }
}

/// A history row as stored, before its text columns are checked.
struct RawRun {
    id: i64,
    report: String,
    scheduled_for: Option<String>,
    started: String,
    finished: Option<String>,
    attempt: u32,
    status: String,
    rows: Option<i64>,
    bytes: Option<i64>,
    output: Option<String>,
    error: Option<String>,
    pid: u32,
}

impl RawRun {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            id: row.get(0)?,
            report: row.get(1)?,
            scheduled_for: row.get(2)?,
            started: row.get(3)?,
            finished: row.get(4)?,
            attempt: row.get(5)?,
            status: row.get(6)?,
            rows: row.get(7)?,
            bytes: row.get(8)?,
            output: row.get(9)?,
            error: row.get(10)?,
            pid: row.get(11)?,
        })
    }

    fn into_record(self) -> Result<RunRecord, String> {
        let id = self.id;
        let time = |text: &str| {
            time_from_text(text).ok_or_else(|| format!("run {id}: unreadable time `{text}`"))
        };
        let count = |value: Option<i64>| value.map(|value| u64::try_from(value).unwrap_or(0));
        Ok(RunRecord {
            id,
            scheduled_for: self.scheduled_for.as_deref().map(time).transpose()?,
            started: time(&self.started)?,
            finished: self.finished.as_deref().map(time).transpose()?,
            report: self.report,
            attempt: self.attempt,
            status: self
                .status
                .parse()
                .map_err(|message| format!("run {id}: {message}"))?,
            rows: count(self.rows),
            bytes: count(self.bytes),
            output: self.output,
            error: self.error,
            pid: self.pid,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon lock
// ---------------------------------------------------------------------------------------------

/// An exclusive lock on `<history>.lock`, so that two daemons never fire the same reports into
/// one history. Held until dropped (the OS also drops it when the process dies, so a crash
/// never leaves a stale lock behind).
#[derive(Debug)]
pub(crate) struct DaemonLock {
    path: PathBuf,
    _file: File,
}

impl DaemonLock {
    /// The lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Take the daemon lock beside `history_path`; fails at once, naming the holder's pid, when
/// another daemon has it.
pub(crate) fn acquire_daemon_lock(history_path: &Path) -> Result<DaemonLock, ReportError> {
    use std::io::{Read, Seek, Write};
    let mut lock_name = history_path.as_os_str().to_owned();
    lock_name.push(".lock");
    let path = PathBuf::from(lock_name);
    let io_error = |source| ReportError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| ReportError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // Not truncated on open: the current holder's pid must survive for the error message.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(ReportError::Locked {
                path: path.clone(),
                holder: holder.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io_error(source)),
    }
    // The pid is only a hint for the message above; failing to write it is not fatal.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(DaemonLock { path, _file: file })
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

/// The manifest published last, beside a report's output: what was written, from which values,
/// for which scheduled time, by which spillway. A pretty JSON object ending in a newline.
pub(crate) fn manifest_json(
    report: &str,
    rows: u64,
    bytes: u64,
    sha256_hex: &str,
    values: &[(String, ParamValue)],
    scheduled_for: Option<DateTime<Utc>>,
    output: &str,
) -> String {
    let params: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(name, value)| (name.clone(), value.to_json()))
        .collect();
    let manifest = serde_json::json!({
        "report": report,
        "output": output,
        "rows": rows,
        "bytes": bytes,
        "sha256": sha256_hex,
        "params": params,
        "scheduled_for": scheduled_for
            .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "spillway_version": env!("CARGO_PKG_VERSION"),
    });
    // Serialising a `Value` built from strings and numbers cannot fail.
    let mut text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use datafusion::arrow::array::Array;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FULL: &str = r#"

/* report
name = "cost_by_diagnosis_monthly"
description = "Mean and standard deviation of total cost by diagnosis code, per month"
output = "reports/{name}/{month}.csv"        # template
format = "csv"
schedule = { cron = "0 6 1 * *", timezone = "America/New_York" }
retries = 2
timeout = "30m"
[params.month]
type = "date"
default = "2024-01-01"
description = "First day of the month"
[params.states]
type = "list"
default = ["CA", "NY"]
allowed = ["CA", "NY", "TX"]
[params.min_cost]
type = "float"
default = 10
[params.top]
type = "int"
[params.label]
type = "string"
default = "all"
*/
SELECT diagnosis_code FROM claims
WHERE fill_date >= $month AND array_has($states, member_state)
"#;

    fn full() -> ReportDefinition {
        parse_report(Path::new("queries/cost.sql"), FULL)
            .expect("the full header parses")
            .expect("the full header is a report")
    }

    #[test]
    fn parses_every_header_field() {
        let report = full();
        assert_eq!(report.name, "cost_by_diagnosis_monthly");
        assert_eq!(
            report.description.as_deref(),
            Some("Mean and standard deviation of total cost by diagnosis code, per month")
        );
        assert_eq!(report.path, PathBuf::from("queries/cost.sql"));
        assert_eq!(report.output.as_deref(), Some("reports/{name}/{month}.csv"));
        assert_eq!(report.format, Some(ReportFormat::Csv));
        assert_eq!(
            report.schedule,
            Some(ScheduleSpec {
                cron: "0 6 1 * *".into(),
                timezone: "America/New_York".into()
            })
        );
        assert_eq!(report.retries, 2);
        assert_eq!(report.timeout, Some(Duration::from_secs(30 * 60)));
        // Two blank lines, the `/* report` line, 23 header lines and `*/`: SQL starts on line 28.
        assert_eq!(report.sql_line, 28);
        assert_eq!(
            report.sql,
            "SELECT diagnosis_code FROM claims\nWHERE fill_date >= $month AND array_has($states, member_state)\n"
        );
        assert_eq!(
            FULL.lines().nth(report.sql_line - 1),
            Some("SELECT diagnosis_code FROM claims")
        );

        let names: Vec<&str> = report.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["month", "states", "min_cost", "top", "label"]);
        assert_eq!(
            report.params[0],
            ParamSpec {
                name: "month".into(),
                kind: ParamKind::Date,
                default: Some(ParamValue::Date(date(2024, 1, 1))),
                allowed: vec![],
                description: Some("First day of the month".into()),
            }
        );
        assert_eq!(report.params[1].kind, ParamKind::List);
        assert_eq!(
            report.params[1].default,
            Some(ParamValue::List(vec!["CA".into(), "NY".into()]))
        );
        assert_eq!(
            report.params[1].allowed,
            vec![
                ParamValue::String("CA".into()),
                ParamValue::String("NY".into()),
                ParamValue::String("TX".into())
            ]
        );
        assert_eq!(report.params[2].default, Some(ParamValue::Float(10.0)));
        assert_eq!(report.params[3].kind, ParamKind::Int);
        assert_eq!(report.params[3].default, None);
        assert_eq!(
            report.params[4].default,
            Some(ParamValue::String("all".into()))
        );
    }

    #[test]
    fn a_scheduled_report_becomes_a_job() {
        let job = full()
            .job()
            .unwrap()
            .expect("the full report has a schedule");
        assert_eq!(job.name, "cost_by_diagnosis_monthly");
        assert_eq!(job.retry.retries, 2);
        assert_eq!(job.timeout, Some(Duration::from_secs(1800)));
        // `0 6 1 * *` in New York: 06:00 EST on 2024-02-01 is 11:00 UTC.
        let after = Utc.with_ymd_and_hms(2024, 1, 15, 0, 0, 0).single().unwrap();
        let next = Utc.with_ymd_and_hms(2024, 2, 1, 11, 0, 0).single().unwrap();
        assert_eq!(job.schedule.next_after(after), Some(next));
        let text = "/* report\nname = \"p\"\n*/\nSELECT 1";
        let plain = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert!(plain.job().unwrap().is_none());
    }

    #[test]
    fn minimal_header_defaults() {
        let text = "/* report\nname = \"plain\"\n*/\nSELECT 1";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert_eq!(report.retries, 0);
        assert_eq!(report.timeout, None);
        assert_eq!(report.schedule, None);
        assert_eq!(report.format, None);
        assert_eq!(report.effective_format(), ReportFormat::Csv);
        assert!(report.params.is_empty());
        assert_eq!(report.sql, "SELECT 1");
        assert_eq!(report.sql_line, 4);
    }

    #[test]
    fn format_comes_from_the_output_extension() {
        let text = "/* report\nname = \"p\"\noutput = \"out/{name}.parquet\"\n*/\nSELECT 1";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert_eq!(report.format, Some(ReportFormat::Parquet));

        let text =
            "/* report\nname = \"p\"\noutput = \"out/{name}.csv\"\nformat = \"json\"\n*/\nSELECT 1";
        let error = parse_report(Path::new("a.sql"), text).unwrap_err();
        assert!(
            matches!(error, ReportError::Header { line: 4, .. }),
            "{error}"
        );
    }

    #[test]
    fn schedule_timezone_defaults_to_utc() {
        let text = "/* report\nname = \"p\"\nschedule = { cron = \"@daily\" }\n*/\nSELECT 1";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert_eq!(
            report.schedule,
            Some(ScheduleSpec {
                cron: "@daily".into(),
                timezone: "UTC".into()
            })
        );
    }

    #[test]
    fn files_without_a_header_are_plain_queries() {
        for text in [
            "SELECT 1",
            "",
            "-- report\nSELECT 1",
            "/* just a comment */ SELECT 1",
            "/* reports are nice */ SELECT 1",
            "SELECT 1 /* report\nname = \"x\" */",
        ] {
            assert_eq!(
                parse_report(Path::new("q.sql"), text).unwrap(),
                None,
                "{text:?}"
            );
        }
    }

    fn header_error(text: &str) -> (usize, String) {
        match parse_report(Path::new("queries/bad.sql"), text) {
            Err(ReportError::Header {
                path,
                line,
                message,
            }) => {
                assert_eq!(path, PathBuf::from("queries/bad.sql"));
                (line, message)
            }
            other => panic!("expected a header error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_its_line_in_the_file() {
        // Line 1 is blank, the header opens on line 2, `colour` is on line 5.
        let text =
            "\n/* report\nname = \"x\"\ndescription = \"d\"\ncolour = \"blue\"\n*/\nSELECT 1";
        let (line, message) = header_error(text);
        assert_eq!(line, 5, "{message}");
        assert!(message.contains("colour"), "{message}");

        let error = parse_report(Path::new("queries/bad.sql"), text).unwrap_err();
        assert!(
            error.to_string().starts_with("queries/bad.sql:5: "),
            "{error}"
        );
    }

    #[test]
    fn unknown_param_key_names_its_line() {
        let text = "/* report\nname = \"x\"\n[params.a]\ntype = \"int\"\nmax = 3\n*/\nSELECT 1";
        let (line, message) = header_error(text);
        assert_eq!(line, 5, "{message}");
        assert!(message.contains("max"), "{message}");
    }

    #[test]
    fn bad_param_type_is_an_error_at_its_line() {
        let text = "/* report\nname = \"x\"\n[params.when]\ntype = \"timestamp\"\n*/\nSELECT 1";
        let (line, message) = header_error(text);
        assert_eq!(line, 4);
        assert!(
            message.contains("when") && message.contains("timestamp"),
            "{message}"
        );
    }

    #[test]
    fn bad_values_in_the_header_are_errors_at_their_lines() {
        let cases = [
            // (header body, expected line counted from the file start, text in message)
            (
                "[params.d]\ntype = \"date\"\ndefault = \"2024-13-01\"",
                5,
                "2024-13-01",
            ),
            (
                "[params.n]\ntype = \"int\"\ndefault = \"ten\"",
                5,
                "whole number",
            ),
            (
                "[params.s]\ntype = \"list\"\ndefault = [\"CA\", \"ZZ\"]\nallowed = [\"CA\"]",
                5,
                "ZZ",
            ),
            ("timeout = \"soon\"", 3, "soon"),
            ("retries = -1", 3, "retries"),
            ("schedule = { cron = \"0 25 * * *\" }", 3, "0 25 * * *"),
            (
                "schedule = { cron = \"0 6 * * *\", timezone = \"Mars/Olympus\" }",
                3,
                "Mars/Olympus",
            ),
            ("output = \"{nope}.csv\"", 3, "{nope}"),
            ("format = \"xlsx\"", 3, "xlsx"),
            ("[params.name]\ntype = \"string\"", 3, "reserved"),
        ];
        for (body, expected_line, needle) in cases {
            let text = format!("/* report\nname = \"x\"\n{body}\n*/\nSELECT 1");
            let (line, message) = header_error(&text);
            assert_eq!(line, expected_line, "{body}: {message}");
            assert!(message.contains(needle), "{body}: {message}");
        }
    }

    #[test]
    fn toml_syntax_error_and_unclosed_header() {
        let (line, _) = header_error("/* report\nname = \"x\"\nretries = = 2\n*/\nSELECT 1");
        assert_eq!(line, 3);
        let (line, message) = header_error("\n\n/* report\nname = \"x\"\nSELECT 1");
        assert_eq!(line, 3);
        assert!(message.contains("never closed"), "{message}");
        let (line, message) = header_error("/* report\nname = \"bad/name\"\n*/\nSELECT 1");
        assert_eq!(line, 2);
        assert!(message.contains("bad/name"), "{message}");
    }

    #[test]
    fn load_reports_sorts_by_name_skips_plain_queries_and_rejects_duplicates() {
        let folder = tempfile::tempdir().unwrap();
        let write =
            |file: &str, text: &str| std::fs::write(folder.path().join(file), text).unwrap();
        write("1.sql", "/* report\nname = \"zeta\"\n*/\nSELECT 1");
        write("2.sql", "/* report\nname = \"alpha\"\n*/\nSELECT 2");
        write("plain.sql", "SELECT 3");
        write("notes.txt", "/* report\nname = \"ignored\"\n*/");
        let reports = load_reports(folder.path()).unwrap();
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(find_report(&reports, "zeta").unwrap().sql, "SELECT 1");
        match find_report(&reports, "beta") {
            Err(ReportError::UnknownReport { name, known }) => {
                assert_eq!(name, "beta");
                assert_eq!(known, ["alpha", "zeta"]);
            }
            other => panic!("{other:?}"),
        }

        write("3.sql", "/* report\nname = \"alpha\"\n*/\nSELECT 4");
        match load_reports(folder.path()) {
            Err(ReportError::DuplicateName {
                name,
                first,
                second,
            }) => {
                assert_eq!(name, "alpha");
                assert_eq!(first, folder.path().join("2.sql"));
                assert_eq!(second, folder.path().join("3.sql"));
            }
            other => panic!("expected a duplicate-name error, got {other:?}"),
        }

        let missing = folder.path().join("nope");
        let error = load_reports(&missing).unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
    }

    #[test]
    fn bind_uses_defaults_and_overrides() {
        let report = full();
        let values = report.bind(&given(&[("top", "5")])).unwrap();
        assert_eq!(
            values,
            vec![
                ("month".to_string(), ParamValue::Date(date(2024, 1, 1))),
                (
                    "states".to_string(),
                    ParamValue::List(vec!["CA".into(), "NY".into()])
                ),
                ("min_cost".to_string(), ParamValue::Float(10.0)),
                ("top".to_string(), ParamValue::Int(5)),
                ("label".to_string(), ParamValue::String("all".into())),
            ]
        );

        let values = report
            .bind(&given(&[
                ("top", "-3"),
                ("month", "2024-02-01"),
                ("states", " TX , CA"),
                ("min_cost", "2.5"),
            ]))
            .unwrap();
        assert_eq!(values[0].1, ParamValue::Date(date(2024, 2, 1)));
        assert_eq!(
            values[1].1,
            ParamValue::List(vec!["TX".into(), "CA".into()])
        );
        assert_eq!(values[2].1, ParamValue::Float(2.5));
        assert_eq!(values[3].1, ParamValue::Int(-3));

        let values = report
            .bind(&given(&[("top", "1"), ("states", "")]))
            .unwrap();
        assert_eq!(values[1].1, ParamValue::List(vec![]));
    }

    fn param_error(report: &ReportDefinition, pairs: &[(&str, &str)]) -> (String, String) {
        match report.bind(&given(pairs)) {
            Err(ReportError::Param {
                report: name,
                param,
                message,
            }) => {
                assert_eq!(name, report.name);
                (param, message)
            }
            other => panic!("expected a param error, got {other:?}"),
        }
    }

    #[test]
    fn bind_errors_name_the_param() {
        let report = full();
        let (param, message) = param_error(&report, &[]);
        assert_eq!(param, "top");
        assert!(message.contains("required"), "{message}");

        let (param, message) = param_error(&report, &[("top", "1"), ("colour", "red")]);
        assert_eq!(param, "colour");
        assert!(
            message.contains("unknown") && message.contains("month"),
            "{message}"
        );

        let (param, message) = param_error(&report, &[("top", "1"), ("states", "CA,FL")]);
        assert_eq!(param, "states");
        assert!(message.contains("FL"), "{message}");

        let (param, message) = param_error(&report, &[("top", "1"), ("month", "2024-02-30")]);
        assert_eq!(param, "month");
        assert!(message.contains("2024-02-30"), "{message}");

        let (param, _) = param_error(&report, &[("top", "1"), ("month", "01/02/2024")]);
        assert_eq!(param, "month");
        let (param, _) = param_error(&report, &[("top", "1.5")]);
        assert_eq!(param, "top");
        let (param, _) = param_error(&report, &[("top", "1"), ("min_cost", "NaN")]);
        assert_eq!(param, "min_cost");
        let (param, _) = param_error(&report, &[("top", "1"), ("states", "CA,,NY")]);
        assert_eq!(param, "states");
        let (param, message) = param_error(&report, &[("top", "1"), ("top", "2")]);
        assert_eq!(param, "top");
        assert!(message.contains("more than once"), "{message}");

        let error = report.bind(&given(&[])).unwrap_err();
        assert!(
            error.to_string().contains("cost_by_diagnosis_monthly"),
            "{error}"
        );
    }

    #[test]
    fn allowed_applies_to_scalars() {
        let text = "/* report\nname = \"x\"\n[params.n]\ntype = \"int\"\ndefault = 1\nallowed = [1, 2]\n*/\nSELECT $n";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert_eq!(
            report.bind(&given(&[("n", "2")])).unwrap()[0].1,
            ParamValue::Int(2)
        );
        let (param, message) = param_error(&report, &[("n", "3")]);
        assert_eq!(param, "n");
        assert!(message.contains("allowed: 1, 2"), "{message}");
    }

    #[test]
    fn hostile_string_stays_a_value_and_the_sql_is_untouched() {
        let text = "/* report\nname = \"x\"\n[params.who]\ntype = \"string\"\n*/\nSELECT * FROM t WHERE name = $who\n";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        let sql_before = report.sql.clone();
        let hostile = "'; DROP TABLE x; --";
        let values = report.bind(&given(&[("who", hostile)])).unwrap();
        assert_eq!(
            values,
            vec![("who".to_string(), ParamValue::String(hostile.to_string()))]
        );
        assert_eq!(
            values[0].1.to_scalar(),
            ScalarValue::Utf8(Some(hostile.to_string()))
        );
        assert_eq!(report.sql, sql_before);
        assert_eq!(report.sql, "SELECT * FROM t WHERE name = $who\n");
    }

    #[test]
    fn scalars_have_the_documented_types() {
        // 2024-01-01 is 19723 days after 1970-01-01: 54 years, 13 of them leap years
        // (1972..=2020), so 54 * 365 + 13 = 19723.
        assert_eq!(
            ParamValue::Date(date(2024, 1, 1)).to_scalar(),
            ScalarValue::Date32(Some(19723))
        );
        assert_eq!(ParamValue::Int(7).to_scalar(), ScalarValue::Int64(Some(7)));
        assert_eq!(
            ParamValue::Float(0.5).to_scalar(),
            ScalarValue::Float64(Some(0.5))
        );
        let list = ParamValue::List(vec!["CA".into(), "NY".into()]).to_scalar();
        assert_eq!(
            list.data_type(),
            DataType::List(std::sync::Arc::new(
                datafusion::arrow::datatypes::Field::new("item", DataType::Utf8, true)
            ))
        );
        match list {
            ScalarValue::List(array) => {
                assert_eq!(array.len(), 1);
                let values = array.value(0);
                let strings = values
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .expect("Utf8 elements");
                assert_eq!(strings.iter().collect::<Vec<_>>(), [Some("CA"), Some("NY")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn display_forms() {
        assert_eq!(ParamValue::Date(date(2024, 3, 9)).to_string(), "2024-03-09");
        assert_eq!(ParamValue::Int(-4).to_string(), "-4");
        assert_eq!(ParamValue::Float(2.5).to_string(), "2.5");
        assert_eq!(ParamValue::String("a b".into()).to_string(), "a b");
        assert_eq!(
            ParamValue::List(vec!["CA".into(), "NY".into()]).to_string(),
            "CA,NY"
        );
    }

    #[test]
    fn render_output_fills_every_placeholder_and_sanitises() {
        let text = "/* report\nname = \"r\"\noutput = \"out/{name}/{month}/{states}/{label}-{scheduled_date}-{run_id}-{{x}}.csv\"\n[params.month]\ntype = \"date\"\n[params.states]\ntype = \"list\"\n[params.label]\ntype = \"string\"\n*/\nSELECT 1";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        let values = report
            .bind(&given(&[
                ("month", "2024-01-01"),
                ("states", "CA,NY"),
                ("label", "../../etc/passwd"),
            ]))
            .unwrap();
        let rendered = report
            .render_output(&values, date(2024, 2, 1), "run/7")
            .unwrap();
        // `../../etc/passwd`: each `/` becomes `_` (`.._.._etc_passwd`), then each `..` too
        // (`_` `_` `_` `_etc_passwd`).
        assert_eq!(
            rendered,
            "out/r/2024-01-01/CA-NY/____etc_passwd-2024-02-01-run_7-{x}.csv"
        );
        assert!(!rendered.contains(".."));
        assert_eq!(rendered.matches('/').count(), 4);

        // A value made only of dots cannot climb either, nor can an empty one vanish.
        let values = report
            .bind(&given(&[
                ("month", "2024-01-01"),
                ("states", ""),
                ("label", ".."),
            ]))
            .unwrap();
        let rendered = report
            .render_output(&values, date(2024, 2, 1), "1")
            .unwrap();
        assert_eq!(rendered, "out/r/2024-01-01/_/_-2024-02-01-1-{x}.csv");
    }

    #[test]
    fn render_output_errors() {
        let report = full();
        let values = report.bind(&given(&[("top", "1")])).unwrap();
        // A placeholder not in the values: the template is fixed at parse time, so build one.
        let mut broken = report.clone();
        broken.output = Some("{colour}.csv".into());
        match broken.render_output(&values, date(2024, 1, 1), "1") {
            Err(ReportError::Template { report, message }) => {
                assert_eq!(report, "cost_by_diagnosis_monthly");
                assert!(message.contains("{colour}"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        broken.output = Some("{month.csv".into());
        assert!(broken
            .render_output(&values, date(2024, 1, 1), "1")
            .is_err());
        broken.output = None;
        assert!(broken
            .render_output(&values, date(2024, 1, 1), "1")
            .is_err());
        assert_eq!(
            report
                .render_output(&values, date(2024, 1, 1), "1")
                .unwrap(),
            "reports/cost_by_diagnosis_monthly/2024-01-01.csv"
        );
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid test time")
    }

    #[test]
    fn history_records_runs_newest_first() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("state/history.sqlite");
        let history = History::open(&path).unwrap();
        let first = history.start("a", Some(utc(2024, 1, 1, 6, 0)), 1).unwrap();
        history.succeed(first, 10, 2048, "out/a.csv").unwrap();
        let second = history.start("a", Some(utc(2024, 1, 2, 6, 0)), 1).unwrap();
        history.fail(second, "boom").unwrap();
        let third = history.start("b", None, 2).unwrap();
        history
            .skip("a", utc(2024, 1, 3, 6, 0), "previous run still going")
            .unwrap();

        let all = history.list(None, 10).unwrap();
        assert_eq!(all.len(), 4);
        let ids: Vec<i64> = all.iter().map(|r| r.id).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

        let only_a = history.list(Some("a"), 10).unwrap();
        let statuses: Vec<RunStatus> = only_a.iter().map(|r| r.status.clone()).collect();
        assert_eq!(
            statuses,
            [RunStatus::Skipped, RunStatus::Failed, RunStatus::Succeeded]
        );
        let succeeded = &only_a[2];
        assert_eq!(succeeded.id, first);
        assert_eq!(succeeded.scheduled_for, Some(utc(2024, 1, 1, 6, 0)));
        assert_eq!(succeeded.rows, Some(10));
        assert_eq!(succeeded.bytes, Some(2048));
        assert_eq!(succeeded.output.as_deref(), Some("out/a.csv"));
        assert_eq!(succeeded.attempt, 1);
        assert_eq!(succeeded.pid, std::process::id());
        assert!(succeeded.finished.is_some_and(|f| f >= succeeded.started));
        assert_eq!(only_a[1].error.as_deref(), Some("boom"));
        assert_eq!(only_a[0].error.as_deref(), Some("previous run still going"));
        assert_eq!(only_a[0].attempt, 0);

        let limited = history.list(Some("a"), 2).unwrap();
        assert_eq!(limited.len(), 2);
        assert_eq!(limited[0].id, only_a[0].id);

        let running = history.list(Some("b"), 10).unwrap();
        assert_eq!(running[0].id, third);
        assert_eq!(running[0].status, RunStatus::Running);
        assert_eq!(running[0].scheduled_for, None);
        assert_eq!(running[0].finished, None);
        assert_eq!(running[0].attempt, 2);

        assert_eq!(
            history.last_scheduled("a").unwrap(),
            Some(utc(2024, 1, 3, 6, 0))
        );
        assert_eq!(history.last_scheduled("b").unwrap(), None);
        assert_eq!(history.last_scheduled("nobody").unwrap(), None);
        assert!(history.fail(9999, "x").is_err());

        // The file persists: a second handle sees the same rows.
        drop(history);
        let reopened = History::open(&path).unwrap();
        assert_eq!(reopened.list(None, 100).unwrap().len(), 4);
    }

    #[test]
    fn recover_marks_runs_of_dead_processes_incomplete() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("history.sqlite");
        let history = History::open(&path).unwrap();
        let dead = history.start("a", None, 1).unwrap();
        let alive = history.start("a", None, 1).unwrap();
        // Pretend another process, long gone, started `dead` (pids never reach 999999999).
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE runs SET pid = 999999999 WHERE id = ?1", [dead])
            .unwrap();
        if !Path::new("/proc/self").exists() {
            assert_eq!(history.recover().unwrap(), 0);
            return;
        }
        assert_eq!(history.recover().unwrap(), 1);
        let runs = history.list(None, 10).unwrap();
        let status = |id| runs.iter().find(|r| r.id == id).unwrap().status.clone();
        assert_eq!(status(dead), RunStatus::Incomplete);
        assert_eq!(status(alive), RunStatus::Running);
        assert_eq!(history.recover().unwrap(), 0);
    }

    #[test]
    fn daemon_lock_is_exclusive_until_dropped() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("history.sqlite");
        let lock = acquire_daemon_lock(&path).unwrap();
        assert_eq!(lock.path(), folder.path().join("history.sqlite.lock"));
        match acquire_daemon_lock(&path) {
            Err(ReportError::Locked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        let message = acquire_daemon_lock(&path).unwrap_err().to_string();
        assert!(message.contains("another spillway daemon"), "{message}");
        drop(lock);
        let again = acquire_daemon_lock(&path).unwrap();
        drop(again);
    }

    #[test]
    fn manifest_has_every_field_escaped() {
        let values = vec![
            ("month".to_string(), ParamValue::Date(date(2024, 1, 1))),
            (
                "states".to_string(),
                ParamValue::List(vec!["CA".into(), "NY".into()]),
            ),
            ("n".to_string(), ParamValue::Int(3)),
            ("x".to_string(), ParamValue::Float(1.5)),
            (
                "who".to_string(),
                ParamValue::String("a \"quoted\"\nline".into()),
            ),
        ];
        let text = manifest_json(
            "r",
            12,
            345,
            "abc123",
            &values,
            Some(utc(2024, 2, 1, 11, 0)),
            "out/r.csv",
        );
        assert!(text.ends_with('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "report": "r",
                "output": "out/r.csv",
                "rows": 12,
                "bytes": 345,
                "sha256": "abc123",
                "params": {
                    "month": "2024-01-01",
                    "states": ["CA", "NY"],
                    "n": 3,
                    "x": 1.5,
                    "who": "a \"quoted\"\nline",
                },
                "scheduled_for": "2024-02-01T11:00:00Z",
                "spillway_version": env!("CARGO_PKG_VERSION"),
            })
        );
        let manual = manifest_json("r", 0, 0, "", &[], None, "o");
        let parsed: serde_json::Value = serde_json::from_str(&manual).unwrap();
        assert_eq!(parsed["scheduled_for"], serde_json::Value::Null);
    }
}
