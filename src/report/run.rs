//! Running saved reports: one run is bind → plan → execute → publish output → publish manifest
//! → record history, through the same engine, catalog and output code as `spillway query`.
//!
//! Owns the `report run` path and the scheduler's [`Runner`]; the definitions, parameter typing
//! and the history database are `report`'s, the cron loop is `schedule`'s. Must not build SQL by
//! splicing values: parameters are bound as typed placeholders (`Engine::bind`).

use crate::catalog::TableSpec;
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::output::{Destination, OutputFormat, OutputSpec};
use crate::query::{self, RunOptions};
use crate::report::{self, History, ParamValue, ReportDefinition, ReportFormat};
use crate::schedule::{RunOutcome, Runner};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything a report run needs besides the report: engine settings, tables, history.
pub(crate) struct ReportContext {
    pub(crate) options: EngineOptions,
    pub(crate) tables: Vec<TableSpec>,
    pub(crate) reports: Vec<ReportDefinition>,
    pub(crate) history: Arc<History>,
}

/// What a finished run published.
#[derive(Debug, Clone)]
pub(crate) struct RunSummary {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) output: String,
    pub(crate) manifest: String,
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

/// Run a report once and record it in the history (started, then succeeded or failed).
pub(crate) async fn run_recorded(
    context: &ReportContext,
    report: &ReportDefinition,
    values: &[(String, ParamValue)],
    scheduled_for: Option<DateTime<Utc>>,
    attempt: u32,
) -> Result<RunSummary> {
    let run_id = context
        .history
        .start(&report.name, scheduled_for, attempt)
        .map_err(Error::from)?;
    match run_once(context, report, values, scheduled_for, run_id).await {
        Ok(summary) => {
            context
                .history
                .succeed(run_id, summary.rows, summary.bytes, &summary.output)
                .map_err(Error::from)?;
            Ok(summary)
        }
        Err(error) => {
            let _ = context.history.fail(run_id, &error.to_string());
            Err(error)
        }
    }
}

/// Execute a report and publish its output, then its manifest.
async fn run_once(
    context: &ReportContext,
    report: &ReportDefinition,
    values: &[(String, ParamValue)],
    scheduled_for: Option<DateTime<Utc>>,
    run_id: i64,
) -> Result<RunSummary> {
    let in_report = |e: Error| e.context(format!("report `{}`", report.name));
    let engine = Engine::open(context.options.clone(), &context.tables)
        .await
        .map_err(in_report)?;
    let plan = plan_report(&engine, report).await.map_err(in_report)?;
    let plan = bind_values(plan, values).map_err(in_report)?;
    let zone = report_zone(report)?;
    let scheduled_date = scheduled_for
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
        .render_output(values, scheduled_date, &run_id.to_string())
        .map(crate::storage::normalize_output)
        .map_err(Error::from)?;
    let destination = destination(&output)?;
    let options = RunOptions {
        output: OutputSpec {
            format: output_format(report.effective_format()),
            destination,
            max_table_rows: 0,
            manifest: true,
        },
        stats: false,
        progress: false,
    };
    let outcome = query::run_statement(&engine, plan, &options)
        .await
        .map_err(in_report)?;
    let manifest = report::manifest_json(
        &report.name,
        outcome.output.rows,
        outcome.output.bytes,
        &outcome.output.sha256,
        values,
        scheduled_for,
        &output,
    );
    let manifest_path = publish_manifest(&engine, &output, &manifest).await?;
    Ok(RunSummary {
        rows: outcome.output.rows,
        bytes: outcome.output.bytes,
        output,
        manifest: manifest_path,
    })
}

/// Bind a report's parameter values into its plan as typed placeholders.
pub(crate) fn bind_values(
    plan: datafusion::logical_expr::LogicalPlan,
    values: &[(String, ParamValue)],
) -> Result<datafusion::logical_expr::LogicalPlan> {
    let scalars = values
        .iter()
        .map(|(name, value)| (name.clone(), value.to_scalar()))
        .collect();
    Engine::bind(plan, scalars)
}

