//! The one place a DataFusion `SessionContext` is made.
//!
//! [`Engine`] owns the memory pool (a `FairSpillPool` under a `TrackConsumersPool`, so a failed
//! allocation names the top consumers, wrapped in [`PeakPool`] to record the high-water mark),
//! the disk manager (spill folder and cap), parallelism, batch size and spill compression, the
//! object stores (counted, see `storage`) and the registered tables. It turns SQL text into
//! statements and statements into running, streaming plans. It must not know about output
//! formats: callers pull `RecordBatch`es from [`RunningQuery::stream`].

pub(crate) mod aggregate;
pub(crate) mod csv_scan;
pub(crate) mod group_keys;
pub(crate) mod group_topk;
pub(crate) mod memory;
pub(crate) mod profile;
pub(crate) mod rewrite;

use crate::catalog::{self, RegisteredTable, TableSpec};
use crate::config::StorageSection;
use crate::engine::csv_scan::FastCsvScan;
use crate::engine::group_keys::PACK_INTEGER_KEYS;
use crate::engine::group_topk::TopKPerGroup;
use crate::engine::rewrite::{AccountWindowInput, FullSortInsteadOfTopK, TWO_LEVEL_DISTINCT};
use crate::error::{Error, Result};
use crate::privacy::audit::{AuditLog, InputFile};
use crate::privacy::functions::PseudonymKey;
use crate::privacy::guard::PrivacyGuard;
use crate::privacy::{Policy, Role};
use crate::storage::registry::OnDemandStores;
use crate::storage::{Location, ResolvedLocation, StoreCounters, StoreRegistry};
use datafusion::common::config::SpillCompression;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::OptimizerRule;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
pub(crate) use memory::PeakPool;
use memory::{pool_size, spill_merge_fan_in, CappedPool, DEFAULT_MEMORY_FRACTION};
use object_store::ObjectStore;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Rows per batch. DataFusion's default; smaller batches cost throughput, larger ones memory.
pub(crate) const DEFAULT_BATCH_SIZE: usize = 8192;

/// Resolved engine settings (flags > env > config file > defaults, already merged).
#[derive(Debug, Clone)]
pub(crate) struct EngineOptions {
    pub(crate) memory_limit: u64,
    pub(crate) spill_dir: Option<PathBuf>,
    pub(crate) max_spill: Option<u64>,
    pub(crate) workers: usize,
    pub(crate) batch_size: usize,
    pub(crate) spill_compression: SpillCompression,
    /// `[storage]`: settings of every bucket, container or server a table does not configure
    /// itself.
    pub(crate) storage: StorageSection,
    /// A Ballista scheduler (`df://host:port`) to run statements on, instead of this process.
    pub(crate) cluster: Option<String>,
    /// With a cluster: run there only statements whose input files add up to this many bytes
    /// (`[cluster] mode = "auto"`); `None` runs every statement over files there.
    pub(crate) cluster_threshold: Option<u64>,
    /// TLS for cluster traffic (`[cluster] tls_cert`, `tls_key`, `ca`).
    pub(crate) cluster_tls: Option<Arc<crate::cluster::tls::ClusterTls>>,
    /// The cluster's task slots (all executors' vcores), when its scheduler says: a stage is
    /// split into at least this many partitions, so that every executor gets work.
    pub(crate) cluster_slots: Option<usize>,
    /// `[privacy]`: the PHI guard's policy, and the role this engine's own session runs under
    /// (`query`, `report`; a server gives each connection its user's role instead).
    pub(crate) privacy: Option<Arc<Policy>>,
    pub(crate) role: Option<Arc<Role>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let memory = crate::process::memory::available_memory();
        Self {
            memory_limit: (memory as f64 * DEFAULT_MEMORY_FRACTION) as u64,
            spill_dir: None,
            max_spill: None,
            workers: default_workers(),
            batch_size: DEFAULT_BATCH_SIZE,
            // lz4 costs little CPU and still shrinks spilled claims data several times over;
            // zstd shrinks more but its CPU cost shows on a 2-core machine.
            spill_compression: SpillCompression::Lz4Frame,
            storage: StorageSection::default(),
            cluster: None,
            cluster_threshold: None,
            cluster_tls: None,
            cluster_slots: None,
            privacy: None,
            role: None,
        }
    }
}

/// All cores this process may use.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
}

