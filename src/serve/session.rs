//! Connections and statements: the handlers pgwire calls.
//!
//! [`Server`] holds what connections share: the engine's base session (tables, report views,
//! `pg_catalog`), the cache, the table watch and the counters. Each authenticated connection
//! gets a [`Connection`]: its own DataFusion session over the shared pool with a per-statement
//! memory cap, and a cancel channel. Statements go through datafusion-postgres (hooks, planning,
//! encoding); around it this module adds the cache lookup, the statement timeout and the cancel
//! request, both of which stop the running plan by ending (and dropping) its row stream. Must
//! not plan or encode rows itself, nor let a client reach what the guard refuses.

use super::auth::{self, OnAuthenticated, Startup, Users};
use super::cache::{self, Entry, Key, ResultCache};
use super::guard::{self, Compat, ReadOnly, StatsSource};
use super::pgcompat;
use super::ServeOptions;
use crate::catalog::{self, TableSpec};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::report::ReportDefinition;
use crate::storage;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::ViewTable;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::{create_udf, ColumnarValue, Expr, LogicalPlan, Volatility};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::{Sink, StreamExt};
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{QueryResponse, Response};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    ErrorHandler, PgWireServerHandlers,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::data::DataRow;
use pgwire::messages::PgWireBackendMessage;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// datafusion-postgres's SQL parser with its rewrite rules. Building one tokenises its whole
/// list of known client queries, so one instance serves every statement.
fn sql_parser() -> &'static PostgresCompatibilityParser {
    static PARSER: std::sync::OnceLock<PostgresCompatibilityParser> = std::sync::OnceLock::new();
    PARSER.get_or_init(PostgresCompatibilityParser::new)
}

/// The key datafusion-postgres keeps a client's `statement_timeout` under, in milliseconds.
const METADATA_STATEMENT_TIMEOUT: &str = "statement_timeout_ms";
/// Client settings that change how rows are encoded, and so belong in a cache key.
const ENCODING_SETTINGS: [&str; 6] = [
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "bytea_output",
    "client_encoding",
];

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// Counters for `SHOW spillway_stats` and the shutdown log line.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    statements: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
}

