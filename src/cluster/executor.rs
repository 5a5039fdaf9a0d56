//! `spillway cluster executor`: Ballista's executor in this process, running stage plans as a
//! Spillway engine would: Spillway's functions, its physical rules applied to each stage plan
//! before it runs, one spilling memory pool for the whole process (`--memory-limit`,
//! `--spill-dir`, `--max-spill`), and its own object stores. Must not take store settings from
//! a job: credentials stay on the node that has them.

use crate::engine::PeakPool;
use crate::engine::{self, EngineOptions};
use crate::error::{Error, Result};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::{
    RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport,
};
use ballista_core::utils::default_session_builder;
use ballista_core::{JobId, RuntimeProducer};
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{Gauge, Metric, MetricValue, MetricsSet};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where an executor listens and whom it serves.
#[derive(Debug, Clone)]
pub(crate) struct ExecutorPlace {
    /// The scheduler, `df://host:port`.
    pub(crate) scheduler: String,
    /// Address the executor announces (reachable from the scheduler, clients and the other
    /// executors).
    pub(crate) host: String,
    /// Address its sockets listen on.
    pub(crate) bind: std::net::IpAddr,
    /// Arrow Flight port: shuffle reads and result fetches.
    pub(crate) flight_port: u16,
    /// gRPC port: the scheduler launches and cancels tasks here.
    pub(crate) grpc_port: u16,
    /// Shuffle and result files.
    pub(crate) work_dir: PathBuf,
}

/// How often an executor tells the scheduler it is alive.
const HEARTBEAT_SECONDS: u64 = 2;

/// How long an unread job's files stay on an executor before its sweeper removes them.
const UNREAD_JOB_DATA_TTL_SECONDS: u64 = 24 * 3600;

/// Run an executor until the process is told to stop (Ctrl-C or SIGTERM: Ballista drains the
/// running tasks and tells the scheduler first).
pub(crate) async fn run(options: EngineOptions, place: ExecutorPlace) -> Result<()> {
    let (scheduler_host, scheduler_port) = super::scheduler_host_port(&place.scheduler)?;
    std::fs::create_dir_all(&place.work_dir).map_err(|e| {
        Error::Usage(format!(
            "--work-dir {}: cannot create it: {e}",
            place.work_dir.display()
        ))
    })?;
    let (runtime, pool, _stores) = engine::runtime_env(&options)?;
    // One runtime, so one pool, for every task of this process.
    let runtime_producer: RuntimeProducer = Arc::new(move |_config| Ok(runtime.clone()));
    let executor_id = format!("{}:{}", place.host, place.flight_port);
    let stages = SpillwayStages {
        inner: DefaultExecutionEngine::default(),
        pool,
        executor_id: executor_id.clone(),
        options: options.clone(),
    };
    let mut config = ExecutorProcessConfig {
        bind_host: place.bind.to_string(),
        external_host: Some(place.host.clone()),
        port: place.flight_port,
        grpc_port: place.grpc_port,
        scheduler_host: scheduler_host.clone(),
        scheduler_port,
        // A few seconds of retries cover a scheduler that starts beside its executors.
        scheduler_connect_timeout_seconds: 10,
        vcores: options.workers.max(1),
        work_dir: Some(place.work_dir.to_string_lossy().into_owned()),
        job_data_ttl_seconds: UNREAD_JOB_DATA_TTL_SECONDS,
        job_data_clean_up_interval_seconds: 3600,
        // Frequent heartbeats let the scheduler notice a lost executor in seconds
        // (`cluster scheduler --executor-timeout`).
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        // Some(0): keep the runtime's own pool; any other value makes Ballista carve a pool per
        // task from 70 % of the host's memory, ignoring --memory-limit.
        memory_pool_size: Some(0),
        override_function_registry: Some(Arc::new(function_registry(&options)?)),
        override_runtime_producer: Some(runtime_producer),
        override_execution_engine: Some(Arc::new(stages)),
        ..ExecutorProcessConfig::default()
    };
    config.executor_id = executor_id;
    if let Some(tls) = &options.cluster_tls {
        // Over TLS: Flight on a TLS server of our own, every connection this executor opens
        // (to the scheduler, to other executors for shuffle reads) https and verified, and work
        // taken by polling the scheduler (the push mode's task port has no TLS hook).
        let server = tls.server("executor")?;
        config.task_scheduling_policy = TaskSchedulingPolicy::PullStaged;
        config.override_arrow_flight_service =
            Some(Arc::new(move |work_dir, address, shutdown, grpc| {
                flight_over_tls(work_dir, address, shutdown, grpc, server.clone())
            }));
        let endpoint = tls.endpoint_override();
        config.override_create_grpc_client_endpoint = Some(endpoint.clone());
        config.override_config_producer = Some(Arc::new(move || {
            SessionConfig::new_with_ballista()
                .with_ballista_use_tls(true)
                .with_ballista_override_create_grpc_client_endpoint(endpoint.clone())
        }));
    }
    eprintln!(
        "spillway: executor on {}:{} (Flight) and {}:{} (tasks), scheduler df://{scheduler_host}:{scheduler_port}",
        place.host, place.flight_port, place.host, place.grpc_port
    );
    start_executor_process(Arc::new(config)).await.map_err(|e| {
        Error::Storage(format!(
            "cluster executor: {e} (scheduler df://{scheduler_host}:{scheduler_port})"
        ))
    })
}

