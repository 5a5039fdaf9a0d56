//! The command line: clap definitions, and the one step that turns what the user typed (flags,
//! `SPILLWAY_*` variables, the config file) into validated, typed options for the modules that
//! do the work. Flag handlers only validate; doing happens in `query`, `gen` and `demo`.

use crate::catalog::{TableFormat, TableSpec, DEFAULT_INFER_ROWS};
use crate::config::{parse_size, ConfigFile, MemoryLimit};
use crate::engine::{parse_spill_compression, EngineOptions};
use crate::error::{Error, Result, EXIT_CODES_HELP};
use crate::output::{Destination, OutputFormat, OutputSpec, DEFAULT_TABLE_ROWS};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Spillway: SQL over CSV, Parquet and NDJSON file globs far larger than memory.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings of the engine, shared by every command that runs SQL.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Config file [default: ./spillway.toml if present]
    #[arg(long, global = true, env = "SPILLWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Memory ceiling for the process, e.g. 4GiB, 512MiB or 60%: 60% of it is the operators'
    /// pool (they spill when it is full), the rest headroom for memory DataFusion does not track
    /// [default: 50% of the machine's or cgroup's memory]
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_MEMORY_LIMIT",
        value_name = "SIZE"
    )]
    pub memory_limit: Option<String>,
    /// Folder for spill files [default: the system temp folder]
    #[arg(long, global = true, env = "SPILLWAY_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Cap on disk used by spill files, e.g. 100GiB [default: DataFusion's 100GiB]
    #[arg(long, global = true, env = "SPILLWAY_MAX_SPILL", value_name = "SIZE")]
    pub max_spill: Option<String>,
    /// Worker threads and partitions [default: all cores]
    #[arg(long, global = true, env = "SPILLWAY_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Rows per batch [default: 8192]
    #[arg(long, global = true, env = "SPILLWAY_BATCH_SIZE", value_name = "ROWS")]
    pub batch_size: Option<usize>,
    /// Compression of spill files: lz4_frame, zstd or uncompressed [default: lz4_frame]
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_SPILL_COMPRESSION",
        value_name = "CODEC"
    )]
    pub spill_compression: Option<String>,
    /// No progress bars
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL over tables and stream the result out
    #[command(after_help = EXIT_CODES_HELP)]
    Query(QueryArgs),
    /// Show a query's plan (with --analyze: run it and show metrics, spilling included)
    #[command(after_help = EXIT_CODES_HELP)]
    Explain(ExplainArgs),
    /// Generate deterministic synthetic data
    #[command(subcommand)]
    Gen(GenCommand),
    /// Generate a sample claims set (cached) and run the queries in queries/ over it
    #[command(after_help = EXIT_CODES_HELP)]
    Demo(DemoArgs),
    /// Saved, parameterised reports (the .sql files with a `/* report ... */` header)
    #[command(subcommand)]
    Report(ReportCommand),
    /// Run scheduled reports: a daemon that fires each report on its cron schedule
    #[command(after_help = EXIT_CODES_HELP)]
    Schedule(ScheduleArgs),
    /// Serve tables and reports over the PostgreSQL wire protocol (psql, BI dashboards)
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Print a SCRAM-SHA-256 verifier for a password read from stdin (for [server.users])
    Password(PasswordArgs),
}

/// Help text after `serve --help`: the config it reads and how clients connect.
pub const SERVE_HELP: &str = "\
Settings come from flags, else [server] in spillway.toml:
  [server]
  listen = \"127.0.0.1:5432\"        # a non-loopback address needs [server.users]
  max_connections = 64
  statement_timeout = \"5m\"         # clients may lower it with SET statement_timeout
  query_memory = \"25%\"             # of the memory pool, per statement
  cache_size = \"256MiB\"            # result cache (in the memory pool); 0 turns it off
  tls_cert = \"server.crt\"          # PEM; with tls_key, TLS is required by default
  tls_key = \"server.key\"
  [server.users.analyst]
  scram = \"SCRAM-SHA-256$4096:...\" # from `spillway password`; or password_env = \"VAR\"

