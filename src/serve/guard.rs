//! What a client may run: the read-only guard, and the small answers BI drivers expect.
//!
//! [`ReadOnly`] is the first query hook every statement meets (simple and extended protocol):
//! queries, `EXPLAIN`, `SHOW`, harmless `SET`s, transactions and cursors pass; DDL, DML, `COPY`,
//! file paths used as tables and `SET` of engine settings are refused with an error naming what
//! was refused. [`Compat`] answers what PostgreSQL clients send and DataFusion does not know
//! (`SAVEPOINT`, `DISCARD ALL`, a parseable `server_version`, Spillway's own stats). This module
//! must not execute anything; it only decides and answers.

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{ParamValues, ToDFSchema};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Query, Set, Statement, Visit, Visitor};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::QueryHook;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

/// The PostgreSQL version clients are told (drivers parse it to pick their SQL).
pub(crate) const SERVER_VERSION: &str = "16.6";
pub(crate) const SERVER_VERSION_NUM: &str = "160006";

/// Error for a refused statement (SQLSTATE 25006, read_only_sql_transaction, as PostgreSQL
/// answers writes on a read-only server).
pub(crate) fn refused(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        message,
    )))
}

/// Why `statement` may not run here, if it may not.
pub(crate) fn check(statement: &Statement) -> Result<(), String> {
    match statement {
        Statement::Query(_) => {}
        Statement::Explain { statement, .. } => return check(statement),
        Statement::Declare { .. } => {}
        Statement::Set(set) => check_set(set)?,
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        // `DESCRIBE t`: the columns and types, as `\d t` shows them.
        | Statement::ExplainTable { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowFunctions { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => return Ok(()),
        other => {
            return Err(format!(
            "{} is not allowed: this server is read-only (queries, EXPLAIN, DESCRIBE, SHOW and cursors only)",
            statement_kind(other)
        ))
        }
    }
    check_relations(statement)
}

/// The statement's leading keywords (`CREATE EXTERNAL TABLE`, `INSERT`, `COPY`), for messages.
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let keywords: Vec<&str> = words
        .iter()
        .take_while(|word| word.chars().all(|c| c.is_ascii_alphabetic()))
        .copied()
        .take(
            if words
                .first()
                .is_some_and(|w| w.eq_ignore_ascii_case("create"))
            {
                3
            } else {
                1
            },
        )
        .collect();
    let kind = keywords.join(" ").to_ascii_uppercase();
    if kind.is_empty() {
        "this statement".to_string()
    } else {
        kind
    }
}

/// Settings of the engine (memory, spilling, parallelism, object stores) belong to whoever runs
/// the server; PostgreSQL session settings (`DateStyle`, `statement_timeout`, ...) are the
/// client's.
fn check_set(set: &Set) -> Result<(), String> {
    let name = match set {
        Set::SingleAssignment { variable, .. } => variable.to_string(),
        Set::MultipleAssignments { assignments } => {
            for assignment in assignments {
                check_setting_name(&assignment.name.to_string())?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    check_setting_name(&name)
}

fn check_setting_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let engine = [
        "datafusion.",
        "ballista.",
        "runtime.",
        "spillway.",
        "s3.",
        "aws.",
    ]
    .iter()
    .any(|prefix| lower.starts_with(prefix));
    let resource = [
        "memory",
        "spill",
        "work_mem",
        "temp_",
        "partitions",
        "batch_size",
    ]
    .iter()
    .any(|word| lower.contains(word));
    if engine || resource {
        return Err(format!(
            "SET {name} is not allowed: engine settings (memory, spilling, runtime) are set by \
             the server's operator in spillway.toml, not by clients"
        ));
    }
    Ok(())
}

/// File paths and URLs used as table names (`SELECT * FROM '/etc/passwd'`).
fn check_relations(statement: &Statement) -> Result<(), String> {
    let flow = datafusion::sql::sqlparser::ast::visit_relations(statement, |name| {
        let text = name.to_string();
        let bare = text.trim_matches(|c| c == '"' || c == '\'' || c == '`');
        if looks_like_path(bare) {
            ControlFlow::Break(format!(
                "`{bare}` looks like a file path: only the server's configured tables can be \
                 queried"
            ))
        } else {
            ControlFlow::Continue(())
        }
    });
    match flow {
        ControlFlow::Break(message) => Err(message),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Whether a table name is really a path or URL.
pub(crate) fn looks_like_path(name: &str) -> bool {
    name.contains('/')
        || name.contains('\\')
        || name.contains("://")
        || name.starts_with('~')
        || [
            ".csv", ".parquet", ".json", ".ndjson", ".gz", ".zst", ".txt", ".arrow",
        ]
        .iter()
        .any(|ext| name.to_ascii_lowercase().ends_with(ext))
}

/// SQL the parser cannot read may still be an attempt at a file (`FROM '/etc/passwd'` does not
/// parse in the PostgreSQL dialect): say so instead of showing a syntax error.
pub(crate) fn refuse_unparsed(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    for keyword in ["from", "join"] {
        let mut rest = lower.as_str();
        while let Some(at) = rest.find(keyword) {
            let after = rest[at + keyword.len()..].trim_start();
            if let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') {
                let inner = &after[1..];
                if let Some(end) = inner.find(quote) {
                    if looks_like_path(&inner[..end]) {
                        return Some(format!(
                            "`{}` looks like a file path: only the server's configured tables can be queried",
                            &inner[..end]
                        ));
                    }
                }
            }
            rest = &rest[at + keyword.len()..];
        }
    }
    let first = lower.split_whitespace().next().unwrap_or("");
    let writes = [
        "create", "drop", "alter", "insert", "update", "delete", "copy", "truncate", "merge",
        "grant", "revoke", "vacuum", "analyze", "load", "install", "attach",
    ];
    writes.contains(&first).then(|| {
        format!(
            "{} is not allowed: this server is read-only (queries, EXPLAIN, DESCRIBE, SHOW and cursors only)",
            first.to_ascii_uppercase()
        )
    })
}

/// The hooks' answer for a statement [`check`] refuses, logged with the client's address.
fn refuse<T>(statement: &Statement, peer: std::net::SocketAddr) -> Option<PgWireResult<T>> {
    check(statement).err().map(|message| {
        tracing::warn!(%peer, "refused: {message}");
        Err(refused(message))
    })
}

/// The first hook: refuses what [`check`] refuses, in both protocols.
#[derive(Debug)]
pub(crate) struct ReadOnly;

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refuse(statement, client.socket_addr())
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refuse(statement, client.socket_addr())
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        check(statement).err().map(|message| Err(refused(message)))
    }
}

/// Rows for `SHOW spillway_stats`: `(name, value)` pairs.
pub(crate) trait StatsSource: Send + Sync {
    fn rows(&self) -> Vec<(String, String)>;
}

/// Answers for statements DataFusion does not run but PostgreSQL clients send.
pub(crate) struct Compat {
    pub(crate) stats: Arc<dyn StatsSource>,
}

enum Answer {
    Tag(&'static str),
    Show(&'static str, String),
    Stats,
}

impl Compat {
    fn answer(&self, statement: &Statement) -> Option<Answer> {
        match statement {
            Statement::Savepoint { .. } => Some(Answer::Tag("SAVEPOINT")),
            Statement::ReleaseSavepoint { .. } => Some(Answer::Tag("RELEASE")),
            // `ROLLBACK TO SAVEPOINT` stays inside the transaction.
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Some(Answer::Tag("ROLLBACK")),
            Statement::Discard { .. } => Some(Answer::Tag("DISCARD ALL")),
            Statement::Deallocate { .. } => Some(Answer::Tag("DEALLOCATE")),
            Statement::ShowVariable { variable } => {
                let name: Vec<String> = variable.iter().map(|v| v.value.to_lowercase()).collect();
                match name
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    ["server_version"] => {
                        Some(Answer::Show("server_version", SERVER_VERSION.to_string()))
                    }
                    ["server_version_num"] => Some(Answer::Show(
                        "server_version_num",
                        SERVER_VERSION_NUM.to_string(),
                    )),
                    ["standard_conforming_strings"] => {
                        Some(Answer::Show("standard_conforming_strings", "on".into()))
                    }
                    ["transaction", "isolation", "level"] | ["transaction_isolation"] => Some(
                        Answer::Show("transaction_isolation", "read committed".into()),
                    ),
                    ["default_transaction_read_only"] | ["transaction_read_only"] => {
                        Some(Answer::Show("transaction_read_only", "on".into()))
                    }
                    ["spillway_stats"] => Some(Answer::Stats),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn respond(&self, answer: Answer) -> PgWireResult<Response> {
        match answer {
            Answer::Tag(tag) => Ok(Response::Execution(Tag::new(tag))),
            Answer::Show(name, value) => rows_response(&[name], vec![vec![value]]),
            Answer::Stats => rows_response(
                &["name", "value"],
                self.stats
                    .rows()
                    .into_iter()
                    .map(|(name, value)| vec![name, value])
                    .collect(),
            ),
        }
    }
}

fn answer_plan(answer: &Answer) -> PgWireResult<LogicalPlan> {
    let columns: &[&str] = match answer {
        Answer::Tag(_) => &[],
        Answer::Show(name, _) => &[name],
        Answer::Stats => &["name", "value"],
    };
    let schema = Schema::new(
        columns
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    );
    let schema = Arc::new(schema)
        .to_dfschema()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: !columns.is_empty(),
        schema: Arc::new(schema),
    }))
}

/// A text result of string columns.
fn rows_response(columns: &[&str], rows: Vec<Vec<String>>) -> PgWireResult<Response> {
    let fields: Arc<Vec<FieldInfo>> = Arc::new(
        columns
            .iter()
            .map(|name| {
                FieldInfo::new(
                    (*name).to_string(),
                    None,
                    None,
                    Type::TEXT,
                    FieldFormat::Text,
                )
            })
            .collect(),
    );
    let mut encoded = Vec::with_capacity(rows.len());
    for row in rows {
        let mut encoder = DataRowEncoder::new(fields.clone());
        for value in &row {
            encoder.encode_field(&Some(value.as_str()))?;
        }
        encoded.push(Ok(encoder.take_row()));
    }
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(encoded),
    )))
}

#[async_trait]
impl QueryHook for Compat {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.answer(statement).map(|answer| self.respond(answer))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        self.answer(statement).map(|answer| answer_plan(&answer))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.answer(statement).map(|answer| self.respond(answer))
    }
}

