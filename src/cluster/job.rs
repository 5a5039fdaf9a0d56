//! A statement running as a Ballista job, followed from the client: [`JobExec`] wraps the plan
//! node that submits the job, so every entry point (query, reports, the scheduler, serve) gets
//! the same care. When its rows have been read to the end, the scheduler is told to remove the
//! job's files from the executors (the scheduler's own timer is off, so a slow reader never
//! loses rows); when the reader stops early (a closed pipe, Ctrl-C, a cancelled or timed-out
//! server statement) the job is cancelled. After the job, [`job_totals`] asks the scheduler
//! what the executors reported (spills, memory). Must not read or hold any result rows itself.

use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::serde::protobuf::operator_metric::Metric;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{CancelJobParams, CleanJobDataParams, GetJobMetricsParams};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::StreamExt;
use std::sync::Arc;

/// How long the client waits for the scheduler on the side calls (metrics, cancels).
const SIDE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the client reaches the scheduler for the calls that follow a job.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerAddress {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<Arc<super::tls::ClusterTls>>,
}

type SideCallError = Box<dyn std::error::Error + Send + Sync>;

impl SchedulerAddress {
    async fn client(
        &self,
    ) -> Result<SchedulerGrpcClient<tonic::transport::Channel>, SideCallError> {
        let channel = match &self.tls {
            Some(tls) => tls.channel(&self.host, self.port).await?,
            None => {
                tonic::transport::Endpoint::from_shared(format!(
                    "http://{}:{}",
                    self.host, self.port
                ))?
                .connect()
                .await?
            }
        };
        Ok(SchedulerGrpcClient::new(channel))
    }
}

/// A job for the scheduler at `scheduler`: Ballista's submitting node, whose stream is
/// followed as the module says.
#[derive(Debug)]
pub(crate) struct JobExec {
    inner: Arc<dyn ExecutionPlan>,
    scheduler: SchedulerAddress,
}

impl JobExec {
    /// Wrap `plan` if it is Ballista's job node; other plans (run here) are returned as they are.
    pub(crate) fn wrap(
        plan: Arc<dyn ExecutionPlan>,
        scheduler: SchedulerAddress,
    ) -> Arc<dyn ExecutionPlan> {
        if plan
            .downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
            .is_some()
        {
            Arc::new(JobExec {
                inner: plan,
                scheduler,
            })
        } else {
            plan
        }
    }

    /// The job's id, once the scheduler accepted it.
    fn job_id(&self) -> Option<String> {
        submitted_job(&self.inner)
    }
}

/// The id of the job Ballista's node `plan` submitted, once the scheduler accepted it.
fn submitted_job(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
        .and_then(|exec| exec.job_id())
        .map(|job| job.to_string())
}

impl DisplayAs for JobExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for JobExec {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let stream = self.inner.execute(partition, context)?;
        let guard = JobGuard {
            plan: Arc::clone(&self.inner),
            scheduler: self.scheduler.clone(),
            read_to_end: false,
        };
        let schema = stream.schema();
        let tail = futures::stream::once(async move {
            let mut guard = guard;
            guard.read_to_end = true;
            if let Some(job) = guard.job_id() {
                if let Err(error) = remove_job_data(&guard.scheduler, &job).await {
                    tracing::warn!("job {job}: could not have its result files removed: {error}");
                }
            }
            None
        })
        .filter_map(|end: Option<datafusion::error::Result<RecordBatch>>| async move { end });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.chain(tail),
        )))
    }
}

/// Whether `plan` (a physical plan of a clustered engine) runs as a job on the cluster; plans
/// kept here (catalog and in-memory tables, statements that read no table) do not.
pub(crate) fn runs_on_cluster(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<JobExec>().is_some()
}

/// Cancels its job when dropped before the job's results were read to the end.
struct JobGuard {
    plan: Arc<dyn ExecutionPlan>,
    scheduler: SchedulerAddress,
    read_to_end: bool,
}