Connect: psql \"host=127.0.0.1 port=5432 user=analyst dbname=spillway sslmode=require\"
Read-only: queries, EXPLAIN, SHOW, cursors; DDL, DML, COPY, file paths and engine SETs are refused.
SHOW spillway_stats shows connections, cache hits and misses, and memory.";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder of report .sql files served as views (parameterised ones as table functions)
    /// [default: `[reports] folder`, else queries]
    #[arg(long, value_name = "DIR")]
    pub queries: Option<PathBuf>,
    /// A table: NAME=LOCATION (as for `query`); config tables are served too
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
    /// Address to listen on [default: `[server] listen`, else 127.0.0.1:5432]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Connections at once; the next client gets an error [default: 64]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Longest a statement may run, e.g. 30s, 5m; 0 for no limit [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub statement_timeout: Option<String>,
    /// Memory one statement may hold: a size or a share of the pool [default: 25%]
    #[arg(long, value_name = "SIZE|PERCENT")]
    pub query_memory: Option<String>,
    /// Result cache for repeated dashboard queries, held in the memory pool; 0 turns it off
    /// [default: 256MiB, or an eighth of the pool if less]
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// TLS certificate chain (PEM) [default: `[server] tls_cert`]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8 or RSA) [default: `[server] tls_key`]
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PasswordArgs {}

/// Where reports and their tables come from.
#[derive(Debug, Args)]
pub struct ReportSource {
    /// Folder of report .sql files [default: `[reports] folder`, else queries]
    #[arg(long, value_name = "DIR")]
    pub queries: Option<PathBuf>,
    /// Run history database [default: `[reports] history`, else .spillway/history.sqlite]
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// A table: NAME=LOCATION (as for `query`); config tables are registered too
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// List reports with their schedules and next three fire times
    List(ReportSourceArgs),
    /// Show a report's header, parameters and SQL
    Show(ReportNameArgs),
    /// Parse and plan reports against the catalog without running them
    #[command(after_help = EXIT_CODES_HELP)]
    Validate(ReportValidateArgs),
    /// Run a report now, or for a past scheduled time (--at) as a backfill
    #[command(after_help = EXIT_CODES_HELP)]
    Run(ReportRunArgs),
    /// Past runs, newest first
    History(ReportHistoryArgs),
}

#[derive(Debug, Args)]
pub struct ReportSourceArgs {
    #[command(flatten)]
    pub source: ReportSource,
}

#[derive(Debug, Args)]
pub struct ReportNameArgs {
    pub name: String,
    #[command(flatten)]
    pub source: ReportSource,
}

#[derive(Debug, Args)]
pub struct ReportValidateArgs {
    /// A report name [default: every report]
    pub name: Option<String>,
    #[command(flatten)]
    pub source: ReportSource,
}

#[derive(Debug, Args)]
pub struct ReportRunArgs {
    pub name: String,
    /// A parameter value: NAME=VALUE (lists comma-separated); repeatable
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// The scheduled time to run for: YYYY-MM-DD (midnight in the report's zone) or RFC 3339
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    #[command(flatten)]
    pub source: ReportSource,
}

#[derive(Debug, Args)]
pub struct ReportHistoryArgs {
    /// Only this report's runs
    pub name: Option<String>,
    /// Newest N runs
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub source: ReportSource,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub source: ReportSource,
    /// After downtime: run_latest runs the most recent missed firing once; skip runs none
    /// [default: `[reports] missed_runs`, else run_latest]
    #[arg(long, value_name = "POLICY")]
    pub missed_runs: Option<String>,
    /// On SIGTERM, seconds running reports may take to finish before they are cancelled
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<u64>,
}

/// Where the SQL and the tables come from.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// SQL text; several statements may be separated by `;` [default: -f FILE, else stdin]
    pub sql: Option<String>,
    /// Read SQL from a file
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE.sql",
        conflicts_with = "sql"
    )]
    pub file: Option<PathBuf>,
    /// A table: NAME=LOCATION, where LOCATION is a file, a folder or a glob (*, **, ?, [..], {a,b});
    /// the format comes from the extension (.csv, .csv.gz, .tsv, .parquet, .ndjson, .json)
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
    /// The format of a table whose file names do not tell it: NAME=csv|parquet|ndjson
    #[arg(long = "table-format", value_name = "NAME=FORMAT")]
    pub table_formats: Vec<String>,
    /// Rows read per file to infer a schema when a table has none [default: 1000]
    #[arg(long, value_name = "ROWS")]
    pub infer_rows: Option<usize>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub sql: SqlArgs,
    /// Result format [default: from -o's extension; else table on a terminal, csv when piped]
    #[arg(long, value_name = "FORMAT", value_parser = parse_output_format)]
    pub format: Option<OutputFormat>,
    /// Write the result to a file, atomically (a temporary name, renamed when complete)
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Rows the table format shows (0: all)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TABLE_ROWS)]
    pub max_rows: usize,
    /// Print rows, files and bytes scanned, time, spilling and peak memory after the query
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub sql: SqlArgs,
    /// Run the query and show each operator's metrics (rows, time, spill count and bytes)
    #[arg(long)]
    pub analyze: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GenFormatArg {
    Csv,
    Parquet,
}

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Pharmacy claims, one row per dispensed prescription (schema in the README)
    Claims(GenClaimsArgs),
    /// The db-benchmark group-by table: id1..id6, v1..v3
    H2o(GenH2oArgs),
}

