//! `spillway serve`: the configured tables and reports over the PostgreSQL wire protocol.
//!
//! Built on datafusion-postgres (protocol, `pg_catalog`, cursors, `SET`/`SHOW`) with Spillway's
//! own parts around it: SCRAM-SHA-256 users and TLS ([`auth`]), the read-only guard and driver
//! compatibility answers ([`guard`]), per-connection sessions sharing one memory pool with a
//! per-statement cap, statement timeouts and cancel requests that stop the running plan, and the
//! dashboard result cache ([`cache`]) kept honest by re-listing each table's files before a
//! query ([`session`]). Must not expose a file, a table or a setting that the operator's config
//! does not name: the catalog holds only configured tables and report views, file paths as
//! table names are refused, and engine settings cannot be `SET`.

mod auth;
mod cache;
mod guard;
mod pgcompat;
mod session;

pub(crate) use auth::Verifier;

use crate::catalog::TableSpec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::report::ReportDefinition;
use datafusion_postgres::pgwire;
use session::Server;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
}

/// Load the TLS certificate chain and private key.
fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<pgwire::tokio::TlsAcceptor> {
    use tokio_rustls::rustls;
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "server.tls_{what}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let cert_pem = read(cert, "cert")?;
    let key_pem = read(key, "key")?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("server.tls_cert: {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "server.tls_cert: {} holds no PEM certificate",
            cert.display()
        )));
    }
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Error::Config(format!("server.tls_key: {}: {e}", key.display())))?
        .ok_or_else(|| {
            Error::Config(format!(
                "server.tls_key: {} holds no PEM private key",
                key.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| Error::Config(format!("server.tls_cert / server.tls_key: {e}")))?;
    // Direct TLS (PostgreSQL 17 clients' sslnegotiation=direct) requires this ALPN name.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serve until Ctrl-C or SIGTERM, then stop accepting and return.
pub(crate) async fn run(
    engine: Engine,
    tables: Vec<TableSpec>,
    reports: Vec<ReportDefinition>,
    options: ServeOptions,
) -> Result<()> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    // Statements execute on their own threads (see `session`); this runtime keeps the
    // protocol, timers and cancel requests.
    let queries = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(engine.options().workers.max(1))
        .thread_name("spillway-query")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the query runtime: {e}")))?;
    let result = serve_until_stopped(
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

async fn serve_until_stopped(
    engine: Engine,
    tables: Vec<TableSpec>,
    reports: Vec<ReportDefinition>,
    options: ServeOptions,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    queries: tokio::runtime::Handle,
) -> Result<()> {
    let table_count = tables.len();
    let report_count = reports.len();
    let server = Server::start(engine, tables, reports, &options, queries).await?;
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {}: cannot listen: {e}", options.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listening socket: {e}")))?;
    // The first line on stdout says where to connect (tests and scripts read the port from it).
    println!(
        "spillway: serving {table_count} tables and {report_count} reports on postgres://{address} \
         (TLS {}, {})",
        if options.require_tls { "required" } else if tls.is_some() { "optional" } else { "off" },
        if options.users.is_empty() { "no authentication: loopback only".to_string() } else { format!("{} SCRAM users", options.users.len()) },
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let active = Arc::new(AtomicUsize::new(0));
    let handlers = Arc::new(session::Handlers::new(server.clone()));
    let refuse = Arc::new(session::Refuse::new(options.max_connections));
    let shutdown = crate::process::signal::shutdown();
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let tls = tls.clone();
        if active.load(Ordering::SeqCst) >= options.max_connections {
            server.note_refused();
            tracing::warn!(%peer, "refused: {} connections already open", options.max_connections);
            let refuse = refuse.clone();
            tokio::spawn(async move {
                let _ = pgwire::tokio::process_socket(socket, tls, refuse).await;
            });
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(active.clone());
        let handlers = handlers.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    tracing::info!("shutting down: {}", server.summary());
    Ok(())
}

/// A connection's place in the count; given back when the connection ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
