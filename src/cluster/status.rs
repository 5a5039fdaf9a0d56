//! `spillway cluster status`: what a scheduler knows of its cluster (executors, their slots and
//! heartbeats, queued and running jobs), served by the scheduler as JSON at [`PATH`] and read
//! and printed by the client. Must not show a job's settings (they can name stores and tables).

use crate::error::{Error, Result};
use ballista_core::serde::protobuf::job_status::Status;
use serde::{Deserialize, Serialize};

/// Where a scheduler serves its status, on its gRPC port.
pub(crate) const PATH: &str = "/spillway/status";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClusterStatus {
    /// The scheduler's own `host:port`.
    pub(crate) scheduler: String,
    pub(crate) queued_jobs: usize,
    pub(crate) running_jobs: usize,
    pub(crate) executors: Vec<ExecutorStatus>,
    pub(crate) jobs: Vec<JobStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecutorStatus {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) flight_port: u16,
    pub(crate) grpc_port: u16,
    /// Task slots (vcores): partitions the executor runs at once.
    pub(crate) slots: u32,
    pub(crate) seconds_since_heartbeat: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobStatus {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) stages: usize,
    pub(crate) completed_stages: usize,
}

pub(crate) fn job_state(status: &ballista_core::serde::protobuf::JobStatus) -> String {
    match status.status {
        Some(Status::Queued(_)) => "queued",
        Some(Status::Running(_)) => "running",
        Some(Status::Failed(_)) => "failed",
        Some(Status::Successful(_)) => "successful",
        None => "unknown",
    }
    .to_string()
}

/// Ask the scheduler at `address` for its status: a down scheduler is exit 8 naming it.
pub(crate) async fn fetch(
    address: &str,
    tls: Option<&super::tls::ClusterTls>,
) -> Result<ClusterStatus> {
    let (host, port) = super::scheduler_host_port(address)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{port}{PATH}");
    let failed = |why: String| {
        Error::Storage(format!(
            "cluster: cannot read the status of the scheduler at df://{host}:{port}: {why}"
        ))
    };
    let mut client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .no_proxy();
    if let Some(tls) = tls {
        client = client
            .tls_built_in_root_certs(false)
            .add_root_certificate(tls.reqwest_ca()?);
    }
    let client = client.build().map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| failed(without_url(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!(
            "HTTP {} (is it a Spillway scheduler?)",
            response.status()
        )));
    }
    let body = response.text().await.map_err(|e| failed(without_url(&e)))?;
    serde_json::from_str(&body).map_err(|e| failed(format!("unexpected answer: {e}")))
}

/// reqwest's innermost cause (refused, timed out, a bad certificate), without the URL.
fn without_url(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within 5 s".to_string();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// The status as a person reads it.
pub(crate) fn render(status: &ClusterStatus) -> String {
    let slots: u64 = status.executors.iter().map(|e| u64::from(e.slots)).sum();
    let mut out = format!(
        "scheduler {}: {} executor{}, {slots} slot{}; {} running job{}, {} queued\n",
        status.scheduler,
        status.executors.len(),
        plural(status.executors.len()),
        plural(slots as usize),
        status.running_jobs,
        plural(status.running_jobs),
        status.queued_jobs,
    );
    if !status.executors.is_empty() {
        out.push_str(&format!(
            "{:<28} {:<24} {:>6} {:>6} {:>5}  {}\n",
            "EXECUTOR", "HOST", "FLIGHT", "GRPC", "SLOTS", "LAST HEARTBEAT"
        ));
        for e in &status.executors {
            let heartbeat = e
                .seconds_since_heartbeat
                .map_or_else(|| "never".to_string(), |s| format!("{s} s ago"));
            out.push_str(&format!(
                "{:<28} {:<24} {:>6} {:>6} {:>5}  {heartbeat}\n",
                e.id, e.host, e.flight_port, e.grpc_port, e.slots
            ));
        }
    }
    if !status.jobs.is_empty() {
        out.push_str(&format!(
            "{:<24} {:<10} {:>7}  {}\n",
            "JOB", "STATE", "STAGES", "NAME"
        ));
        for j in &status.jobs {
            out.push_str(&format!(
                "{:<24} {:<10} {:>7}  {}\n",
                j.id,
                j.state,
                format!("{}/{}", j.completed_stages, j.stages),
                j.name
            ));
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
