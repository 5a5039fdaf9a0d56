//! One statement, from its text to its last row.
//!
//! Statements go through datafusion-postgres (hooks, planning, encoding). Around it this module
//! adds the guard's answer for SQL that does not parse, the lookup in the result cache and the
//! tee that stores a finished result there, the statement timeout and the cancel request, both
//! of which stop the running plan by ending (and dropping) its row stream. Statements execute
//! on the server's query runtime, never on the threads that speak the protocol. Must not plan or
//! encode rows itself, nor let a client reach what the guard refuses.

use super::cache::{self, Entry, Key};
use super::connection::{connection, Connection};
use super::guard;
use super::pgcompat;
use super::server::Server;
use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire;
use datafusion_postgres::Parser;
use futures::{Sink, StreamExt};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{QueryResponse, Response};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::PgWireBackendMessage;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// datafusion-postgres's SQL parser with its rewrite rules. Building one tokenises its whole
/// list of known client queries, so one instance serves every statement.
pub(crate) fn sql_parser() -> &'static PostgresCompatibilityParser {
    static PARSER: std::sync::OnceLock<PostgresCompatibilityParser> = std::sync::OnceLock::new();
    PARSER.get_or_init(PostgresCompatibilityParser::new)
}

/// The key datafusion-postgres keeps a client's `statement_timeout` under, in milliseconds.
pub(crate) const METADATA_STATEMENT_TIMEOUT: &str = "statement_timeout_ms";

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

/// datafusion-postgres's parser, with the guard's answer for SQL it cannot parse (`FROM
/// '/etc/passwd'` is not PostgreSQL syntax, but the client should hear why it is refused).
pub(crate) struct GuardedParser(pub(crate) Arc<Parser>);

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