/// A configured DataFusion session with Spillway's tables registered.
pub(crate) struct Engine {
    ctx: SessionContext,
    pool: Arc<PeakPool>,
    /// The local store and one S3 store per bucket, registered with the session.
    stores: Arc<StoreRegistry>,
    /// Behind a lock so a long-running server can register a table again over new files.
    tables: Mutex<Vec<RegisteredTable>>,
    options: EngineOptions,
    /// The policy of `options.role`, installed in `ctx` (none for an unrestricted role).
    guard: Option<Arc<PrivacyGuard>>,
    /// `[privacy] audit_log`, checked writable when the engine opened.
    audit: Option<AuditLog>,
}

/// A statement that is executing: its plan (for metrics) and the stream of its results.
pub(crate) struct RunningQuery {
    pub(crate) plan: Arc<dyn ExecutionPlan>,
    pub(crate) stream: SendableRecordBatchStream,
}

impl Engine {
    /// Build the session: memory pool, disk manager, parallelism, stores.
    pub(crate) fn new(options: EngineOptions) -> Result<Engine> {
        let (runtime, pool, stores) = runtime_env(&options)?;
        let mut state = SessionStateBuilder::new()
            .with_config(session_config(&options))
            .with_runtime_env(runtime)
            .with_default_features();
        for rule in logical_rules() {
            state = state.with_optimizer_rule(rule);
        }
        for rule in physical_rules() {
            state = state.with_physical_optimizer_rule(rule);
        }
        let mut state = state.build();
        if let Some(scheduler) = &options.cluster {
            state = crate::cluster::client_state(
                state,
                scheduler,
                options.cluster_threshold,
                options.cluster_tls.clone(),
            )?;
        }
        // After the Ballista upgrade, which resets the function lists to its defaults.
        let key = match &options.privacy {
            Some(policy) => policy.pseudonym_key()?,
            None => None,
        };
        register_functions(&mut state, key)?;
        let (state, guard) = guarded(state, options.privacy.as_ref(), options.role.as_ref());
        let ctx = SessionContext::new_with_state(state);
        Ok(Engine {
            ctx,
            pool,
            stores,
            tables: Mutex::new(Vec::new()),
            options,
            guard,
            audit: None,
        })
    }

