//! The command line: clap definitions, and the one step that turns what the user typed (flags,
//! `SPILLWAY_*` variables, the config file) into validated, typed options for the modules that
//! do the work. Flag handlers only validate; doing happens in `query`, `gen` and `demo`.

pub(crate) mod audit;
pub(crate) mod cluster;
pub(crate) mod demo;
pub(crate) mod gen;
pub(crate) mod inspect;
pub(crate) mod options;
pub(crate) mod query;
pub(crate) mod report;
pub(crate) mod serve;

pub(crate) use options::engine_options;

use crate::error::EXIT_CODES_HELP;
use crate::output::{OutputFormat, DEFAULT_TABLE_ROWS};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Spillway: SQL over CSV, Parquet and NDJSON file globs far larger than memory.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, about, after_help = EXIT_CODES_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Settings of the engine, shared by every command that runs SQL.
#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// Config file [default: ./spillway.toml if present]
    #[arg(long, global = true, env = "SPILLWAY_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Memory ceiling for the process, e.g. 4GiB, 512MiB or 60%: 60% of it is the operators'
    /// pool (they spill when it is full), the rest headroom for memory DataFusion does not track
    /// [default: 50% of the machine's or cgroup's memory]
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_MEMORY_LIMIT",
        value_name = "SIZE"
    )]
    pub(crate) memory_limit: Option<String>,
    /// Folder for spill files [default: the system temp folder]
    #[arg(long, global = true, env = "SPILLWAY_SPILL_DIR", value_name = "DIR")]
    pub(crate) spill_dir: Option<PathBuf>,
    /// Cap on disk used by spill files, e.g. 100GiB [default: DataFusion's 100GiB]
    #[arg(long, global = true, env = "SPILLWAY_MAX_SPILL", value_name = "SIZE")]
    pub(crate) max_spill: Option<String>,
    /// Worker threads and partitions [default: all cores]
    #[arg(long, global = true, env = "SPILLWAY_WORKERS", value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// Rows per batch [default: 8192]
    #[arg(long, global = true, env = "SPILLWAY_BATCH_SIZE", value_name = "ROWS")]
    pub(crate) batch_size: Option<usize>,
    /// Compression of spill files: lz4_frame, zstd or uncompressed [default: lz4_frame]
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_SPILL_COMPRESSION",
        value_name = "CODEC"
    )]
    pub(crate) spill_compression: Option<String>,
    /// No progress bars
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// Run statements on a Ballista cluster: its scheduler, df://HOST:PORT [default: [cluster]
    /// scheduler in spillway.toml, else in this process]
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_CLUSTER",
        value_name = "df://HOST:PORT"
    )]
    pub(crate) cluster: Option<String>,
    /// Which statements run on the cluster: cluster (all that read files), local (none), auto
    /// (those reading at least [cluster] auto_threshold, default 1GiB) [default: [cluster]
    /// mode, else cluster]
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_CLUSTER_MODE",
        value_name = "MODE"
    )]
    pub(crate) cluster_mode: Option<String>,
    /// Run under this [privacy.roles.NAME] instead of [privacy] default_role; only the owner
    /// of spillway.toml may pick a role
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) role: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Run a Ballista cluster node: the scheduler, or an executor
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The privacy audit log ([privacy] audit_log): check its hash chain, or show its records
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A table's columns and types (a table of spillway.toml, or a file, folder or glob);
    /// --toml prints a [tables.NAME] block to paste into spillway.toml
    #[command(after_help = EXIT_CODES_HELP)]
    Describe(DescribeArgs),
    /// Per column: type, nulls, min, max, approximate distinct count, and for numbers mean and
    /// quartiles, in one pass under the memory limit
    #[command(after_help = EXIT_CODES_HELP)]
    Profile(ProfileArgs),
    /// An interactive SQL session (also plain `spillway` on a terminal): history, completion,
    /// \d, \timing, \o FILE, \i FILE, \q; Ctrl-C cancels the running statement
    Shell(ShellArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    #[command(flatten)]
    pub(crate) tables: TableArgs,
    /// Rows a result shows (0: all); `\o FILE` writes every row
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TABLE_ROWS)]
    pub(crate) max_rows: usize,
    /// History file [default: ~/.spillway_history]
    #[arg(long, env = "SPILLWAY_HISTORY", value_name = "FILE")]
    pub(crate) history: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DescribeArgs {
    /// A table of spillway.toml, or a file, folder or glob (local, s3://, az://, gs://, https://)
    pub(crate) target: String,
    /// Print a [tables.NAME] block with every column's type, ready for spillway.toml
    #[arg(long)]
    pub(crate) toml: bool,
    /// Rows read per file to infer the types [default: 1000]
    #[arg(long, value_name = "ROWS")]
    pub(crate) infer_rows: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// A table of spillway.toml, or a file, folder or glob (local, s3://, az://, gs://, https://)
    pub(crate) target: String,
    /// Output format [default: table on a terminal, csv when piped]
    #[arg(long, value_name = "FORMAT", value_parser = parse_output_format)]
    pub(crate) format: Option<OutputFormat>,
    /// Rows read per file to infer the types [default: 1000]
    #[arg(long, value_name = "ROWS")]
    pub(crate) infer_rows: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain; name the first record that was edited, deleted or moved (exit 5)
    #[command(after_help = EXIT_CODES_HELP)]
    Verify(AuditVerifyArgs),
    /// Print records, oldest first: time, user, role, entry point, outcome, rows, SQL
    Show(AuditShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// The log [default: [privacy] audit_log]
    #[arg(long, value_name = "FILE")]
    pub(crate) log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditShowArgs {
    /// The log [default: [privacy] audit_log]
    #[arg(long, value_name = "FILE")]
    pub(crate) log: Option<PathBuf>,
    /// Only records of this user
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Only records from this time on: 2026-12-01 or 2026-12-01T08:00:00Z
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Print the records as JSON Lines, as stored
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Ballista's scheduler, with Spillway's functions and stores; clients use --cluster
    /// df://HOST:PORT
    Scheduler(ClusterSchedulerArgs),
    /// A Ballista executor running stages as Spillway does: its functions, physical rules,
    /// memory limit and spilling (--memory-limit, --spill-dir, --max-spill), and stores
    Executor(ClusterExecutorArgs),
    /// Executors (slots, last heartbeat) and queued and running jobs of the scheduler named by
    /// --cluster (or [cluster] scheduler)
    Status(ClusterStatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ClusterStatusArgs {
    /// Fail (exit 8) when fewer executors than this are registered: a readiness check
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) min_executors: usize,
    /// Print the status as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterSchedulerArgs {
    /// Address to listen on (port 0: any free port, printed on stderr)
    #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
    pub(crate) listen: std::net::SocketAddr,
    /// Host name executors reach this scheduler at (they report task results there)
    /// [default: the --listen address, or this machine's host name when it listens on all]
    #[arg(long, value_name = "HOST")]
    pub(crate) advertise: Option<String>,
    /// An executor silent this long is lost: its running tasks, and the stage outputs only it
    /// held, run again on the others (executors report every 2 s)
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(4..))]
    pub(crate) executor_timeout: u64,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterExecutorArgs {
    /// The scheduler to register with
    #[arg(long, value_name = "df://HOST:PORT")]
    pub(crate) scheduler: String,
    /// Address announced to the scheduler, clients and other executors (a name such as a
    /// container's host name, or an IP)
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub(crate) host: String,
    /// Local IP address to listen on [default: --host when it is an IP, else 0.0.0.0]
    #[arg(long, value_name = "IP")]
    pub(crate) bind: Option<std::net::IpAddr>,
    /// Arrow Flight port (shuffle reads, result fetches)
    #[arg(long, default_value_t = 50051, value_name = "PORT")]
    pub(crate) flight_port: u16,
    /// gRPC port (the scheduler launches and cancels tasks here)
    #[arg(long, default_value_t = 50052, value_name = "PORT")]
    pub(crate) grpc_port: u16,
    /// Folder for shuffle and result files [default: spillway-executor-FLIGHTPORT in the
    /// system temp folder]
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
}

/// Help text after `serve --help`: the config it reads and how clients connect.
pub(crate) const SERVE_HELP: &str = "\
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
Read-only: queries, EXPLAIN, DESCRIBE, SHOW, cursors; DDL, DML, COPY, file paths and engine SETs are refused.
SHOW spillway_stats shows connections, cache hits and misses, and memory.";

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Folder of report .sql files served as views (parameterised ones as table functions)
    /// [default: `[reports] folder`, else queries]
    #[arg(long, value_name = "DIR")]
    pub(crate) queries: Option<PathBuf>,
    /// A table: NAME=LOCATION (as for `query`); config tables are served too
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub(crate) tables: Vec<String>,
    /// Address to listen on [default: `[server] listen`, else 127.0.0.1:5432]
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) listen: Option<String>,
    /// Connections at once; the next client gets an error [default: 64]
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Longest a statement may run, e.g. 30s, 5m; 0 for no limit [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub(crate) statement_timeout: Option<String>,
    /// Memory one statement may hold: a size or a share of the pool [default: 25%]
    #[arg(long, value_name = "SIZE|PERCENT")]
    pub(crate) query_memory: Option<String>,
    /// Result cache for repeated dashboard queries, held in the memory pool; 0 turns it off
    /// [default: 256MiB, or an eighth of the pool if less]
    #[arg(long, value_name = "SIZE")]
    pub(crate) cache_size: Option<String>,
    /// TLS certificate chain (PEM) [default: `[server] tls_cert`]
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8 or RSA) [default: `[server] tls_key`]
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PasswordArgs {}

/// Where reports and their tables come from.
#[derive(Debug, Args)]
pub(crate) struct ReportSource {
    /// Folder of report .sql files [default: `[reports] folder`, else queries]
    #[arg(long, value_name = "DIR")]
    pub(crate) queries: Option<PathBuf>,
    /// Run history database [default: `[reports] history`, else .spillway/history.sqlite]
    #[arg(long, value_name = "FILE")]
    pub(crate) history: Option<PathBuf>,
    /// A table: NAME=LOCATION (as for `query`); config tables are registered too
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub(crate) tables: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
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
pub(crate) struct ReportSourceArgs {
    #[command(flatten)]
    pub(crate) source: ReportSource,
}

#[derive(Debug, Args)]
pub(crate) struct ReportNameArgs {
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) source: ReportSource,
}

#[derive(Debug, Args)]
pub(crate) struct ReportValidateArgs {
    /// A report name [default: every report]
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) source: ReportSource,
}

