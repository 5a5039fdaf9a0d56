//! THE run path of a report: plan (leading `SET`s, the last statement, declared placeholders
//! only) → bind typed values → execute → publish the output → publish the manifest → record the
//! run in the history, bounded by the report's timeout. `report run`, `report validate`, `demo`,
//! the scheduler and the server's report views and table functions all plan through
//! [`PlannedReport`]; the first four run through [`ReportRun`].
//!
//! Must not: build SQL by splicing values (parameters are bound as typed placeholders), write
//! files itself (every byte goes through `output`), or decide when a report runs (`schedule`).

use crate::catalog::TableSpec;
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::output::xlsx::WorkbookAbout;
use crate::output::{self, Destination, OutputFormat, OutputSpec};
use crate::query::{self, RunOptions};
use crate::report::alerts::FiringAlerts;
use crate::report::{History, ParamValue, ReportDefinition, ReportFormat};
use crate::schedule::{RunOutcome, Runner};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use datafusion::logical_expr::LogicalPlan;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Everything a report run needs besides the report: engine settings, tables, history.
pub(crate) struct ReportContext {
    pub(crate) options: EngineOptions,
    pub(crate) tables: Vec<TableSpec>,
    pub(crate) reports: Vec<ReportDefinition>,
    pub(crate) history: Arc<History>,
    /// `[reports] state_dir` and `max_state`: per-file aggregate states (see `incremental`).
    pub(crate) state_dir: PathBuf,
    pub(crate) max_state: u64,
}

/// What a finished run published.
#[derive(Debug, Clone)]
pub(crate) struct RunSummary {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) output: String,
    pub(crate) manifest: String,
    /// How the run used per-file states (recorded in the history with the run).
    pub(crate) incremental: Option<crate::incremental::Outcome>,
    /// What `--stats` prints for the run.
    pub(crate) stats: String,
}

/// Parse `--at`: a date (midnight in the report's zone) or an RFC 3339 time.
pub(crate) fn parse_at(report: &ReportDefinition, text: &str) -> Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        Error::Usage(format!(
            "--at `{text}`: expected YYYY-MM-DD or an RFC 3339 time"
        ))
    })?;
    let zone = report_zone(report)?;
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    zone.from_local_datetime(&midnight)
        .earliest()
        .map(|time| time.with_timezone(&Utc))
        .ok_or_else(|| Error::Usage(format!("--at `{text}`: no such local time in {zone}")))
}

