//! Running SQL scripts end to end: statements through the engine, results into an output sink,
//! with progress while it runs and stats after.
//!
//! This is the path every entry point that runs a user's SQL takes (the `query` command, the
//! demo, and later reports), so the rules live here once: a script may hold several statements
//! (`SET` among them); with a file destination only one of them may return rows; a failed or
//! cancelled statement publishes nothing. Must not build its own session or write files itself.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::output::{Destination, OutputSpec, OutputSummary, Sink};
use crate::progress::QueryProgress;
use crate::stats::{self, PlanTotals, QueryStats};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;

/// How to run a script.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub(crate) output: OutputSpec,
    /// Print [`QueryStats`] to stderr after each statement that returns rows.
    pub(crate) stats: bool,
    /// Draw a progress bar on stderr.
    pub(crate) progress: bool,
    /// What the audit log calls this entry point (`query`, `demo`, `report`, `schedule`).
    pub(crate) entry: &'static str,
    /// Keep and merge per-file aggregate states (reports): where, and under which identity.
    pub(crate) incremental: Option<crate::incremental::Spec>,
}

/// What one row-returning statement did.
#[derive(Debug, Clone)]
pub(crate) struct StatementOutcome {
    pub(crate) output: OutputSummary,
    pub(crate) stats: QueryStats,
}

