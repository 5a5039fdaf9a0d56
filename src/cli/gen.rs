//! `spillway gen claims|h2o`: the generator's options from the flags, run on blocking threads
//! with a progress bar, and one line saying what was written.

use super::{GenClaimsArgs, GenFormatArg, GenH2oArgs};
use crate::error::{Error, Result};
use crate::gen::{self, ClaimsOptions, GenFormat, H2oOptions};
use crate::progress;

/// Data generation is CPU work on its own threads: keep it off the async workers.
pub(crate) async fn gen_blocking(work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("generator thread: {e}")))?
}

fn gen_format(format: GenFormatArg) -> GenFormat {
    match format {
        GenFormatArg::Csv => GenFormat::Csv,
        GenFormatArg::Parquet => GenFormat::Parquet,
    }
}

pub(crate) fn generate_claims(
    args: &GenClaimsArgs,
    workers: usize,
    show_progress: bool,
) -> Result<()> {
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
    })?;
    if args.print_config {
        // After the files are complete: a config printed for a failed run would name nothing.
        super::print_stdout(&gen::claims_table_config(&options))?;
    }
    Ok(())
}

pub(crate) fn generate_h2o(args: &GenH2oArgs, workers: usize, show_progress: bool) -> Result<()> {
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
    let summary = generator(&|written| bar.inc(written)).map_err(crate::cli::demo::gen_error)?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "wrote {} rows in {} files ({}) in {:.2}s: {:.0} rows/s",
        summary.rows,
        summary.files.len(),
        crate::units::human_bytes(summary.bytes),
        seconds,
        summary.rows as f64 / seconds
    );
    Ok(())
}
