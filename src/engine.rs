//! The one place a DataFusion `SessionContext` is made.
//!
//! [`Engine`] owns the memory pool (a `FairSpillPool` under a `TrackConsumersPool`, so a failed
//! allocation names the top consumers, wrapped in [`PeakPool`] to record the high-water mark),
//! the disk manager (spill folder and cap), parallelism, batch size and spill compression, the
//! object stores (counted, see `storage`) and the registered tables. It turns SQL text into
//! statements and statements into running, streaming plans. It must not know about output
//! formats: callers pull `RecordBatch`es from [`RunningQuery::stream`].

use crate::catalog::{self, RegisteredTable, TableSpec};
use crate::config::S3Settings;
use crate::csv_scan::FastCsvScan;
use crate::error::{Error, Result};
use crate::group_keys::PACK_INTEGER_KEYS;
use crate::group_topk::TopKPerGroup;
use crate::output::ObjectTarget;
use crate::rewrite::{AccountWindowInput, FullSortInsteadOfTopK, TWO_LEVEL_DISTINCT};
use crate::storage::{self, Location, StoreCounters};
use datafusion::common::config::SpillCompression;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use object_store::ObjectStore;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

/// The default memory limit: this share of the machine's (or cgroup's) memory. The rest is
/// headroom for what DataFusion does not track (decoding buffers, hash tables' slack, the
/// allocator's own overhead), which measurements show can rival the tracked part.
pub const DEFAULT_MEMORY_FRACTION: f64 = 0.5;

/// The share of `--memory-limit` given to DataFusion's memory pool; the rest is headroom for
/// memory the pool does not see. Measured on H2O q6 (`median` per group, 1e8 rows of CSV): with
/// the whole 1 GiB as the pool, peak RSS was 2.1 GiB (the aggregation's state is copied when it
/// is emitted and spilled, outside the pool); with a 600 MiB pool it was 1.2 GiB. Every other
/// H2O question and claims query stayed under 0.9 GiB either way.
pub const POOL_SHARE: f64 = 0.6;

/// The memory pool's size for a memory limit.
pub fn pool_size(memory_limit: u64) -> u64 {
    (memory_limit as f64 * POOL_SHARE) as u64
}

/// Rows per batch. DataFusion's default; smaller batches cost throughput, larger ones memory.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How many memory consumers an exhausted-memory error names.
const TOP_CONSUMERS: usize = 5;

/// Resolved engine settings (flags > env > config file > defaults, already merged).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub memory_limit: u64,
    pub spill_dir: Option<PathBuf>,
    pub max_spill: Option<u64>,
    pub workers: usize,
    pub batch_size: usize,
    pub spill_compression: SpillCompression,
    /// `[storage.s3]`: settings of every S3 bucket a table does not configure itself.
    pub s3: S3Settings,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let memory = crate::config::available_memory();
        Self {
            memory_limit: (memory as f64 * DEFAULT_MEMORY_FRACTION) as u64,
            spill_dir: None,
            max_spill: None,
            workers: default_workers(),
            batch_size: DEFAULT_BATCH_SIZE,
            // lz4 costs little CPU and still shrinks spilled claims data several times over;
            // zstd shrinks more but its CPU cost shows on a 2-core machine.
            spill_compression: SpillCompression::Lz4Frame,
            s3: S3Settings::default(),
        }
    }
}

/// The batch size for a memory pool when the user sets none: DataFusion's 8192 rows unless
/// each partition's share of the pool is small. Sorts merge their spill files a batch per file
/// at a time in memory that cannot spill, so at 8 MiB per partition 8192-row batches of a wide
/// table failed where 2048-row batches spilled and finished (100k claims rows, 16 MiB, 2 workers).
pub fn batch_size_for(pool: u64, workers: usize) -> usize {
    let per_partition = pool / workers.max(1) as u64;
    (per_partition / 4096).clamp(1024, DEFAULT_BATCH_SIZE as u64) as usize
}

/// How many spill files one sort merges at once. DataFusion's default is unbounded, and each
/// merge reserves a buffer per file for as many files as the pool allows: the first partition
/// to finish sorting takes the whole pool and the others then fail with "Not enough memory to
/// continue external sort" (seen at 64 MiB, 2 workers, a 17-column sort). Capping the fan-in
/// at about 8 MiB of the partition's share per file leaves room for every partition; merges
/// of more files than that run in several passes.
pub fn spill_merge_fan_in(pool: u64, workers: usize) -> usize {
    let per_partition = pool / workers.max(1) as u64;
    (per_partition / (8 << 20)).clamp(2, 256) as usize
}