pub(crate) struct Queries {
    pub(crate) server: Arc<Server>,
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

/// The timeout for the next statement: the server's, or the client's if it set a shorter one.
fn timeout_for(
    server: Option<Duration>,
    client_settings: &HashMap<String, String>,
) -> Option<Duration> {
    let asked = client_settings
        .get(METADATA_STATEMENT_TIMEOUT)
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    match (server, asked) {
        (Some(server), Some(client)) => Some(server.min(client)),
        (server, client) => server.or(client),
    }
}

/// A statement being run (not a plan: datafusion-postgres plans it): when it started, its
/// deadline, the cancel generation it answers to, and the cache key its rows are stored under
/// when they may be cached.
struct RunningStatement {
    key: Option<Key>,
    /// The audit record to complete when the statement ends (with an audit log).
    audit: Option<AuditDraft>,
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
    ) -> PgWireResult<(RunningStatement, Option<Arc<Entry>>)> {
        let server = &self.server;
        server.counters.statements.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = timeout_for(server.statement_timeout, client.metadata())
            .map(|timeout| (started + timeout, timeout));
        let generation = *connection.cancel.borrow();
        let relations = statement.and_then(guard::cacheable_relations);
        let log = server.engine.audit_log();
        let audit = match log.is_some() || connection.guard.is_some() {
            true => {
                // Fail before running when the log cannot take the record.
                if let Some(log) = log {
                    crate::privacy::audit::AuditLog::open(log.path())
                        .map_err(|e| user_error("42501", e.to_string()))?;
                }
                let tables: std::collections::BTreeSet<String> = relations
                    .iter()
                    .flatten()
                    .flat_map(|relation| server.tables.tables_of(relation).unwrap_or_default())
                    .collect();
                Some(AuditDraft {
                    sql: sql.to_string(),
                    parameters: parameters
                        .iter()
                        .enumerate()
                        .map(|(i, value)| (format!("${}", i + 1), parameter_text(value.as_deref())))
                        .collect(),
                    // Fingerprints only for the log; a guard alone needs none.
                    inputs: match log {
                        Some(_) => server.engine.files_of_tables(&tables),
                        None => Vec::new(),
                    },
                    user: connection.user.clone(),
                    peer: connection.peer.clone(),
                    role: connection.role.as_ref().map(|r| r.name.clone()),
                    guard: connection.guard.clone(),
                })
            }
            false => None,
        };
        let mut running = RunningStatement {
            key: None,
            audit,
            started,
            deadline,
            generation,
        };
        let Some(relations) = relations else {
            return Ok((running, None));
        };
        let fingerprint = server
            .tables
            .refresh(&relations)
            .await
            .map_err(|e| user_error("58030", e.to_string()))?;
        let (Some(fingerprint), true) = (fingerprint, server.cache.enabled()) else {
            return Ok((running, None));
        };
        let mut shape = formats;
        for setting in ENCODING_SETTINGS {
            if let Some(value) = client.metadata().get(setting) {
                shape.push_str(&format!("|{setting}={value}"));
            }
        }
        let key = Key {
            role: connection
                .role
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
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
        running.key = Some(key);
        Ok((running, hit))
    }

    /// A result served from the cache, recorded in the audit log like any other.
    fn cached(&self, running: &RunningStatement, entry: &Entry) -> PgWireResult<Response> {
        if let Some(draft) = &running.audit {
            let (rows, bytes) = (entry.rows.len() as u64, entry.bytes as u64);
            draft
                .record(&self.server, rows, bytes, "ok (cached)")
                .map_err(|e| user_error("42501", e.to_string()))?;
        }
        Ok(Response::Query(entry.response()))
    }

    /// Run `work` (datafusion-postgres planning the statement) under the statement timeout.
    async fn within_deadline<T>(
        &self,
        running: &RunningStatement,
        work: impl std::future::Future<Output = PgWireResult<T>>,
    ) -> PgWireResult<T> {
        let work = in_runtime(&self.server.queries, work);
        let result = match running.deadline {
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
        // A privacy refusal is PostgreSQL's insufficient_privilege, so clients can tell it
        // from a failure.
        let result = result.map_err(|error| match &error {
            PgWireError::ApiError(inner) if inner.to_string().contains("refused: ") => {
                user_error("42501", crate::error::one_line(&inner.to_string()))
            }
            _ => error,
        });
        if let Err(error) = &result {
            self.server.counters.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(draft) = &running.audit {
                let _ = draft.record(&self.server, 0, 0, &format!("error: {error}"));
            }
        }
        result
    }

    /// Wrap a result's rows: stop at the deadline or on a cancel request (dropping the inner
    /// stream stops the plan), and store the finished result in the cache.
    fn guard_rows(
        &self,
        response: QueryResponse,
        running: &mut RunningStatement,
        connection: &Connection,
    ) -> QueryResponse {
        let fields = response.row_schema();
        let command_tag = response.command_tag().to_string();
        let tee = running.key.take().map(|key| Tee {
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
            deadline: running.deadline,
            cancel: connection.cancel.clone(),
            generation: running.generation,
            tee,
            fields: fields.clone(),
            command_tag: command_tag.clone(),
            server: self.server.clone(),
            started: running.started,
            sent: 0,
            bytes: 0,
            audit: running.audit.take(),
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
        running: &mut RunningStatement,
        connection: &Connection,
    ) -> Response {
        match response {
            Response::Query(query) => Response::Query(self.guard_rows(query, running, connection)),
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
    /// Bytes of the rows sent (counted for the audit log only).
    bytes: u64,
    audit: Option<AuditDraft>,
    done: bool,
}

/// What the audit record of a server statement says, gathered before it runs.
struct AuditDraft {
    sql: String,
    parameters: Vec<(String, String)>,
    inputs: Vec<crate::privacy::audit::InputFile>,
    user: String,
    peer: String,
    role: Option<String>,
    guard: Option<Arc<crate::privacy::guard::PrivacyGuard>>,
}

impl AuditDraft {
    fn record(
        &self,
        server: &Server,
        rows: u64,
        bytes: u64,
        outcome: &str,
    ) -> crate::error::Result<()> {
        let suppressed_groups = self
            .guard
            .as_ref()
            .filter(|g| g.role().aggregate_only)
            .map(|g| g.take_suppressed());
        if let Some(groups) = suppressed_groups.filter(|g| *g > 0) {
            tracing::info!(user = %self.user, groups, "small cells suppressed (min_cell_size)");
        }
        let Some(log) = server.engine.audit_log() else {
            return Ok(());
        };
        log.append(&crate::privacy::audit::Event {
            entry: "serve".into(),
            user: self.user.clone(),
            role: self.role.clone(),
            client: Some(self.peer.clone()),
            report: None,
            sql: self.sql.clone(),
            parameters: self.parameters.clone(),
            inputs: self.inputs.clone(),
            rows,
            bytes,
            output: None,
            output_sha256: None,
            suppressed_groups,
            outcome: outcome.to_string(),
        })
    }
}

/// A parameter as the audit log shows it: its text, or hex for binary values.
fn parameter_text(value: Option<&[u8]>) -> String {
    match value {
        None => "NULL".into(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(_) => format!("\\x{}", crate::output::hex(bytes)),
        },
    }
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
            if state.audit.is_some() {
                state.bytes += cache::row_bytes(&row) as u64;
            }
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
            tracing::debug!(
                rows = state.sent,
                ms = state.started.elapsed().as_millis() as u64,
                "statement finished"
            );
            if let Some(draft) = state.audit.take() {
                // Unlogged rows are not an answer: the statement fails when its record does, and its
                // rows are not cached (a hit would serve them again with no record of the first).
                if let Err(error) = draft.record(&state.server, state.sent, state.bytes, "ok") {
                    state.done = true;
                    state.tee = None;
                    state.server.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Some((Err(user_error("42501", error.to_string())), state));
                }
            }
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
            if let Some(draft) = state.audit.take() {
                let _ = draft.record(
                    &state.server,
                    state.sent,
                    state.bytes,
                    &format!("error: {error}"),
                );
            }
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
        let (mut running, hit) = self
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
            return Ok(vec![self.cached(&running, &entry)?]);
        }
        let responses = self
            .within_deadline(
                &running,
                SimpleQueryHandler::do_query(&connection.service, client, query),
            )
            .await?;
        Ok(responses
            .into_iter()
            .map(|response| self.guard_response(response, &mut running, &connection))
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
        let (mut running, hit) = self
            .prepare(&*client, &connection, statement, sql, parameters, formats)
            .await?;
        if let Some(entry) = hit {
            return self.cached(&running, &entry);
        }
        let response = self
            .within_deadline(
                &running,
                ExtendedQueryHandler::do_query(&connection.service, client, portal, max_rows),
            )
            .await?;
        Ok(self.guard_response(response, &mut running, &connection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::guard::ReadOnly;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::prelude::SessionContext;
    use datafusion_postgres::{DfSessionService, QueryHook};
    use pgwire::api::stmt::QueryParser;
    use pgwire::api::DefaultClient;

    #[test]
    fn one_line_sql_joins_the_lines_of_a_statement() {
        assert_eq!(
            one_line_sql("SELECT a,\n\t b\n  FROM   t\n"),
            "SELECT a, b FROM t"
        );
    }

    #[test]
    fn one_line_sql_cuts_long_text_at_a_character_boundary() {
        // 9 bytes, then two-byte characters: byte 200 falls inside the 96th, so the line keeps 95.
        let long = format!("SELECT 'x{}'", "é".repeat(150));
        assert_eq!(one_line_sql(&long), format!("SELECT 'x{}…", "é".repeat(95)));
    }

    fn client_settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn a_client_may_shorten_the_statement_timeout_but_not_lengthen_it() {
        let server = Some(Duration::from_secs(5));
        let asked = |ms: &str| client_settings(&[("statement_timeout_ms", ms)]);
        assert_eq!(
            timeout_for(server, &asked("2000")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(timeout_for(server, &asked("60000")), server);
        // PostgreSQL's `SET statement_timeout = 0` means no timeout of the client's own.
        assert_eq!(timeout_for(server, &asked("0")), server);
        assert_eq!(timeout_for(server, &client_settings(&[])), server);
    }

    #[test]
    fn without_a_server_timeout_the_clients_own_applies() {
        assert_eq!(
            timeout_for(None, &client_settings(&[("statement_timeout_ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(timeout_for(None, &client_settings(&[])), None);
    }

    /// The parser of prepared statements, over a session with one table `claims (id BIGINT)`
    /// and the read-only guard as its only hook.
    fn prepared_statement_parser() -> GuardedParser {
        let ctx = SessionContext::new();
        let ids = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let batch = RecordBatch::try_from_iter([("id", ids as _)]).unwrap();
        ctx.register_batch("claims", batch).unwrap();
        let hooks: Vec<Arc<dyn QueryHook>> = vec![Arc::new(ReadOnly)];
        GuardedParser(DfSessionService::new_with_hooks(Arc::new(ctx), hooks).query_parser())
    }

    fn client() -> DefaultClient<DfStatement> {
        DefaultClient::new("127.0.0.1:40000".parse().unwrap(), false)
    }

    /// The SQLSTATE and message of a refusal.
    fn refusal(parsed: PgWireResult<Option<DfStatement>>) -> (String, String) {
        match parsed {
            Err(PgWireError::UserError(info)) => (info.code.clone(), info.message.clone()),
            Err(other) => panic!("not a refusal: {other}"),
            Ok(statement) => panic!("not refused: {statement:?}"),
        }
    }

    #[tokio::test]
    async fn a_prepared_write_is_refused_as_on_a_read_only_server() {
        let parser = prepared_statement_parser();
        let parsed = parser.parse_sql(&client(), "DROP TABLE claims", &[]).await;
        assert_eq!(
            refusal(parsed),
            (
                "25006".to_string(),
                "DROP is not allowed: this server is read-only (queries, EXPLAIN, DESCRIBE, \
                 SHOW and cursors only)"
                    .to_string()
            )
        );
    }

    #[tokio::test]
    async fn a_prepared_file_path_that_does_not_parse_is_refused_by_name() {
        let parser = prepared_statement_parser();
        let parsed = parser
            .parse_sql(&client(), "SELECT * FROM '/etc/passwd'", &[])
            .await;
        assert_eq!(
            refusal(parsed),
            (
                "25006".to_string(),
                "`/etc/passwd` looks like a file path: only the server's configured tables can \
                 be queried"
                    .to_string()
            )
        );
    }

    #[tokio::test]
    async fn a_prepared_query_over_a_table_is_planned_with_its_parameter() {
        let parser = prepared_statement_parser();
        let parsed = parser
            .parse_sql(&client(), "SELECT id FROM claims WHERE id > $1", &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(parsed.0, "SELECT id FROM claims WHERE id > $1");
        assert_eq!(
            parser.get_parameter_types(&parsed).unwrap(),
            vec![pgwire::api::Type::INT8]
        );
    }
}