/// What every connection shares.
pub(crate) struct Server {
    engine: Arc<Engine>,
    hooks: Vec<Arc<dyn QueryHook>>,
    parser: Arc<GuardedParser>,
    statement_timeout: Option<Duration>,
    query_memory: usize,
    cache: ResultCache,
    tables: TableWatch,
    users: Arc<Users>,
    require_tls: bool,
    parameters: Arc<DefaultServerParameterProvider>,
    manager: Arc<ConnectionManager>,
    cancels: Mutex<HashMap<(i32, Bytes), watch::Sender<u64>>>,
    counters: Counters,
    active: AtomicU64,
    /// Where statements execute: DataFusion's tasks run here, never on the threads that
    /// speak the protocol, so timeouts, cancel requests and other clients are answered while
    /// a heavy statement keeps every query thread busy.
    queries: tokio::runtime::Handle,
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
            require_tls: options.require_tls,
            parameters: Arc::new(parameters),
            manager: Arc::new(ConnectionManager::new()),
            cancels: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            active: AtomicU64::new(0),
            queries,
        });
        late_stats.set(&server);
        Ok(server)
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

    /// The timeout for the next statement: the server's, or the client's if it set a shorter one.
    fn timeout_for<C: ClientInfo + ?Sized>(&self, client: &C) -> Option<Duration> {
        let asked = client
            .metadata()
            .get(METADATA_STATEMENT_TIMEOUT)
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        match (self.statement_timeout, asked) {
            (Some(server), Some(client)) => Some(server.min(client)),
            (server, client) => server.or(client),
        }
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

// ---------------------------------------------------------------------------------------------
// Tables: fingerprints, re-registration, report views
// ---------------------------------------------------------------------------------------------

/// Knows which files are behind each table, notices when they change (re-listing before each
/// query that reads the table), and then registers the table again so the query reads the
/// new files; report views and table functions are planned again with it.
struct TableWatch {
    engine: Arc<Engine>,
    specs: HashMap<String, TableSpec>,
    reports: Vec<ReportDefinition>,
    /// Tables each report reads.
    report_tables: HashMap<String, BTreeSet<String>>,
    /// Report plans with their `$name` placeholders, planned against the current tables.
    plans: Arc<RwLock<HashMap<String, LogicalPlan>>>,
    fingerprints: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl TableWatch {
    async fn start(
        engine: Arc<Engine>,
        tables: Vec<TableSpec>,
        reports: Vec<ReportDefinition>,
    ) -> Result<TableWatch> {
        let specs: HashMap<String, TableSpec> = tables
            .into_iter()
            .map(|spec| (spec.name.to_lowercase(), spec))
            .collect();
        let mut report_tables = HashMap::new();
        for report in &reports {
            if specs.contains_key(&report.name.to_lowercase()) {
                return Err(Error::Config(format!(
                    "report `{}` has the name of a table; rename one of them to serve both",
                    report.name
                )));
            }
            let statement = sql_parser()
                .parse(&report.sql)
                .map_err(|e| Error::Query(format!("report `{}`: {e}", report.name)))?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Query(format!("report `{}` has no SQL", report.name)))?;
            let reads = guard::cacheable_relations(&statement).unwrap_or_default();
            report_tables.insert(report.name.to_lowercase(), reads);
        }
        let watch = TableWatch {
            engine,
            specs,
            reports,
            report_tables,
            plans: Arc::new(RwLock::new(HashMap::new())),
            fingerprints: tokio::sync::Mutex::new(HashMap::new()),
        };
        {
            let mut fingerprints = watch.fingerprints.lock().await;
            for (name, spec) in &watch.specs {
                fingerprints.insert(name.clone(), watch.list(spec).await?);
            }
        }
        watch.plan_reports().await?;
        Ok(watch)
    }

    async fn list(&self, spec: &TableSpec) -> Result<u64> {
        let location = catalog::listing_location(spec)?;
        let store = self
            .engine
            .stores()
            .store_for(&location, spec.s3.as_ref())?;
        let resolved = storage::resolve(&store, &location)
            .await
            .map_err(|e| e.context(format!("table `{}`", spec.name)))?;
        Ok(cache::fingerprint_files(&resolved.files))
    }

    /// Plan every report against the current tables and (re)register it: a view when it takes
    /// no parameters, a table function taking them in declaration order otherwise.
    async fn plan_reports(&self) -> Result<()> {
        let ctx = self.engine.context();
        for report in &self.reports {
            // A report over tables this server does not have (the folder is shared with
            // other configs) is left out, with a warning, rather than stopping the server.
            let planned = match self.engine.parse(&report.sql) {
                Ok(statements) => match statements.into_iter().next() {
                    Some(statement) => self.engine.plan(statement).await,
                    None => continue,
                },
                Err(error) => Err(error),
            };
            let plan = match planned {
                Ok(plan) => plan,
                Err(error) => {
                    tracing::warn!("report `{}` is not served: {error}", report.name);
                    let _ = ctx.deregister_table(report.name.as_str());
                    continue;
                }
            };
            if report.params.is_empty() {
                let view = ViewTable::new(plan, Some(report.sql.clone()));
                let _ = ctx.deregister_table(report.name.as_str());
                ctx.register_table(report.name.as_str(), Arc::new(view))
                    .map_err(|e| Error::from(e).context(format!("report `{}`", report.name)))?;
            } else {
                if let Ok(mut plans) = self.plans.write() {
                    plans.insert(report.name.clone(), plan);
                }
                ctx.register_udtf(
                    &report.name,
                    Arc::new(ReportFunction {
                        report: report.clone(),
                        plans: self.plans.clone(),
                    }),
                );
            }
        }
        Ok(())
    }

    /// The tables a relation name stands for: itself, or what a report reads. `None` for
    /// anything else (catalog tables, unknown names): such results are not cached.
    fn tables_of(&self, name: &str) -> Option<Vec<String>> {
        if self.specs.contains_key(name) {
            return Some(vec![name.to_string()]);
        }
        let reads = self.report_tables.get(name)?;
        let mut tables = Vec::new();
        for table in reads {
            tables.extend(self.tables_of(table)?);
        }
        Some(tables)
    }

    /// Before a statement runs: the combined fingerprint of the files behind `relations`,
    /// re-registering any table whose files changed since it was last seen (so the statement
    /// reads the current files). `Ok(None)` when the relations are not all tables.
    async fn refresh(&self, relations: &BTreeSet<String>) -> Result<Option<u64>> {
        let mut tables = BTreeSet::new();
        for relation in relations {
            match self.tables_of(relation) {
                Some(found) => tables.extend(found),
                None => return Ok(None),
            }
        }
        if tables.is_empty() {
            return Ok(None);
        }
        let mut combined = Vec::with_capacity(tables.len());
        let mut changed = false;
        for name in &tables {
            let Some(spec) = self.specs.get(name) else {
                return Ok(None);
            };
            let now = self.list(spec).await?;
            let mut known = self.fingerprints.lock().await;
            if known.get(name) != Some(&now) {
                tracing::info!(table = %spec.name, "files changed: registering the table again");
                let location = catalog::listing_location(spec)?;
                let store = self
                    .engine
                    .stores()
                    .store_for(&location, spec.s3.as_ref())?;
                let ctx = self.engine.context();
                let previous = ctx.deregister_table(spec.name.as_str())?;
                if let Err(error) = catalog::register(ctx, &store, spec).await {
                    // Keep serving the old files rather than no table at all.
                    if let Some(previous) = previous {
                        let _ = ctx.register_table(spec.name.as_str(), previous);
                    }
                    return Err(error);
                }
                known.insert(name.clone(), now);
                changed = true;
            }
            combined.push((name.clone(), now));
        }
        if changed {
            self.plan_reports().await?;
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        combined.hash(&mut hasher);
        Ok(Some(hasher.finish()))
    }
}

/// A parameterised report as a table function: `SELECT * FROM top_prescribers('2024-01-01', 10)`.
#[derive(Debug)]
struct ReportFunction {
    report: ReportDefinition,
    plans: Arc<RwLock<HashMap<String, LogicalPlan>>>,
}

impl TableFunctionImpl for ReportFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let args = args.exprs();
        let plan_error = |message: String| {
            datafusion::error::DataFusionError::Plan(format!(
                "report `{}`: {message}",
                self.report.name
            ))
        };
        if args.len() > self.report.params.len() {
            return Err(plan_error(format!(
                "takes at most {} arguments ({}), got {}",
                self.report.params.len(),
                self.report
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                args.len()
            )));
        }
        let mut given = Vec::with_capacity(args.len());
        for (param, arg) in self.report.params.iter().zip(args) {
            let text = match arg {
                Expr::Literal(value, _) if !value.is_null() => match value {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => s.clone(),
                    other => other.to_string(),
                },
                _ => {
                    return Err(plan_error(format!(
                        "argument for `{}` must be a literal value",
                        param.name
                    )))
                }
            };
            given.push((param.name.clone(), text));
        }
        let values = self
            .report
            .bind(&given)
            .map_err(|e| plan_error(e.to_string()))?;
        let plan = self
            .plans
            .read()
            .ok()
            .and_then(|plans| plans.get(&self.report.name).cloned())
            .ok_or_else(|| plan_error("not planned".into()))?;
        let bound = Engine::bind(
            plan,
            values
                .into_iter()
                .map(|(name, value)| (name, value.to_scalar()))
                .collect(),
        )
        .map_err(|e| plan_error(e.to_string()))?;
        Ok(Arc::new(ViewTable::new(bound, None)))
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// One authenticated connection's session (kept in pgwire's per-connection extensions).
pub(crate) struct Connection {
    service: DfSessionService,
    cancel: watch::Receiver<u64>,
    key: (i32, Bytes),
    server: Arc<Server>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut cancels) = self.server.cancels.lock() {
            cancels.remove(&self.key);
        }
        self.server.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn connection<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Connection>> {
    client
        .session_extensions()
        .get::<Connection>()
        .ok_or_else(|| PgWireError::ApiError("connection is not authenticated".into()))
}

struct Opener(Arc<Server>);

impl OnAuthenticated for Opener {
    fn opened<C: ClientInfo>(&self, client: &mut C) -> PgWireResult<()> {
        let server = &self.0;
        let ctx = server
            .engine
            .session_with_memory_cap(server.query_memory)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let service = DfSessionService::new_with_hooks(Arc::new(ctx), server.hooks.clone());
        let (pid, secret) = client.pid_and_secret_key();
        let (handle, guard) = server.manager.register(pid, secret.clone());
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert::<ConnectionGuard>(guard);
        let key = (pid, secret.to_bytes());
        let (sender, receiver) = watch::channel(0u64);
        if let Ok(mut cancels) = server.cancels.lock() {
            cancels.insert(key.clone(), sender);
        }
        if let Some(timeout) = server.statement_timeout {
            client.metadata_mut().insert(
                METADATA_STATEMENT_TIMEOUT.to_string(),
                timeout.as_millis().to_string(),
            );
        }
        server.counters.connections.fetch_add(1, Ordering::Relaxed);
        server.active.fetch_add(1, Ordering::Relaxed);
        client.session_extensions().insert(Connection {
            service,
            cancel: receiver,
            key,
            server: server.clone(),
        });
        tracing::info!(
            peer = %client.socket_addr(),
            user = client.metadata().get(pgwire::api::METADATA_USER).map(String::as_str).unwrap_or(""),
            tls = client.is_secure(),
            "connection opened"
        );
        Ok(())
    }
}

/// The handlers pgwire asks for on each connection.
pub(crate) struct Handlers {
    server: Arc<Server>,
    queries: Arc<Queries>,
    cancel: Arc<Canceller>,
    opener: Arc<Opener>,
}

impl Handlers {
    pub(crate) fn new(server: Arc<Server>) -> Handlers {
        Handlers {
            queries: Arc::new(Queries {
                server: server.clone(),
            }),
            cancel: Arc::new(Canceller {
                server: server.clone(),
            }),
            opener: Arc::new(Opener(server.clone())),
            server,
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup::new(
            self.server.users.clone(),
            self.server.require_tls,
            self.server.parameters.clone(),
            self.opener.clone(),
        ))
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        tracing::info!(peer = %client.socket_addr(), "error sent: {error}");
    }
}

/// Cancel requests arrive on their own connection with the target's key.
struct Canceller {
    server: Arc<Server>,
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        // pgwire's handle stops a statement still being planned; the channel stops one whose
        // rows are streaming.
        self.server
            .manager
            .cancel(request.pid, &request.secret_key)
            .await;
        let key = (request.pid, request.secret_key.to_bytes());
        if let Ok(cancels) = self.server.cancels.lock() {
            if let Some(sender) = cancels.get(&key) {
                sender.send_modify(|generation| *generation += 1);
                tracing::info!(pid = request.pid, "cancel request");
            }
        }
    }
}

/// Connections over the limit get this: one clear error, then the socket closes.
pub(crate) struct Refuse {
    max: usize,
}

impl Refuse {
    pub(crate) fn new(max: usize) -> Refuse {
        Refuse { max }
    }
}

struct RefuseStartup {
    max: usize,
}

#[async_trait]
impl StartupHandler for RefuseStartup {
    async fn on_startup<C>(
        &self,
        _client: &mut C,
        _message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Err(auth::fatal(
            "53300",
            format!(
                "sorry, too many clients already: this server takes {} connections at once \
                 ([server] max_connections)",
                self.max
            ),
        ))
    }
}

impl PgWireServerHandlers for Refuse {
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(RefuseStartup { max: self.max })
    }
}

