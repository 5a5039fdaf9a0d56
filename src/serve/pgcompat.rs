//! PostgreSQL catalog SQL that BI drivers send, made runnable on DataFusion.
//!
//! datafusion-postgres rewrites much PostgreSQL syntax already; what drivers still send and
//! DataFusion refuses is handled here, only in statements that read `pg_catalog` or
//! `information_schema` (a user's own query is never changed): correlated scalar subqueries
//! that PostgreSQL allows unaggregated (SQLAlchemy's and Npgsql's column and type queries),
//! `LIKE ... ESCAPE '/'`, and `'pg_catalog.array_in'::regproc` compared with a proc name
//! (pgjdbc, DBeaver). The functions drivers call and DataFusion lacks are registered by
//! [`register_functions`]. Must not change what a statement over the configured tables means.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    create_udf, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, Query, SelectItem, SetExpr, Statement, TableAlias, TableFactor, Value,
    ValueWithSpan, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;
use std::sync::Arc;

/// `'pg_catalog.array_in'::regproc` → `'array_in'`: the catalog's proc columns hold names.
pub(crate) fn rewrite_text(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains("::regproc") {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("'::regproc") {
        let (before, after) = rest.split_at(at);
        match before.rfind('\'') {
            Some(open) => {
                let name = &before[open + 1..];
                let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
                out.push_str(&before[..open]);
                out.push('\'');
                out.push_str(name);
                out.push('\'');
            }
            None => out.push_str(before),
        }
        rest = &after["'::regproc".len()..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Whether a statement reads the system catalogs.
fn reads_catalog(statement: &Statement) -> bool {
    let mut found = false;
    let _ = datafusion::sql::sqlparser::ast::visit_relations(statement, |name| {
        let text = name.to_string().to_ascii_lowercase();
        if text.starts_with("pg_catalog.")
            || text.starts_with("information_schema.")
            || text.starts_with("pg_")
        {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Apply the catalog rewrites; `true` when the statement changed.
pub(crate) fn rewrite_statement(statement: &mut Statement) -> bool {
    if !reads_catalog(statement) {
        return false;
    }
    let mut rules = CatalogRules { changed: false };
    let _ = statement.visit(&mut rules);
    rules.changed
}

struct CatalogRules {
    changed: bool,
}

impl VisitorMut for CatalogRules {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, alias, .. } = factor {
            let text = name.to_string().to_ascii_lowercase();
            if let Some(table) = text.strip_prefix("information_schema.") {
                if let Some(query) = missing_information_schema_table(table) {
                    let alias = alias.clone().or_else(|| {
                        Some(TableAlias {
                            explicit: true,
                            name: Ident::new(table),
                            columns: vec![],
                            at: None,
                        })
                    });
                    if let Ok(mut parsed) = datafusion::sql::sqlparser::parser::Parser::parse_sql(
                        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
                        query,
                    ) {
                        if let Some(Statement::Query(subquery)) = parsed.pop() {
                            *factor = TableFactor::Derived {
                                lateral: false,
                                subquery,
                                alias,
                                sample: None,
                            };
                            self.changed = true;
                        }
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            // The catalog's `regproc` columns (`typreceive`, `typinput`, ...) hold proc names,
            // so `pg_proc.oid = t.typreceive` joins on the name.
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                if proc_oid_to_name(left, right) || proc_oid_to_name(right, left) {
                    self.changed = true;
                }
            }
            Expr::Subquery(query) => {
                if reads_only_empty_catalog(query) {
                    *expr = Expr::Value(ValueWithSpan::from(Value::Null));
                    self.changed = true;
                } else if aggregate_scalar_subquery(query) {
                    self.changed = true;
                }
            }
            // Catalog columns datafusion-postgres does not have, and that are NULL for every
            // table here (storage options, access lists, partition bounds).
            Expr::CompoundIdentifier(parts)
                if parts.last().is_some_and(|p| {
                    [
                        "reloptions",
                        "relacl",
                        "attacl",
                        "attoptions",
                        "attfdwoptions",
                        "relpartbound",
                    ]
                    .contains(&p.value.to_ascii_lowercase().as_str())
                }) =>
            {
                *expr = Expr::Value(ValueWithSpan::from(Value::Null));
                self.changed = true;
            }
            Expr::Function(function) => {
                if let Some(replacement) = replace_array_function(function) {
                    *expr = replacement;
                    self.changed = true;
                } else if strip_aggregate_order(function) {
                    self.changed = true;
                }
            }
            // `(composite).field` → `get_field(composite, 'field')`.
            Expr::CompoundFieldAccess { root, access_chain } => {
                if let [AccessExpr::Dot(Expr::Identifier(field))] = access_chain.as_slice() {
                    let root = match root.as_ref() {
                        Expr::Nested(inner) => inner.as_ref().clone(),
                        other => other.clone(),
                    };
                    *expr = call(
                        "get_field",
                        vec![root, string_literal(field.value.to_ascii_lowercase())],
                    );
                    self.changed = true;
                }
            }
            Expr::Like {
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                pattern,
                escape_char,
                ..
            } => {
                if let Some(folded) = backslash_pattern(pattern, escape_char.as_ref()) {
                    **pattern = string_literal(folded);
                    *escape_char = None;
                    self.changed = true;
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|arg| FunctionArg::Unnamed(FunctionArgExpr::Expr(arg)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// `array_agg(x ORDER BY y)` in a catalog query: DataFusion 55 plans it wrongly next to
/// `unnest` (SanityCheckPlan), and the lists it builds here (constraint and index columns)
/// are empty, so the order is dropped.
fn strip_aggregate_order(function: &mut Function) -> bool {
    let FunctionArguments::List(list) = &mut function.args else {
        return false;
    };
    let before = list.clauses.len();
    list.clauses
        .retain(|clause| !matches!(clause, FunctionArgumentClause::OrderBy(_)));
    list.clauses.len() != before
}

/// Catalog tables that describe nothing for Spillway's tables (no column defaults, sequences,
/// collations or comments), so a scalar subquery reading only one of them is NULL. DataFusion
/// cannot decorrelate the ones drivers send (they filter on outer columns alone).
fn reads_only_empty_catalog(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let [from] = select.from.as_slice() else {
        return false;
    };
    if !from.joins.is_empty() {
        return false;
    }
    let TableFactor::Table { name, .. } = &from.relation else {
        return false;
    };
    let name = name.to_string().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    [
        "pg_attrdef",
        "pg_sequence",
        "pg_collation",
        "pg_description",
    ]
    .contains(&name)
}

/// Array columns of the index and constraint catalogs are text here; no table has an index or
/// a constraint, so functions over them get a typed empty stand-in and the queries (pgjdbc's
/// primary keys, SQLAlchemy's constraints) plan and return no rows, as they should.
fn replace_array_function(function: &Function) -> Option<Expr> {
    let name = function.name.to_string().to_ascii_lowercase();
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let array_column = |arg: Option<&FunctionArg>| {
        matches!(arg, Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts))))
        if parts.last().is_some_and(|p| {
            ["indkey", "conkey", "confkey", "indclass", "indoption"]
                .contains(&p.value.to_ascii_lowercase().as_str())
        }))
    };
    let text = if name.ends_with("_pg_expandarray") {
        "named_struct('x', CAST(NULL AS SMALLINT), 'n', CAST(NULL AS INT))"
    } else if name == "unnest" && array_column(list.args.first()) {
        "unnest(make_array(CAST(NULL AS SMALLINT)))"
    } else if name == "generate_subscripts" && array_column(list.args.first()) {
        "CAST(NULL AS INT)"
    } else {
        return None;
    };
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(text)
    .ok()?
    .parse_expr()
    .ok()
}

/// `pg_proc.oid = t.typreceive` → `pg_proc.proname = t.typreceive`.
fn proc_oid_to_name(oid_side: &mut Expr, proc_side: &Expr) -> bool {
    let (Expr::CompoundIdentifier(oid), Expr::CompoundIdentifier(other)) = (oid_side, proc_side)
    else {
        return false;
    };
    let regproc = other.last().is_some_and(|i| {
        ["typreceive", "typinput", "typoutput", "typsend"]
            .contains(&i.value.to_ascii_lowercase().as_str())
    });
    match oid.last_mut() {
        Some(last) if regproc && last.value.eq_ignore_ascii_case("oid") => {
            *last = Ident::new("proname");
            true
        }
        _ => false,
    }
}

/// Views of `information_schema` that DataFusion's lacks, as PostgreSQL defines their columns:
/// no table here has constraints, and the one character set is UTF8.
fn missing_information_schema_table(table: &str) -> Option<&'static str> {
    Some(match table {
        "character_sets" => {
            "SELECT CAST(NULL AS TEXT) AS character_set_catalog, CAST(NULL AS TEXT) AS character_set_schema, \
             'UTF8' AS character_set_name, 'UCS' AS character_repertoire, 'UTF8' AS form_of_use, \
             'spillway' AS default_collate_catalog, 'pg_catalog' AS default_collate_schema, 'C' AS default_collate_name"
        }
        "table_constraints" => {
            "SELECT CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
             CAST(NULL AS TEXT) AS constraint_name, CAST(NULL AS TEXT) AS table_catalog, CAST(NULL AS TEXT) AS table_schema, \
             CAST(NULL AS TEXT) AS table_name, CAST(NULL AS TEXT) AS constraint_type, CAST(NULL AS TEXT) AS is_deferrable, \
             CAST(NULL AS TEXT) AS initially_deferred, CAST(NULL AS TEXT) AS enforced, CAST(NULL AS TEXT) AS nulls_distinct WHERE false"
        }
        "referential_constraints" => {
            "SELECT CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
             CAST(NULL AS TEXT) AS constraint_name, CAST(NULL AS TEXT) AS unique_constraint_catalog, \
             CAST(NULL AS TEXT) AS unique_constraint_schema, CAST(NULL AS TEXT) AS unique_constraint_name, \
             CAST(NULL AS TEXT) AS match_option, CAST(NULL AS TEXT) AS update_rule, CAST(NULL AS TEXT) AS delete_rule WHERE false"
        }
        "key_column_usage" => {
            "SELECT CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
             CAST(NULL AS TEXT) AS constraint_name, CAST(NULL AS TEXT) AS table_catalog, CAST(NULL AS TEXT) AS table_schema, \
             CAST(NULL AS TEXT) AS table_name, CAST(NULL AS TEXT) AS column_name, CAST(NULL AS INT) AS ordinal_position, \
             CAST(NULL AS INT) AS position_in_unique_constraint WHERE false"
        }
        "constraint_column_usage" => {
            "SELECT CAST(NULL AS TEXT) AS table_catalog, CAST(NULL AS TEXT) AS table_schema, CAST(NULL AS TEXT) AS table_name, \
             CAST(NULL AS TEXT) AS column_name, CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
             CAST(NULL AS TEXT) AS constraint_name WHERE false"
        }
        _ => return None,
    })
}

/// PostgreSQL lets a scalar subquery return one row without aggregating; DataFusion insists
/// on an aggregate when the subquery is correlated. `max()` of the single column keeps the
/// answer whenever PostgreSQL would have given one.
fn aggregate_scalar_subquery(query: &mut Query) -> bool {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let grouped = !matches!(
        &select.group_by,
        datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(list, _) if list.is_empty()
    );
    if grouped || select.projection.len() != 1 || query.limit_clause.is_some() {
        return false;
    }
    let (inner, alias) = match &select.projection[0] {
        SelectItem::UnnamedExpr(expr) => (expr.clone(), None),
        SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), Some(alias.clone())),
        _ => return false,
    };
    if is_aggregate(&inner) {
        return false;
    }
    let wrapped = Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new("max"))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    });
    select.projection[0] = match alias {
        Some(alias) => SelectItem::ExprWithAlias {
            expr: wrapped,
            alias,
        },
        None => SelectItem::UnnamedExpr(wrapped),
    };
    true
}

fn is_aggregate(expr: &Expr) -> bool {
    let Expr::Function(function) = expr else {
        return false;
    };
    let name = function.name.to_string().to_ascii_lowercase();
    let name = name.rsplit('.').next().unwrap_or(&name).to_string();
    [
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "json_agg",
        "jsonb_agg",
    ]
    .contains(&name.as_str())
}

fn string_literal(text: String) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(text)))
}

/// A `LIKE` pattern made of string literals (joined by `||`) with a custom escape character,
/// rewritten to use the backslash DataFusion supports.
fn backslash_pattern(pattern: &Expr, escape: Option<&ValueWithSpan>) -> Option<String> {
    let escape = match &escape?.value {
        Value::SingleQuotedString(text) if text.chars().count() == 1 => text.chars().next()?,
        _ => return None,
    };
    if escape == '\\' {
        return None;
    }
    let mut literal = String::new();
    fold_literal(pattern, &mut literal)?;
    let mut out = String::with_capacity(literal.len());
    let mut chars = literal.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            let next = chars.next()?;
            out.push('\\');
            out.push(next);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn fold_literal(expr: &Expr, out: &mut String) -> Option<()> {
    match expr {
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(text),
            ..
        }) => {
            out.push_str(text);
            Some(())
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            right,
        } => {
            fold_literal(left, out)?;
            fold_literal(right, out)
        }
        Expr::Nested(inner) => fold_literal(inner, out),
        _ => None,
    }
}

