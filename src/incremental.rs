//! Incremental aggregation: keep each input file's partial aggregate states, and answer a
//! report run or a dashboard query by merging the stored states of unchanged files with fresh
//! states of new or changed ones.
//!
//! The model: a qualifying plan (see [`split`]) is cut at its bottom-most aggregation. The part
//! below, through the partial stage, runs once per file of the fact table; its output (the
//! accumulators' state batches, in Arrow IPC stream files) is stored in a state folder under a
//! name derived from the plan's key and the file's fingerprint (path, size, modification time,
//! ETag). The part above, through the final stage, runs over a scan of the stored states. A
//! state file is written under a temporary name and renamed, so a state that exists is whole
//! and belongs to exactly the plan and file version its name says: a crash at any point leaves
//! either a valid state the next run uses or a temporary file it deletes. A removed file's
//! state is not read (nothing lists it) and is deleted; a rewritten file's old state is never
//! merged with its new one, because the new one has another name.
//!
//! Owns: the decision (incremental, or a full recompute and why), the state folder, and the
//! rewritten plan. Must not publish outputs or record history (its [`Outcome`] goes to whoever
//! does), and must not change a result: the merged plan answers exactly what the plan would.

pub(crate) mod split;

use crate::error::{Error, Result};
use crate::output::hex;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::arrow::ipc::CompressionType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{ArrowSource, FileGroup, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use split::{InputFile, Split};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The identity part that holds the logical plan (see [`Spec::identity`]).
pub(crate) const PLAN_PART: &str = "the plan";

/// The default bound on one report's (or query's) stored states: `[reports] max_state`.
pub(crate) const DEFAULT_MAX_STATE: u64 = 1 << 30;

/// What a run asks of this module.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The state folder of this report (or dashboard query).
    pub(crate) dir: PathBuf,
    /// What, besides the plan, decides the result, in the order a change is reported:
    /// (`the SQL`, text), (`the parameters`, values)...
    pub(crate) identity: Vec<(String, String)>,
    /// The most the states of all files may take on disk.
    pub(crate) max_state: u64,
    /// `Some(reason)`: recompute in full (`--full`, `incremental = false`).
    pub(crate) full: Option<String>,
    /// How old a state nobody refers to must be before it is deleted: 0 for a report (its runs
    /// take turns), more for a server, where another session may be about to read it.
    pub(crate) grace: Duration,
}

/// How a run used its states: recorded with the run, shown by `report show` and `--stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    /// Stored states of unchanged files were merged (else every file was read).
    pub(crate) incremental: bool,
    /// Why every file was read, when it was.
    pub(crate) reason: Option<String>,
    /// Files answered from their stored states.
    pub(crate) files_reused: u64,
    /// Files read (new, changed, or all of them on a full run).
    pub(crate) files_read: u64,
    /// Stored states dropped: their file was removed or rewritten.
    pub(crate) files_dropped: u64,
    /// The size of the files read (what a full run would read of every file).
    #[serde(default)]
    pub(crate) bytes_read: u64,
    /// The states now stored, in bytes, in all and for the largest file.
    pub(crate) state_bytes: u64,
    pub(crate) largest_state: u64,
}

impl Outcome {
    pub(crate) fn full(reason: impl Into<String>) -> Outcome {
        Outcome {
            reason: Some(reason.into()),
            ..Outcome::default()
        }
    }

    /// `incremental` or `full`.
    pub(crate) fn mode(&self) -> &'static str {
        match self.incremental {
            true => "incremental",
            false => "full",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let files = self.files_reused + self.files_read;
        match self.incremental {
            true => write!(
                f,
                "incremental: {} of {files} files from stored states, {} read",
                self.files_reused, self.files_read
            )?,
            false => write!(
                f,
                "full recompute ({})",
                self.reason.as_deref().unwrap_or("asked for")
            )?,
        }
        if self.files_dropped > 0 {
            write!(f, ", {} dropped", self.files_dropped)?;
        }
        if self.state_bytes > 0 {
            write!(
                f,
                "; states {} ({} per file on average, {} the largest)",
                crate::units::human_bytes(self.state_bytes),
                crate::units::human_bytes(self.state_bytes / files.max(1)),
                crate::units::human_bytes(self.largest_state)
            )?;
        }
        Ok(())
    }
}