/// All cores this process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
}

/// A memory pool that remembers the most it ever had reserved.
#[derive(Debug)]
pub struct PeakPool {
    inner: TrackConsumersPool<FairSpillPool>,
    peak: AtomicUsize,
}

impl PeakPool {
    fn new(limit: usize) -> Self {
        let top = NonZeroUsize::new(TOP_CONSUMERS).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: TrackConsumersPool::new(FairSpillPool::new(limit), top),
            peak: AtomicUsize::new(0),
        }
    }

    /// The most memory reserved at once so far, in bytes.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Forget the high-water mark (between statements).
    pub fn reset_peak(&self) {
        self.peak.store(self.inner.reserved(), Ordering::Relaxed);
    }

    fn note(&self) {
        self.peak
            .fetch_max(self.inner.reserved(), Ordering::Relaxed);
    }
}

impl fmt::Display for PeakPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl MemoryPool for PeakPool {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.note();
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }
    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.note();
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.inner.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// A share of another pool: one statement may reserve at most `cap` bytes of the shared pool,
/// so a runaway query on one server connection fails on its own instead of starving the
/// others. Reservations still go through the shared pool (and its fair spilling).
#[derive(Debug)]
pub struct CappedPool {
    shared: Arc<dyn MemoryPool>,
    cap: usize,
    used: AtomicUsize,
}

impl CappedPool {
    pub fn new(shared: Arc<dyn MemoryPool>, cap: usize) -> Self {
        Self {
            shared,
            cap,
            used: AtomicUsize::new(0),
        }
    }
}

impl fmt::Display for CappedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CappedPool(cap {} of {})", self.cap, self.shared)
    }
}

impl MemoryPool for CappedPool {
    fn name(&self) -> &str {
        "CappedPool"
    }
    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer)
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer)
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }
    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(additional) > self.cap {
            return Err(datafusion::error::DataFusionError::ResourcesExhausted(
                format!(
                    "Failed to allocate additional {} for {}: this statement already holds {} \
                 of its {} cap ([server] query_memory)",
                    crate::stats::human_bytes(additional as u64),
                    reservation.consumer().name(),
                    crate::stats::human_bytes(used as u64),
                    crate::stats::human_bytes(self.cap as u64),
                ),
            ));
        }
        self.shared.try_grow(reservation, additional)?;
        self.used.fetch_add(additional, Ordering::Relaxed);
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.cap)
    }
}

/// A configured DataFusion session with Spillway's tables registered.
pub struct Engine {
    ctx: SessionContext,
    pool: Arc<PeakPool>,
    counters: Arc<StoreCounters>,
    local_store: Arc<dyn ObjectStore>,
    /// One store per bucket, with the settings it was built from.
    s3_stores: Mutex<HashMap<String, (S3Settings, Arc<dyn ObjectStore>)>>,
    tables: Vec<RegisteredTable>,
    options: EngineOptions,
}

/// A statement that is executing: its plan (for metrics) and the stream of its results.
pub struct RunningQuery {
    pub plan: Arc<dyn ExecutionPlan>,
    pub stream: SendableRecordBatchStream,
}

