//! The `spillway` binary: parse the command line, build the runtime, dispatch, and turn the
//! outcome into one error line and an exit code. Ctrl-C and SIGTERM cancel the running command
//! by dropping it, which stops DataFusion's tasks, discards temporary outputs and removes spill
//! files before the process exits.

use clap::Parser;
use spillway::cli::{self, Cli, Command, GenCommand, ReportCommand};
use spillway::config::ConfigFile;
use spillway::engine::{Engine, EngineOptions};
use spillway::error::{Error, Result};
use spillway::gen::{self, ClaimsOptions, GenFormat, H2oOptions};
use spillway::reporting::commands;
use spillway::{demo, progress, query};
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: spillway::allocator::ExitOnExhaustion = spillway::allocator::ExitOnExhaustion;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs one line per run at info level; other commands only warn.
    let daemon = matches!(cli.command, Command::Schedule(_) | Command::Serve(_));
    init_logging(if daemon { "info" } else { "warn" });
    let outcome = load_config(&cli).and_then(|(config, options)| run(cli, config, options));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spillway: error: {error}");
            spillway::allocator::error_reported();
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
    spillway::allocator::tune_glibc_malloc(options.workers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers.max(1))
        .thread_name("spillway-worker")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    // The daemon stops gracefully on its own signal handling (finish or cancel running
    // reports, exit 0); every other command is cancelled by dropping it.
    let daemon = matches!(cli.command, Command::Schedule(_) | Command::Serve(_));
    let result = runtime.block_on(async move {
        if daemon {
            return dispatch(cli, config, options).await;
        }
        tokio::select! {
            result = dispatch(cli, config, options) => result,
            () = spillway::signal::shutdown() => Err(Error::Interrupted),
        }
    });
    // Dropping the runtime waits for the output thread to discard its temporary file and for
    // cancelled tasks to release their spill files.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn dispatch(cli: Cli, config: ConfigFile, options: EngineOptions) -> Result<()> {
    let show_progress = progress::wanted(cli.engine.quiet);
    match cli.command {
        Command::Query(args) => {
            let engine = open_engine(&args.sql, &config, options).await?;
            let sql = cli::sql_text(&args.sql)?;
            let run_options = query::RunOptions {
                output: cli::output_spec(&args)?,
                stats: args.stats,
                progress: show_progress,
            };
            query::run_script(&engine, &sql, &run_options)
                .await
                .map(|_| ())
        }
        Command::Explain(args) => {
            let engine = open_engine(&args.sql, &config, options).await?;
            let sql = cli::sql_text(&args.sql)?;
            query::explain(&engine, &sql, args.analyze).await
        }
        Command::Gen(GenCommand::Claims(args)) => {
            gen_blocking(move || generate_claims(&args, options.workers, show_progress)).await
        }
        Command::Gen(GenCommand::H2o(args)) => {
            gen_blocking(move || generate_h2o(&args, options.workers, show_progress)).await
        }
        Command::Demo(args) => demo::run(&args, &config, options, show_progress).await,
        Command::Report(command) => run_report_command(command, &config, options).await,
        Command::Schedule(args) => {
            let context = commands::context(&args.source, &config, options)?;
            commands::schedule(context, &args, &config).await
        }
        Command::Serve(args) => serve(args, &config, options).await,
        Command::Password(_) => password(),
    }
}

/// `serve`: register the tables, load the reports, and serve until SIGTERM (exit 0).
async fn serve(args: cli::ServeArgs, config: &ConfigFile, options: EngineOptions) -> Result<()> {
    let sql = cli::SqlArgs {
        sql: None,
        file: None,
        tables: args.tables.clone(),
        table_formats: Vec::new(),
        infer_rows: None,
    };
    let specs = cli::table_specs(&sql, config)?;
    let folder = args
        .queries
        .clone()
        .or_else(|| config.reports.folder.clone())
        .unwrap_or_else(|| std::path::PathBuf::from("queries"));
    let reports = if folder.is_dir() || args.queries.is_some() {
        spillway::report::load_reports(&folder).map_err(Error::from)?
    } else {
        Vec::new()
    };
    let flags = spillway::serve::ServeFlags {
        listen: args.listen,
        max_connections: args.max_connections,
        statement_timeout: args.statement_timeout,
        query_memory: args.query_memory,
        cache_size: args.cache_size,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    };
    let pool = spillway::engine::pool_size(options.memory_limit);
    let serve_options = spillway::serve::ServeOptions::resolve(&flags, &config.server, pool)?;
    let mut engine = Engine::new(options)?;
    for spec in &specs {
        engine.register_table(spec).await?;
    }
    spillway::serve::run(engine, specs, reports, serve_options).await
}

