//! The commands behind `spillway report ...` and `spillway schedule`: load the reports, open
//! the history, call `report::run`, and print what happened. Must not plan or run SQL itself.

use crate::cli::options;
use crate::cli::{
    ReportCommand, ReportHistoryArgs, ReportNameArgs, ReportRunArgs, ReportSource,
    ReportValidateArgs, ScheduleArgs,
};
use crate::config::ConfigFile;
use crate::engine::Engine;
use crate::engine::EngineOptions;
use crate::error::{Error, Result};
use crate::report::run::*;
use crate::report::{self, History, ReportDefinition};
use crate::schedule::{CronSchedule, MissedRunPolicy, Scheduler, SystemClock};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// Run one `report` subcommand.
pub(crate) async fn dispatch(
    command: ReportCommand,
    config: &ConfigFile,
    options: EngineOptions,
) -> Result<()> {
    match command {
        ReportCommand::List(args) => list(&context(&args.source, config, options)?),
        ReportCommand::Show(args) => show(&context(&args.source, config, options)?, &args),
        ReportCommand::Validate(args) => {
            validate(&context(&args.source, config, options)?, &args).await
        }
        ReportCommand::Run(args) => run(&context(&args.source, config, options)?, &args).await,
        ReportCommand::History(args) => history(&context(&args.source, config, options)?, &args),
    }
}

/// Load the reports and open the history for a command.
pub(crate) fn context(
    source: &ReportSource,
    config: &ConfigFile,
    options: EngineOptions,
) -> Result<ReportContext> {
    let folder = options::reports_folder(source.queries.as_deref(), config);
    let reports = report::load_reports(&folder).map_err(Error::from)?;
    let history_path = options::history_path(source.history.as_deref(), config);
    if let Some(parent) = history_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Output(format!("cannot create {}: {e}", parent.display())))?;
    }
    let history = History::open(&history_path).map_err(Error::from)?;
    let (state_dir, max_state) = options::state_settings(config)?;
    Ok(ReportContext {
        state_dir,
        max_state,
        options,
        tables: options::table_specs_from(&source.tables, &[], None, config)?,
        reports,
        history: Arc::new(history),
    })
}

fn find<'a>(context: &'a ReportContext, name: &str) -> Result<&'a ReportDefinition> {
    report::find_report(&context.reports, name).map_err(Error::from)
}

/// `report list`: name, schedule, next three fire times, description.
pub(crate) fn list(context: &ReportContext) -> Result<()> {
    let now = Utc::now();
    for report in &context.reports {
        let schedule = match &report.schedule {
            Some(spec) => {
                let cron = CronSchedule::parse(&spec.cron, &spec.timezone)
                    .map_err(|e| Error::Config(format!("{}: {e}", report.path.display())))?;
                let next: Vec<String> = cron
                    .upcoming(now, 3)
                    .iter()
                    .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .collect();
                format!(
                    "{} ({}); next: {}",
                    spec.cron,
                    spec.timezone,
                    next.join(", ")
                )
            }
            None => "not scheduled".to_string(),
        };
        println!(
            "{}\t{}\t{}",
            report.name,
            schedule,
            report.description.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `report show NAME`.
pub(crate) fn show(context: &ReportContext, args: &ReportNameArgs) -> Result<()> {
    let report = find(context, &args.name)?;
    println!("name:        {}", report.name);
    println!("file:        {}", report.path.display());
    if let Some(description) = &report.description {
        println!("description: {description}");
    }
    println!(
        "output:      {}",
        report
            .output
            .as_deref()
            .unwrap_or("reports/{name}/{scheduled_date}.<format>")
    );
    println!("format:      {}", report.effective_format().as_str());
    if let Some(spec) = &report.schedule {
        println!("schedule:    {} ({})", spec.cron, spec.timezone);
    }
    println!("retries:     {}", report.retries);
    if let Some(timeout) = report.timeout {
        println!("timeout:     {}", crate::units::format_duration(timeout));
    }
    for param in &report.params {
        let default = param
            .default
            .as_ref()
            .map_or("(required)".to_string(), |v| v.to_string());
        println!("param:       {} {} = {default}", param.name, param.kind);
    }
    show_states(context, report)?;
    println!("\n{}", report.sql.trim());
    Ok(())
}

/// `report show`'s lines on per-file states: whether the report may use them, how the last run
/// did (and why it read every file, when it did), and what is stored for each file.
fn show_states(context: &ReportContext, report: &ReportDefinition) -> Result<()> {
    if !report.incremental {
        println!("incremental: off (incremental = false)");
    }
    match context
        .history
        .last_states(&report.name)
        .map_err(Error::from)?
    {
        Some((run, outcome)) => println!("last run:    #{run}, {outcome}"),
        None => println!("last run:    none with per-file states recorded"),
    }
    let folder = state_folder(&context.state_dir, &report.name);
    if let Some(index) = crate::incremental::read_index(&folder) {
        let total: u64 = index.files.iter().map(|state| state.bytes).sum();
        println!(
            "states:      {} files, {} in {}",
            index.files.len(),
            crate::units::human_bytes(total),
            folder.display()
        );
        for state in &index.files {
            println!(
                "  {}\t{}",
                crate::units::human_bytes(state.bytes),
                state.path
            );
        }
    }
    Ok(())
}

/// `report validate [NAME]`: parse and plan without executing.
pub(crate) async fn validate(context: &ReportContext, args: &ReportValidateArgs) -> Result<()> {
    let engine = Engine::open(context.options.clone(), &context.tables).await?;
    let reports: Vec<&ReportDefinition> = match &args.name {
        Some(name) => vec![find(context, name)?],
        None => context.reports.iter().collect(),
    };
    for report in reports {
        PlannedReport::plan(&engine, report).await?;
        println!("{}: ok", report.name);
    }
    Ok(())
}

/// `report run NAME`.
pub(crate) async fn run(context: &ReportContext, args: &ReportRunArgs) -> Result<()> {
    let report = find(context, &args.name)?;
    let given = args
        .params
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| Error::Usage(format!("--param `{pair}`: expected NAME=VALUE")))
        })
        .collect::<Result<Vec<_>>>()?;
    let values = report.bind(&given).map_err(Error::from)?;
    let scheduled_for = match &args.at {
        Some(text) => Some(parse_at(report, text)?),
        None => None,
    };
    let run = ReportRun {
        full: args.full,
        ..ReportRun::start(&context.history, report, values, scheduled_for, 1)?
    };
    let summary = run.execute(context).await?;
    if args.stats {
        eprintln!("{}", summary.stats);
    }
    eprintln!(
        "report {}: {} rows, {} → {} (manifest {})",
        report.name,
        summary.rows,
        crate::units::human_bytes(summary.bytes),
        summary.output,
        summary.manifest
    );
    Ok(())
}