/// Functions PostgreSQL drivers call that neither DataFusion nor datafusion-postgres has.
pub(crate) fn register_functions(ctx: &SessionContext, settings: Vec<(&'static str, String)>) {
    let settings = Arc::new(settings);
    ctx.register_udf(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            map_strings(&args[0], |name| {
                settings
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.clone())
            })
        }),
    ));
    // Everything in this catalog is on the search path.
    for name in [
        "pg_type_is_visible",
        "pg_collation_is_visible",
        "pg_function_is_visible",
        "pg_opclass_is_visible",
        "pg_conversion_is_visible",
    ] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Boolean,
            Volatility::Stable,
            Arc::new(|args: &[ColumnarValue]| {
                Ok(match &args[0] {
                    ColumnarValue::Array(array) => ColumnarValue::Array(Arc::new(
                        BooleanArray::from(vec![true; array.len()]),
                    )
                        as ArrayRef),
                    ColumnarValue::Scalar(_) => {
                        ColumnarValue::Scalar(ScalarValue::Boolean(Some(true)))
                    }
                })
            }),
        ));
    }
    // No table here has an index, a serial column or a sequence: these describe nothing.
    for name in ["pg_get_indexdef", "pg_get_serial_sequence"] {
        ctx.register_udf(ScalarUDF::new_from_impl(NullText::new(name)));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
}