    /// The audit log statements are recorded in, if `[privacy] audit_log` names one.
    pub(crate) fn audit_log(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// The role this engine's session runs under.
    pub(crate) fn role_name(&self) -> Option<String> {
        self.options.role.as_ref().map(|role| role.name.clone())
    }

    /// The files behind every registered table a plan reads, as the audit log records them.
    pub(crate) fn input_files(&self, plan: &LogicalPlan) -> Vec<InputFile> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        let mut names = std::collections::BTreeSet::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                names.insert(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        self.files_of_tables(&names)
    }

    /// The files behind the registered tables named in `names`, for the audit log.
    pub(crate) fn files_of_tables(
        &self,
        names: &std::collections::BTreeSet<String>,
    ) -> Vec<InputFile> {
        let Ok(tables) = self.tables.lock() else {
            return Vec::new();
        };
        tables
            .iter()
            .filter(|table| {
                names.contains(&table.spec.name.to_ascii_lowercase())
                    || names.contains(table.spec.name.as_str())
            })
            .flat_map(|table| {
                table.resolved.files.iter().map(|file| InputFile {
                    table: table.spec.name.clone(),
                    path: file.location.to_string(),
                    size: file.size,
                    modified: file.last_modified.to_rfc3339(),
                    etag: file.e_tag.clone(),
                })
            })
            .collect()
    }

    /// Groups that small-cell suppression removed since the last call.
    pub(crate) fn take_suppressed(&self) -> Option<u64> {
        self.guard
            .as_ref()
            .filter(|g| g.role().aggregate_only)
            .map(|g| g.take_suppressed())
    }

    /// The settings this engine was built with.
    pub(crate) fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The DataFusion session (for callers that need to plan directly, e.g. the server).
    pub(crate) fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The memory pool's size in bytes ([`POOL_SHARE`] of the memory limit).
    pub(crate) fn pool_limit(&self) -> u64 {
        pool_size(self.options.memory_limit)
    }

    /// The memory pool, for peak usage.
    pub(crate) fn pool(&self) -> &PeakPool {
        &self.pool
    }

    /// The memory pool, for other holders of memory that must count against the limit (the
    /// server's result cache).
    pub(crate) fn shared_pool(&self) -> Arc<dyn MemoryPool> {
        self.pool.clone()
    }

    /// Request and byte counters of every store.
    pub(crate) fn counters(&self) -> &Arc<StoreCounters> {
        self.stores.counters()
    }

    /// The object stores tables and outputs are read from and written to.
    pub(crate) fn stores(&self) -> &StoreRegistry {
        &self.stores
    }

    /// The engine every entry point runs on: a session with `options`, and `specs` registered
    /// as tables (errors name the table).
    pub(crate) async fn open(mut options: EngineOptions, specs: &[TableSpec]) -> Result<Engine> {
        if let Some(policy) = &options.privacy {
            options.privacy = Some(Arc::new(
                policy.with_aliases(protected_aliases(policy, specs)),
            ));
        }
        if let Some(address) = &options.cluster {
            crate::cluster::check_reachable(address).await?;
            options.cluster_slots =
                crate::cluster::task_slots(address, options.cluster_tls.as_deref()).await;
        }
        let audit = match options
            .privacy
            .as_ref()
            .and_then(|p| p.audit_log.as_deref())
        {
            Some(path) => Some(AuditLog::open(path)?),
            None => None,
        };
        let mut engine = Engine::new(options)?;
        engine.audit = audit;
        for spec in specs {
            engine.register_table(spec).await?;
        }
        Ok(engine)
    }

    /// Register a table; errors name the table.
    async fn register_table(&self, spec: &TableSpec) -> Result<()> {
        let store = self.table_store(spec)?;
        let registered = catalog::register(&self.ctx, &store, spec).await?;
        let mut tables = self
            .tables
            .lock()
            .map_err(|_| Error::Internal("table registry poisoned".into()))?;
        tables.retain(|table| table.spec.name != spec.name);
        tables.push(registered);
        Ok(())
    }

    /// Register a table again after its files changed (the server notices that). If that
    /// fails, the table keeps its previous files: serving the old files beats no table at all.
    pub(crate) async fn register_table_again(&self, spec: &TableSpec) -> Result<()> {
        let previous = self.ctx.deregister_table(spec.name.as_str())?;
        let registered = self.register_table(spec).await;
        if registered.is_err() {
            if let Some(previous) = previous {
                let _ = self.ctx.register_table(spec.name.as_str(), previous);
            }
        }
        registered
    }

    /// What was registered for the table `name`.
    pub(crate) fn registered(&self, name: &str) -> Option<RegisteredTable> {
        let tables = self.tables.lock().ok()?;
        tables.iter().find(|table| table.spec.name == name).cloned()
    }

    /// The files behind a table now, listed as registration lists them: the server compares
    /// them with what it registered to notice changed files.
    pub(crate) async fn list_table(&self, spec: &TableSpec) -> Result<ResolvedLocation> {
        let store = self.table_store(spec)?;
        Ok(catalog::list_files(&store, spec).await?.1)
    }

    /// The store a table's files live in; errors name the table.
    fn table_store(&self, spec: &TableSpec) -> Result<Arc<dyn ObjectStore>> {
        let location = Location::parse(&spec.location)
            .map_err(|e| e.context(format!("table `{}`", spec.name)))?;
        self.stores
            .store_for(&location, Some(&spec.storage))
            .map_err(|e| e.context(format!("table `{}`", spec.name)))
    }

    /// Split SQL text into statements (errors carry the line and column).
    pub(crate) fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        let statements = DFParser::parse_sql(sql).map_err(Error::from)?;
        if statements.is_empty() {
            return Err(Error::Usage("no SQL statement given".into()));
        }
        Ok(statements.into_iter().collect())
    }