#[derive(Debug, Args)]
pub struct GenClaimsArgs {
    /// Rows in all
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Files to split the rows into
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    #[arg(long, value_enum, default_value_t = GenFormatArg::Csv)]
    pub format: GenFormatArg,
    /// Output folder (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed: the same seed gives the same files, whatever the thread count
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First fill date
    #[arg(long, default_value = "2024-01-01", value_name = "YYYY-MM-DD")]
    pub start: chrono::NaiveDate,
    /// Days of fills from --start
    #[arg(long, default_value_t = 366)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct GenH2oArgs {
    /// Rows in all
    #[arg(long, default_value_t = 10_000_000)]
    pub rows: u64,
    /// K: distinct values of id1, id2, id4, id5 (id3 and id6 have rows/K)
    #[arg(long, default_value_t = 100)]
    pub groups: u64,
    /// Files to split the rows into
    #[arg(long, default_value_t = 1)]
    pub files: usize,
    #[arg(long, value_enum, default_value_t = GenFormatArg::Csv)]
    pub format: GenFormatArg,
    /// Output folder (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows of sample claims
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Folder of .sql files to run
    #[arg(long, default_value = "queries", value_name = "DIR")]
    pub queries: PathBuf,
    /// Where the sample data is cached [default: $XDG_CACHE_HOME or ~/.cache, /spillway]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

fn parse_output_format(text: &str) -> std::result::Result<OutputFormat, String> {
    OutputFormat::parse(text)
}

/// The engine options: flags (and their `SPILLWAY_*` variables, which clap reads) over the
/// config file's `[engine]`, over defaults.
pub fn engine_options(args: &EngineArgs, config: &ConfigFile) -> Result<EngineOptions> {
    let file = &config.engine;
    let mut options = EngineOptions::default();
    let memory_limit = pick(
        &args.memory_limit,
        &file.memory_limit,
        "--memory-limit",
        "engine.memory_limit",
    );
    if let Some((text, origin)) = memory_limit {
        let limit = MemoryLimit::parse(text).map_err(|e| origin.error(e))?;
        options.memory_limit = limit.resolve(crate::config::available_memory());
    }
    if let Some((text, origin)) = pick(
        &args.max_spill,
        &file.max_spill,
        "--max-spill",
        "engine.max_spill",
    ) {
        options.max_spill = Some(parse_size(text).map_err(|e| origin.error(e))?);
    }
    if let Some((text, origin)) = pick(
        &args.spill_compression,
        &file.spill_compression,
        "--spill-compression",
        "engine.spill_compression",
    ) {
        options.spill_compression = parse_spill_compression(text).map_err(|e| origin.error(e))?;
    }
    options.spill_dir = args.spill_dir.clone().or_else(|| file.spill_dir.clone());
    options.s3 = config.storage.s3.clone();
    if let Some((workers, origin)) =
        pick(&args.workers, &file.workers, "--workers", "engine.workers")
    {
        if *workers == 0 {
            return Err(origin.error("must be at least 1".into()));
        }
        options.workers = *workers;
    }
    options.batch_size = crate::engine::batch_size_for(
        crate::engine::pool_size(options.memory_limit),
        options.workers,
    );
    if let Some((size, origin)) = pick(
        &args.batch_size,
        &file.batch_size,
        "--batch-size",
        "engine.batch_size",
    ) {
        if *size == 0 {
            return Err(origin.error("must be at least 1".into()));
        }
        options.batch_size = *size;
    }
    Ok(options)
}

/// Where a setting came from, so its error names the flag or the config key.
enum Origin {
    Flag(&'static str),
    ConfigKey(&'static str),
}

impl Origin {
    fn error(&self, message: String) -> Error {
        match self {
            Origin::Flag(flag) => Error::Usage(format!("{flag}: {message}")),
            Origin::ConfigKey(key) => Error::Config(format!("{key}: {message}")),
        }
    }
}

fn pick<'a, T>(
    flag: &'a Option<T>,
    file: &'a Option<T>,
    flag_name: &'static str,
    key: &'static str,
) -> Option<(&'a T, Origin)> {
    match (flag, file) {
        (Some(value), _) => Some((value, Origin::Flag(flag_name))),
        (None, Some(value)) => Some((value, Origin::ConfigKey(key))),
        (None, None) => None,
    }
}

/// The table specs: the config file's tables, then `--table` flags (a flag naming a configured
/// table replaces its location and keeps its other settings).
pub fn table_specs(args: &SqlArgs, config: &ConfigFile) -> Result<Vec<TableSpec>> {
    let infer_rows = args
        .infer_rows
        .or(config.engine.infer_rows)
        .unwrap_or(DEFAULT_INFER_ROWS);
    if infer_rows == 0 {
        return Err(Error::Usage("--infer-rows: must be at least 1".into()));
    }
    let mut specs = Vec::new();
    for (name, section) in &config.tables {
        specs.push(TableSpec::from_section(name, section, infer_rows)?);
    }
    for table in &args.tables {
        let (name, location) = split_assignment("--table", table, "NAME=LOCATION")?;
        match specs.iter_mut().find(|spec| spec.name == name) {
            Some(spec) => spec.location = location.to_string(),
            None => {
                let mut spec = TableSpec::at(name, location);
                spec.infer_rows = infer_rows;
                specs.push(spec);
            }
        }
    }
    for assignment in &args.table_formats {
        let (name, format) = split_assignment("--table-format", assignment, "NAME=FORMAT")?;
        let format = TableFormat::parse(format)
            .map_err(|e| Error::Usage(format!("--table-format {name}: {e}")))?;
        let spec = specs
            .iter_mut()
            .find(|spec| spec.name == name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--table-format {name}: no table `{name}` (add --table {name}=LOCATION)"
                ))
            })?;
        spec.format = Some(format);
    }
    Ok(specs)
}