impl Engine {
    /// Build the session: memory pool, disk manager, parallelism, stores.
    pub fn new(options: EngineOptions) -> Result<Engine> {
        let pool_bytes = pool_size(options.memory_limit);
        let pool = Arc::new(PeakPool::new(
            usize::try_from(pool_bytes).unwrap_or(usize::MAX),
        ));
        let mut disk = DiskManagerBuilder::default();
        if let Some(dir) = &options.spill_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Usage(format!(
                    "--spill-dir {}: cannot create it: {e}",
                    dir.display()
                ))
            })?;
            disk = disk.with_mode(DiskManagerMode::Directories(vec![dir.clone()]));
        }
        if let Some(max_spill) = options.max_spill {
            disk = disk.with_max_temp_directory_size(max_spill);
        }
        disk = disk.with_max_spill_merge_fan_in(spill_merge_fan_in(pool_bytes, options.workers));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_disk_manager_builder(disk)
            .build_arc()?;
        let counters = Arc::new(StoreCounters::default());
        let local_store = storage::local_store(counters.clone());
        let file_url = url::Url::parse("file://").map_err(|e| Error::Internal(e.to_string()))?;
        runtime.register_object_store(&file_url, local_store.clone());
        let state = SessionStateBuilder::new()
            .with_config(session_config(&options))
            .with_runtime_env(runtime)
            .with_default_features()
            .with_optimizer_rule(Arc::new(TWO_LEVEL_DISTINCT))
            .with_optimizer_rule(Arc::new(PACK_INTEGER_KEYS))
            .with_physical_optimizer_rule(Arc::new(AccountWindowInput))
            .with_physical_optimizer_rule(Arc::new(TopKPerGroup))
            .with_physical_optimizer_rule(Arc::new(FastCsvScan))
            .build();
        let ctx = SessionContext::new_with_state(state);
        crate::aggregate::register(&ctx);
        Ok(Engine {
            ctx,
            pool,
            counters,
            local_store,
            s3_stores: Mutex::new(HashMap::new()),
            tables: Vec::new(),
            options,
        })
    }

    /// The settings this engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The DataFusion session (for callers that need to plan directly, e.g. the server).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The memory pool's size in bytes ([`POOL_SHARE`] of the memory limit).
    pub fn pool_limit(&self) -> u64 {
        pool_size(self.options.memory_limit)
    }

    /// The memory pool, for peak usage.
    pub fn pool(&self) -> &PeakPool {
        &self.pool
    }

    /// The memory pool, for other holders of memory that must count against the limit (the
    /// server's result cache).
    pub fn shared_pool(&self) -> Arc<dyn MemoryPool> {
        self.pool.clone()
    }

    /// Request and byte counters of every store.
    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// The tables registered so far.
    pub fn tables(&self) -> &[RegisteredTable] {
        &self.tables
    }

    /// Bytes currently held in spill files.
    pub fn spill_bytes_on_disk(&self) -> u64 {
        self.ctx
            .runtime_env()
            .disk_manager
            .spilling_progress()
            .current_bytes
    }

    /// Register a table; errors name the table.
    pub async fn register_table(&mut self, spec: &TableSpec) -> Result<()> {
        let location = Location::parse(&spec.location)
            .map_err(|e| e.context(format!("table `{}`", spec.name)))?;
        let store = self
            .store_for(&location, spec.s3.as_ref())
            .map_err(|e| e.context(format!("table `{}`", spec.name)))?;
        let registered = catalog::register(&self.ctx, &store, spec).await?;
        self.tables.retain(|table| table.spec.name != spec.name);
        self.tables.push(registered);
        Ok(())
    }

    /// The store a location lives in, made (and registered with DataFusion) on first use.
    /// `table` settings override `[storage.s3]`; two tables may not configure one bucket
    /// differently, since DataFusion keeps one store per bucket.
    pub fn store_for(
        &self,
        location: &Location,
        table: Option<&S3Settings>,
    ) -> Result<Arc<dyn ObjectStore>> {
        let Some(bucket) = location.bucket() else {
            return Ok(self.local_store.clone());
        };
        let settings = match table {
            Some(own) => own.over(&self.options.s3),
            None => self.options.s3.clone(),
        };
        let mut stores = self
            .s3_stores
            .lock()
            .map_err(|_| Error::Internal("store registry poisoned".into()))?;
        if let Some((existing, store)) = stores.get(bucket) {
            if *existing == settings {
                return Ok(store.clone());
            }
            return Err(Error::Config(format!(
                "bucket `{bucket}` is given two different sets of S3 settings; \
                 tables in one bucket must share them"
            )));
        }
        let store = storage::s3_store(bucket, &settings, self.counters.clone())?;
        let url = url::Url::parse(&format!("s3://{bucket}"))
            .map_err(|e| Error::Usage(format!("bucket `{bucket}`: {e}")))?;
        self.ctx
            .runtime_env()
            .register_object_store(&url, store.clone());
        stores.insert(bucket.to_string(), (settings, store.clone()));
        Ok(store)
    }

    /// Where an `s3://bucket/key` output goes: the bucket's store (configured by
    /// `[storage.s3]`) and the key.
    pub fn object_target(&self, url: &str) -> Result<ObjectTarget> {
        let location = Location::parse(url).map_err(|e| e.context("-o"))?;
        if location.pattern.is_some() || location.is_folder() {
            return Err(Error::Usage(format!(
                "-o {url}: name an object, not a folder or glob"
            )));
        }
        let store = self.store_for(&location, None)?;
        Ok(ObjectTarget {
            store,
            path: location.prefix()?,
        })
    }

    /// Split SQL text into statements (errors carry the line and column).
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        let statements = DFParser::parse_sql(sql).map_err(Error::from)?;
        if statements.is_empty() {
            return Err(Error::Usage("no SQL statement given".into()));
        }
        Ok(statements.into_iter().collect())
    }

    /// Plan one statement.
    pub async fn plan(&self, statement: Statement) -> Result<LogicalPlan> {
        Ok(self.ctx.state().statement_to_plan(statement).await?)
    }

    /// Bind named parameter values (`$name` placeholders) into a plan: values travel as typed
    /// scalars, never as SQL text, so a value cannot change what the statement does.
    pub fn bind(plan: LogicalPlan, values: Vec<(String, ScalarValue)>) -> Result<LogicalPlan> {
        let map: HashMap<String, ScalarAndMetadata> = values
            .into_iter()
            .map(|(name, value)| (name, value.into()))
            .collect();
        Ok(plan.with_param_values(ParamValues::Map(map))?)
    }

    /// The `$name` placeholders a planned statement uses, without the `$`.
    pub fn placeholders(plan: &LogicalPlan) -> Result<Vec<String>> {
        let mut names: Vec<String> = plan
            .get_parameter_names()?
            .into_iter()
            .map(|name| name.trim_start_matches('$').to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether a planned statement returns rows (a query) rather than changing the session.
    pub fn returns_rows(plan: &LogicalPlan) -> bool {
        !matches!(plan, LogicalPlan::Statement(_) | LogicalPlan::Ddl(_))
    }

    /// Start executing a planned statement; results stream out of the returned query.
    pub async fn execute(&self, plan: LogicalPlan) -> Result<RunningQuery> {
        self.pool.reset_peak();
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let physical = frame.create_physical_plan().await?;
        let stream = execute_stream(physical.clone(), self.ctx.task_ctx())?;
        Ok(RunningQuery {
            plan: physical,
            stream,
        })
    }

    /// Wait (up to two seconds) until the pool holds nothing: a failed plan's tasks are
    /// cancelled asynchronously and keep their reservations until they have stopped.
    pub async fn wait_for_released_memory(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.pool.reserved() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A session of its own for one server connection: the same tables, functions and
    /// settings, and the same memory pool and spill folder, but each statement may take at
    /// most `memory_cap` bytes of the pool. DataFusion's listing cache is off here: the server
    /// re-lists a table's files before each query (see `serve`), and a cached listing would
    /// hand a changed file's old size to the reader.
    pub fn session_with_memory_cap(&self, memory_cap: usize) -> Result<SessionContext> {
        let base = self.ctx.runtime_env();
        let mut cache = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
            .with_list_files_cache_limit(0);
        cache.file_metadata_cache = Some(base.cache_manager.get_file_metadata_cache());
        let pool: Arc<dyn MemoryPool> = self.pool.clone();
        let runtime = RuntimeEnvBuilder::from_runtime_env(&base)
            .with_memory_pool(Arc::new(CappedPool::new(pool, memory_cap)))
            .with_cache_manager(cache)
            .build_arc()?;
        // A sort keeps this much back for merging its spill files: scaled to the statement's
        // cap, as `session_config` scales it to the pool, or a capped sort could never spill.
        let mut config = self.ctx.state().config().clone();
        let per_partition = memory_cap as u64 / (8 * self.options.workers.max(1) as u64);
        config.options_mut().execution.sort_spill_reservation_bytes =
            per_partition.clamp(256 << 10, 10 << 20) as usize;
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Start a statement again after it ran out of memory, with a plan that trades speed for
    /// spilling: sort-merge joins instead of hash joins (whose build side cannot spill), full
    /// sorts instead of top-k heaps, no top-k aggregation or top k per group, and half-size
    /// batches.
    pub async fn execute_conservatively(&self, plan: LogicalPlan) -> Result<RunningQuery> {
        self.pool.reset_peak();
        // From the session's current settings, so a script's own `SET`s still hold.
        let mut config = self.ctx.state().config().clone();
        let batch_size = (config.batch_size() / 2).max(1024);
        config = config.with_batch_size(batch_size);
        let settings = config.options_mut();
        settings.optimizer.prefer_hash_join = false;
        settings.optimizer.enable_topk_aggregation = false;
        // A sort frees its merge reservation to sort what it holds before spilling, then takes it
        // back; under a small pool the other partition's merge can take that memory in between
        // (seen once in five test-suite runs at 16 MiB: "allocation failed for
        // ExternalSorterMerge"). A larger share kept for merges up front leaves less to take.
        let merge_share =
            pool_size(self.options.memory_limit) / (2 * self.options.workers.max(1) as u64);
        let merge_share = merge_share.clamp(1 << 20, 10 << 20) as usize;
        let execution = &mut settings.execution;
        execution.sort_spill_reservation_bytes =
            execution.sort_spill_reservation_bytes.max(merge_share);
        // Top k per group holds k rows per group in memory; the full sort spills.
        let mut rules: Vec<_> = self
            .ctx
            .state()
            .physical_optimizers()
            .iter()
            .filter(|rule| rule.name() != TopKPerGroup::NAME)
            .cloned()
            .collect();
        rules.push(Arc::new(FullSortInsteadOfTopK));
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .with_physical_optimizer_rules(rules)
            .build();
        let physical = state.create_physical_plan(&plan).await?;
        let stream = execute_stream(physical.clone(), Arc::new(TaskContext::from(&state)))?;
        Ok(RunningQuery {
            plan: physical,
            stream,
        })
    }

    /// After a bad-data failure, find the first file that fails to read on its own, and
    /// return the error naming it. Each file is read whole in one partition, so the record
    /// numbers in the message count from the start of that file. `None` if every file reads.
    pub async fn find_bad_file(&self) -> Option<Error> {
        let mut config = session_config(&self.options).with_target_partitions(1);
        config.options_mut().optimizer.repartition_file_scans = false;
        let probe = SessionContext::new_with_config_rt(config, self.ctx.runtime_env());
        for table in &self.tables {
            for file in &table.resolved.files {
                let Ok(single) = table.single_file_table(file) else {
                    continue;
                };
                let _ = probe.deregister_table("probe");
                if probe.register_table("probe", Arc::new(single)).is_err() {
                    continue;
                }
                if let Err(error) = read_all(&probe).await {
                    return Some(error.context(format!(
                        "table `{}`, file `{}`",
                        table.spec.name, file.location
                    )));
                }
            }
        }
        None
    }
}

async fn read_all(ctx: &SessionContext) -> Result<()> {
    use futures::StreamExt;
    let mut stream = ctx.table("probe").await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        batch?;
    }
    Ok(())
}

/// Session settings from the engine options.
fn session_config(options: &EngineOptions) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(options.workers.max(1))
        .with_batch_size(options.batch_size.max(1))
        .with_information_schema(true);
    let execution = &mut config.options_mut().execution;
    execution.spill_compression = options.spill_compression;
    // Sorts keep this much back for merging their spill files; DataFusion's 10 MiB per
    // partition starves small limits, so scale it with the limit.
    let per_partition = pool_size(options.memory_limit) / (8 * options.workers.max(1) as u64);
    execution.sort_spill_reservation_bytes = per_partition.clamp(1 << 20, 10 << 20) as usize;
    config
}

/// Parse a spill compression name.
pub fn parse_spill_compression(text: &str) -> std::result::Result<SpillCompression, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "zstd" => Ok(SpillCompression::Zstd),
        "lz4" | "lz4_frame" => Ok(SpillCompression::Lz4Frame),
        "none" | "uncompressed" => Ok(SpillCompression::Uncompressed),
        other => Err(format!(
            "unknown spill compression `{other}` (expected zstd, lz4_frame or uncompressed)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_only_when_each_partition_has_little_memory() {
        assert_eq!(batch_size_for(12 << 30, 2), DEFAULT_BATCH_SIZE);
        assert_eq!(batch_size_for(16 << 20, 2), 2048);
        assert_eq!(batch_size_for(1 << 20, 4), 1024);
    }

    #[test]
    fn spill_merges_fan_in_by_the_partition_share_of_memory() {
        assert_eq!(spill_merge_fan_in(64 << 20, 2), 4);
        assert_eq!(spill_merge_fan_in(8 << 20, 2), 2);
        assert_eq!(spill_merge_fan_in(1 << 30, 2), 64);
        assert_eq!(spill_merge_fan_in(64 << 30, 1), 256);
    }
}