#[derive(Debug, Args)]
pub(crate) struct ReportRunArgs {
    pub(crate) name: String,
    /// A parameter value: NAME=VALUE (lists comma-separated); repeatable
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub(crate) params: Vec<String>,
    /// The scheduled time to run for: YYYY-MM-DD (midnight in the report's zone) or RFC 3339
    #[arg(long, value_name = "TIME")]
    pub(crate) at: Option<String>,
    /// Recompute from every file, not from stored per-file states (they are kept as they are)
    #[arg(long)]
    pub(crate) full: bool,
    /// Print rows, bytes read, time, memory and the use of per-file states to stderr
    #[arg(long)]
    pub(crate) stats: bool,
    #[command(flatten)]
    pub(crate) source: ReportSource,
}

#[derive(Debug, Args)]
pub(crate) struct ReportHistoryArgs {
    /// Only this report's runs
    pub(crate) name: Option<String>,
    /// Newest N runs (or alerts)
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: usize,
    /// List the alerts sent (each target, tries, delivered or why not) instead of the runs
    #[arg(long)]
    pub(crate) alerts: bool,
    #[command(flatten)]
    pub(crate) source: ReportSource,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    #[command(flatten)]
    pub(crate) source: ReportSource,
    /// After downtime: run_latest runs the most recent missed firing once; skip runs none
    /// [default: `[reports] missed_runs`, else run_latest]
    #[arg(long, value_name = "POLICY")]
    pub(crate) missed_runs: Option<String>,
    /// On SIGTERM, seconds running reports may take to finish before they are cancelled
    #[arg(long, value_name = "SECONDS")]
    pub(crate) grace: Option<u64>,
}

