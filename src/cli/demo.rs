//! `spillway demo`: the first thing a new user runs. Generates a sample claims set once into a
//! cache folder, then runs every `.sql` file of the queries folder over it, printing each result
//! with its stats. Uses the same engine, catalog and query path as `spillway query`.

use crate::catalog::TableSpec;
use crate::cli::DemoArgs;
use crate::config::ConfigFile;
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::gen::{self, ClaimsOptions, GenFormat};
use crate::output::{Destination, OutputFormat, OutputSpec};
use crate::query::{self, RunOptions};
use crate::report::{self, run::PlannedReport};
use std::path::{Path, PathBuf};

/// Files the sample claims are split into: several, so scans run in parallel.
const DEMO_FILES: usize = 4;

/// Marker written after the sample data is complete; its absence means "generate again".
const COMPLETE_MARKER: &str = "_COMPLETE";

/// Run the demo.
pub(crate) async fn run(
    args: &DemoArgs,
    _config: &ConfigFile,
    options: EngineOptions,
    progress: bool,
) -> Result<()> {
    let queries = query_files(&args.queries)?;
    let data = args
        .cache
        .clone()
        .unwrap_or_else(default_cache)
        .join(format!("demo-claims-{}", args.rows));
    ensure_sample(&data, args.rows, options.workers, progress).await?;
    let mut spec = TableSpec::at("claims", &data.join("*.csv").to_string_lossy());
    spec.schema = Some(gen::claims_schema());
    let engine = Engine::open(options, &[spec]).await?;
    let run_options = RunOptions {
        output: OutputSpec {
            format: OutputFormat::Table,
            destination: Destination::Stdout,
            max_table_rows: 15,
            manifest: false,
            encryption: None,
            about: None,
        },
        stats: true,
        progress,
        entry: "demo",
        incremental: None,
    };
    for path in queries {
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
        println!("\n=== {} ===", path.display());
        let in_file = |e: Error| e.context(path.display());
        match report::parse_report(&path, &sql).map_err(Error::from)? {
            // A report runs with its default parameters, bound as placeholders.
            Some(report) => {
                if let Some(description) = &report.description {
                    println!("{description}");
                }
                let values = report.bind(&[]).map_err(Error::from)?;
                let plan = PlannedReport::plan(&engine, &report)
                    .await?
                    .bind(&values)
                    .map_err(in_file)?;
                let outcome = query::run_statement(&engine, plan, &run_options)
                    .await
                    .map_err(in_file)?;
                eprintln!("{}", outcome.stats);
            }
            None => {
                if let Some(title) = first_comment(&sql) {
                    println!("{title}");
                }
                query::run_script(&engine, &sql, &run_options)
                    .await
                    .map_err(in_file)?;
            }
        }
    }
    Ok(())
}

/// The `.sql` files of the queries folder, sorted by name.
fn query_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(folder).map_err(|e| {
        Error::Usage(format!(
            "queries folder {}: {e} (run from the repository root, or pass --queries DIR)",
            folder.display()
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Usage(format!(
            "no .sql files in {}",
            folder.display()
        )));
    }
    Ok(files)
}

fn first_comment(sql: &str) -> Option<&str> {
    sql.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("--"))
        .map(str::trim)
}

fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("spillway")
}

/// Generate the sample claims unless a complete set is already cached.
async fn ensure_sample(folder: &Path, rows: u64, workers: usize, progress: bool) -> Result<()> {
    if folder.join(COMPLETE_MARKER).is_file() {
        return Ok(());
    }
    eprintln!(
        "generating {rows} sample claims rows into {} (once)",
        folder.display()
    );
    let options = ClaimsOptions {
        rows,
        files: DEMO_FILES.min(rows.max(1) as usize),
        format: GenFormat::Csv,
        out: folder.to_path_buf(),
        seed: 42,
        start: chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
            .ok_or_else(|| Error::Internal("bad demo start date".into()))?,
        days: 366,
        threads: workers,
    };
    let marker = folder.join(COMPLETE_MARKER);
    tokio::task::spawn_blocking(move || {
        let bar = crate::progress::bar(progress, rows, "rows");
        gen::generate_claims(&options, &|n| bar.inc(n)).map_err(gen_error)?;
        bar.finish_and_clear();
        std::fs::write(&marker, b"")
            .map_err(|e| Error::Output(format!("{}: {e}", marker.display())))
    })
    .await
    .map_err(|e| Error::Internal(format!("generator thread: {e}")))?
}

/// A generator failure as a user-facing error: bad options are usage errors, the rest are
/// failures to write the output.
pub(crate) fn gen_error(error: gen::GenError) -> Error {
    match error {
        gen::GenError::InvalidOption { .. } => Error::Usage(error.to_string()),
        other => Error::Output(other.to_string()),
    }
}