// ---------------------------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------------------------

/// datafusion-postgres's parser, with the guard's answer for SQL it cannot parse (`FROM
/// '/etc/passwd'` is not PostgreSQL syntax, but the client should hear why it is refused).
pub(crate) struct GuardedParser(Arc<Parser>);

#[async_trait]
impl pgwire::api::stmt::QueryParser for GuardedParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<pgwire::api::Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let text = pgcompat::rewrite_text(sql);
        let mut rewritten = None;
        if let Ok(mut statements) = sql_parser().parse(&text) {
            if statements.len() == 1 && pgcompat::rewrite_statement(&mut statements[0]) {
                rewritten = Some(statements[0].to_string());
            }
        }
        let text = rewritten.as_deref().unwrap_or(&text);
        match self.0.parse_sql(client, text, types).await {
            Err(error) => match guard::refuse_unparsed(sql) {
                Some(refusal) if sql_parser().parse(sql).is_err() => Err(guard::refused(refusal)),
                _ => Err(error),
            },
            parsed => parsed,
        }
    }

    fn get_parameter_types(
        &self,
        statement: &Self::Statement,
    ) -> PgWireResult<Vec<pgwire::api::Type>> {
        self.0.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        format: Option<&pgwire::api::portal::Format>,
    ) -> PgWireResult<Vec<pgwire::api::results::FieldInfo>> {
        self.0.get_result_schema(statement, format)
    }
}

