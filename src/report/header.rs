//! The report header: the `/* report ... */` TOML block at the top of a `.sql` file, parsed
//! into a checked [`ReportDefinition`]. Every error names the file and the line, counted from
//! the top of the file, not of the comment.
//!
//! Must not: read the SQL after the header (it is kept as text for the planner).

use super::params::{check_allowed, value_from_toml, ParamKind, ParamSpec};
use super::template::{placeholder_names, template_placeholders, BUILT_IN_PLACEHOLDERS};
use super::{ReportDefinition, ReportError, ReportFormat, ScheduleSpec};
use crate::alert::AlertRules;
use crate::schedule::CronSchedule;
use crate::units::parse_duration;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use toml::Spanned;

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
    encrypt: Option<bool>,
    incremental: Option<bool>,
    on_failure: Option<Vec<String>>,
    on_success: Option<Vec<String>>,
    late_after: Option<Spanned<String>>,
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
                    format!(
                        "format `{}`: use csv, parquet, json or xlsx",
                        format.get_ref()
                    ),
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

    let late_after = match raw.late_after {
        Some(late) => Some(
            parse_duration(late.get_ref())
                .map_err(|message| at.error(&late, format!("late_after: {message}")))?,
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
        encrypt: raw.encrypt.unwrap_or(false),
        incremental: raw.incremental.unwrap_or(true),
        alerts: AlertRules {
            on_failure: raw.on_failure,
            on_success: raw.on_success,
            late_after,
        },
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::params::ParamValue;
    use crate::report::test_fixtures::{date, full, FULL};
    use std::path::PathBuf;
    use std::time::Duration;

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
            (
                "format = \"xls\"",
                3,
                "format `xls`: use csv, parquet, json or xlsx",
            ),
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
}