/// Run every statement of `sql` in order; returns the outcomes of those that return rows.
pub(crate) async fn run_script(
    engine: &Engine,
    sql: &str,
    options: &RunOptions,
) -> Result<Vec<StatementOutcome>> {
    let statements = engine.parse(sql)?;
    let queries = statements.iter().filter(|s| is_query(s)).count();
    if queries > 1 && matches!(options.output.destination, Destination::File(_)) {
        return Err(Error::Usage(format!(
            "the script has {queries} statements that return rows, but -o writes one result: \
             keep one query, or drop -o"
        )));
    }
    let mut outcomes = Vec::new();
    for statement in statements {
        let text = statement.to_string();
        let mut inputs = Vec::new();
        let result = async {
            let plan = engine.plan(statement).await?;
            if engine.audit_log().is_some() {
                inputs = engine.input_files(&plan);
            }
            if Engine::returns_rows(&plan) {
                run_statement(engine, plan, options).await.map(Some)
            } else {
                drain(engine, plan).await.map(|()| None)
            }
        }
        .await;
        audit_statement(engine, options, None, text, Vec::new(), inputs, &result)?;
        let Some(outcome) = result? else {
            continue;
        };
        if options.stats {
            eprintln!("{}", outcome.stats);
        }
        if outcome.output.reader_gone {
            break;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Record a finished (or failed) statement in the audit log, if there is one. A record that
/// cannot be written fails the statement, and a local file it published is taken back.
pub(crate) fn audit_statement(
    engine: &Engine,
    options: &RunOptions,
    report: Option<&str>,
    sql: String,
    parameters: Vec<(String, String)>,
    inputs: Vec<crate::privacy::audit::InputFile>,
    result: &Result<Option<StatementOutcome>>,
) -> Result<()> {
    let Some(log) = engine.audit_log() else {
        return Ok(());
    };
    let outcome = result.as_ref().ok().and_then(Option::as_ref);
    let output = match (&options.output.destination, outcome) {
        (Destination::File(path), Some(_)) => Some(path.display().to_string()),
        (Destination::Object(url), Some(_)) => Some(url.clone()),
        _ => None,
    };
    let event = crate::privacy::audit::Event {
        entry: options.entry.to_string(),
        user: crate::privacy::audit::os_user(),
        role: engine.role_name(),
        client: None,
        report: report.map(str::to_string),
        sql,
        parameters,
        inputs,
        rows: outcome.map(|o| o.output.rows).unwrap_or(0),
        bytes: outcome.map(|o| o.output.bytes).unwrap_or(0),
        output_sha256: outcome
            .filter(|o| output.is_some() && !o.output.sha256.is_empty())
            .map(|o| o.output.sha256.clone()),
        output,
        suppressed_groups: outcome.and_then(|o| o.stats.suppressed_groups),
        outcome: match result {
            Ok(_) => "ok".into(),
            Err(error) => format!("error: {error}"),
        },
    };
    if let Err(error) = log.append(&event) {
        if let (Destination::File(path), Some(_)) = (&options.output.destination, outcome) {
            let _ = std::fs::remove_file(path);
        }
        return Err(error);
    }
    Ok(())
}

/// Whether a statement returns rows, judged before planning (for the `-o` check).
fn is_query(statement: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    match statement {
        Statement::Statement(inner) => {
            matches!(inner.as_ref(), Sql::Query(_) | Sql::Explain { .. })
        }
        Statement::Explain(_) => true,
        _ => false,
    }
}

/// Execute a statement that returns nothing worth printing (SET, CREATE VIEW, ...).
pub(crate) async fn drain(engine: &Engine, plan: LogicalPlan) -> Result<()> {
    let mut running = engine.execute(plan).await?;
    while let Some(batch) = running.stream.next().await {
        batch?;
    }
    Ok(())
}

/// Execute one query and stream its rows into the output. If it runs out of memory before a
/// single row went out, it runs once more with a plan that spills where the first could not
/// (see [`Engine::execute_conservatively`]); the warning says so once.
pub(crate) async fn run_statement(
    engine: &Engine,
    plan: LogicalPlan,
    options: &RunOptions,
) -> Result<StatementOutcome> {
    let started = Instant::now();
    let schema = plan.schema().inner().clone();
    // Open the output first: an unwritable path fails before any work is done. The same sink
    // serves a retry, which only happens while it has been given nothing.
    let object = match &options.output.destination {
        Destination::Object(url) => Some(engine.stores().object_target(url)?),
        _ => None,
    };
    // With an audit log, the record names the output's SHA-256.
    let mut spec = options.output.clone();
    spec.manifest |= engine.audit_log().is_some()
        && !matches!(
            spec.destination,
            Destination::Stdout | Destination::Pager(_)
        );
    let mut sink = Sink::open(&spec, schema, object).await?;
    let bytes_before = engine.counters().bytes();
    let requests_before = engine.counters().requests();
    let done = match attempt(
        engine,
        plan.clone(),
        &mut sink,
        options,
        ExecutionMode::Fast,
    )
    .await
    {
        Err(Failure::BeforeOutput(Error::ResourcesExhausted(message))) => {
            tracing::warn!(
                "the memory limit was reached ({}); running the query again with a plan that \
                 spills more (sort-merge joins, full sorts, smaller batches)",
                first_sentence(&message)
            );
            // The failed plan's tasks stop asynchronously; let them hand their memory back.
            engine.wait_for_released_memory().await;
            attempt(
                engine,
                plan,
                &mut sink,
                options,
                ExecutionMode::Conservative,
            )
            .await
        }
        other => other,
    };
    let done = done.map_err(Failure::into_error)?;
    let output = sink.finish().await?;
    let cluster = match options.stats {
        true => crate::cluster::job_totals(&done.plan).await,
        false => None,
    };
    let stats = QueryStats {
        rows: output.rows,
        files: done.files,
        bytes_in_files: done.bytes_in_files,
        bytes_fetched: engine.counters().bytes() - bytes_before,
        requests: engine.counters().requests() - requests_before,
        elapsed: started.elapsed(),
        spill: PlanTotals::of(&done.plan),
        peak_pool: engine.pool().peak(),
        pool_limit: engine.pool_limit(),
        peak_rss: stats::peak_rss(),
        cluster,
        suppressed_groups: engine.take_suppressed(),
        incremental: done.incremental,
    };
    Ok(StatementOutcome { output, stats })
}

/// How an attempt executes the plan: as planned, or with the conservative settings retried
/// after the fast way ran out of memory before any output.
#[derive(Clone, Copy, PartialEq)]
enum ExecutionMode {
    Fast,
    Conservative,
}

/// Why an attempt failed: before any row reached the output (so it may be run again) or after.
enum Failure {
    BeforeOutput(Error),
    AfterOutput(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::BeforeOutput(error) | Failure::AfterOutput(error) => error,
        }
    }
}

/// What a finished attempt ran, for its stats.
struct Attempted {
    plan: Arc<dyn ExecutionPlan>,
    files: usize,
    bytes_in_files: u64,
    incremental: Option<crate::incremental::Outcome>,
}

async fn attempt(
    engine: &Engine,
    plan: LogicalPlan,
    sink: &mut Sink,
    options: &RunOptions,
    which: ExecutionMode,
) -> std::result::Result<Attempted, Failure> {
    let mut incremental = None;
    let running = match (which, &options.incremental) {
        (ExecutionMode::Fast, Some(spec)) => match engine.execute_with_states(plan, spec).await {
            Ok((running, outcome)) => {
                incremental = Some(outcome);
                Ok(running)
            }
            Err(error) => Err(error),
        },
        (ExecutionMode::Fast, None) => engine.execute(plan).await,
        // A retry after running out of memory recomputes in full, with the plan that spills.
        (ExecutionMode::Conservative, spec) => {
            incremental = spec
                .as_ref()
                .map(|_| crate::incremental::Outcome::full("retried after running out of memory"));
            engine.execute_conservatively(plan).await
        }
    };
    let mut running = running.map_err(Failure::BeforeOutput)?;
    let (files, bytes_in_files) = stats::scanned_files(&running.plan);
    let progress = QueryProgress::start(
        options.progress,
        bytes_in_files,
        engine.counters().clone(),
        running.plan.clone(),
    );
    let mut batches_out = 0u64;
    while let Some(batch) = running.stream.next().await {
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                drop(progress);
                let error = explain_failure(engine, error.into()).await;
                return Err(if batches_out == 0 {
                    Failure::BeforeOutput(error)
                } else {
                    Failure::AfterOutput(error)
                });
            }
        };
        batches_out += 1;
        if !sink.write(batch).await.map_err(Failure::AfterOutput)? {
            break;
        }
    }
    progress.finish();
    Ok(Attempted {
        plan: running.plan,
        files,
        bytes_in_files,
        incremental,
    })
}