struct Queries {
    server: Arc<Server>,
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

fn statement_timeout_error(timeout: Duration) -> PgWireError {
    user_error(
        "57014",
        format!(
            "canceling statement due to statement timeout ({} s)",
            timeout.as_secs_f64()
        ),
    )
}

/// How a statement's rows are to be produced: from the cache, or run and maybe stored.
struct Plan {
    key: Option<Key>,
    started: Instant,
    deadline: Option<(Instant, Duration)>,
    generation: u64,
}

impl Queries {
    /// Look a statement up before running it: refresh its tables, build its cache key.
    async fn prepare<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        connection: &Connection,
        statement: Option<&Statement>,
        sql: &str,
        parameters: Vec<Option<Vec<u8>>>,
        formats: String,
    ) -> PgWireResult<(Plan, Option<Arc<Entry>>)> {
        let server = &self.server;
        server.counters.statements.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = server
            .timeout_for(client)
            .map(|timeout| (started + timeout, timeout));
        let generation = *connection.cancel.borrow();
        let mut plan = Plan {
            key: None,
            started,
            deadline,
            generation,
        };
        let Some(relations) = statement.and_then(guard::cacheable_relations) else {
            return Ok((plan, None));
        };
        let fingerprint = server
            .tables
            .refresh(&relations)
            .await
            .map_err(|e| user_error("58030", e.to_string()))?;
        let (Some(fingerprint), true) = (fingerprint, server.cache.enabled()) else {
            return Ok((plan, None));
        };
        let mut shape = formats;
        for setting in ENCODING_SETTINGS {
            if let Some(value) = client.metadata().get(setting) {
                shape.push_str(&format!("|{setting}={value}"));
            }
        }
        let key = Key {
            sql: sql.to_string(),
            parameters,
            shape,
            fingerprint,
        };
        let hit = server.cache.get(&key);
        tracing::info!(
            cache = if hit.is_some() { "hit" } else { "miss" },
            "{}",
            one_line_sql(sql)
        );
        plan.key = Some(key);
        Ok((plan, hit))
    }

