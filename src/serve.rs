//! `spillway serve`: the configured tables and reports over the PostgreSQL wire protocol.
//!
//! Built on datafusion-postgres (protocol, `pg_catalog`, cursors, `SET`/`SHOW`) with Spillway's
//! own parts around it, one room per concern: [`server`] (what connections share, counters,
//! start and stop), [`connection`] (a connection's session with its per-statement memory cap,
//! cancel requests, refusal when full), [`statement`] (statement timeouts and cancel requests
//! that stop the running plan, the cache lookup and the tee into it), [`tables`] (re-listing
//! each table's files before a query so the dashboard result cache in [`cache`] stays honest,
//! report views and table functions), SCRAM-SHA-256 users ([`auth`]) and TLS ([`tls`]), and the
//! read-only guard and driver compatibility answers ([`guard`], [`pgcompat`]). Must not expose a
//! file, a table or a setting that the operator's config does not name: the catalog holds only
//! configured tables and report views, file paths as table names are refused, and engine
//! settings cannot be `SET`.

mod auth;
mod cache;
mod connection;
mod guard;
mod pgcompat;
mod server;
mod statement;
mod tables;
mod tls;

pub(crate) use auth::Verifier;

use crate::catalog::TableSpec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::report::ReportDefinition;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the server listens unless told otherwise (PostgreSQL's port, loopback only).
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:5432";
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 64;
pub(crate) const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);
/// One statement may hold this share of the pool: four runaway queries together still leave
/// nothing starved for long, and a dashboard's group-by over claims fits easily.
pub(crate) const DEFAULT_QUERY_MEMORY_SHARE: f64 = 0.25;
/// The result cache's default size, unless an eighth of the memory pool is less.
pub(crate) const DEFAULT_CACHE_SIZE: u64 = 256 << 20;

/// Resolved server settings (flags over `[server]` over defaults).
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) max_connections: usize,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) query_memory: usize,
    pub(crate) cache_size: usize,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) require_tls: bool,
    pub(crate) users: HashMap<String, Verifier>,
    /// `[server.users.NAME] role`: the privacy role of each user that names one.
    pub(crate) roles: HashMap<String, Arc<crate::privacy::Role>>,
    /// The role of users without one (and of every connection without authentication).
    pub(crate) default_role: Option<Arc<crate::privacy::Role>>,
    /// `[reports] state_dir`/serve and `max_state`: per-file states of dashboard aggregations.
    pub(crate) states: Option<(PathBuf, u64)>,
}

/// Serve until Ctrl-C or SIGTERM, then stop accepting and return.
pub(crate) async fn run(
    engine: Engine,
    tables: Vec<TableSpec>,
    reports: Vec<ReportDefinition>,
    options: ServeOptions,
) -> Result<()> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls::tls_acceptor(cert, key)?),
        None => None,
    };
    // Statements execute on their own threads (see `statement`); this runtime keeps the
    // protocol, timers and cancel requests.
    let queries = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(engine.options().workers.max(1))
        .thread_name("spillway-query")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the query runtime: {e}")))?;
    let result = server::serve_until_stopped(
        engine,
        tables,
        reports,
        options,
        tls,
        queries.handle().clone(),
    )
    .await;
    queries.shutdown_background();
    result
}
