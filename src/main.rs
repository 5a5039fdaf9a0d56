//! Spillway: SQL over CSV, Parquet and NDJSON file globs far larger than memory, on Apache
//! DataFusion, under a hard memory ceiling, with results streamed out.
//!
//! This file parses the command line, builds the runtime, dispatches, and turns the outcome
//! into one error line and an exit code. Ctrl-C and SIGTERM cancel the running command by
//! dropping it, which stops DataFusion's tasks, discards temporary outputs and removes spill
//! files before the process exits.
//!
//! The modules read top-down like the data path (DESIGN.md, "Layout"): `cli` (flags → options,
//! per-command glue) → `serve` / `report` → `query` → `engine` (the one SessionContext, with
//! Spillway's DataFusion extensions under `engine/`) → `catalog` (tables from specs) / `output`
//! / `progress` / `stats` → `storage` (locations, globs, object stores) → `config` / `units` /
//! `process`. `schedule` runs reports on cron; `gen` makes deterministic test data.

mod alert;
mod catalog;
mod cli;
mod cluster;
mod config;
mod engine;
mod error;
mod gen;
mod incremental;
mod inspect;
mod output;
mod privacy;
mod process;
mod progress;
mod query;
mod report;
mod schedule;
mod serve;
mod shell;
mod stats;
mod storage;
mod units;

use crate::cli::demo;
use crate::cli::gen::{gen_blocking, generate_claims, generate_h2o};
use crate::cli::{Cli, Command, GenCommand};
use crate::config::ConfigFile;
use crate::engine::EngineOptions;
use crate::error::{Error, Result};
use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: crate::process::allocator::ExitOnExhaustion =
    crate::process::allocator::ExitOnExhaustion;

fn main() -> ExitCode {
    // Plain `spillway` at a terminal (engine flags allowed, no command) opens the shell.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    use std::io::IsTerminal;
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error)
            if error.kind() == clap::error::ErrorKind::MissingSubcommand
                && std::io::stdin().is_terminal()
                && std::io::stdout().is_terminal() =>
        {
            args.push("shell".into());
            Cli::parse_from(args)
        }
        Err(error) => error.exit(),
    };
    // The daemon logs one line per run at info level; other commands only warn.
    let daemon = matches!(
        cli.command,
        Command::Schedule(_)
            | Command::Serve(_)
            | Command::Cluster(
                cli::ClusterCommand::Scheduler(_) | cli::ClusterCommand::Executor(_)
            )
    );
    init_logging(if daemon { "info" } else { "warn" });
    let outcome = load_config(&cli).and_then(|(config, options)| run(cli, config, options));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spillway: error: {error}");
            crate::process::allocator::error_reported();
            ExitCode::from(error.exit_code())
        }
    }
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPILLWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn load_config(cli: &Cli) -> Result<(ConfigFile, EngineOptions)> {
    let config = ConfigFile::load(cli.engine.config.as_deref())?;
    let options = cli::engine_options(&cli.engine, &config)?;
    Ok((config, options))
}

fn run(cli: Cli, config: ConfigFile, options: EngineOptions) -> Result<()> {
    crate::process::allocator::tune_glibc_malloc(options.workers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers.max(1))
        .thread_name("spillway-worker")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    // The daemon stops gracefully on its own signal handling (finish or cancel running
    // reports, exit 0); every other command is cancelled by dropping it.
    // The shell handles Ctrl-C itself (it cancels the running statement, not the session).
    let daemon = matches!(
        cli.command,
        Command::Schedule(_)
            | Command::Serve(_)
            | Command::Shell(_)
            | Command::Cluster(
                cli::ClusterCommand::Scheduler(_) | cli::ClusterCommand::Executor(_)
            )
    );
    let result = runtime.block_on(async move {
        let result = if daemon {
            dispatch(cli, config, options).await
        } else {
            tokio::select! {
                result = dispatch(cli, config, options) => result,
                () = crate::process::signal::shutdown() => Err(Error::Interrupted),
            }
        };
        // A cluster job whose reader stopped early is being cancelled: let that reach the
        // scheduler before the process ends.
        crate::cluster::finish_cancels().await;
        result
    });
    // Dropping the runtime waits for the output thread to discard its temporary file and for
    // cancelled tasks to release their spill files.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn dispatch(cli: Cli, config: ConfigFile, options: EngineOptions) -> Result<()> {
    let show_progress = progress::wanted(cli.engine.quiet);
    match cli.command {
        Command::Query(args) => cli::query::query(args, &config, options, show_progress).await,
        Command::Explain(args) => cli::query::explain(args, &config, options).await,
        Command::Gen(GenCommand::Claims(args)) => {
            gen_blocking(move || generate_claims(&args, options.workers, show_progress)).await
        }
        Command::Gen(GenCommand::H2o(args)) => {
            gen_blocking(move || generate_h2o(&args, options.workers, show_progress)).await
        }
        Command::Demo(args) => demo::run(&args, &config, options, show_progress).await,
        Command::Report(command) => cli::report::dispatch(command, &config, options).await,
        Command::Schedule(args) => {
            let context = cli::report::context(&args.source, &config, options)?;
            cli::report::schedule(context, &args, &config).await
        }
        Command::Serve(args) => cli::serve::serve(args, &config, options).await,
        Command::Password(_) => cli::serve::password(),
        Command::Cluster(command) => cli::cluster::run(command, options).await,
        Command::Audit(command) => cli::audit::run(command, &config),
        Command::Describe(args) => cli::inspect::describe(args, &config, options).await,
        Command::Profile(args) => cli::inspect::profile(args, &config, options).await,
        Command::Shell(args) => {
            let specs = cli::options::table_specs(&args.tables, &config)?;
            let engine = crate::engine::Engine::open(options, &specs).await?;
            let shell = crate::shell::ShellOptions {
                max_rows: args.max_rows,
                history: args.history,
            };
            crate::shell::run(engine, shell).await
        }
    }
}