/// The executor's Arrow Flight service (shuffle reads, result fetches) on a TLS server: as
/// Ballista's own, which has no TLS.
fn flight_over_tls(
    work_dir: String,
    address: std::net::SocketAddr,
    mut shutdown: ballista_executor::shutdown::Shutdown,
    grpc: ballista_core::utils::GrpcServerConfig,
    tls: tonic::transport::ServerTlsConfig,
) -> tokio::task::JoinHandle<std::result::Result<(), ballista_core::error::BallistaError>> {
    tokio::spawn(async move {
        let service = arrow_flight::flight_service_server::FlightServiceServer::new(
            ballista_executor::flight_service::BallistaFlightService::new(work_dir),
        )
        .max_decoding_message_size(FLIGHT_MESSAGE_BYTES)
        .max_encoding_message_size(FLIGHT_MESSAGE_BYTES);
        ballista_core::utils::create_grpc_server(&grpc)
            .tls_config(tls)
            .map_err(ballista_core::error::BallistaError::TonicError)?
            .add_service(service)
            .serve_with_shutdown(address, shutdown.recv())
            .await
            .map_err(ballista_core::error::BallistaError::TonicError)
    })
}

/// Ballista's default gRPC message size limits, for the Flight service.
const FLIGHT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Ballista's default functions (those of its client and scheduler sessions) with Spillway's
/// over them. Ballista's own default registry lacks the nested (`array_*`) functions.
/// `pseudonym` carries this executor's own key (`[privacy] key_env` or `key_file` in its
/// config): keys never travel in a job.
fn function_registry(options: &EngineOptions) -> Result<BallistaFunctionRegistry> {
    let mut state = default_session_builder(SessionConfig::new_with_ballista())?;
    let key = match &options.privacy {
        Some(policy) => policy.pseudonym_key()?,
        None => None,
    };
    engine::register_functions(&mut state, key)?;
    Ok(BallistaFunctionRegistry::from(&state))
}

/// Runs each stage plan with Spillway's physical rules applied to it, and reports the memory
/// the executor's pool held while it ran. The scheduler cannot apply the rules: its adaptive
/// planner replaces a session's physical rules with its own list, and the nodes they make
/// would not survive the trip to the executor.
struct SpillwayStages {
    inner: DefaultExecutionEngine,
    pool: Arc<PeakPool>,
    executor_id: String,
    /// This executor's limits, which size what its tasks' sorts keep back.
    options: EngineOptions,
}

impl ExecutionEngine for SpillwayStages {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn QueryStageExecutor>> {
        let scheduler_operators = operators_with_metrics(&plan);
        let (plan, changed_by) = with_spillway_rules(plan, config)?;
        if !changed_by.is_empty() {
            // The proof that Spillway's rules ran where the stage runs (tests read it).
            tracing::info!(
                "job {job_id} stage {stage_id}: rewritten by {}",
                changed_by.join(", ")
            );
        }
        let inner = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(PoolPeakStage {
            inner,
            pool: Arc::clone(&self.pool),
            executor_id: self.executor_id.clone(),
            peak: AtomicUsize::new(0),
            options: self.options.clone(),
            scheduler_operators,
        }))
    }
}

/// `context` with its sorts sized to this executor's pool (the job's settings carry the
/// client's sizes), conservatively for a job the client retries after running out of memory.
fn fitted_to_this_executor(context: &TaskContext, options: &EngineOptions) -> Arc<TaskContext> {
    let mut config = context.session_config().clone();
    let conservative = !config.options().optimizer.enable_topk_aggregation;
    engine::fit_sorts_to_pool(config.options_mut(), options, conservative);
    Arc::new(TaskContext::new(
        context.task_id(),
        context.session_id(),
        config,
        context.scalar_functions().clone(),
        context.higher_order_functions().clone(),
        context.aggregate_functions().clone(),
        context.window_functions().clone(),
        context.runtime_env(),
    ))
}