/// The part of a DataFusion resources message before its list of consumers.
fn first_sentence(message: &str) -> &str {
    let message = message.trim_start_matches("Resources exhausted: ");
    message
        .split(" with top memory consumers")
        .next()
        .unwrap_or(message)
}

/// Add what the user needs to an execution failure: for bad data, which file holds it.
async fn explain_failure(engine: &Engine, error: Error) -> Error {
    if !error.is_input() {
        return error;
    }
    match engine.find_bad_file().await {
        Some(located) => located,
        None => error,
    }
}

/// Print the plan of the script's last statement (earlier ones, such as `SET`, are run first).
/// With `analyze` the query runs and every operator shows its metrics, spilling included.
pub(crate) async fn explain(engine: &Engine, sql: &str, analyze: bool) -> Result<()> {
    let mut statements = engine.parse(sql)?;
    let last = statements
        .pop()
        .ok_or_else(|| Error::Usage("no SQL statement given".into()))?;
    for statement in statements {
        let plan = engine.plan(statement).await?;
        drain(engine, plan).await?;
    }
    let plan = engine.plan(last).await?;
    let frame = engine.context().execute_logical_plan(plan).await?;
    // Catalog queries stay in this process even with a cluster: say where this one runs (the
    // extra physical planning only with a cluster).
    let place = match &engine.options().cluster {
        Some(address) => {
            let physical = frame.clone().create_physical_plan().await?;
            if crate::cluster::runs_on_cluster(&physical) {
                format!(
                    "cluster {}: the distributed plan's stages run on its executors, with \
                     Spillway's rules applied there",
                    crate::cluster::scheduler_url(address)?
                )
            } else {
                "this process".to_string()
            }
        }
        None => "this process".to_string(),
    };
    let batches = frame.explain(false, analyze)?.collect().await?;
    let mut text = format!("== runs in ==\n{place}\n");
    for batch in &batches {
        let kinds = datafusion::arrow::array::cast::as_string_array(batch.column(0));
        let plans = datafusion::arrow::array::cast::as_string_array(batch.column(1));
        for row in 0..batch.num_rows() {
            text.push_str(&format!(
                "== {} ==\n{}\n",
                kinds.value(row),
                plans.value(row)
            ));
        }
    }
    print!("{text}");
    Ok(())
}
