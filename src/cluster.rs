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
pub(crate) mod job;
pub(crate) mod scheduler;
pub(crate) mod status;
pub(crate) mod tls;

pub(crate) use job::{finish_cancels, job_totals, runs_on_cluster, JobTotals};

use crate::error::{Error, Result};
use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use ballista_core::planner::BallistaQueryPlanner;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::StreamExt;
use std::sync::Arc;

/// `[cluster] mode = "auto"`: statements reading at least this much run on the cluster.
pub(crate) const DEFAULT_AUTO_THRESHOLD: u64 = 1 << 30;

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

/// The cluster's task slots (every executor's vcores added up), from its scheduler's status;
/// `None` (with a warning) when it cannot say, e.g. a scheduler that is not Spillway's.
pub(crate) async fn task_slots(address: &str, tls: Option<&tls::ClusterTls>) -> Option<usize> {
    match status::fetch(address, tls).await {
        Ok(status) => Some(status.executors.iter().map(|e| e.slots as usize).sum()),
        Err(error) => {
            tracing::warn!("{error}; stages get --workers partitions");
            None
        }
    }
}

/// How long a client waits for the scheduler to accept a connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The client side: `state` (Spillway's session, its tables registered later) upgraded so its
/// statements are planned into jobs for the scheduler at `address`. Ballista resets the
/// function lists here; the engine registers Spillway's functions again afterwards.
pub(crate) fn client_state(
    state: SessionState,
    address: &str,
    threshold: Option<u64>,
    tls: Option<Arc<tls::ClusterTls>>,
) -> Result<SessionState> {
    let url = scheduler_url(address)?;
    let mut state = state
        .upgrade_for_ballista(url.clone())
        .map_err(|e| Error::Usage(format!("--cluster `{address}`: {e}")))?;
    let (host, port) = scheduler_host_port(address)?;
    // With TLS, every connection the client opens (to the scheduler, and to executors for
    // results) is https, verified against the cluster's CA.
    let url = match &tls {
        Some(tls) => {
            let config = state
                .config()
                .clone()
                .with_ballista_use_tls(true)
                .with_ballista_override_create_grpc_client_endpoint(tls.endpoint_override());
            state = SessionStateBuilder::new_from_existing(state)
                .with_config(config)
                .build();
            format!("https://{host}:{port}")
        }
        None => url,
    };
    let remote = BallistaQueryPlanner::<LogicalPlanNode>::with_extension(
        url,
        state.config().ballista_config(),
        state.config().ballista_logical_extension_codec(),
    );
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_query_planner(Arc::new(ClusterPlanner {
            remote,
            local: DefaultPhysicalPlanner::default(),
            scheduler: job::SchedulerAddress { host, port, tls },
            threshold,
        }))
        .build())
}

/// Plans a statement as a job for the cluster when every table it reads is a file table
/// (which a job can name: executors read the files themselves), and here otherwise: catalog
/// tables (`information_schema`, `pg_catalog`), in-memory tables, and statements that read no
/// table. Ballista's own planner keeps only `information_schema` local and sends the rest,
/// where a `pg_catalog` or in-memory table cannot be encoded.
struct ClusterPlanner {
    remote: BallistaQueryPlanner<LogicalPlanNode>,
    local: DefaultPhysicalPlanner,
    /// For the calls that follow a job.
    scheduler: job::SchedulerAddress,
    /// `auto` mode: the input size from which a statement goes to the cluster.
    threshold: Option<u64>,
}

impl std::fmt::Debug for ClusterPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPlanner")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let remote = reads_only_files(plan)
            && match self.threshold {
                None => true,
                Some(threshold) => input_bytes(plan, state).await? >= threshold,
            };
        if remote {
            let job = self.remote.create_physical_plan(plan, state).await?;
            Ok(job::JobExec::wrap(job, self.scheduler.clone()))
        } else {
            self.local.create_physical_plan(plan, state).await
        }
    }
}

/// The total size of the files the file tables of `plan` cover (listed now: the same listing
/// the scan makes, so what `auto` weighs is what the statement would read at most).
async fn input_bytes(plan: &LogicalPlan, state: &dyn Session) -> datafusion::error::Result<u64> {
    let mut tables = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                tables.push(provider);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let mut bytes = 0u64;
    for provider in &tables {
        let Some(table) = provider.downcast_ref::<ListingTable>() else {
            continue;
        };
        let extension = &table.options().file_extension;
        for path in table.table_paths() {
            let store = state.runtime_env().object_store(path)?;
            let mut files = path
                .list_all_files(state, store.as_ref(), extension)
                .await?;
            while let Some(file) = files.next().await {
                bytes += file?.size;
            }
        }
    }
    Ok(bytes)
}

/// Whether `plan` reads at least one table and every table it reads is a file table.
fn reads_only_files(plan: &LogicalPlan) -> bool {
    let mut scans = 0usize;
    let mut all_files = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scans += 1;
            let is_file_table = source_as_provider(&scan.source)
                .map(|provider| provider.downcast_ref::<ListingTable>().is_some())
                .unwrap_or(false);
            if !is_file_table {
                all_files = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans > 0 && all_files
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