    /// Run `work` (datafusion-postgres planning the statement) under the statement timeout.
    async fn within_deadline<T>(
        &self,
        plan: &Plan,
        work: impl std::future::Future<Output = PgWireResult<T>>,
    ) -> PgWireResult<T> {
        let work = in_runtime(&self.server.queries, work);
        let result = match plan.deadline {
            Some((deadline, timeout)) => {
                match tokio::time::timeout_at(deadline.into(), work).await {
                    Ok(result) => result,
                    Err(_) => {
                        self.server
                            .counters
                            .timed_out
                            .fetch_add(1, Ordering::Relaxed);
                        Err(statement_timeout_error(timeout))
                    }
                }
            }
            None => work.await,
        };
        if result.is_err() {
            self.server.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Wrap a result's rows: stop at the deadline or on a cancel request (dropping the inner
    /// stream stops the plan), and store the finished result in the cache.
    fn guard_rows(
        &self,
        response: QueryResponse,
        plan: &mut Plan,
        connection: &Connection,
    ) -> QueryResponse {
        let fields = response.row_schema();
        let command_tag = response.command_tag().to_string();
        let tee = plan.key.take().map(|key| Tee {
            key,
            rows: Vec::new(),
            bytes: 0,
            limit: self.server.cache.entry_limit(),
        });
        let (sender, receiver) = tokio::sync::mpsc::channel(ROW_CHANNEL);
        let mut inner = response.data_rows;
        let producer = self.server.queries.spawn(async move {
            while let Some(row) = inner.next().await {
                let failed = row.is_err();
                if sender.send(row).await.is_err() || failed {
                    break;
                }
            }
        });
        let state = RowState {
            rows: receiver,
            producer: AbortOnDrop(producer.abort_handle()),
            deadline: plan.deadline,
            cancel: connection.cancel.clone(),
            generation: plan.generation,
            tee,
            fields: fields.clone(),
            command_tag: command_tag.clone(),
            server: self.server.clone(),
            started: plan.started,
            sent: 0,
            done: false,
        };
        let stream = futures::stream::unfold(state, next_row);
        let mut wrapped = QueryResponse::new(fields, stream);
        wrapped.set_command_tag(&command_tag);
        wrapped
    }

    fn guard_response(
        &self,
        response: Response,
        plan: &mut Plan,
        connection: &Connection,
    ) -> Response {
        match response {
            Response::Query(query) => Response::Query(self.guard_rows(query, plan, connection)),
            other => other,
        }
    }
}

fn one_line_sql(sql: &str) -> String {
    let line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 200 {
        let mut end = 200;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line
    }
}

/// Rows on their way into the cache.
struct Tee {
    key: Key,
    rows: Vec<DataRow>,
    bytes: usize,
    limit: usize,
}

/// Rows buffered between the statement's task and the connection.
const ROW_CHANNEL: usize = 4096;

/// Stops the statement's task (and so its plan) when the rows are no longer wanted: on an
/// error, a timeout, a cancel request, or a client that went away mid-result.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Poll `work` with `runtime` as the current runtime, so that the tasks DataFusion spawns
/// while planning and starting a statement run there.
async fn in_runtime<F: std::future::Future>(
    runtime: &tokio::runtime::Handle,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        let _entered = runtime.enter();
        work.as_mut().poll(cx)
    })
    .await
}

