//! `spillway cluster executor`: Ballista's executor in this process, running stage plans as a
//! Spillway engine would: Spillway's functions, its physical rules applied to each stage plan
//! before it runs, one spilling memory pool for the whole process (`--memory-limit`,
//! `--spill-dir`, `--max-spill`), and its own object stores. Must not take store settings from
//! a job: credentials stay on the node that has them.

use crate::engine::{self, EngineOptions};
use crate::error::{Error, Result};
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::utils::default_session_builder;
use ballista_core::{JobId, RuntimeProducer};
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use std::path::PathBuf;
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
    let (runtime, _pool, _stores) = engine::runtime_env(&options)?;
    // One runtime, so one pool, for every task of this process.
    let runtime_producer: RuntimeProducer = Arc::new(move |_config| Ok(runtime.clone()));
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
        // Some(0): keep the runtime's own pool; any other value makes Ballista carve a pool per
        // task from 70 % of the host's memory, ignoring --memory-limit.
        memory_pool_size: Some(0),
        override_function_registry: Some(Arc::new(function_registry()?)),
        override_runtime_producer: Some(runtime_producer),
        override_execution_engine: Some(Arc::new(SpillwayStages::default())),
        ..ExecutorProcessConfig::default()
    };
    config.executor_id = format!("{}:{}", place.host, place.flight_port);
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

/// Ballista's default functions (those of its client and scheduler sessions) with Spillway's
/// over them. Ballista's own default registry lacks the nested (`array_*`) functions.
fn function_registry() -> Result<BallistaFunctionRegistry> {
    let mut state = default_session_builder(SessionConfig::new_with_ballista())?;
    engine::register_functions(&mut state)?;
    Ok(BallistaFunctionRegistry::from(&state))
}

/// Runs each stage plan with Spillway's physical rules applied to it. The scheduler cannot
/// apply them: its adaptive planner replaces a session's physical rules with its own list, and
/// the nodes they make would not survive the trip to the executor.
#[derive(Default)]
struct SpillwayStages {
    inner: DefaultExecutionEngine,
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
        let (plan, changed_by) = with_spillway_rules(plan, config)?;
        if !changed_by.is_empty() {
            // The proof that Spillway's rules ran where the stage runs (tests read it).
            tracing::info!(
                "job {job_id} stage {stage_id}: rewritten by {}",
                changed_by.join(", ")
            );
        }
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
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
    for rule in engine::physical_rules() {
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
