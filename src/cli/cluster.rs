//! `spillway cluster scheduler|executor|status`: the flags of a cluster node, handed to
//! `cluster`, and the status printed.

use super::{ClusterCommand, ClusterExecutorArgs, ClusterStatusArgs};
use crate::cluster::{self, executor::ExecutorPlace};
use crate::engine::EngineOptions;
use crate::error::{Error, Result};

pub(crate) async fn run(command: ClusterCommand, mut options: EngineOptions) -> Result<()> {
    if let ClusterCommand::Status(args) = command {
        return status(
            args,
            options.cluster.as_deref(),
            options.cluster_tls.as_deref(),
        )
        .await;
    }
    // A node runs stages itself: --cluster / [cluster] is for clients.
    options.cluster = None;
    match command {
        ClusterCommand::Scheduler(args) => {
            cluster::scheduler::run(options, args.listen, args.advertise, args.executor_timeout)
                .await
        }
        ClusterCommand::Executor(args) => cluster::executor::run(options, place(args)).await,
        ClusterCommand::Status(_) => Ok(()),
    }
}

async fn status(
    args: ClusterStatusArgs,
    scheduler: Option<&str>,
    tls: Option<&cluster::tls::ClusterTls>,
) -> Result<()> {
    let scheduler = scheduler.ok_or_else(|| {
        Error::Usage(
            "cluster status: which scheduler? Give --cluster df://HOST:PORT (or [cluster] scheduler)"
                .into(),
        )
    })?;
    let status = cluster::status::fetch(scheduler, tls).await?;
    let text = if args.json {
        serde_json::to_string_pretty(&status)
            .map_err(|e| Error::Internal(format!("cluster status: {e}")))?
            + "\n"
    } else {
        cluster::status::render(&status)
    };
    super::print_stdout(&text)?;
    if status.executors.len() < args.min_executors {
        return Err(Error::Storage(format!(
            "cluster: {} executor(s) registered with the scheduler at {}, fewer than --min-executors {}",
            status.executors.len(),
            cluster::scheduler_url(scheduler)?,
            args.min_executors
        )));
    }
    Ok(())
}

fn place(args: ClusterExecutorArgs) -> ExecutorPlace {
    let work_dir = args.work_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("spillway-executor-{}", args.flight_port))
    });
    // A host name (a container's, say) is announced as given; the sockets need an address.
    let bind = args.bind.unwrap_or_else(|| {
        args.host
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    });
    ExecutorPlace {
        scheduler: args.scheduler,
        bind,
        host: args.host,
        flight_port: args.flight_port,
        grpc_port: args.grpc_port,
        work_dir,
    }
}