/// `password`: read one line from stdin, print its SCRAM-SHA-256 verifier.
fn password() -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::Usage(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(Error::Usage(
            "give the password on stdin, e.g. `printf %s \"$PW\" | spillway password`".into(),
        ));
    }
    let verifier = spillway::serve::Verifier::from_password(password).map_err(Error::Internal)?;
    println!("{verifier}");
    Ok(())
}

/// Data generation is CPU work on its own threads: keep it off the async workers.
async fn gen_blocking(work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("generator thread: {e}")))?
}

async fn run_report_command(
    command: ReportCommand,
    config: &ConfigFile,
    options: EngineOptions,
) -> Result<()> {
    match command {
        ReportCommand::List(args) => {
            commands::list(&commands::context(&args.source, config, options)?)
        }
        ReportCommand::Show(args) => {
            commands::show(&commands::context(&args.source, config, options)?, &args)
        }
        ReportCommand::Validate(args) => {
            commands::validate(&commands::context(&args.source, config, options)?, &args).await
        }
        ReportCommand::Run(args) => {
            commands::run(&commands::context(&args.source, config, options)?, &args).await
        }
        ReportCommand::History(args) => {
            commands::history(&commands::context(&args.source, config, options)?, &args)
        }
    }
}

async fn open_engine(
    sql: &cli::SqlArgs,
    config: &ConfigFile,
    options: EngineOptions,
) -> Result<Engine> {
    let specs = cli::table_specs(sql, config)?;
    let mut engine = Engine::new(options)?;
    for spec in &specs {
        engine.register_table(spec).await?;
    }
    Ok(engine)
}

fn gen_format(format: cli::GenFormatArg) -> GenFormat {
    match format {
        cli::GenFormatArg::Csv => GenFormat::Csv,
        cli::GenFormatArg::Parquet => GenFormat::Parquet,
    }
}

fn generate_claims(args: &cli::GenClaimsArgs, workers: usize, show_progress: bool) -> Result<()> {
    let options = ClaimsOptions {
        rows: args.rows,
        files: args.files,
        format: gen_format(args.format),
        out: args.out.clone(),
        seed: args.seed,
        start: args.start,
        days: args.days,
        threads: workers,
    };
    generate(args.rows, show_progress, |progress| {
        gen::generate_claims(&options, progress)
    })
}

fn generate_h2o(args: &cli::GenH2oArgs, workers: usize, show_progress: bool) -> Result<()> {
    let options = H2oOptions {
        rows: args.rows,
        groups: args.groups,
        files: args.files,
        format: gen_format(args.format),
        out: args.out.clone(),
        seed: args.seed,
        threads: workers,
    };
    generate(args.rows, show_progress, |progress| {
        gen::generate_h2o(&options, progress)
    })
}

/// Run a generator with a progress bar, then say what it wrote and how fast.
fn generate(
    rows: u64,
    show_progress: bool,
    generator: impl FnOnce(&(dyn Fn(u64) + Sync)) -> std::result::Result<gen::GenSummary, gen::GenError>,
) -> Result<()> {
    let bar = progress::bar(show_progress, rows, "rows");
    let started = std::time::Instant::now();
    let summary = generator(&|written| bar.inc(written)).map_err(spillway::demo::gen_error)?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "wrote {} rows in {} files ({}) in {:.2}s: {:.0} rows/s",
        summary.rows,
        summary.files.len(),
        spillway::stats::human_bytes(summary.bytes),
        seconds,
        summary.rows as f64 / seconds
    );
    Ok(())
}
