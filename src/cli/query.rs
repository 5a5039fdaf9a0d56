//! `spillway query` and `spillway explain`: the tables and SQL from the flags, one engine, and
//! `query` to run or explain the statements.

use super::{options, ExplainArgs, QueryArgs, SqlArgs};
use crate::config::ConfigFile;
use crate::engine::{Engine, EngineOptions};
use crate::error::Result;
use crate::query::{self, RunOptions};

/// `query`: run the statements, streaming each result to the output.
pub(crate) async fn query(
    args: QueryArgs,
    config: &ConfigFile,
    engine_options: EngineOptions,
    show_progress: bool,
) -> Result<()> {
    let output = options::output_spec(&args, engine_options.privacy.as_deref())?;
    let engine = open(&args.sql, config, engine_options).await?;
    let sql = options::sql_text(&args.sql)?;
    let run_options = RunOptions {
        output,
        stats: args.stats,
        progress: show_progress,
        entry: "query",
        incremental: None,
    };
    query::run_script(&engine, &sql, &run_options)
        .await
        .map(|_| ())
}

/// `explain [--analyze]`: print the plan (and with `--analyze`, run it and show its metrics).
pub(crate) async fn explain(
    args: ExplainArgs,
    config: &ConfigFile,
    engine_options: EngineOptions,
) -> Result<()> {
    let engine = open(&args.sql, config, engine_options).await?;
    let sql = options::sql_text(&args.sql)?;
    query::explain(&engine, &sql, args.analyze).await
}

async fn open(sql: &SqlArgs, config: &ConfigFile, engine_options: EngineOptions) -> Result<Engine> {
    let specs = options::table_specs(&sql.tables, config)?;
    Engine::open(engine_options, &specs).await
}