/// `report history [NAME]`.
pub(crate) fn history(context: &ReportContext, args: &ReportHistoryArgs) -> Result<()> {
    context.history.recover().map_err(Error::from)?;
    if args.alerts {
        return alert_history(context, args);
    }
    let runs = context
        .history
        .list(args.name.as_deref(), args.limit)
        .map_err(Error::from)?;
    println!(
        "id\treport\tscheduled_for\tstarted\tfinished\tattempt\tstatus\trows\tbytes\toutput\terror"
    );
    let time = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    for run in runs {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            run.id,
            run.report,
            time(run.scheduled_for),
            time(Some(run.started)),
            time(run.finished),
            run.attempt,
            run.status,
            number(run.rows),
            number(run.bytes),
            run.output.unwrap_or_default(),
            run.error.unwrap_or_default()
        );
    }
    Ok(())
}

/// `report history --alerts [NAME]`: each delivery of an alert to a target.
fn alert_history(context: &ReportContext, args: &ReportHistoryArgs) -> Result<()> {
    let alerts = context
        .history
        .alerts(args.name.as_deref(), args.limit)
        .map_err(Error::from)?;
    println!("sent\treport\tscheduled_for\trun_id\tevent\ttarget\ttries\tdelivered\terror");
    for alert in alerts {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            alert
                .sent
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            alert.report,
            alert
                .scheduled_for
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            alert.run_id.map(|id| id.to_string()).unwrap_or_default(),
            alert.event,
            alert.target,
            alert.tries,
            if alert.delivered { "yes" } else { "no" },
            alert.error.unwrap_or_default()
        );
    }
    Ok(())
}

/// How long a stopping daemon waits for alert deliveries still under way.
const ALERT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// `spillway schedule`: the daemon. Holds the history's lock, turns runs a killed daemon
/// left `running` into `incomplete`, then fires reports until SIGTERM or Ctrl-C.
pub(crate) async fn schedule(
    context: ReportContext,
    args: &ScheduleArgs,
    config: &ConfigFile,
) -> Result<()> {
    let _lock = report::acquire_daemon_lock(context.history.path()).map_err(Error::from)?;
    let recovered = context.history.recover().map_err(Error::from)?;
    if recovered > 0 {
        tracing::warn!("{recovered} runs left running by a stopped daemon are marked incomplete");
    }
    let policy_text = args
        .missed_runs
        .clone()
        .or_else(|| config.reports.missed_runs.clone())
        .unwrap_or_else(|| "run_latest".into());
    let missed = match policy_text.as_str() {
        "run_latest" => MissedRunPolicy::RunLatest,
        "skip" => MissedRunPolicy::Skip,
        other => {
            return Err(Error::Usage(format!(
                "--missed-runs `{other}`: expected run_latest or skip"
            )))
        }
    };
    let grace = args
        .grace
        .or(config.reports.grace_seconds)
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    let mut jobs = Vec::new();
    let mut last_runs = HashMap::new();
    for report in &context.reports {
        let job = report
            .job()
            .map_err(|e| Error::Config(format!("{}: {e}", report.path.display())))?;
        if let Some(job) = job {
            if let Some(last) = context
                .history
                .last_scheduled(&report.name)
                .map_err(Error::from)?
            {
                last_runs.insert(report.name.clone(), last);
            }
            jobs.push(job);
        }
    }
    if jobs.is_empty() {
        return Err(Error::Usage(
            "no report has a schedule: nothing to do".into(),
        ));
    }
    eprintln!(
        "spillway schedule: {} scheduled reports; stop with Ctrl-C or SIGTERM",
        jobs.len()
    );
    // Alert targets and every report's rules are checked before anything fires.
    let alerts = Arc::new(crate::alert::Alerts::from_config(config)?);
    let mut rules = HashMap::new();
    for report in context.reports.iter().filter(|r| r.schedule.is_some()) {
        let resolved = alerts.rules(
            &format!("report `{}` ({})", report.name, report.path.display()),
            &report.alerts,
        )?;
        if !resolved.is_empty() {
            rules.insert(report.name.clone(), resolved);
        }
    }
    let firing_alerts =
        crate::report::alerts::FiringAlerts::new(alerts, rules, context.history.clone());
    let runner = Arc::new(ReportRunner::new(Arc::new(context), firing_alerts));
    let scheduler = Scheduler::new(jobs, Arc::new(SystemClock), runner.clone(), missed);
    scheduler
        .run(last_runs, crate::process::signal::shutdown(), grace)
        .await;
    runner.alerts.drain(ALERT_GRACE).await;
    Ok(())
}