fn report_zone(report: &ReportDefinition) -> Result<chrono_tz::Tz> {
    let name = report
        .schedule
        .as_ref()
        .map_or("UTC", |schedule| schedule.timezone.as_str());
    name.parse().map_err(|_| {
        Error::Config(format!(
            "report `{}`: unknown time zone `{name}`",
            report.name
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

/// A report's query, planned on an engine and checked: ready to be bound and executed.
#[derive(Debug, Clone)]
pub(crate) struct PlannedReport {
    plan: LogicalPlan,
}

impl PlannedReport {
    /// Plan a report's SQL: the `SET` statements (or any statements) before the last run first,
    /// on `engine`'s session, so they shape how the last one is planned and run; the last is the
    /// report's query. A `$name` placeholder the header does not declare is refused here, before
    /// anything runs, naming the placeholder and the file.
    pub(crate) async fn plan(engine: &Engine, report: &ReportDefinition) -> Result<PlannedReport> {
        Self::plan_with(engine, report, Leading::Run).await
    }

    /// Plan a report on a session other users share (a server's): as [`PlannedReport::plan`],
    /// except that statements before the query are refused, naming the file, because their
    /// settings would change the session of every connection.
    pub(crate) async fn plan_on_shared_session(
        engine: &Engine,
        report: &ReportDefinition,
    ) -> Result<PlannedReport> {
        Self::plan_with(engine, report, Leading::Refuse).await
    }

    async fn plan_with(
        engine: &Engine,
        report: &ReportDefinition,
        leading: Leading,
    ) -> Result<PlannedReport> {
        let in_file = |e: Error| {
            e.context(format!(
                "{} (SQL from line {})",
                report.path.display(),
                report.sql_line
            ))
        };
        let mut statements = engine.parse(&report.sql).map_err(in_file)?;
        let last = statements.pop().ok_or_else(|| {
            Error::Usage(format!(
                "{}: no SQL after the header",
                report.path.display()
            ))
        })?;
        if leading == Leading::Refuse && !statements.is_empty() {
            return Err(Error::Config(format!(
                "{}: has {} statement(s) before its query (such as SET); a server shares one \
                 session between connections, so it serves only single-statement reports",
                report.path.display(),
                statements.len()
            )));
        }
        for statement in statements {
            let plan = engine.plan(statement).await?;
            query::drain(engine, plan).await?;
        }
        let plan = engine.plan(last).await.map_err(in_file)?;
        let declared: Vec<&str> = report.params.iter().map(|p| p.name.as_str()).collect();
        for used in Engine::placeholders(&plan)? {
            if !declared.contains(&used.as_str()) {
                return Err(Error::Config(format!(
                    "{}: the SQL uses ${used}, which the header does not declare under [params]",
                    report.path.display()
                )));
            }
        }
        Ok(PlannedReport { plan })
    }

    /// The plan with `values` (from [`ReportDefinition::bind`]) bound to its placeholders as
    /// typed scalars ([`ParamValue::to_scalar`]): a date is a `Date32`, a list a `List<Utf8>`.
    pub(crate) fn bind(&self, values: &[(String, ParamValue)]) -> Result<LogicalPlan> {
        let scalars = values
            .iter()
            .map(|(name, value)| (name.clone(), value.to_scalar()))
            .collect();
        Engine::bind(self.plan.clone(), scalars)
    }

    /// The plan as planned, placeholders unbound: a report without params is complete as it is
    /// (a server registers it as a view).
    pub(crate) fn plan_without_values(&self) -> &LogicalPlan {
        &self.plan
    }
}

/// What the planner does with the statements before a report's query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leading {
    /// Run them on the engine's session first (a session of the run's own).
    Run,
    /// Refuse the report (a session shared with other users).
    Refuse,
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// One run of a report, recorded in the history from the moment it exists: the report, its
/// parameter values, the time it was scheduled for (none when started by hand), which attempt
/// it is, and its history row.
#[derive(Debug)]
pub(crate) struct ReportRun<'a> {
    pub(crate) report: &'a ReportDefinition,
    pub(crate) values: Vec<(String, ParamValue)>,
    pub(crate) scheduled_for: Option<DateTime<Utc>>,
    pub(crate) attempt: u32,
    pub(crate) run_id: i64,
    /// Who started it, for the audit log: `report` (by hand) or `schedule` (the daemon).
    pub(crate) entry: &'static str,
    /// `report run --full`: recompute from every file, whatever states are stored.
    pub(crate) full: bool,
}

impl<'a> ReportRun<'a> {
    /// Record the start of a run (status `running`): the run gets its id here.
    pub(crate) fn start(
        history: &History,
        report: &'a ReportDefinition,
        values: Vec<(String, ParamValue)>,
        scheduled_for: Option<DateTime<Utc>>,
        attempt: u32,
    ) -> Result<ReportRun<'a>> {
        let run_id = history
            .start(&report.name, scheduled_for, attempt)
            .map_err(Error::from)?;
        Ok(ReportRun {
            report,
            values,
            scheduled_for,
            attempt,
            run_id,
            entry: "report",
            full: false,
        })
    }

    /// Run it and record how it ended, by its id: `succeeded` with what it wrote, `failed` with
    /// the error, or `timeout` the moment the report's `timeout` passes (the work is cancelled
    /// by dropping it, and nothing is published).
    pub(crate) async fn execute(&self, context: &ReportContext) -> Result<RunSummary> {
        let history = &context.history;
        let running = self.run_once(context);
        let result = match self.report.timeout {
            Some(limit) => match tokio::time::timeout(limit, running).await {
                Ok(result) => result,
                Err(_) => {
                    let reason =
                        format!("timed out after {}", crate::units::format_duration(limit));
                    let _ = history.time_out(self.run_id, &reason);
                    return Err(Error::ResourcesExhausted(format!(
                        "report `{}` {reason}",
                        self.report.name
                    )));
                }
            },
            None => running.await,
        };
        match result {
            Ok(summary) => {
                history
                    .succeed(self.run_id, summary.rows, summary.bytes, &summary.output)
                    .map_err(Error::from)?;
                if let Some(states) = &summary.incremental {
                    history
                        .record_states(self.run_id, states)
                        .map_err(Error::from)?;
                }
                Ok(summary)
            }
            Err(error) => {
                let _ = history.fail(self.run_id, &error.to_string());
                Err(error)
            }
        }
    }

    /// Execute the report and publish its output, then its manifest.
    async fn run_once(&self, context: &ReportContext) -> Result<RunSummary> {
        let report = self.report;
        let in_report = |e: Error| e.context(format!("report `{}`", report.name));
        let engine = Engine::open(context.options.clone(), &context.tables)
            .await
            .map_err(in_report)?;
        let plan = PlannedReport::plan(&engine, report)
            .await
            .map_err(in_report)?
            .bind(&self.values)
            .map_err(in_report)?;
        let zone = report_zone(report)?;
        let scheduled_date = self
            .scheduled_for
            .unwrap_or_else(Utc::now)
            .with_timezone(&zone)
            .date_naive();
        let defaulted;
        let with_output = match report.output {
            Some(_) => report,
            None => {
                let template = format!(
                    "reports/{{name}}/{{scheduled_date}}.{}",
                    report.effective_format().as_str()
                );
                defaulted = report_with_template(report, &template);
                &defaulted
            }
        };
        let output = with_output
            .render_output(&self.values, scheduled_date, &self.run_id.to_string())
            .map(crate::storage::normalize_output)
            .map_err(Error::from)?;
        let format = output_format(report.effective_format());
        // The files read: for the audit log, and for an Excel output's `About` sheet.
        let inputs = match engine.audit_log().is_some() || format == OutputFormat::Xlsx {
            true => engine.input_files(&plan),
            false => Vec::new(),
        };
        let parameters: Vec<(String, String)> = self
            .values
            .iter()
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect();
        let about = (format == OutputFormat::Xlsx).then(|| WorkbookAbout {
            report: report.name.clone(),
            description: report.description.clone(),
            parameters: parameters.clone(),
            scheduled_for: self.scheduled_for,
            started: Utc::now(),
            inputs: inputs.clone(),
        });
        let options = RunOptions {
            output: OutputSpec {
                format,
                destination: destination(&output)?,
                max_table_rows: 0,
                manifest: true,
                encryption: match report.encrypt {
                    true => Some(
                        crate::privacy::output_key(
                            "encrypt = true",
                            format,
                            context.options.privacy.as_deref(),
                        )
                        .map_err(in_report)?,
                    ),
                    false => None,
                },
                about,
            },
            stats: false,
            progress: false,
            entry: self.entry,
            incremental: Some(self.incremental_spec(context)),
        };
        let result = query::run_statement(&engine, plan, &options)
            .await
            .map(Some)
            .map_err(in_report);
        let sql = report.sql.clone();
        query::audit_statement(
            &engine,
            &options,
            Some(&report.name),
            sql,
            parameters,
            inputs,
            &result,
        )?;
        let outcome = result?.ok_or_else(|| Error::Internal("no outcome".into()))?;
        let mut extras = serde_json::Map::new();
        if let Some(groups) = outcome.stats.suppressed_groups {
            // Only for aggregate-only roles: the groups the small-cell rule removed.
            extras.insert("suppressed_groups".into(), groups.into());
        }
        if let Some(states) = &outcome.stats.incremental {
            extras.insert("incremental".into(), manifest_states(states));
        }
        let manifest = manifest_json(
            &report.name,
            outcome.output.rows,
            outcome.output.bytes,
            &outcome.output.sha256,
            &self.values,
            self.scheduled_for,
            &output,
            extras,
        );
        let manifest_path = publish_manifest(&engine, &output, manifest).await?;
        Ok(RunSummary {
            rows: outcome.output.rows,
            bytes: outcome.output.bytes,
            output,
            manifest: manifest_path,
            stats: outcome.stats.to_string(),
            incremental: outcome.stats.incremental,
        })
    }
}

impl ReportRun<'_> {
    /// Where this report keeps its per-file states, and what its states depend on besides the
    /// plan: the SQL and the parameter values (a change of either is a full recompute).
    fn incremental_spec(&self, context: &ReportContext) -> crate::incremental::Spec {
        let parameters = self
            .values
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("\n");
        let full = match (self.report.incremental, self.full) {
            (false, _) => Some("incremental = false in the report's header".to_string()),
            (true, true) => Some("report run --full".to_string()),
            (true, false) => None,
        };
        crate::incremental::Spec {
            dir: state_folder(&context.state_dir, &self.report.name),
            identity: vec![
                ("the SQL".to_string(), self.report.sql.clone()),
                ("the parameters".to_string(), parameters),
            ],
            max_state: context.max_state,
            full,
            grace: std::time::Duration::ZERO,
        }
    }
}

/// A report's state folder: `STATE_DIR/reports/NAME`.
pub(crate) fn state_folder(state_dir: &std::path::Path, report: &str) -> PathBuf {
    state_dir.join("reports").join(report)
}

/// The manifest's `incremental` object: how the run used per-file states, and why not when
/// it read every file.
fn manifest_states(outcome: &crate::incremental::Outcome) -> serde_json::Value {
    serde_json::json!({
        "mode": outcome.mode(),
        "reason": outcome.reason,
        "files_from_states": outcome.files_reused,
        "files_read": outcome.files_read,
        "files_dropped": outcome.files_dropped,
        "state_bytes": outcome.state_bytes,
        "largest_state_bytes": outcome.largest_state,
    })
}

/// A report without an `output` in its header writes to `reports/{name}/{scheduled_date}.EXT`.
fn report_with_template(report: &ReportDefinition, template: &str) -> ReportDefinition {
    let mut copy = report.clone();
    copy.output = Some(template.to_string());
    copy
}

fn output_format(format: ReportFormat) -> OutputFormat {
    match format {
        ReportFormat::Csv => OutputFormat::Csv,
        ReportFormat::Parquet => OutputFormat::Parquet,
        ReportFormat::Json => OutputFormat::Json,
        ReportFormat::Xlsx => OutputFormat::Xlsx,
    }
}

/// Where a rendered output goes; local folders are created.
fn destination(output: &str) -> Result<Destination> {
    if crate::storage::is_object_url(output) {
        return Ok(Destination::Object(output.to_string()));
    }
    let path = PathBuf::from(output);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Output(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(Destination::File(path))
}

/// The manifest's path: `_SUCCESS-<output file name>.json` beside the output. The `_` prefix
/// keeps it out of any table that reads the output folder.
pub(crate) fn manifest_path(output: &str) -> String {
    match output.rsplit_once('/') {
        Some((folder, name)) => format!("{folder}/_SUCCESS-{name}.json"),
        None => format!("_SUCCESS-{output}.json"),
    }
}

/// Publish the manifest through `output`, after the output is complete, so that its presence
/// means the output is whole.
async fn publish_manifest(engine: &Engine, output: &str, manifest: String) -> Result<String> {
    let path = manifest_path(output);
    let destination = destination(&path)?;
    let object = match &destination {
        Destination::Object(url) => Some(engine.stores().object_target(url)?),
        _ => None,
    };
    output::publish_bytes(&destination, object, manifest.into_bytes()).await?;
    Ok(path)
}

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
    extras: serde_json::Map<String, serde_json::Value>,
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
    let mut manifest = manifest;
    if let Some(object) = manifest.as_object_mut() {
        object.extend(extras);
    }
    // Serialising a `Value` built from strings and numbers cannot fail.
    let mut text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------------------
// The scheduler's runner
// ---------------------------------------------------------------------------------------------

/// The scheduler's runner: each firing is a [`ReportRun`] of its report with default
/// parameters, bounded by the report's own timeout.
pub(crate) struct ReportRunner {
    pub(crate) context: Arc<ReportContext>,
    /// The history row of each attempt under way, so a cancelled one is closed by its id.
    under_way: Mutex<HashMap<(String, DateTime<Utc>, u32), i64>>,
    pub(crate) alerts: FiringAlerts,
}

impl ReportRunner {
    pub(crate) fn new(context: Arc<ReportContext>, alerts: FiringAlerts) -> ReportRunner {
        ReportRunner {
            context,
            under_way: Mutex::new(HashMap::new()),
            alerts,
        }
    }

    fn under_way(&self) -> std::sync::MutexGuard<'_, HashMap<(String, DateTime<Utc>, u32), i64>> {
        // The map stays consistent whatever panicked while holding it.
        self.under_way
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Runner for ReportRunner {
    async fn run(&self, job: &str, scheduled_for: DateTime<Utc>, attempt: u32) -> RunOutcome {
        let Some(report) = self.context.reports.iter().find(|r| r.name == job) else {
            return RunOutcome::Failed(format!("no report `{job}`"));
        };
        let values = match report.bind(&[]) {
            Ok(values) => values,
            Err(error) => return RunOutcome::Failed(error.to_string()),
        };
        let run = match ReportRun::start(
            &self.context.history,
            report,
            values,
            Some(scheduled_for),
            attempt,
        ) {
            Ok(run) => ReportRun {
                entry: "schedule",
                ..run
            },
            Err(error) => return RunOutcome::Failed(error.to_string()),
        };
        let key = (run.report.name.clone(), scheduled_for, run.attempt);
        self.under_way().insert(key.clone(), run.run_id);
        self.alerts
            .seen(report, scheduled_for, Some((attempt, run.run_id)));
        let result = run.execute(&self.context).await;
        self.under_way().remove(&key);
        self.alerts.attempted(
            job,
            scheduled_for,
            attempt,
            Some(run.run_id),
            result.as_ref().ok().cloned(),
        );
        match result {
            Ok(summary) => {
                tracing::info!(
                    "report {job} for {scheduled_for}: {} rows, {} bytes → {}",
                    summary.rows,
                    summary.bytes,
                    summary.output
                );
                RunOutcome::Succeeded
            }
            Err(error) => RunOutcome::Failed(error.to_string()),
        }
    }

    async fn skipped(&self, job: &str, scheduled_for: DateTime<Utc>, reason: &str) {
        let _ = self.context.history.skip(job, scheduled_for, reason);
        // A firing skipped for overlapping is covered by the late timer of the run still going;
        // one skipped by the missed-run policy (the daemon was down) is late on its own.
        if reason == crate::schedule::OVERLAPPING {
            return;
        }
        if let Some(report) = self.context.reports.iter().find(|r| r.name == job) {
            self.alerts.seen(report, scheduled_for, None);
        }
    }

    async fn settled(
        &self,
        job: &str,
        scheduled_for: DateTime<Utc>,
        attempt: u32,
        outcome: &RunOutcome,
    ) {
        let error = match outcome {
            RunOutcome::Succeeded => None,
            RunOutcome::Failed(message) => Some(message.as_str()),
        };
        self.alerts.settled(job, scheduled_for, attempt, error);
    }

    async fn cancelled(&self, job: &str, scheduled_for: DateTime<Utc>, attempt: u32, reason: &str) {
        let key = (job.to_string(), scheduled_for, attempt);
        let run_id = self.under_way().remove(&key);
        if let Some(run_id) = run_id {
            let _ = self.context.history.fail(run_id, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_report;
    use crate::report::test_fixtures::{date, utc};
    use std::path::Path;

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
            Default::default(),
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
        let manual = manifest_json("r", 0, 0, "", &[], None, "o", Default::default());
        let parsed: serde_json::Value = serde_json::from_str(&manual).unwrap();
        assert_eq!(parsed["scheduled_for"], serde_json::Value::Null);
    }

    #[test]
    fn the_manifest_sits_beside_the_output_with_an_underscore_name() {
        assert_eq!(
            manifest_path("reports/x/2024-06-01.csv"),
            "reports/x/_SUCCESS-2024-06-01.csv.json"
        );
        assert_eq!(manifest_path("out.csv"), "_SUCCESS-out.csv.json");
        assert_eq!(
            manifest_path("s3://b/r/o.parquet"),
            "s3://b/r/_SUCCESS-o.parquet.json"
        );
    }

    fn report(text: &str) -> ReportDefinition {
        parse_report(Path::new("queries/q.sql"), text)
            .expect("the header parses")
            .expect("the text is a report")
    }

    fn engine() -> Engine {
        Engine::new(EngineOptions::default()).expect("an engine with default options")
    }

    #[tokio::test]
    async fn planning_applies_the_leading_sets_and_plans_the_last_statement() {
        let engine = engine();
        let report = report(
            "/* report\nname = \"r\"\n*/\nSET datafusion.execution.batch_size = 123;\nSELECT 1 AS first;\nSELECT 2 AS last\n",
        );
        let planned = PlannedReport::plan(&engine, &report).await.unwrap();
        assert_eq!(engine.context().state().config().batch_size(), 123);
        let columns: Vec<&str> = planned
            .plan_without_values()
            .schema()
            .fields()
            .iter()
            .map(|field| field.name().as_str())
            .collect();
        assert_eq!(columns, ["last"]);
    }

    #[tokio::test]
    async fn a_shared_session_refuses_leading_statements_and_keeps_its_settings() {
        let engine = engine();
        let before = engine.context().state().config().batch_size();
        let report = report(
            "/* report\nname = \"r\"\n*/\nSET datafusion.execution.batch_size = 123;\nSELECT 2 AS last\n",
        );
        match PlannedReport::plan_on_shared_session(&engine, &report).await {
            Err(Error::Config(message)) => assert_eq!(
                message,
                "queries/q.sql: has 1 statement(s) before its query (such as SET); a server shares \
                 one session between connections, so it serves only single-statement reports"
            ),
            other => panic!("expected a config error, got {other:?}"),
        }
        assert_eq!(engine.context().state().config().batch_size(), before);
        assert_ne!(before, 123);
    }

    #[tokio::test]
    async fn an_undeclared_placeholder_is_refused_naming_it_and_the_file() {
        let report = report(
            "/* report\nname = \"r\"\n[params.n]\ntype = \"int\"\ndefault = 1\n*/\nSELECT $n AS n, $nope AS x\n",
        );
        match PlannedReport::plan(&engine(), &report).await {
            Err(Error::Config(message)) => {
                assert_eq!(
                    message,
                    "queries/q.sql: the SQL uses $nope, which the header does not declare under [params]"
                );
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn values_are_bound_with_their_types() {
        use datafusion::arrow::array::{Array, Date32Array, Float64Array, Int64Array, StringArray};
        use datafusion::arrow::datatypes::DataType;
        let engine = engine();
        let report = report(
            "/* report\nname = \"r\"\n[params.d]\ntype = \"date\"\ndefault = \"2024-01-01\"\n\
             [params.n]\ntype = \"int\"\ndefault = 7\n[params.f]\ntype = \"float\"\ndefault = 0.5\n\
             [params.s]\ntype = \"string\"\ndefault = \"x'; DROP TABLE t; --\"\n\
             [params.l]\ntype = \"list\"\ndefault = [\"CA\", \"NY\"]\n*/\n\
             SELECT $d AS d, $n AS n, $f AS f, $s AS s, array_length($l) AS l\n",
        );
        let planned = PlannedReport::plan(&engine, &report).await.unwrap();
        let values = report.bind(&[]).unwrap();
        let plan = planned.bind(&values).unwrap();
        let batches = engine
            .context()
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        let types: Vec<DataType> = batch
            .schema()
            .fields()
            .iter()
            .map(|field| field.data_type().clone())
            .collect();
        assert_eq!(
            types[..4],
            [
                DataType::Date32,
                DataType::Int64,
                DataType::Float64,
                DataType::Utf8
            ]
        );
        let column = |index: usize| batch.column(index).clone();
        // 2024-01-01 is 19723 days after 1970-01-01 (54 years, 13 of them leap).
        let dates = column(0);
        let dates = dates.as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(dates.value(0), 19723);
        let ints = column(1);
        assert_eq!(
            ints.as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            7
        );
        let floats = column(2);
        assert_eq!(
            floats
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0),
            0.5
        );
        let strings = column(3);
        assert_eq!(
            strings
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            "x'; DROP TABLE t; --"
        );
        let lengths = column(4);
        assert_eq!(lengths.len(), 1);
        assert_eq!(
            datafusion::common::ScalarValue::try_from_array(&lengths, 0).unwrap(),
            datafusion::common::ScalarValue::UInt64(Some(2))
        );
    }
}