fn split_assignment<'a>(flag: &str, text: &'a str, shape: &str) -> Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((name, value)) if is_identifier(name) && !value.is_empty() => Ok((name, value)),
        _ => Err(Error::Usage(format!(
            "{flag} `{text}`: expected {shape}, with NAME a plain SQL name (letters, digits, _)"
        ))),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The SQL to run: the argument, the file, or stdin.
pub fn sql_text(args: &SqlArgs) -> Result<String> {
    use std::io::{IsTerminal, Read};
    if let Some(sql) = &args.sql {
        return Ok(sql.clone());
    }
    if let Some(path) = &args.file {
        return std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("-f {}: {e}", path.display())));
    }
    if std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "no SQL: give it as an argument, with -f FILE.sql, or on stdin".into(),
        ));
    }
    let mut sql = String::new();
    std::io::stdin()
        .read_to_string(&mut sql)
        .map_err(|e| Error::Usage(format!("reading SQL from stdin: {e}")))?;
    Ok(sql)
}

/// The output: `-o` (format from its extension unless --format says) or stdout.
pub fn output_spec(args: &QueryArgs) -> Result<OutputSpec> {
    let destination = match &args.output {
        Some(path) if path.to_string_lossy().starts_with("s3://") => {
            Destination::Object(path.to_string_lossy().into_owned())
        }
        Some(path) => Destination::File(path.clone()),
        None => Destination::Stdout,
    };
    let format = match (&args.format, &args.output) {
        (Some(format), _) => *format,
        (None, Some(path)) => OutputFormat::from_path(path).ok_or_else(|| {
            Error::Usage(format!(
                "-o {}: cannot tell the format from the extension; add --format csv|tsv|json|ndjson|parquet|arrow",
                path.display()
            ))
        })?,
        (None, None) => OutputFormat::default_for_stdout(),
    };
    Ok(OutputSpec {
        format,
        destination,
        max_table_rows: args.max_rows,
        manifest: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn table_flags_need_a_plain_name() {
        assert!(split_assignment("--table", "claims=data/*.csv", "NAME=LOCATION").is_ok());
        assert!(split_assignment("--table", "data/*.csv", "NAME=LOCATION").is_err());
        assert!(split_assignment("--table", "bad name=x.csv", "NAME=LOCATION").is_err());
    }

    #[test]
    fn flags_override_the_config_file_and_errors_name_their_origin() {
        let config = ConfigFile::parse("[engine]\nmemory_limit = \"lots\"\nworkers = 3\n").unwrap();
        let mut args = EngineArgs {
            config: None,
            memory_limit: None,
            spill_dir: None,
            max_spill: None,
            workers: None,
            batch_size: None,
            spill_compression: None,
            quiet: false,
        };
        let error = engine_options(&args, &config).unwrap_err();
        assert!(error.to_string().contains("engine.memory_limit"), "{error}");
        args.memory_limit = Some("64MiB".into());
        args.workers = Some(1);
        let options = engine_options(&args, &config).unwrap();
        assert_eq!(options.memory_limit, 64 << 20);
        assert_eq!(options.workers, 1);
    }
}
