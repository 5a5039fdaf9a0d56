//! `spillway cluster scheduler`: Ballista's scheduler in this process, its sessions built with
//! Spillway's functions and stores. Must not apply Spillway's physical rules: the plans it makes
//! travel to executors by Ballista's codec, which knows only stock nodes; the executors apply
//! them (see `executor`).

use crate::engine::{self, EngineOptions};
use crate::error::{Error, Result};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::utils::default_session_builder;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use ballista_scheduler::scheduler_server::{SchedulerServer, SessionBuilder};
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Run a scheduler on `listen` until the process is told to stop. The address it announces to
/// executors and clients is `listen`'s (give a reachable one, not 0.0.0.0, on a network).
pub(crate) async fn run(
    options: EngineOptions,
    listen: SocketAddr,
    advertise: Option<String>,
    executor_timeout_seconds: u64,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {listen}: cannot listen there: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("scheduler address: {e}")))?;
    // Executors send task results to the address the scheduler gives them: 0.0.0.0 would
    // be their own host.
    let advertised = advertise.unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            host_name()
        } else {
            bound.ip().to_string()
        }
    });
    let mut config = SchedulerConfig::default()
        .with_hostname(advertised)
        .with_port(bound.port())
        .with_override_session_builder(session_builder(&options)?)
        // A job's results stay on the executors until the client has read them: Ballista's
        // timer (300 s after the job ends) would delete them under a slow reader. Executors
        // sweep what a client never fetched (see `executor`).
        .with_finished_job_data_clean_up_interval_seconds(0);
    config.bind_host = bound.ip().to_string();
    let tls = match &options.cluster_tls {
        Some(tls) => {
            // Executors over TLS poll for work: the push mode's task port has no TLS hook.
            config.scheduling_policy = TaskSchedulingPolicy::PullStaged;
            Some(tls.server("scheduler")?)
        }
        None => None,
    };
    // Ballista's defaults notice a killed executor after 3 minutes (and then fail the jobs of
    // an empty cluster after 3 more); executors here report every 2 s, so a lost one is found
    // within the timeout plus one sweep.
    config.executor_timeout_seconds = executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = (executor_timeout_seconds / 3).clamp(1, 15);
    config.no_executors_grace_period_seconds = executor_timeout_seconds;
    config
        .validate()
        .map_err(|e| Error::Usage(format!("scheduler: {e}")))?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Internal(format!("scheduler: {e}")))?;
    let scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> =
        create_scheduler(cluster, Arc::new(config))
            .await
            .map_err(|e| Error::Internal(format!("scheduler: {e}")))?;
    let secured = if tls.is_some() { " (TLS)" } else { "" };
    tracing::info!("scheduler listening on df://{bound}{secured}");
    eprintln!("spillway: scheduler listening on df://{bound}{secured}");
    tokio::select! {
        served = serve(listener, scheduler, tls) => served
            .map_err(|e| Error::Internal(format!("scheduler on {bound}: {e}"))),
        () = crate::process::signal::shutdown() => Ok(()),
    }
}

/// This machine's host name (a container's is what its peers resolve it by).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// Serve Ballista's scheduler service and, on the same port, `/healthz` and Spillway's
/// `/spillway/status` (executors, slots, jobs: Ballista lists them only through its REST API,
/// which is left out of this build because it also shows job settings).
async fn serve(
    listener: TcpListener,
    scheduler: Scheduler,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> std::result::Result<(), String> {
    let config = scheduler.state.config.clone();
    let grpc = SchedulerGrpcServer::new(scheduler.clone())
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(grpc);
    let router = routes
        .routes()
        .into_axum_router()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            super::status::PATH,
            axum::routing::get(move || {
                let scheduler = scheduler.clone();
                async move { axum::Json(status(&scheduler).await) }
            }),
        );
    let Some(tls) = tls else {
        // Executors that announce no host are registered under their peer address.
        return axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .map_err(|e| e.to_string());
    };
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| super::tls::source_chain(&e))
}

async fn status(scheduler: &Scheduler) -> super::status::ClusterStatus {
    use super::status::{ClusterStatus, ExecutorStatus, JobStatus};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let executors = match scheduler.state.executor_manager.get_executors_state().await {
        Ok(executors) => executors
            .into_iter()
            .map(|(meta, heartbeat, _)| ExecutorStatus {
                id: meta.id,
                host: meta.host,
                flight_port: meta.port,
                grpc_port: meta.grpc_port,
                slots: meta.specification.vcores,
                seconds_since_heartbeat: heartbeat.map(|at| now.saturating_sub(at).as_secs()),
            })
            .collect(),
        Err(error) => {
            tracing::warn!("status: executors: {error}");
            Vec::new()
        }
    };
    let jobs = match scheduler.state.task_manager.get_running_jobs().await {
        Ok(jobs) => jobs
            .into_iter()
            .map(|job| JobStatus {
                id: job.job_id.to_string(),
                name: job.job_name,
                state: super::status::job_state(&job.status),
                stages: job.num_stages,
                completed_stages: job.completed_stages,
            })
            .collect(),
        Err(error) => {
            tracing::warn!("status: jobs: {error}");
            Vec::new()
        }
    };
    ClusterStatus {
        scheduler: scheduler.scheduler_endpoint.clone(),
        queued_jobs: scheduler.pending_job_number(),
        running_jobs: scheduler.running_job_number(),
        executors,
        jobs,
    }
}

/// The session each job is planned in: Ballista's defaults (its logical rules and function
/// lists), Spillway's functions over them, and a runtime with Spillway's stores, so the
/// scheduler lists and reads file footers through the same stores as the executors.
fn session_builder(options: &EngineOptions) -> Result<SessionBuilder> {
    let (runtime, _pool, _stores) = engine::runtime_env(options)?;
    Ok(Arc::new(move |config: SessionConfig| {
        let state = default_session_builder(config)?;
        let mut state = SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime.clone())
            .build();
        engine::register_functions(&mut state, None)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(state)
    }))
}
