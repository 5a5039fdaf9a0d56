//! `spillway describe` and `spillway profile`: one table (configured, or a location), one
//! engine, and `inspect` to read it.

use super::{options, DescribeArgs, ProfileArgs};
use crate::catalog::DEFAULT_INFER_ROWS;
use crate::config::ConfigFile;
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::output::{print_batch, OutputFormat};

/// Open an engine with only the table `target` names registered.
async fn open(
    target: &str,
    infer_rows: Option<usize>,
    config: &ConfigFile,
    engine_options: EngineOptions,
) -> Result<(Engine, String)> {
    let specs = options::table_specs_from(&[], &[], infer_rows, config)?;
    let rows = infer_rows
        .or(config.engine.infer_rows)
        .unwrap_or(DEFAULT_INFER_ROWS);
    let spec = crate::inspect::target_spec(target, &specs, rows);
    let name = spec.name.clone();
    let engine = Engine::open(engine_options, std::slice::from_ref(&spec)).await?;
    Ok((engine, name))
}

/// `describe`: the columns and types, as a table or as a `[tables.NAME]` block.
pub(crate) async fn describe(
    args: DescribeArgs,
    config: &ConfigFile,
    engine_options: EngineOptions,
) -> Result<()> {
    let (engine, name) = open(&args.target, args.infer_rows, config, engine_options).await?;
    let table = engine
        .registered(&name)
        .ok_or_else(|| Error::Internal(format!("table `{name}` is not registered")))?;
    let schema = engine
        .context()
        .table(name.as_str())
        .await?
        .schema()
        .inner()
        .clone();
    if args.toml {
        print!(
            "{}",
            crate::inspect::describe_toml(&table.spec, table.format.name(), &schema)
        );
        return Ok(());
    }
    let batch = crate::inspect::describe(&schema)?;
    print_batch(batch, OutputFormat::default_for_stdout()).await
}

/// `profile`: one pass of per-column statistics.
pub(crate) async fn profile(
    args: ProfileArgs,
    config: &ConfigFile,
    engine_options: EngineOptions,
) -> Result<()> {
    let (engine, name) = open(&args.target, args.infer_rows, config, engine_options).await?;
    let batch = crate::inspect::profile(&engine, &name).await?;
    print_batch(
        batch,
        args.format.unwrap_or_else(OutputFormat::default_for_stdout),
    )
    .await
}