/// Where the SQL and the tables come from.
#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// SQL text; several statements may be separated by `;` [default: -f FILE, else stdin]
    pub(crate) sql: Option<String>,
    /// Read SQL from a file
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE.sql",
        conflicts_with = "sql"
    )]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tables: TableArgs,
}

/// Tables given on the command line, over the tables of spillway.toml (`query`, `shell`).
#[derive(Debug, Args)]
pub(crate) struct TableArgs {
    /// A table: NAME=LOCATION, where LOCATION is a file, a folder or a glob (*, **, ?, [..], {a,b});
    /// the format comes from the extension (.csv, .csv.gz, .tsv, .parquet, .ndjson, .json, .xlsx)
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub(crate) tables: Vec<String>,
    /// The format of a table whose file names do not tell it: NAME=csv|parquet|ndjson|xlsx
    #[arg(long = "table-format", value_name = "NAME=FORMAT")]
    pub(crate) table_formats: Vec<String>,
    /// Rows read per file to infer a schema when a table has none [default: 1000]
    #[arg(long, value_name = "ROWS")]
    pub(crate) infer_rows: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(crate) sql: SqlArgs,
    /// Result format [default: from -o's extension; else table on a terminal, csv when piped]
    #[arg(long, value_name = "FORMAT", value_parser = parse_output_format)]
    pub(crate) format: Option<OutputFormat>,
    /// Write the result to a file, atomically (a temporary name, renamed when complete)
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub(crate) output: Option<PathBuf>,
    /// Rows the table format shows (0: all)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TABLE_ROWS)]
    pub(crate) max_rows: usize,
    /// Print rows, files and bytes scanned, time, spilling and peak memory after the query
    #[arg(long)]
    pub(crate) stats: bool,
    /// Encrypt a Parquet output (Parquet modular encryption, AES-GCM) with the key in
    /// $SPILLWAY_ENCRYPTION_KEY or [privacy] encryption_key_env / encryption_key_file
    #[arg(long)]
    pub(crate) encrypt: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    pub(crate) sql: SqlArgs,
    /// Run the query and show each operator's metrics (rows, time, spill count and bytes)
    #[arg(long)]
    pub(crate) analyze: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum GenFormatArg {
    Csv,
    Parquet,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GenCommand {
    /// Pharmacy claims, one row per dispensed prescription (schema in the README)
    Claims(GenClaimsArgs),
    /// The db-benchmark group-by table: id1..id6, v1..v3
    H2o(GenH2oArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GenClaimsArgs {
    /// Rows in all
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) rows: u64,
    /// Files to split the rows into
    #[arg(long, default_value_t = 4)]
    pub(crate) files: usize,
    #[arg(long, value_enum, default_value_t = GenFormatArg::Csv)]
    pub(crate) format: GenFormatArg,
    /// Output folder (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Seed: the same seed gives the same files, whatever the thread count
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// First fill date
    #[arg(long, default_value = "2024-01-01", value_name = "YYYY-MM-DD")]
    pub(crate) start: chrono::NaiveDate,
    /// Days of fills from --start
    #[arg(long, default_value_t = 366)]
    pub(crate) days: u32,
    /// Then print the [tables.claims] section of a spillway.toml that reads the files (their
    /// glob, format and, for CSV, the explicit schema) on stdout: `--print-config >> spillway.toml`
    #[arg(long)]
    pub(crate) print_config: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GenH2oArgs {
    /// Rows in all
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) rows: u64,
    /// K: distinct values of id1, id2, id4, id5 (id3 and id6 have rows/K)
    #[arg(long, default_value_t = 100)]
    pub(crate) groups: u64,
    /// Files to split the rows into
    #[arg(long, default_value_t = 1)]
    pub(crate) files: usize,
    #[arg(long, value_enum, default_value_t = GenFormatArg::Csv)]
    pub(crate) format: GenFormatArg,
    /// Output folder (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Rows of sample claims
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) rows: u64,
    /// Folder of .sql files to run
    #[arg(long, default_value = "queries", value_name = "DIR")]
    pub(crate) queries: PathBuf,
    /// Where the sample data is cached [default: $XDG_CACHE_HOME or ~/.cache, /spillway]
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
}

fn parse_output_format(text: &str) -> std::result::Result<OutputFormat, String> {
    OutputFormat::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// Write to stdout without `print!`'s panic when the reader is gone.
pub(crate) fn print_stdout(text: &str) -> crate::error::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| crate::error::Error::Output(format!("stdout: {e}")))
}