/// The names a statement reads, for the result cache: `Some((tables, ctes))` when every
/// relation is a plain name and no function in it gives a different answer on each call
/// (`now()`, `random()`), `None` when the result must not be cached.
pub(crate) fn cacheable_relations(statement: &Statement) -> Option<BTreeSet<String>> {
    if !matches!(statement, Statement::Query(_)) {
        return None;
    }
    struct Names {
        relations: BTreeSet<String>,
        ctes: BTreeSet<String>,
        volatile: bool,
    }
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.ctes.insert(cte.alias.name.value.to_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
            self.relations.insert(relation.to_string().to_lowercase());
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Function(function) = expr {
                let name = function.name.to_string().to_lowercase();
                let name = name.rsplit('.').next().unwrap_or(&name);
                const VOLATILE: [&str; 11] = [
                    "now",
                    "random",
                    "uuid",
                    "current_timestamp",
                    "current_date",
                    "current_time",
                    "localtime",
                    "localtimestamp",
                    "clock_timestamp",
                    "statement_timestamp",
                    "transaction_timestamp",
                ];
                if VOLATILE.contains(&name) {
                    self.volatile = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names {
        relations: BTreeSet::new(),
        ctes: BTreeSet::new(),
        volatile: false,
    };
    let _ = statement.visit(&mut names);
    if names.volatile {
        return None;
    }
    let tables: BTreeSet<String> = names
        .relations
        .into_iter()
        .filter(|name| !names.ctes.contains(name))
        .map(|name| {
            name.strip_prefix("public.")
                .map(str::to_string)
                .unwrap_or(name)
        })
        .collect();
    Some(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    fn parse(sql: &str) -> Statement {
        PostgresCompatibilityParser::new()
            .parse(sql)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn queries_show_set_of_session_settings_and_transactions_pass() {
        for sql in [
            "SELECT plan_id, sum(paid) FROM claims GROUP BY plan_id",
            "WITH t AS (SELECT 1 AS x) SELECT * FROM t",
            "EXPLAIN SELECT * FROM claims",
            "SHOW search_path",
            "SET DateStyle = 'ISO'",
            "SET statement_timeout = '5s'",
            "SET extra_float_digits = 3",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "DECLARE c CURSOR FOR SELECT * FROM claims",
            "FETCH FORWARD 10 FROM c",
            "CLOSE c",
            "DISCARD ALL",
        ] {
            assert_eq!(check(&parse(sql)), Ok(()), "{sql}");
        }
    }

    #[test]
    fn writes_ddl_copy_and_engine_settings_are_refused_by_name() {
        for (sql, named) in [
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("INSERT INTO claims VALUES (1)", "INSERT"),
            ("UPDATE claims SET paid = 0", "UPDATE"),
            ("DELETE FROM claims", "DELETE"),
            ("DROP TABLE claims", "DROP"),
            ("COPY claims TO '/tmp/out.csv'", "COPY"),
            (
                "SET datafusion.runtime.memory_limit = '100G'",
                "datafusion.runtime.memory_limit",
            ),
            (
                "SET datafusion.execution.target_partitions = 64",
                "target_partitions",
            ),
            ("SET work_mem = '1GB'", "work_mem"),
            ("SELECT * FROM \"/etc/passwd\"", "/etc/passwd"),
            (
                "SELECT * FROM claims JOIN \"data/x.csv\" ON true",
                "data/x.csv",
            ),
        ] {
            let error = check(&parse(sql)).expect_err(sql);
            assert!(error.contains(named), "{sql}: {error}");
        }
    }

    #[test]
    fn unparsable_file_references_and_writes_get_a_clear_refusal() {
        assert!(refuse_unparsed("SELECT * FROM '/etc/passwd'")
            .unwrap()
            .contains("/etc/passwd"));
        assert!(
            refuse_unparsed("create external table t stored as csv location '/x'")
                .unwrap()
                .starts_with("CREATE is not allowed")
        );
        assert_eq!(refuse_unparsed("SELEC 1 FROM claims"), None);
    }

    #[test]
    fn the_cache_sees_tables_not_ctes_and_skips_volatile_functions() {
        assert_eq!(
            cacheable_relations(&parse(
                "WITH big AS (SELECT * FROM claims) SELECT * FROM big JOIN public.plans USING (plan_id)"
            )),
            Some(BTreeSet::from(["claims".to_string(), "plans".to_string()]))
        );
        assert_eq!(
            cacheable_relations(&parse("SELECT now(), count(*) FROM claims")),
            None
        );
        assert_eq!(cacheable_relations(&parse("SHOW search_path")), None);
    }
}

/// `DECLARE c CURSOR FOR query`, as datafusion-postgres does it but keeping the query's plan on
/// the cursor, so a client that describes the cursor (psycopg's server-side cursors do) learns
/// its columns instead of "no data" (which crashed psycopg's C implementation).
#[derive(Debug)]
pub(crate) struct DeclareCursor;

type CursorStatement = (String, Option<(Statement, LogicalPlan)>);

async fn declare(
    statement: &Statement,
    session_context: &SessionContext,
    client: &mut dyn HookClient,
) -> Option<PgWireResult<Response>> {
    use datafusion_postgres::arrow_pg::datatypes::df;
    use pgwire::api::portal::{Format, Portal};
    use pgwire::api::stmt::StoredStatement;
    use pgwire::api::store::PortalStore;
    let Statement::Declare { stmts } = statement else {
        return None;
    };
    let result = async {
        for declare in stmts {
            let (Some(name), Some(query)) = (declare.names.first(), &declare.for_query) else {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "42601".into(),
                    "DECLARE needs a cursor name and a FOR query".into(),
                ))));
            };
            let frame = session_context
                .sql(&query.to_string())
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
            let plan = frame.logical_plan().clone();
            let response = df::encode_dataframe(frame, &Format::UnifiedText, None).await?;
            let stored: Arc<StoredStatement<CursorStatement>> = Arc::new(StoredStatement::new(
                name.value.clone(),
                (
                    query.to_string(),
                    Some((Statement::Query(query.clone()), plan)),
                ),
                vec![],
            ));
            let portal = Portal::new_cursor(name.value.clone(), stored);
            portal.start(response).await;
            client.portal_store().put_portal(Arc::new(portal));
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }
    .await;
    Some(result)
}

#[async_trait]
impl QueryHook for DeclareCursor {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        declare(statement, session_context, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        declare(statement, session_context, client).await
    }
}