/// Operators of `plan` that keep metrics, in the scheduler's count.
fn operators_with_metrics(plan: &Arc<dyn ExecutionPlan>) -> usize {
    usize::from(plan.metrics().is_some())
        + plan
            .children()
            .into_iter()
            .map(operators_with_metrics)
            .sum::<usize>()
}

/// `sets` (one per operator of the rewritten stage plan, in plan order) as exactly `count`
/// sets: Spillway's rules may add or merge operators, and the scheduler wants one set per
/// operator of its own plan. Extra sets are folded into the last one, missing ones are empty,
/// so every metric still counts in the job's totals (its operator attribution is approximate
/// for a rewritten stage).
fn as_many_sets(mut sets: Vec<MetricsSet>, count: usize) -> Vec<MetricsSet> {
    if count == 0 {
        return Vec::new();
    }
    while sets.len() > count {
        if let Some(extra) = sets.pop() {
            if let Some(last) = sets.last_mut() {
                for metric in extra.iter() {
                    last.push(Arc::clone(metric));
                }
            }
        }
    }
    sets.resize_with(count, MetricsSet::new);
    sets
}

/// The name of the metric a task reports its executor's pool peak under, followed by the
/// executor's id (the client takes the largest per executor and adds the executors up).
pub(crate) const POOL_PEAK_METRIC: &str = "spillway_pool_peak";

/// A stage task that also reports the most memory its executor's pool held while it ran (the
/// pool is the process's, so concurrent tasks count in it too: an upper bound per task, exact
/// per executor). DataFusion's own `peak_mem_used` gauges are per operator and not all report.
#[derive(Debug)]
struct PoolPeakStage {
    inner: Arc<dyn QueryStageExecutor>,
    pool: Arc<PeakPool>,
    executor_id: String,
    peak: AtomicUsize,
    options: EngineOptions,
    /// Operators with metrics in the stage plan as the scheduler made it: it pairs the
    /// reported metric sets with its own plan's operators and refuses a different count.
    scheduler_operators: usize,
}

impl std::fmt::Display for PoolPeakStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for PoolPeakStage {
    async fn execute_query_stage(
        &self,
        input_partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<Vec<ShuffleWritePartition>> {
        let context = fitted_to_this_executor(&context, &self.options);
        if !context
            .session_config()
            .options()
            .optimizer
            .enable_topk_aggregation
        {
            // A conservative retry follows a job that ran out of memory; the failed task's other
            // partitions stop asynchronously and hold their memory until they have. Give them
            // a moment, as the local retry does (bounded: other jobs may hold memory too).
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while self.pool.reserved() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let mark = self.pool.watch();
        let written = self
            .inner
            .execute_query_stage(input_partition, context)
            .await;
        self.peak
            .fetch_max(mark.load(Ordering::Relaxed), Ordering::Relaxed);
        written
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        let mut sets = as_many_sets(self.inner.collect_plan_metrics(), self.scheduler_operators);
        if let Some(root) = sets.first_mut() {
            let gauge = Gauge::new();
            gauge.set(self.peak.load(Ordering::Relaxed));
            root.push(Arc::new(Metric::new(
                MetricValue::Gauge {
                    name: format!("{POOL_PEAK_METRIC} {}", self.executor_id).into(),
                    gauge,
                },
                None,
            )));
        }
        sets
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> datafusion::error::Result<Vec<WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}

/// The stage's writer over its input with Spillway's physical rules applied to the input, and
/// the names of the rules that changed it. The writer itself (Ballista's shuffle or result
/// writer) stays as the scheduler made it.
pub(crate) fn with_spillway_rules(
    plan: Arc<dyn ExecutionPlan>,
    config: &SessionConfig,
) -> datafusion::error::Result<(Arc<dyn ExecutionPlan>, Vec<String>)> {
    let children = plan.children();
    let [input] = children.as_slice() else {
        return Ok((plan, Vec::new()));
    };
    let mut input = Arc::clone(input);
    let mut changed_by = Vec::new();
    for rule in engine::physical_rules_for(config.options()) {
        let rewritten = rule.optimize(Arc::clone(&input), config.options())?;
        // A rule that matches nothing hands back the same plan.
        if !Arc::ptr_eq(&rewritten, &input) {
            changed_by.push(rule.name().to_string());
        }
        input = rewritten;
    }
    if changed_by.is_empty() {
        return Ok((plan, changed_by));
    }
    // Recompute: a rule may change the input's ordering properties (the writer's own
    // partitioning is its configuration, not derived).
    let plan = plan.replace_children(
        vec![input],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )?;
    Ok((plan, changed_by))
}