fn map_strings(
    input: &ColumnarValue,
    f: impl Fn(&str) -> Option<String>,
) -> datafusion::error::Result<ColumnarValue> {
    match input {
        ColumnarValue::Scalar(value) => {
            let text = match value {
                ScalarValue::Utf8(text)
                | ScalarValue::LargeUtf8(text)
                | ScalarValue::Utf8View(text) => text.clone(),
                _ => None,
            };
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(
                text.as_deref().and_then(&f),
            )))
        }
        ColumnarValue::Array(array) => {
            let strings = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
            let strings = datafusion::common::cast::as_string_array(&strings)?;
            let mapped: StringArray = (0..strings.len())
                .map(|i| (!strings.is_null(i)).then(|| f(strings.value(i))).flatten())
                .collect();
            Ok(ColumnarValue::Array(Arc::new(mapped)))
        }
    }
}

/// A text function of any arguments that returns NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: &'static str,
    signature: Signature,
}

impl NullText {
    fn new(name: &'static str) -> Self {
        NullText {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

/// `json_build_object(k1, v1, ...)` as JSON text (SQLAlchemy reads identity options with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|arg| arg.to_array(rows))
            .collect::<datafusion::error::Result<_>>()?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?.to_string();
                let value = match pair.get(1) {
                    Some(array) => {
                        let value = ScalarValue::try_from_array(array, row)?;
                        if value.is_null() {
                            serde_json::Value::Null
                        } else {
                            serde_json::Value::String(value.to_string())
                        }
                    }
                    None => serde_json::Value::Null,
                };
                object.insert(key, value);
            }
            out.push(Some(serde_json::Value::Object(object).to_string()));
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    fn rewritten(sql: &str) -> String {
        let mut statement = PostgresCompatibilityParser::new()
            .parse(&rewrite_text(sql))
            .unwrap()
            .remove(0);
        rewrite_statement(&mut statement);
        statement.to_string()
    }

    #[test]
    fn regproc_literals_become_proc_names() {
        assert_eq!(
            rewrite_text("SELECT typinput='pg_catalog.array_in'::regproc FROM pg_type"),
            "SELECT typinput='array_in' FROM pg_type"
        );
        assert_eq!(rewrite_text("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn catalog_scalar_subqueries_are_aggregated_and_user_queries_are_not_touched() {
        let catalog = rewritten(
            "SELECT a.attname FROM pg_catalog.pg_attribute a \
             WHERE (SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) <> 0",
        );
        assert!(catalog.contains("SELECT max(t.typcollation)"), "{catalog}");
        let user =
            "SELECT c.plan_id, (SELECT p.name FROM plans p WHERE p.id = c.plan_id) FROM claims c";
        let mut statement = PostgresCompatibilityParser::new()
            .parse(user)
            .unwrap()
            .remove(0);
        assert!(!rewrite_statement(&mut statement));
    }

    #[test]
    fn proc_oid_joins_on_regproc_columns_join_on_the_name() {
        let sql = rewritten(
            "SELECT a.typname FROM pg_type AS a JOIN pg_proc ON pg_proc.oid = a.typreceive",
        );
        assert!(sql.contains("pg_proc.proname = a.typreceive"), "{sql}");
    }

    #[test]
    fn missing_information_schema_views_are_answered_empty_or_with_utf8() {
        let sql = rewritten("select character_set_name from INFORMATION_SCHEMA.character_sets");
        assert!(sql.contains("'UTF8' AS character_set_name"), "{sql}");
        let sql = rewritten(
            "SELECT * FROM information_schema.table_constraints tc WHERE tc.table_name = 'x'",
        );
        assert!(sql.contains("WHERE false) tc WHERE"), "{sql}");
    }

    #[test]
    fn like_with_a_slash_escape_uses_backslashes() {
        let sql = rewritten(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg/_' || '%' ESCAPE '/'",
        );
        assert!(
            sql.contains("NOT LIKE 'pg\\_%'") && !sql.contains("ESCAPE"),
            "{sql}"
        );
    }
}