    /// Plan one statement. A statement the privacy policy refuses is refused here, before
    /// any output is opened (the guard runs again, as an analyzer rule, when it executes).
    pub(crate) async fn plan(&self, statement: Statement) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        if let Some(guard) = &self.guard {
            use datafusion::optimizer::AnalyzerRule;
            guard.analyze(plan.clone(), state.config_options())?;
        }
        Ok(plan)
    }

    /// Bind named parameter values (`$name` placeholders) into a plan: values travel as typed
    /// scalars, never as SQL text, so a value cannot change what the statement does.
    pub(crate) fn bind(
        plan: LogicalPlan,
        values: Vec<(String, ScalarValue)>,
    ) -> Result<LogicalPlan> {
        let map: HashMap<String, ScalarAndMetadata> = values
            .into_iter()
            .map(|(name, value)| (name, value.into()))
            .collect();
        Ok(plan.with_param_values(ParamValues::Map(map))?)
    }

    /// The `$name` placeholders a planned statement uses, without the `$`.
    pub(crate) fn placeholders(plan: &LogicalPlan) -> Result<Vec<String>> {
        let mut names: Vec<String> = plan
            .get_parameter_names()?
            .into_iter()
            .map(|name| name.trim_start_matches('$').to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether a planned statement returns rows (a query) rather than changing the session.
    pub(crate) fn returns_rows(plan: &LogicalPlan) -> bool {
        !matches!(plan, LogicalPlan::Statement(_) | LogicalPlan::Ddl(_))
    }

    /// Start executing a planned statement; results stream out of the returned query.
    pub(crate) async fn execute(&self, plan: LogicalPlan) -> Result<RunningQuery> {
        self.pool.reset_peak();
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let physical = frame.create_physical_plan().await?;
        let stream = execute_stream(physical.clone(), self.ctx.task_ctx())?;
        Ok(RunningQuery {
            plan: physical,
            stream,
        })
    }

    /// Start executing a query with per-file aggregate states (see `incremental`): the plan
    /// is made without dynamic filters, which carry values one execution learns into the scans
    /// of the next and so would leak one file's rows into another file's state.
    pub(crate) async fn execute_with_states(
        &self,
        plan: LogicalPlan,
        spec: &crate::incremental::Spec,
    ) -> Result<(RunningQuery, crate::incremental::Outcome)> {
        if self.options.cluster.is_some() {
            let running = self.execute(plan).await?;
            return Ok((
                running,
                crate::incremental::Outcome::full("it runs on a cluster"),
            ));
        }
        self.pool.reset_peak();
        let mut config = self.ctx.state().config().clone();
        without_dynamic_filters(config.options_mut());
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .build();
        if let Some(function) = crate::incremental::time_dependent(&plan) {
            let running = self.execute(plan).await?;
            let reason = format!("it calls {function}(), whose value changes from run to run");
            return Ok((running, crate::incremental::Outcome::full(reason)));
        }
        // The logical plan decides the states too (a changed table definition changes it);
        // the physical one would also change with the number of files.
        let mut spec = spec.clone();
        spec.identity.push((
            crate::incremental::PLAN_PART.into(),
            plan.display_indent().to_string(),
        ));
        let physical = state.create_physical_plan(&plan).await?;
        let task = Arc::new(TaskContext::from(&state));
        let (physical, outcome) = crate::incremental::apply(physical, &spec, task.clone()).await?;
        let stream = execute_stream(physical.clone(), task)?;
        Ok((
            RunningQuery {
                plan: physical,
                stream,
            },
            outcome,
        ))
    }

    /// Wait (up to two seconds) until the pool holds nothing: a failed plan's tasks are
    /// cancelled asynchronously and keep their reservations until they have stopped.
    pub(crate) async fn wait_for_released_memory(&self) {
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
    pub(crate) fn session_with_memory_cap(
        &self,
        memory_cap: usize,
        role: Option<&Arc<Role>>,
        states: Option<&(std::path::PathBuf, u64)>,
    ) -> Result<(SessionContext, Option<Arc<PrivacyGuard>>)> {
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
        let (mut state, guard) = guarded(state, self.options.privacy.as_ref(), role);
        // Dashboard aggregations over files keep per-file states (not on a cluster, whose
        // planner sends whole statements away).
        if let (Some((root, max_state)), None) = (states, &self.options.cluster) {
            let role = role.map(|r| r.name.clone()).unwrap_or_default();
            let planner = crate::incremental::StatesPlanner::new(
                root.clone(),
                *max_state,
                role,
                state.query_planner().clone(),
            );
            state = SessionStateBuilder::new_from_existing(state)
                .with_query_planner(Arc::new(planner))
                .build();
        }
        Ok((SessionContext::new_with_state(state), guard))
    }

    /// Start a statement again after it ran out of memory, with a plan that trades speed for
    /// spilling: sort-merge joins instead of hash joins (whose build side cannot spill), full
    /// sorts instead of top-k heaps, no top-k aggregation or top k per group, and half-size
    /// batches.
    pub(crate) async fn execute_conservatively(&self, plan: LogicalPlan) -> Result<RunningQuery> {
        self.pool.reset_peak();
        // From the session's current settings, so a script's own `SET`s still hold.
        let mut config = self.ctx.state().config().clone();
        let batch_size = (config.batch_size() / 2).max(1024);
        config = config.with_batch_size(batch_size);
        let settings = config.options_mut();
        settings.optimizer.prefer_hash_join = false;
        settings.optimizer.enable_topk_aggregation = false;
        fit_sorts_to_pool(settings, &self.options, true);
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
    pub(crate) async fn find_bad_file(&self) -> Option<Error> {
        let mut config = session_config(&self.options).with_target_partitions(1);
        config.options_mut().optimizer.repartition_file_scans = false;
        let probe = SessionContext::new_with_config_rt(config, self.ctx.runtime_env());
        // A copy, so that no lock is held while files are read.
        let tables = self
            .tables
            .lock()
            .map(|tables| tables.clone())
            .unwrap_or_default();
        for table in &tables {
            for file in &table.resolved.files {
                let Ok(single) = table.single_file_table(file) else {
                    continue;
                };
                let _ = probe.deregister_table("probe");
                if probe.register_table("probe", Arc::new(single)).is_err() {
                    continue;
                }
                if let Err(error) = read_all(&probe).await {
                    let error = error.context(format!(
                        "table `{}`, file `{}`",
                        table.spec.name, file.location
                    ));
                    return Some(catalog::suggest_schema(error, table));
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

/// `state` with the guard of `role` (if it has rules) among its analyzer rules, before type
/// coercion so the masks and row filters are coerced like the statement's own expressions.
/// Any guard `state` already had (a server's base session) is replaced.
fn guarded(
    state: SessionState,
    policy: Option<&Arc<Policy>>,
    role: Option<&Arc<Role>>,
) -> (SessionState, Option<Arc<PrivacyGuard>>) {
    let mut rules: Vec<_> = state
        .analyzer()
        .rules
        .iter()
        .filter(|rule| rule.name() != GUARD_RULE)
        .cloned()
        .collect();
    let (Some(policy), Some(role)) = (policy, role) else {
        return (state, None);
    };
    if role.unrestricted {
        return (state, None);
    }
    let unguarded = SessionStateBuilder::new_from_existing(state.clone())
        .with_analyzer_rules(rules.clone())
        .build();
    let guard = Arc::new(PrivacyGuard::new(policy.clone(), role.clone(), unguarded));
    let at = rules
        .iter()
        .position(|rule| rule.name() == "type_coercion")
        .unwrap_or(rules.len());
    rules.insert(at, guard.clone());
    let state = SessionStateBuilder::new_from_existing(state)
        .with_analyzer_rules(rules)
        .build();
    (state, Some(guard))
}

const GUARD_RULE: &str = "spillway_privacy_guard";

/// Tables given under a new name over a protected table's files (`--table copy=claims/*.csv`)
/// are guarded as that table.
fn protected_aliases(
    policy: &Policy,
    specs: &[TableSpec],
) -> std::collections::BTreeMap<String, String> {
    let mut aliases = std::collections::BTreeMap::new();
    for spec in specs {
        if policy.classes(&spec.name).is_some() {
            continue;
        }
        let same_files = specs
            .iter()
            .find(|other| other.location == spec.location && policy.classes(&other.name).is_some());
        if let Some(protected) = same_files {
            aliases.insert(
                spec.name.to_ascii_lowercase(),
                protected.name.to_ascii_lowercase(),
            );
        }
    }
    aliases
}

/// The runtime every Spillway session runs on, locally or as a cluster node: one memory pool
/// (spilling, with its high-water mark), the disk manager (spill folder, cap, merge fan-in) and
/// the object stores (local mmap store; S3 per bucket).
pub(crate) fn runtime_env(
    options: &EngineOptions,
) -> Result<(Arc<RuntimeEnv>, Arc<PeakPool>, Arc<StoreRegistry>)> {
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
    let on_demand = Arc::new(OnDemandStores::new());
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool.clone())
        .with_disk_manager_builder(disk)
        .with_object_store_registry(on_demand.clone())
        .build_arc()?;
    let stores = Arc::new(StoreRegistry::new(
        runtime.object_store_registry.clone(),
        options.storage.clone(),
    )?);
    on_demand.attach(stores.clone());
    Ok((runtime, pool, stores))
}

/// Spillway's logical rewrites (`engine/rewrite.rs`, `engine/group_keys.rs`).
pub(crate) fn logical_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    vec![Arc::new(TWO_LEVEL_DISTINCT), Arc::new(PACK_INTEGER_KEYS)]
}

/// Spillway's physical rules: the window-input reservation, top-k per group and the CSV
/// decoder. A cluster applies them on the executors, where stage plans run.
pub(crate) fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    vec![
        Arc::new(AccountWindowInput),
        Arc::new(TopKPerGroup),
        Arc::new(FastCsvScan),
    ]
}

/// The physical rules for a stage planned with `settings`: the conservative retry (see
/// [`Engine::execute_conservatively`]) turns top-k aggregation off, and then top-k per group
/// gives way to a full sort that spills, as it does in this process. Executors learn of a
/// retry only through the settings a job carries, so this is how they tell.
pub(crate) fn physical_rules_for(
    settings: &datafusion::config::ConfigOptions,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    if settings.optimizer.enable_topk_aggregation {
        return physical_rules();
    }
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = physical_rules()
        .into_iter()
        .filter(|rule| rule.name() != TopKPerGroup::NAME)
        .collect();
    rules.push(Arc::new(FullSortInsteadOfTopK));
    rules
}

/// Register Spillway's functions in `state`, by the names plans refer to them:
/// `spillway_pack_keys`, its own `median` and `corr` (replacing DataFusion's), and the privacy
/// functions (`pseudonym` with `key`). Every node of a cluster registers them, because plans
/// name functions instead of carrying them.
pub(crate) fn register_functions(
    state: &mut SessionState,
    key: Option<PseudonymKey>,
) -> Result<()> {
    state.register_udf(group_keys::pack_keys_udf())?;
    for udf in crate::privacy::functions::udfs(key) {
        state.register_udf(udf)?;
    }
    // By name, for stage plans of aggregate-only roles that run on a cluster.
    state.register_udf(crate::privacy::guard::cell_check_udf(Default::default()))?;
    state.register_udaf(crate::privacy::people::people_upto_udaf())?;
    for udaf in crate::engine::aggregate::udafs() {
        state.register_udaf(udaf)?;
    }
    state.register_udtf("profile", Arc::new(profile::ProfileFunction));
    Ok(())
}

fn session_config(options: &EngineOptions) -> SessionConfig {
    let partitions = options
        .workers
        .max(options.cluster_slots.unwrap_or(0))
        .max(1);
    let mut config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_batch_size(options.batch_size.max(1))
        .with_information_schema(true);
    config.options_mut().execution.spill_compression = options.spill_compression;
    fit_sorts_to_pool(config.options_mut(), options, false);
    config
}

/// Size what sorts keep back for merging their spill files to this process's pool:
/// DataFusion's 10 MiB per partition starves small limits, so it scales with the limit. The
/// conservative retry keeps a larger share (pool / (2 × workers)), never less than before: a
/// sort frees its merge reservation to sort what it holds before spilling, then takes it back,
/// and under a small pool the other partition's merge can take that memory in between (seen
/// once in five test-suite runs at 16 MiB: "allocation failed for ExternalSorterMerge").
/// Executors apply it to every task with their own limit: a job's settings carry the
/// client's value, sized for the client's pool.
pub(crate) fn fit_sorts_to_pool(
    settings: &mut datafusion::config::ConfigOptions,
    options: &EngineOptions,
    conservative: bool,
) {
    let pool = pool_size(options.memory_limit);
    let workers = options.workers.max(1) as u64;
    let normal = (pool / (8 * workers)).clamp(1 << 20, 10 << 20) as usize;
    let execution = &mut settings.execution;
    execution.sort_spill_reservation_bytes = if conservative {
        let merge_share = (pool / (2 * workers)).clamp(1 << 20, 10 << 20) as usize;
        merge_share.max(normal)
    } else {
        normal
    };
}

/// Turn off every dynamic filter (join, top-k, aggregate): see [`Engine::execute_with_states`].
pub(crate) fn without_dynamic_filters(options: &mut datafusion::config::ConfigOptions) {
    let optimizer = &mut options.optimizer;
    optimizer.enable_dynamic_filter_pushdown = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    optimizer.enable_topk_dynamic_filter_pushdown = false;
    optimizer.enable_aggregate_dynamic_filter_pushdown = false;
}

/// Parse a spill compression name.
pub(crate) fn parse_spill_compression(text: &str) -> std::result::Result<SpillCompression, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "zstd" => Ok(SpillCompression::Zstd),
        "lz4" | "lz4_frame" => Ok(SpillCompression::Lz4Frame),
        "none" | "uncompressed" => Ok(SpillCompression::Uncompressed),
        other => Err(format!(
            "unknown spill compression `{other}` (expected zstd, lz4_frame or uncompressed)"
        )),
    }
}
