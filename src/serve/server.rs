//! What every connection shares, and the server's life from start to stop.
//!
//! [`Server`] holds the engine's base session (tables, report views, `pg_catalog`, PostgreSQL's
//! `version()` and `to_regtype()`), the result cache, the table watch, the users and the
//! counters behind `SHOW spillway_stats`. [`serve_until_stopped`] accepts connections until a
//! shutdown signal, refusing those over the limit. Must not do a connection's or a statement's
//! work itself (see `connection` and `statement`).

use super::auth::Users;
use super::cache::ResultCache;
use super::connection::{Handlers, Refuse, Slot};
use super::guard::{self, Compat, ReadOnly, StatsSource};
use super::pgcompat;
use super::statement::GuardedParser;
use super::tables::TableWatch;
use super::ServeOptions;
use crate::catalog::TableSpec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::report::ReportDefinition;
use bytes::Bytes;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Counters for `SHOW spillway_stats` and the shutdown log line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) statements: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

/// What every connection shares.
pub(crate) struct Server {
    pub(crate) engine: Arc<Engine>,
    pub(crate) hooks: Vec<Arc<dyn QueryHook>>,
    pub(crate) parser: Arc<GuardedParser>,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) query_memory: usize,
    pub(crate) cache: ResultCache,
    pub(crate) tables: TableWatch,
    pub(crate) users: Arc<Users>,
    /// Privacy roles by user, and the role of everyone else.
    pub(crate) roles: HashMap<String, Arc<crate::privacy::Role>>,
    pub(crate) default_role: Option<Arc<crate::privacy::Role>>,
    pub(crate) require_tls: bool,
    pub(crate) parameters: Arc<DefaultServerParameterProvider>,
    pub(crate) manager: Arc<ConnectionManager>,
    pub(crate) cancels: Mutex<HashMap<(i32, Bytes), watch::Sender<u64>>>,
    pub(crate) counters: Counters,
    pub(crate) active: AtomicU64,
    /// Where statements execute: DataFusion's tasks run here, never on the threads that
    /// speak the protocol, so timeouts, cancel requests and other clients are answered while
    /// a heavy statement keeps every query thread busy.
    pub(crate) queries: tokio::runtime::Handle,
    /// Where dashboard aggregations keep per-file states, and their bound (see `incremental`).
    pub(crate) states: Option<(std::path::PathBuf, u64)>,
}

