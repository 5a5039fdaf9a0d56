//! Saved, parameterised reports: what a report is, and where its parts live.
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
//! This file owns [`ReportDefinition`], loading a folder of reports and the report error type.
//! The parts: [`header`] parses the SQL-comment header (errors name the file and the line,
//! counted from the top of the `.sql` file), [`params`] types parameters and resolves their
//! values, [`template`] renders output paths, [`history`] keeps the SQLite run history and the
//! daemon lock, and [`run`] is the one path a report takes to run: plan, bind, execute, publish,
//! record.
//!
//! Must not: schedule anything (that is `schedule`), or edit the SQL text or splice values into
//! it: a value like `'; DROP TABLE x; --` stays a value, bound as a DataFusion placeholder.

pub(crate) mod alerts;
pub(crate) mod header;
pub(crate) mod history;
pub(crate) mod params;
pub(crate) mod run;
pub(crate) mod template;

pub(crate) use header::parse_report;
pub(crate) use history::{acquire_daemon_lock, History};
pub(crate) use params::{ParamSpec, ParamValue};

use crate::schedule::CronSchedule;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// `encrypt = true`: the Parquet output is encrypted at rest (see `--encrypt`).
    pub(crate) encrypt: bool,
    /// `incremental = false` turns off per-file states (see `incremental`); on by default.
    pub(crate) incremental: bool,
    /// `on_failure`, `on_success`, `late_after`: what the header sets (the rest from
    /// `[reports]`).
    pub(crate) alerts: crate::alert::AlertRules,
}

/// What a report writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    Csv,
    Parquet,
    Json,
    /// An Excel workbook, with an `About` sheet telling the run.
    Xlsx,
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

impl ReportFormat {
    fn parse(text: &str) -> Option<ReportFormat> {
        match text.to_ascii_lowercase().as_str() {
            "csv" => Some(ReportFormat::Csv),
            "parquet" => Some(ReportFormat::Parquet),
            "json" | "ndjson" | "jsonl" => Some(ReportFormat::Json),
            "xlsx" => Some(ReportFormat::Xlsx),
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
            ReportFormat::Xlsx => "xlsx",
        }
    }
}

impl fmt::Display for ReportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
impl ReportDefinition {
    /// The format to write: the header's (or the output extension's), else CSV.
    pub(crate) fn effective_format(&self) -> ReportFormat {
        self.format.unwrap_or(ReportFormat::Csv)
    }

    /// The scheduler's job for this report, if it has a schedule: its cron in its zone and its
    /// retries (with the default backoff). Building the job schedules nothing. The timeout is
    /// not the scheduler's: each run bounds itself ([`run::ReportRun::execute`]).
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
        }))
    }
}

#[cfg(test)]
pub(crate) mod test_fixtures {
    //! Inputs shared by the report modules' tests.
    use super::*;
    use chrono::NaiveDate;

    pub(crate) fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    pub(crate) fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> chrono::DateTime<chrono::Utc> {
        use chrono::TimeZone;
        chrono::Utc
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid test time")
    }

    pub(crate) fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) const FULL: &str = r#"

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

    pub(crate) fn full() -> ReportDefinition {
        parse_report(Path::new("queries/cost.sql"), FULL)
            .expect("the full header parses")
            .expect("the full header is a report")
    }
}

#[cfg(test)]
mod tests {
    use super::test_fixtures::full;
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_scheduled_report_becomes_a_job() {
        let job = full()
            .job()
            .unwrap()
            .expect("the full report has a schedule");
        assert_eq!(job.name, "cost_by_diagnosis_monthly");
        assert_eq!(job.retry.retries, 2);
        // `0 6 1 * *` in New York: 06:00 EST on 2024-02-01 is 11:00 UTC.
        let after = Utc.with_ymd_and_hms(2024, 1, 15, 0, 0, 0).single().unwrap();
        let next = Utc.with_ymd_and_hms(2024, 2, 1, 11, 0, 0).single().unwrap();
        assert_eq!(job.schedule.next_after(after), Some(next));
        let text = "/* report\nname = \"p\"\n*/\nSELECT 1";
        let plain = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert!(plain.job().unwrap().is_none());
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
}