impl JobGuard {
    fn job_id(&self) -> Option<String> {
        submitted_job(&self.plan)
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if self.read_to_end {
            return;
        }
        let (Some(job), Ok(runtime)) = (self.job_id(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let scheduler = self.scheduler.clone();
        let cancelling = runtime.spawn(async move {
            let cancelled = async {
                let mut client = scheduler.client().await?;
                client
                    .cancel_job(CancelJobParams {
                        job_id: job.clone(),
                    })
                    .await?;
                Ok::<_, SideCallError>(())
            };
            if let Err(error) = cancelled.await {
                tracing::warn!("job {job}: could not be cancelled: {error}");
            }
        });
        if let Ok(mut pending) = CANCELLING.lock() {
            pending.retain(|task| !task.is_finished());
            pending.push(cancelling);
        }
    }
}

/// Cancellations sent from `JobGuard::drop`, which cannot wait for them.
static CANCELLING: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Wait (at most a few seconds) for the cancellations of jobs whose readers stopped early, so
/// that they reach the scheduler before the process exits.
pub(crate) async fn finish_cancels() {
    let pending = match CANCELLING.lock() {
        Ok(mut pending) => std::mem::take(&mut *pending),
        Err(_) => return,
    };
    if pending.is_empty() {
        return;
    }
    let _ = tokio::time::timeout(SIDE_CALL_TIMEOUT, futures::future::join_all(pending)).await;
}

async fn remove_job_data(scheduler: &SchedulerAddress, job: &str) -> Result<(), SideCallError> {
    let mut client = scheduler.client().await?;
    client
        .clean_job_data(CleanJobDataParams {
            job_id: job.to_string(),
            remove_stage_ids: Vec::new(),
        })
        .await?;
    Ok(())
}

/// What the executors reported for a finished job: spills summed over every operator of every
/// stage, and peak memory: for each stage the most each executor's pool held while the stage's
/// tasks ran, added up over executors; the largest stage's (stages mostly run one after another).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct JobTotals {
    pub(crate) spill: crate::stats::PlanTotals,
    pub(crate) peak_memory: u64,
    pub(crate) stages: usize,
}

/// The totals of the job behind `plan`, asked of its scheduler; `None` for a
/// plan that ran here, or when the scheduler could not say (a warning, not an error: the rows
/// were delivered).
pub(crate) async fn job_totals(plan: &Arc<dyn ExecutionPlan>) -> Option<JobTotals> {
    let exec = plan.downcast_ref::<JobExec>()?;
    let job = exec.job_id()?;
    let asked = async {
        let mut client = exec.scheduler.client().await?;
        let metrics = client
            .get_job_metrics(GetJobMetricsParams {
                job_id: job.clone(),
            })
            .await?
            .into_inner();
        Ok::<_, SideCallError>(metrics)
    };
    let metrics = match tokio::time::timeout(SIDE_CALL_TIMEOUT, asked).await {
        Ok(Ok(metrics)) => metrics,
        Ok(Err(error)) => {
            tracing::warn!("job {job}: the scheduler gave no metrics: {error}");
            return None;
        }
        Err(_) => {
            tracing::warn!("job {job}: the scheduler gave no metrics within 5 s");
            return None;
        }
    };
    let mut totals = JobTotals {
        stages: metrics.stages.len(),
        ..JobTotals::default()
    };
    for stage in &metrics.stages {
        // Each task reports its executor's pool peak: the largest per executor, added up.
        let mut per_executor = std::collections::HashMap::<&str, u64>::new();
        for metric in stage.operators.iter().flat_map(|op| &op.metrics) {
            match &metric.metric {
                Some(Metric::SpillCount(n)) => totals.spill.spill_count += *n as usize,
                Some(Metric::SpilledBytes(n)) => totals.spill.spilled_bytes += *n as usize,
                Some(Metric::SpilledRows(n)) => totals.spill.spilled_rows += *n as usize,
                Some(Metric::Gauge(gauge)) => {
                    if let Some(executor) = gauge
                        .name
                        .strip_prefix(super::executor::POOL_PEAK_METRIC)
                        .and_then(|rest| rest.strip_prefix(' '))
                    {
                        let peak = per_executor.entry(executor).or_default();
                        *peak = (*peak).max(gauge.value);
                    }
                }
                _ => {}
            }
        }
        totals.peak_memory = totals.peak_memory.max(per_executor.values().sum());
    }
    Some(totals)
}