impl Server {
    /// Prepare the shared session: tables are already registered in `engine`; add report
    /// views and table functions, `pg_catalog`, and PostgreSQL's `version()`.
    pub(crate) async fn start(
        engine: Engine,
        tables: Vec<TableSpec>,
        reports: Vec<ReportDefinition>,
        options: &ServeOptions,
        queries: tokio::runtime::Handle,
    ) -> Result<Arc<Server>> {
        let engine = Arc::new(engine);
        let ctx = engine.context();
        setup_pg_catalog(
            ctx,
            "datafusion",
            Arc::new(datafusion_postgres::auth::AuthManager::default()),
        )
        .map_err(|e| Error::Internal(format!("pg_catalog: {e}")))?;
        ctx.register_udf(create_udf(
            "version",
            vec![],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|_| {
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(format!(
                    "PostgreSQL {} (Spillway {}, Apache DataFusion {}), 64-bit",
                    guard::SERVER_VERSION,
                    env!("CARGO_PKG_VERSION"),
                    datafusion::DATAFUSION_VERSION
                )))))
            }),
        ));
        ctx.register_udf(create_udf(
            "to_regtype",
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(to_regtype),
        ));
        pgcompat::register_functions(
            ctx,
            vec![
                ("server_version", guard::SERVER_VERSION.to_string()),
                ("server_version_num", guard::SERVER_VERSION_NUM.to_string()),
                ("server_encoding", "UTF8".into()),
                ("client_encoding", "UTF8".into()),
                ("search_path", "public".into()),
                ("standard_conforming_strings", "on".into()),
                ("integer_datetimes", "on".into()),
                ("max_identifier_length", "63".into()),
                ("DateStyle", "ISO, MDY".into()),
                ("TimeZone", "UTC".into()),
                ("transaction_read_only", "on".into()),
                ("default_transaction_read_only", "on".into()),
                ("lc_collate", "C".into()),
                ("lc_ctype", "C".into()),
            ],
        );
        let tables = TableWatch::start(engine.clone(), tables, reports).await?;
        let cache = ResultCache::in_pool(options.cache_size, &engine.shared_pool());
        let late_stats = Arc::new(LateStats::default());
        let stats: Arc<dyn StatsSource> = late_stats.clone();
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly),
            Arc::new(Compat {
                stats: stats.clone(),
            }),
            Arc::new(guard::DeclareCursor),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        // Statements of the extended protocol are planned on the shared session (the tables
        // and functions are the same in every connection's) and run on the connection's own.
        let parser = Arc::new(GuardedParser(
            DfSessionService::new_with_hooks(Arc::new(ctx.clone()), hooks.clone()).query_parser(),
        ));
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = guard::SERVER_VERSION.to_string();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        let server = Arc::new(Server {
            engine,
            hooks,
            parser,
            statement_timeout: options.statement_timeout,
            query_memory: options.query_memory,
            cache,
            tables,
            users: Arc::new(Users::new(options.users.clone())),
            roles: options.roles.clone(),
            default_role: options.default_role.clone(),
            require_tls: options.require_tls,
            parameters: Arc::new(parameters),
            manager: Arc::new(ConnectionManager::new()),
            cancels: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            active: AtomicU64::new(0),
            queries,
            states: options.states.clone(),
        });
        late_stats.set(&server);
        Ok(server)
    }

    /// The privacy role a user's statements run under.
    pub(crate) fn role_of(&self, user: &str) -> Option<&Arc<crate::privacy::Role>> {
        self.roles.get(user).or(self.default_role.as_ref())
    }

    pub(crate) fn note_refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn stats_rows(&self) -> Vec<(String, String)> {
        let c = &self.counters;
        let cache = &self.cache.counters;
        let hits = cache.hits.load(Ordering::Relaxed);
        let misses = cache.misses.load(Ordering::Relaxed);
        let (entries, bytes) = self.cache.size();
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed).to_string();
        vec![
            ("connections_active".into(), load(&self.active)),
            ("connections_total".into(), load(&c.connections)),
            ("connections_refused".into(), load(&c.refused)),
            ("statements".into(), load(&c.statements)),
            ("statements_failed".into(), load(&c.failed)),
            ("statements_cancelled".into(), load(&c.cancelled)),
            ("statements_timed_out".into(), load(&c.timed_out)),
            ("cache_hits".into(), hits.to_string()),
            ("cache_misses".into(), misses.to_string()),
            ("cache_hit_ratio".into(), format!("{ratio:.3}")),
            ("cache_entries".into(), entries.to_string()),
            ("cache_bytes".into(), bytes.to_string()),
            ("cache_too_big".into(), load(&cache.too_big)),
            (
                "memory_reserved_bytes".into(),
                self.engine.pool().reserved().to_string(),
            ),
            (
                "memory_pool_bytes".into(),
                self.engine.pool_limit().to_string(),
            ),
            ("query_memory_bytes".into(), self.query_memory.to_string()),
        ]
    }

    /// One line of the counters, for the log.
    pub(crate) fn summary(&self) -> String {
        self.stats_rows()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `SHOW spillway_stats` is answered by a hook made before the server exists.
#[derive(Default)]
struct LateStats(std::sync::OnceLock<std::sync::Weak<Server>>);

impl LateStats {
    fn set(&self, server: &Arc<Server>) {
        let _ = self.0.set(Arc::downgrade(server));
    }
}

impl StatsSource for LateStats {
    fn rows(&self) -> Vec<(String, String)> {
        self.0
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|server| server.stats_rows())
            .unwrap_or_default()
    }
}

/// `to_regtype('name')`: the type's name when PostgreSQL clients may rely on it, else NULL
/// (SQLAlchemy and others probe for extension types such as `hstore` this way).
fn to_regtype(args: &[ColumnarValue]) -> datafusion::error::Result<ColumnarValue> {
    const KNOWN: [&str; 16] = [
        "boolean",
        "bool",
        "smallint",
        "integer",
        "int",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "text",
        "varchar",
        "character varying",
        "date",
        "timestamp",
        "timestamptz",
        "bytea",
    ];
    let map = |name: Option<&str>| {
        name.map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| KNOWN.contains(&n.as_str()))
    };
    match &args[0] {
        ColumnarValue::Scalar(ScalarValue::Utf8(name)) => Ok(ColumnarValue::Scalar(
            ScalarValue::Utf8(map(name.as_deref())),
        )),
        ColumnarValue::Array(array) => {
            use datafusion::arrow::array::{Array, StringArray};
            let strings = datafusion::common::cast::as_string_array(array)?;
            let mapped: StringArray = (0..strings.len())
                .map(|i| map((!strings.is_null(i)).then(|| strings.value(i))))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(mapped)))
        }
        _ => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
    }
}

pub(crate) async fn serve_until_stopped(
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
    let handlers = Arc::new(Handlers::new(server.clone()));
    let refuse = Arc::new(Refuse::new(options.max_connections));
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