/// The state folder's index: which plan its states belong to and what each file's state is.
/// Only for explaining (why a run was full, `report show`): a state file's name alone decides
/// whether it is used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub(crate) key: String,
    /// Hashes of the identity parts, the table schema and the joined files, by name.
    pub(crate) parts: Vec<(String, String)>,
    pub(crate) files: Vec<StoredState>,
}

/// One file's stored state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredState {
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) modified: String,
    pub(crate) etag: Option<String>,
    pub(crate) state: String,
    pub(crate) bytes: u64,
}

const INDEX: &str = "index.json";
const TEMPORARY: &str = ".tmp-";

/// The index of a state folder, if it has a readable one.
pub(crate) fn read_index(dir: &Path) -> Option<Index> {
    let text = std::fs::read(dir.join(INDEX)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Plan `plan` incrementally when it qualifies: returns the plan to execute (the merge over
/// stored and fresh states, or `plan` itself) and what was done. Fresh states are computed
/// here, before the returned plan runs.
pub(crate) async fn apply(
    plan: Arc<dyn ExecutionPlan>,
    spec: &Spec,
    ctx: Arc<TaskContext>,
) -> Result<(Arc<dyn ExecutionPlan>, Outcome)> {
    if let Some(reason) = &spec.full {
        return Ok((plan, Outcome::full(reason.clone())));
    }
    let split = match split::find(&plan) {
        Ok(split) => split,
        Err(reason) => {
            // The report no longer qualifies: its states are of no use any more.
            reclaim(&spec.dir);
            return Ok((plan, Outcome::full(reason)));
        }
    };
    if split.files.is_empty() {
        return Ok((plan, Outcome::full("the table has no files")));
    }
    std::fs::create_dir_all(&spec.dir).map_err(|e| state_error(&spec.dir, e))?;
    let dir = std::fs::canonicalize(&spec.dir).map_err(|e| state_error(&spec.dir, e))?;
    let parts = key_parts(spec, &split);
    let key = hex(&sha256(
        parts
            .iter()
            .flat_map(|(name, hash)| [name.as_str(), hash.as_str()]),
    ))[..16]
        .to_string();
    let previous = read_index(&dir);
    let mut outcome = Outcome::default();
    let mut stored = Vec::with_capacity(split.files.len());
    let mut fresh = Vec::new();
    for file in &split.files {
        let name = state_name(&key, file);
        match std::fs::metadata(dir.join(&name)) {
            Ok(meta) => stored.push(stored_state(file, name, meta.len())),
            Err(_) => fresh.push((file, name)),
        }
    }
    outcome.files_reused = stored.len() as u64;
    outcome.files_read = fresh.len() as u64;
    outcome.bytes_read = fresh.iter().map(|(file, _)| file.size).sum();
    outcome.files_dropped = dropped(previous.as_ref(), &key, &split.files);
    let mut total: u64 = stored.iter().map(|s| s.bytes).sum();
    for (file, name) in fresh {
        let partial = split.partial_over(file, ctx.session_config().options())?;
        let budget = spec.max_state.saturating_sub(total);
        match write_state(partial, ctx.clone(), &dir, &name, budget).await? {
            Some(bytes) => {
                total += bytes;
                stored.push(stored_state(file, name, bytes));
            }
            None => {
                tracing::warn!(
                    "incremental states of {} would take more than max_state ({}): computing \
                     it in full instead, and keeping no states",
                    spec.dir.display(),
                    crate::units::human_bytes(spec.max_state)
                );
                reclaim(&spec.dir);
                return Ok((
                    plan,
                    Outcome::full(format!(
                        "its states would exceed max_state ({})",
                        crate::units::human_bytes(spec.max_state)
                    )),
                ));
            }
        }
    }
    if outcome.files_reused == 0 {
        outcome.reason = Some(why_no_states(previous.as_ref(), &key, &parts));
    } else {
        outcome.incremental = true;
    }
    outcome.state_bytes = total;
    outcome.largest_state = stored.iter().map(|s| s.bytes).max().unwrap_or(0);
    let schema = split.partial.schema();
    let states = scan_states(
        &dir,
        &stored,
        schema,
        ctx.session_config().target_partitions(),
    )?;
    let merged = split.merge_over(&plan, states)?;
    let index = Index {
        key,
        parts,
        files: stored,
    };
    write_index(&dir, &index)?;
    remove_unreferenced(&dir, &index, spec.grace);
    Ok((merged, outcome))
}

/// The first function in `plan` whose value may change between runs (`now()`, `random()`,
/// `current_date`...): states computed on one day would not be those of the next.
pub(crate) fn time_dependent(plan: &datafusion::logical_expr::LogicalPlan) -> Option<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, Volatility};
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        for expression in node.expressions() {
            let _ = expression.apply(|e| {
                if let Expr::ScalarFunction(call) = e {
                    if call.func.signature().volatility != Volatility::Immutable {
                        found = Some(call.func.name().to_string());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(match found {
            Some(_) => TreeNodeRecursion::Stop,
            None => TreeNodeRecursion::Continue,
        })
    });
    found
}

/// Delete a state folder (its report or query changed, or no longer qualifies).
pub(crate) fn reclaim(dir: &Path) {
    if dir.exists() {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            tracing::warn!("cannot remove the states in {}: {error}", dir.display());
        }
    }
}

fn state_error(path: &Path, error: impl fmt::Display) -> Error {
    Error::Output(format!("state folder {}: {error}", path.display()))
}

fn sha256<'a>(parts: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// What the key is made of, each part hashed, in the order a change is explained.
fn key_parts(spec: &Spec, split: &Split) -> Vec<(String, String)> {
    // The plan changes with the schema too: name the schema first when it is what changed.
    let (plan, mut parts): (Vec<_>, Vec<_>) = spec
        .identity
        .iter()
        .map(|(name, value)| (name.clone(), hex(&sha256([value.as_str()]))))
        .partition(|(name, _)| name == PLAN_PART);
    parts.push((
        "the table's schema".into(),
        hex(&sha256([split.fact_schema.as_str()])),
    ));
    parts.push((
        "the files of a joined table".into(),
        hex(&sha256(split.joined.iter().map(String::as_str))),
    ));
    parts.extend(plan);
    parts.push((
        "the spillway version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));
    parts
}

/// Why a run found no stored state to use.
fn why_no_states(previous: Option<&Index>, key: &str, parts: &[(String, String)]) -> String {
    let Some(previous) = previous else {
        return "no stored states yet".into();
    };
    if previous.key == key {
        return "every file is new or changed".into();
    }
    for (name, hash) in parts {
        let before = previous.parts.iter().find(|(n, _)| n == name);
        if before.map(|(_, h)| h) != Some(hash) {
            return format!("{name} changed since the stored states");
        }
    }
    "the stored states belong to another plan".into()
}

/// How many stored states (of the same plan) belong to files that were removed or rewritten.
fn dropped(previous: Option<&Index>, key: &str, files: &[InputFile]) -> u64 {
    let Some(previous) = previous.filter(|index| index.key == key) else {
        return 0;
    };
    previous
        .files
        .iter()
        .filter(|old| {
            !files.iter().any(|file| {
                file.path == old.path
                    && file.size == old.size
                    && file.modified == old.modified
                    && file.etag == old.etag
            })
        })
        .count() as u64
}

/// A state's file name: the plan's key and the file version's fingerprint.
fn state_name(key: &str, file: &InputFile) -> String {
    let fingerprint = hex(&sha256([file.fingerprint().as_str()]));
    format!("{key}-{}.arrows", &fingerprint[..24])
}

fn stored_state(file: &InputFile, state: String, bytes: u64) -> StoredState {
    StoredState {
        path: file.path.clone(),
        size: file.size,
        modified: file.modified.clone(),
        etag: file.etag.clone(),
        state,
        bytes,
    }
}

/// Run one file's partial stage into `dir/name`, published by a rename once whole. `None` (and
/// nothing left behind) when it grows past `budget` bytes.
///
/// Written with `std::fs`: a state is local, small next to the file it summarises, and
/// written a batch at a time.
async fn write_state(
    partial: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    dir: &Path,
    name: &str,
    budget: u64,
) -> Result<Option<u64>> {
    let temporary = dir.join(temporary_name(name));
    let written = async {
        let file = std::fs::File::create(&temporary).map_err(|e| state_error(&temporary, e))?;
        let counted = CountingWriter {
            inner: std::io::BufWriter::new(file),
            bytes: 0,
        };
        // Compressed: every later run reads every stored state, so their bytes are its cost.
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::ZSTD))
            .map_err(arrow)?;
        let mut writer = StreamWriter::try_new_with_options(counted, &partial.schema(), options)
            .map_err(arrow)?;
        let mut stream = execute_stream(partial, ctx)?;
        while let Some(batch) = stream.next().await {
            writer.write(&batch?).map_err(arrow)?;
            if writer.get_ref().bytes > budget {
                return Ok(None);
            }
        }
        writer.finish().map_err(arrow)?;
        let counted = writer.into_inner().map_err(arrow)?;
        let bytes = counted.bytes;
        let file = counted
            .inner
            .into_inner()
            .map_err(|e| state_error(&temporary, e.error()))?;
        file.sync_all().map_err(|e| state_error(&temporary, e))?;
        Ok(Some(bytes))
    }
    .await;
    match written {
        Ok(Some(bytes)) => {
            std::fs::rename(&temporary, dir.join(name)).map_err(|e| state_error(dir, e))?;
            Ok(Some(bytes))
        }
        other => {
            let _ = std::fs::remove_file(&temporary);
            other
        }
    }
}

/// A temporary name no other writer uses, in this process (a server's sessions may write the
/// same state at once) or another.
fn temporary_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{TEMPORARY}{}-{n}-{name}", std::process::id())
}

fn arrow(error: datafusion::arrow::error::ArrowError) -> Error {
    datafusion::error::DataFusionError::from(error).into()
}

/// Counts the bytes written through it (the budget check needs them before the file is done).
struct CountingWriter<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A scan of the stored states, spread over at most `partitions` partitions.
fn scan_states(
    dir: &Path,
    states: &[StoredState],
    schema: SchemaRef,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions = partitions.clamp(1, states.len().max(1));
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    for (i, state) in states.iter().enumerate() {
        let path = dir.join(&state.state);
        let location = object_store::path::Path::from_absolute_path(&path)
            .map_err(|e| state_error(&path, e))?;
        groups[i % partitions].push(PartitionedFile::new(location.to_string(), state.bytes));
    }
    let source = ArrowSource::new_stream_file_source(schema);
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
        .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

fn write_index(dir: &Path, index: &Index) -> Result<()> {
    let text = serde_json::to_vec_pretty(index).map_err(|e| state_error(dir, e))?;
    let temporary = dir.join(temporary_name(INDEX));
    std::fs::write(&temporary, text).map_err(|e| state_error(&temporary, e))?;
    std::fs::rename(&temporary, dir.join(INDEX)).map_err(|e| state_error(dir, e))
}

/// Delete the states (and temporary files of interrupted runs) the index does not name, once
/// they are older than `grace`.
fn remove_unreferenced(dir: &Path, index: &Index, grace: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == INDEX || index.files.iter().any(|s| s.state == name) {
            continue;
        }
        let old_enough = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .map(|time| time.elapsed().unwrap_or_default() >= grace)
            .unwrap_or(true);
        if old_enough {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A server's dashboard queries keep their states under `ROOT/QUERY`, one folder per distinct
/// query (its optimized plan, role included), the least recently used dropped past this many.
const SERVED_QUERIES_KEPT: usize = 64;

/// How long a state no index names is kept on a server: another session may be reading it.
const SERVED_GRACE: Duration = Duration::from_secs(600);

/// Plans a server's statements: as the inner planner does, and then, for an aggregation over
/// files, over per-file states (so a dashboard query after a new file arrives reads that file
/// only). Statements that read no files, or do not qualify, are the inner planner's as they were.
pub(crate) struct StatesPlanner {
    root: PathBuf,
    max_state: u64,
    /// The privacy role of the session: its plans, and so its states, are its own.
    role: String,
    inner: Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync>,
}

impl fmt::Debug for StatesPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatesPlanner")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl StatesPlanner {
    pub(crate) fn new(
        root: PathBuf,
        max_state: u64,
        role: String,
        inner: Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync>,
    ) -> StatesPlanner {
        StatesPlanner {
            root,
            max_state,
            role,
            inner,
        }
    }
}

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for StatesPlanner {
    async fn create_physical_plan(
        &self,
        plan: &datafusion::logical_expr::LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::execution::SessionStateBuilder;
        let state = session
            .as_any()
            .downcast_ref::<datafusion::execution::SessionState>();
        let (Some(state), true) = (state, aggregates_files(plan)) else {
            return self.inner.create_physical_plan(plan, session).await;
        };
        let mut config = state.config().clone();
        crate::engine::without_dynamic_filters(config.options_mut());
        let state = SessionStateBuilder::new_from_existing(state.clone())
            .with_config(config)
            .build();
        let physical = self.inner.create_physical_plan(plan, &state).await?;
        let text = format!("{}", plan.display_indent_schema());
        let query = hex(&sha256([self.role.as_str(), text.as_str()]))[..16].to_string();
        let spec = Spec {
            dir: self.root.join(&query),
            identity: vec![("the query".into(), text)],
            max_state: self.max_state,
            full: None,
            grace: SERVED_GRACE,
        };
        let task = Arc::new(TaskContext::from(&state));
        let (physical, outcome) = apply(physical, &spec, task)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        tracing::info!(states = %outcome, "query {query}");
        if outcome.state_bytes > 0 {
            keep_recent(&self.root, SERVED_QUERIES_KEPT);
        }
        Ok(physical)
    }
}

/// Whether a logical plan aggregates over a table scan (a cheap test before planning twice).
fn aggregates_files(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    let mut aggregate = false;
    let mut scan = false;
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::Aggregate(_) => aggregate = true,
            LogicalPlan::TableScan(_) => scan = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    aggregate && scan
}

/// Keep the `kept` most recently written state folders under `root`; drop the rest.
fn keep_recent(root: &Path, kept: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut folders: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let index = entry.path().join(INDEX);
            let time = std::fs::metadata(&index).and_then(|m| m.modified()).ok()?;
            Some((time, entry.path()))
        })
        .collect();
    if folders.len() <= kept {
        return;
    }
    folders.sort();
    for (_, folder) in &folders[..folders.len() - kept] {
        reclaim(folder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn spec(dir: &Path) -> Spec {
        Spec {
            dir: dir.to_path_buf(),
            identity: vec![("the SQL".into(), "test".into())],
            max_state: DEFAULT_MAX_STATE,
            full: None,
            grace: Duration::ZERO,
        }
    }

    async fn answer(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> String {
        let batches = collect(plan, ctx.task_ctx()).await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    /// Whatever mode the planner chose for the aggregation (two stages, or one stage over input
    /// already partitioned by the keys, as after a partitioned join), the merged plan answers
    /// what the plan answers, the first time (all states fresh) and the next (all stored).
    #[tokio::test]
    async fn a_merged_plan_answers_as_the_plan_does_in_every_aggregation_mode() {
        let mut config = SessionConfig::new().with_target_partitions(2);
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.hash_join_single_partition_threshold = 0;
        optimizer.hash_join_single_partition_threshold_rows = 0;
        let (ctx, dir) = split::tests::session_with(config).await;
        let sql = "SELECT c.plan, count(*) AS n, sum(c.cost) AS cost, max(c.cost) AS top \
                   FROM claims c JOIN plans p ON c.plan = p.plan GROUP BY c.plan ORDER BY c.plan";
        let single = "SELECT count(*) AS n, min(cost) AS low FROM claims";
        let mut modes = std::collections::BTreeSet::new();
        for (i, sql) in [sql, single].into_iter().enumerate() {
            let plan = || async {
                ctx.sql(sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap()
            };
            let expected = answer(&ctx, plan().await).await;
            let shown = format!(
                "{}",
                datafusion::physical_plan::displayable(plan().await.as_ref()).indent(false)
            );
            modes.extend(
                ["SinglePartitioned", "mode=Single,", "Partial"]
                    .into_iter()
                    .filter(|m| shown.contains(m)),
            );
            let states = dir.path().join(format!("states-{i}"));
            for (run, read) in [(1, 2), (2, 0)] {
                let (merged, outcome) = apply(plan().await, &spec(&states), ctx.task_ctx())
                    .await
                    .unwrap();
                assert_eq!(outcome.files_read, read, "run {run} of {sql}");
                assert_eq!(outcome.incremental, run == 2);
                assert_eq!(
                    answer(&ctx, merged).await,
                    expected,
                    "run {run} of {sql}:\n{shown}"
                );
            }
        }
        assert!(modes.contains("SinglePartitioned"), "{modes:?}");
    }
}
