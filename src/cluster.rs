//! Scale-out on Apache DataFusion Ballista: the scheduler and executor roles embedded in this
//! binary (`scheduler`, `executor`), and the client side, which turns an engine's session into
//! one that runs its statements on a scheduler.
//!
//! Owns what makes a Ballista node a Spillway node: Spillway's functions on every node (plans
//! name functions, they do not carry them), its physical rules applied where stage plans run
//! (Ballista's adaptive planner replaces a session's physical rules with its own list), one
//! spilling memory pool per executor process, and object stores each node builds from its own
//! configuration. Must not put a credential into a job's settings: no node sends its store
//! settings to another.

pub(crate) mod executor;
pub(crate) mod scheduler;

use crate::error::{Error, Result};
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::SessionStateExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{CancelJobParams, CleanJobDataParams};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::StreamExt;
use std::sync::Arc;

/// Ballista's default scheduler port.
pub(crate) const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// A scheduler address as Ballista's client wants it, from `df://host:port` (or `host:port`).
/// Errors name the option and say what form is expected.
pub(crate) fn scheduler_url(address: &str) -> Result<String> {
    let (host, port) = scheduler_host_port(address)?;
    Ok(format!("df://{host}:{port}"))
}

/// Host and port of a scheduler address (`df://host:port`, `host:port`, or `host`).
pub(crate) fn scheduler_host_port(address: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--cluster `{address}`: {why} (expected df://HOST:PORT, e.g. df://127.0.0.1:{DEFAULT_SCHEDULER_PORT})"
        ))
    };
    let rest = match address.split_once("://") {
        Some(("df", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("unknown scheme `{scheme}`"))),
        None => address,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    let url = url::Url::parse(&format!("df://{rest}")).map_err(|e| bad(&e.to_string()))?;
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| bad("no host"))?;
    if url.path() != "" && url.path() != "/" {
        return Err(bad("a path is not part of a scheduler address"));
    }
    Ok((
        host.to_string(),
        url.port().unwrap_or(DEFAULT_SCHEDULER_PORT),
    ))
}

/// Check that the scheduler at `address` accepts connections, within a few seconds: a
/// scheduler that is down is a clear error naming its address (exit 8), not a hang.
pub(crate) async fn check_reachable(address: &str) -> Result<()> {
    let (host, port) = scheduler_host_port(address)?;
    let unreachable = |why: String| {
        Error::Storage(format!(
            "cluster: cannot reach the scheduler at df://{host}:{port}: {why}"
        ))
    };
    // An IPv6 host is bracketed in the address, not in the socket API.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((bare, port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// How long a client waits for the scheduler to accept a connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The client side: `state` (Spillway's session, its tables registered later) upgraded so its
/// statements are planned into jobs for the scheduler at `address`. Ballista resets the
/// function lists here; the engine registers Spillway's functions again afterwards.
pub(crate) fn client_state(state: SessionState, address: &str) -> Result<SessionState> {
    let url = scheduler_url(address)?;
    state
        .upgrade_for_ballista(url)
        .map_err(|e| Error::Usage(format!("--cluster `{address}`: {e}")))
}

/// Whether `plan` (a physical plan of a clustered engine) runs as a job on the cluster; plans
/// Ballista keeps local (catalog queries) do not.
pub(crate) fn runs_on_cluster(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
        .is_some()
}

/// The stream of a statement that runs on the cluster, following its job: when the stream
/// ends, the scheduler is told to remove the job's files from the executors (the results were
/// read; with Ballista's timer off they would otherwise stay); when it is dropped before its end
/// (a closed pipe, Ctrl-C, an error), the job is cancelled. Other plans pass through.
pub(crate) fn follow_job(
    plan: &Arc<dyn ExecutionPlan>,
    stream: SendableRecordBatchStream,
    address: &str,
) -> Result<SendableRecordBatchStream> {
    if !runs_on_cluster(plan) {
        return Ok(stream);
    }
    let (host, port) = scheduler_host_port(address)?;
    let guard = JobGuard {
        plan: Arc::clone(plan),
        scheduler: format!("http://{host}:{port}"),
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

/// Cancels its job when dropped before the job's results were read to the end.
struct JobGuard {
    plan: Arc<dyn ExecutionPlan>,
    scheduler: String,
    read_to_end: bool,
}

impl JobGuard {
    fn job_id(&self) -> Option<String> {
        self.plan
            .downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
            .and_then(|exec| exec.job_id())
            .map(|job| job.to_string())
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
                let mut client = SchedulerGrpcClient::connect(scheduler).await?;
                client
                    .cancel_job(CancelJobParams {
                        job_id: job.clone(),
                    })
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            if let Err(error) = cancelled.await {
                tracing::warn!("job {job}: could not be cancelled: {error}");
            }
        });
        if let Ok(mut pending) = CANCELLING.lock() {
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
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, futures::future::join_all(pending)).await;
}

async fn remove_job_data(
    scheduler: &str,
    job: &str,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = SchedulerGrpcClient::connect(scheduler.to_string()).await?;
    client
        .clean_job_data(CleanJobDataParams {
            job_id: job.to_string(),
            remove_stage_ids: Vec::new(),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_addresses_take_the_df_scheme_or_none_and_default_the_port() {
        assert_eq!(
            scheduler_url("df://10.0.0.5:7000").unwrap(),
            "df://10.0.0.5:7000"
        );
        assert_eq!(
            scheduler_url("10.0.0.5:7000").unwrap(),
            "df://10.0.0.5:7000"
        );
        assert_eq!(scheduler_url("sched").unwrap(), "df://sched:50050");
        assert_eq!(
            scheduler_host_port("df://[::1]:7000/").unwrap(),
            ("[::1]".to_string(), 7000)
        );
    }

    #[test]
    fn a_bad_scheduler_address_names_the_option_and_the_expected_form() {
        let message = scheduler_url("http://x:1").unwrap_err().to_string();
        assert!(
            message.contains("--cluster `http://x:1`: unknown scheme `http`"),
            "{message}"
        );
        assert!(message.contains("expected df://HOST:PORT"), "{message}");
        assert!(scheduler_url("df://").is_err());
        assert!(scheduler_url("df://h:notaport").is_err());
        assert!(scheduler_url("df://h:1/path").is_err());
    }
}