struct RowState {
    rows: tokio::sync::mpsc::Receiver<PgWireResult<DataRow>>,
    producer: AbortOnDrop,
    deadline: Option<(Instant, Duration)>,
    cancel: watch::Receiver<u64>,
    generation: u64,
    tee: Option<Tee>,
    fields: Arc<Vec<pgwire::api::results::FieldInfo>>,
    command_tag: String,
    server: Arc<Server>,
    started: Instant,
    sent: u64,
    done: bool,
}

async fn cancelled(cancel: &mut watch::Receiver<u64>, generation: u64) {
    if cancel.wait_for(|now| *now > generation).await.is_err() {
        // The connection is gone; nothing will cancel this any more.
        std::future::pending::<()>().await;
    }
}

async fn deadline_passed(deadline: Option<(Instant, Duration)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending::<()>().await,
    }
}

async fn next_row(mut state: RowState) -> Option<(PgWireResult<DataRow>, RowState)> {
    if state.done {
        return None;
    }
    let next = tokio::select! {
        biased;
        () = cancelled(&mut state.cancel, state.generation) => {
            state.server.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            Err(user_error("57014", "canceling statement due to user request".into()))
        }
        () = deadline_passed(state.deadline) => {
            state.server.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            let timeout = state.deadline.map(|(_, t)| t).unwrap_or_default();
            Err(statement_timeout_error(timeout))
        }
        row = state.rows.recv() => Ok(row),
    };
    match next {
        Ok(Some(Ok(row))) => {
            state.sent += 1;
            if let Some(tee) = &mut state.tee {
                tee.bytes += cache::row_bytes(&row);
                if tee.bytes > tee.limit {
                    state.tee = None;
                } else {
                    tee.rows.push(row.clone());
                }
            }
            Some((Ok(row), state))
        }
        Ok(None) => {
            if let Some(tee) = state.tee.take() {
                state.server.cache.insert(
                    tee.key,
                    Entry {
                        fields: state.fields.clone(),
                        command_tag: state.command_tag.clone(),
                        rows: tee.rows,
                        bytes: tee.bytes,
                    },
                );
            }
            tracing::debug!(
                rows = state.sent,
                ms = state.started.elapsed().as_millis() as u64,
                "statement finished"
            );
            None
        }
        Ok(Some(Err(error))) | Err(error) => {
            // Stopping the task drops the plan's stream, which stops the plan and frees its
            // memory at its next yield.
            state.done = true;
            state.tee = None;
            state.producer.0.abort();
            state.rows.close();
            state.server.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                rows = state.sent,
                ms = state.started.elapsed().as_millis() as u64,
                "statement stopped: {error}"
            );
            Some((Err(error), state))
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let text = pgcompat::rewrite_text(query);
        let statements = match sql_parser().parse(&text) {
            Ok(statements) => statements,
            Err(error) => {
                if let Some(refusal) = guard::refuse_unparsed(query) {
                    return Err(guard::refused(refusal));
                }
                return Err(PgWireError::ApiError(Box::new(error)));
            }
        };
        let mut statements = statements;
        let mut changed = false;
        for statement in &mut statements {
            changed |= pgcompat::rewrite_statement(statement);
        }
        let query = if changed {
            statements
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(";\n")
        } else {
            text.into_owned()
        };
        let query = query.as_str();
        // One statement may come from the cache; a script of several runs as it is.
        let single = match statements.as_slice() {
            [one] => Some(one),
            _ => None,
        };
        let sql = single
            .map(|s| s.to_string())
            .unwrap_or_else(|| query.to_string());
        let (mut plan, hit) = self
            .prepare(
                &*client,
                &connection,
                single,
                &sql,
                Vec::new(),
                "text".into(),
            )
            .await?;
        if let Some(entry) = hit {
            return Ok(vec![Response::Query(entry.response())]);
        }
        let responses = self
            .within_deadline(
                &plan,
                SimpleQueryHandler::do_query(&connection.service, client, query),
            )
            .await?;
        Ok(responses
            .into_iter()
            .map(|response| self.guard_response(response, &mut plan, &connection))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = DfStatement;
    type QueryParser = GuardedParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.server.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let (sql, parsed) = &portal.statement.statement;
        let statement = parsed.as_ref().map(|(statement, _)| statement);
        let parameters = portal
            .parameters
            .iter()
            .map(|value| value.as_ref().map(|bytes| bytes.to_vec()))
            .collect();
        let formats = format!(
            "{:?}|{:?}",
            portal.parameter_format, portal.result_column_format
        );
        let (mut plan, hit) = self
            .prepare(&*client, &connection, statement, sql, parameters, formats)
            .await?;
        if let Some(entry) = hit {
            return Ok(Response::Query(entry.response()));
        }
        let response = self
            .within_deadline(
                &plan,
                ExtendedQueryHandler::do_query(&connection.service, client, portal, max_rows),
            )
            .await?;
        Ok(self.guard_response(response, &mut plan, &connection))
    }
}
