//! `spillway cluster scheduler|executor`: the flags of a cluster node, handed to `cluster`.

use super::{ClusterCommand, ClusterExecutorArgs};
use crate::cluster::{self, executor::ExecutorPlace};
use crate::engine::EngineOptions;
use crate::error::Result;

pub(crate) async fn run(command: ClusterCommand, mut options: EngineOptions) -> Result<()> {
    // A node runs stages itself: --cluster / [cluster] is for clients.
    options.cluster = None;
    match command {
        ClusterCommand::Scheduler(args) => cluster::scheduler::run(options, args.listen).await,
        ClusterCommand::Executor(args) => cluster::executor::run(options, place(args)).await,
    }
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