/// A report without an `output` in its header writes to `reports/{name}/{scheduled_date}.EXT`.
fn report_with_template(report: &ReportDefinition, template: &str) -> ReportDefinition {
    let mut copy = report.clone();
    copy.output = Some(template.to_string());
    copy
}

/// Plan a report's SQL: `SET` statements may come first, the last statement is the query.
pub(crate) async fn plan_report(
    engine: &Engine,
    report: &ReportDefinition,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    let mut statements = engine.parse(&report.sql).map_err(|e| {
        e.context(format!(
            "{} (SQL from line {})",
            report.path.display(),
            report.sql_line
        ))
    })?;
    let last = statements.pop().ok_or_else(|| {
        Error::Usage(format!(
            "{}: no SQL after the header",
            report.path.display()
        ))
    })?;
    for statement in statements {
        let plan = engine.plan(statement).await?;
        query::drain(engine, plan).await?;
    }
    let plan = engine.plan(last).await.map_err(|e| {
        e.context(format!(
            "{} (SQL from line {})",
            report.path.display(),
            report.sql_line
        ))
    })?;
    let declared: Vec<&str> = report.params.iter().map(|p| p.name.as_str()).collect();
    for used in Engine::placeholders(&plan)? {
        if !declared.contains(&used.as_str()) {
            return Err(Error::Config(format!(
                "{}: the SQL uses ${used}, which the header does not declare under [params]",
                report.path.display()
            )));
        }
    }
    Ok(plan)
}

fn output_format(format: ReportFormat) -> OutputFormat {
    match format {
        ReportFormat::Csv => OutputFormat::Csv,
        ReportFormat::Parquet => OutputFormat::Parquet,
        ReportFormat::Json => OutputFormat::Json,
    }
}

/// Where a rendered output goes; local folders are created.
fn destination(output: &str) -> Result<Destination> {
    if output.starts_with("s3://") {
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

/// Write the manifest last, atomically: the output is complete before it appears.
async fn publish_manifest(engine: &Engine, output: &str, manifest: &str) -> Result<String> {
    let path = manifest_path(output);
    if path.starts_with("s3://") {
        let target = engine.stores().object_target(&path)?;
        target
            .store
            .put(&target.path, manifest.as_bytes().to_vec().into())
            .await
            .map_err(|e| crate::storage::store_error(&path, e))?;
        return Ok(path);
    }
    let target = Path::new(&path);
    let folder = target.parent().unwrap_or(Path::new("."));
    let failed = |e: &dyn std::fmt::Display| Error::Output(format!("cannot write {path}: {e}"));
    let mut temp = tempfile::Builder::new()
        .prefix(".manifest.")
        .tempfile_in(if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        })
        .map_err(|e| failed(&e))?;
    std::io::Write::write_all(&mut temp, manifest.as_bytes()).map_err(|e| failed(&e))?;
    temp.as_file().sync_all().map_err(|e| failed(&e))?;
    temp.persist(target).map_err(|e| failed(&e.error))?;
    Ok(path)
}

/// The scheduler's runner: each firing runs its report with default parameters, recorded.
pub(crate) struct ReportRunner {
    pub(crate) context: Arc<ReportContext>,
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
        match run_recorded(&self.context, report, &values, Some(scheduled_for), attempt).await {
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
    }

    async fn cancelled(&self, job: &str, scheduled_for: DateTime<Utc>, attempt: u32, reason: &str) {
        // The attempt's row is the newest running one for this report and time.
        if let Ok(runs) = self.context.history.list(Some(job), 20) {
            if let Some(run) = runs.iter().find(|run| {
                run.status == report::RunStatus::Running
                    && run.scheduled_for == Some(scheduled_for)
                    && run.attempt == attempt
            }) {
                let _ = self.context.history.fail(run.id, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
