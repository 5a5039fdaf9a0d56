//! The policy of one role, applied to a statement's logical plan.
//!
//! [`PrivacyGuard`] is an analyzer rule, so it sees every statement after the SQL planner and
//! before type coercion and the optimizer, whatever entry point sent it. Each scan of a guarded
//! table becomes `Projection(masks) ← Filter(row filter) ← TableScan`: the masks sit under
//! every projection the query has and the row filter under every operator, so `SELECT *`,
//! subqueries, CTEs, joins, unions, casts, windows, cursors, prepared statements and report
//! views all read the masked, filtered rows. The projection keeps the table's name and
//! schema (masks keep types), so nothing above it changes; the scan beneath is renamed into
//! the `spillway_privacy` catalog, which no SQL can name, and that marks it as guarded when
//! a plan is analyzed again (the server optimizes a prepared statement's plan before running
//! it, and running analyzes it once more).
//!
//! For an aggregate-only role the projection also carries the person each row is about (the
//! table's subject column, under a name no SQL can write). Every operator passes it up; each
//! aggregation counts the distinct people behind each group and drops groups with fewer than
//! the role's `min_cell_size` (counting them in [`PrivacyGuard::suppressed`]); a statement
//! whose rows still carry it at the top returns rows of people, and is refused. Must not let
//! a raw value of a masked column, or a row of a small cell, reach a plan's output.

use super::{ColumnView, Mask, Policy, Role};
use crate::error::Error;
use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue, TableReference};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::{
    cast, lit, Aggregate, AggregateUDF, ColumnarValue, Distinct, Expr, Filter, LogicalPlan,
    Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TableScan,
    TableScanBuilder, Union, Volatility, WindowFunctionDefinition,
};
use datafusion::optimizer::AnalyzerRule;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The catalog guarded scans are renamed into. No table is registered there, so no SQL
/// can produce a scan with this name: seeing one means the scan is already guarded.
pub(crate) const GUARDED_CATALOG: &str = "spillway_privacy";
/// Hidden columns of aggregate-only plans: the person a row is about, and a group's count of
/// distinct people. The SQL planner has resolved every name before the guard runs, so a
/// statement cannot refer to them.
const SUBJECT_PREFIX: &str = "__spillway_subject_";
const CELL_PREFIX: &str = "__spillway_cell_";

/// One role's policy, installed in a session as an analyzer rule.
pub(crate) struct PrivacyGuard {
    policy: Arc<Policy>,
    role: Arc<Role>,
    /// The session as it was without the guard: row filters are planned against it.
    planner: SessionState,
    cells: Arc<ScalarUDF>,
    people: Arc<AggregateUDF>,
    suppressed: Arc<AtomicU64>,
}

impl std::fmt::Debug for PrivacyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivacyGuard(role {})", self.role.name)
    }
}

impl PrivacyGuard {
    pub(crate) fn new(policy: Arc<Policy>, role: Arc<Role>, planner: SessionState) -> Self {
        let suppressed = Arc::new(AtomicU64::new(0));
        PrivacyGuard {
            policy,
            role,
            planner,
            cells: cell_check_udf(suppressed.clone()),
            people: super::people::people_upto_udaf(),
            suppressed,
        }
    }

    pub(crate) fn role(&self) -> &Role {
        &self.role
    }

    /// Groups suppressed since the last call (statements of one session run one at a time).
    pub(crate) fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

impl AnalyzerRule for PrivacyGuard {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        if self.role.unrestricted {
            return Ok(plan);
        }
        // A plan analyzed before holds the guard's own `pseudonym` masks; it was checked then.
        if !already_guarded(&plan)? && calls(&plan, "pseudonym")? {
            return Err(refused(format!(
                "role `{}` may not call pseudonym(): with the key it turns identifiers the caller knows into their tokens, which re-identifies masked rows; a role that sees the column raw may",
                self.role.name
            )));
        }
        let mut pass = Pass::default();
        self.guard_root(plan, &mut pass)
    }

    fn name(&self) -> &str {
        "spillway_privacy_guard"
    }
}

/// What one analysis has done so far.
#[derive(Default)]
struct Pass {
    /// Scans guarded in this pass (a subtree whose count grew needs its schemas recomputed).
    guarded: usize,
    /// Subject columns made in this pass, and the table each stands for. Only these are
    /// followed: those of an earlier pass were consumed by its aggregations.
    subjects: BTreeMap<String, String>,
}

fn refused(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(Error::Refused(message)))
}

impl PrivacyGuard {
    /// A whole plan (a statement, or a subquery inside one): no person may leave it.
    fn guard_root(&self, plan: LogicalPlan, pass: &mut Pass) -> Result<LogicalPlan> {
        let plan = self.guard_node(plan, pass)?;
        let left: BTreeSet<&String> = subjects_of(plan.schema(), pass)
            .iter()
            .filter_map(|c| pass.subjects.get(&c.name))
            .collect();
        if !left.is_empty() {
            let tables: Vec<&str> = left.into_iter().map(String::as_str).collect();
            return Err(refused(format!(
                "role `{}` reads {} only through aggregates (aggregate_only, cells of at least {} people): this statement returns rows one by one; group them (GROUP BY) or count them",
                self.role.name,
                tables.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
                self.role.min_cell_size
            )));
        }
        Ok(plan)
    }

    fn guard_node(&self, plan: LogicalPlan, pass: &mut Pass) -> Result<LogicalPlan> {
        // Subqueries in this node's expressions are plans of their own.
        let plan = plan
            .map_subqueries(|node| match node {
                LogicalPlan::Subquery(mut subquery) => {
                    let inner = Arc::unwrap_or_clone(subquery.subquery);
                    subquery.subquery = Arc::new(self.guard_root(inner, pass)?);
                    Ok(Transformed::yes(LogicalPlan::Subquery(subquery)))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        if let LogicalPlan::TableScan(scan) = plan {
            return self.guard_scan(scan, pass);
        }
        let before = pass.guarded;
        let plan = plan
            .map_children(|child| Ok(Transformed::yes(self.guard_node(child, pass)?)))?
            .data;
        if pass.guarded == before {
            return Ok(plan);
        }
        let carried = inputs_carry_subjects(&plan, pass);
        if !carried {
            // Masks can make a column nullable: let every node above say so.
            return plan.recompute_schema();
        }
        self.carry_subjects(plan, pass)
    }

    /// A node whose input rows carry people: pass them up, or count them at an aggregation.
    fn carry_subjects(&self, plan: LogicalPlan, pass: &mut Pass) -> Result<LogicalPlan> {
        match plan {
            LogicalPlan::Projection(projection) => {
                let mut exprs = projection.expr;
                for subject in subjects_of(projection.input.schema(), pass) {
                    exprs.push(Expr::Column(subject));
                }
                Ok(LogicalPlan::Projection(Projection::try_new(
                    exprs,
                    projection.input,
                )?))
            }
            LogicalPlan::Aggregate(aggregate) => self.suppress_small_cells(aggregate, pass),
            LogicalPlan::Distinct(Distinct::All(input)) => {
                // DISTINCT is a grouping by every column: the people are counted, not grouped.
                let subjects = subjects_of(input.schema(), pass);
                let group: Vec<Expr> = input
                    .schema()
                    .columns()
                    .into_iter()
                    .filter(|c| !subjects.contains(c))
                    .map(Expr::Column)
                    .collect();
                let aggregate = Aggregate::try_new(input, group, vec![])?;
                self.suppress_small_cells(aggregate, pass)
            }
            LogicalPlan::Union(union) => align_union(union, pass),
            LogicalPlan::Window(window) => {
                self.only_summaries(&window.window_expr)?;
                LogicalPlan::Window(window).recompute_schema()
            }
            LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_) => plan.recompute_schema(),
            other => Err(refused(format!(
                "role `{}` reads protected tables only through aggregates, and this statement's {} step over their rows cannot be checked for small cells",
                self.role.name,
                other.display().to_string().split(':').next().unwrap_or("plan")
            ))),
        }
    }

    /// Count the distinct people behind each group of `aggregate` (for every protected table
    /// that feeds it) as one more aggregate of its own, and keep the groups with at least
    /// `min_cell_size` of them.
    ///
    /// The count is `spillway_people_upto(person, k)` (see `people`): a group keeps at most
    /// `k` people, so the state is bounded, spills with the aggregation's, and the input is
    /// read once. (DataFusion's `count(DISTINCT)` beside other aggregates keeps a hash set per
    /// group outside the memory pool: 10 GiB of RSS under a 1.2 GiB pool on 180k groups of 10M
    /// claims; a second grouping by group and person, joined back, spilled but cost 7x.)
    fn suppress_small_cells(&self, aggregate: Aggregate, pass: &mut Pass) -> Result<LogicalPlan> {
        self.only_summaries(&aggregate.aggr_expr)?;
        let subjects = subjects_of(aggregate.input.schema(), pass);
        let original = aggregate.schema.clone();
        let k = self.role.min_cell_size as i64;
        let mut aggregates = aggregate.aggr_expr;
        let mut cells = vec![lit(k)];
        for (i, subject) in subjects.into_iter().enumerate() {
            let name = format!("{CELL_PREFIX}{i}");
            let people = Expr::AggregateFunction(AggregateFunction::new_udf(
                self.people.clone(),
                vec![Expr::Column(subject), lit(k)],
                false,
                None,
                vec![],
                None,
            ));
            aggregates.push(people.alias(&name));
            cells.push(Expr::Column(Column::from_name(name)));
        }
        let counted = Aggregate::try_new(aggregate.input, aggregate.group_expr, aggregates)?;
        let keep = Expr::ScalarFunction(ScalarFunction::new_udf(self.cells.clone(), cells));
        let kept = Filter::try_new(keep, Arc::new(LogicalPlan::Aggregate(counted)))?;
        let columns: Vec<Expr> = original.columns().into_iter().map(Expr::Column).collect();
        Ok(LogicalPlan::Projection(Projection::try_new(
            columns,
            Arc::new(LogicalPlan::Filter(kept)),
        )?))
    }

    /// Refuse aggregates (or aggregate windows) over people's rows whose result is not a
    /// summary of them: `array_agg`, `string_agg`, `first_value`, ... hand back the rows'
    /// own values, so a group of many people would still show each one's row.
    fn only_summaries(&self, exprs: &[Expr]) -> Result<()> {
        let mut offending = None;
        for expr in exprs {
            expr.apply(|e| {
                let name = match e {
                    Expr::AggregateFunction(f) => f.func.name(),
                    Expr::WindowFunction(w) => match &w.fun {
                        WindowFunctionDefinition::AggregateUDF(f) => f.name(),
                        WindowFunctionDefinition::WindowUDF(_) => {
                            return Ok(TreeNodeRecursion::Continue)
                        }
                    },
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                if is_summary(name) {
                    Ok(TreeNodeRecursion::Continue)
                } else {
                    offending = Some(name.to_string());
                    Ok(TreeNodeRecursion::Stop)
                }
            })?;
            if let Some(name) = offending {
                return Err(refused(format!(
                    "role `{}` reads protected tables only through aggregates (aggregate_only): `{name}` returns the rows' own values rather than a summary of them; use count, sum, avg, min, max, stddev, median or approx_distinct",
                    self.role.name
                )));
            }
        }
        Ok(())
    }

    /// `Projection(masks) ← Filter(row filter) ← TableScan` for a guarded table.
    fn guard_scan(&self, scan: TableScan, pass: &mut Pass) -> Result<LogicalPlan> {
        let table = scan.table_name.table().to_ascii_lowercase();
        if scan.table_name.catalog() == Some(GUARDED_CATALOG)
            || !self.policy.guards(&self.role, &table)
        {
            return Ok(LogicalPlan::TableScan(scan));
        }
        if !scan.filters.is_empty() || scan.fetch.is_some() {
            // Only a plan optimized without the guard has these; fail closed.
            return Err(refused(format!(
                "table `{table}` reached the privacy guard already optimized; run the statement again"
            )));
        }
        pass.guarded += 1;
        let original_name = scan.table_name.clone();
        let original = scan.projected_schema.clone();
        let marked = TableReference::full(
            GUARDED_CATALOG,
            original_name.schema().unwrap_or("public"),
            table.as_str(),
        );
        let raw = LogicalPlan::TableScan(
            TableScanBuilder::new(marked.clone(), scan.source)
                .with_projection(scan.projection)
                .build()?,
        );
        let raw_column = |name: &str| Expr::Column(Column::new(Some(marked.clone()), name));
        let mut input = raw;
        if let Some(filter) = self.policy.row_filter(&self.role, &table) {
            let predicate = self.row_filter(filter, &table, input.schema())?;
            input = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?);
        }
        let mut exprs = Vec::with_capacity(original.fields().len() + 1);
        for (_, field) in original.iter() {
            let column = raw_column(field.name());
            let shown = match self.policy.view(&self.role, &table, field.name()) {
                ColumnView::Raw => column,
                ColumnView::Masked(mask) => self.mask(mask, column, field.data_type())?,
            };
            exprs.push(shown.alias_qualified(Some(original_name.clone()), field.name()));
        }
        if self.role.aggregate_only {
            if let Some(subject) = self.policy.subject_column(&table) {
                let field = original
                    .fields()
                    .iter()
                    .find(|f| f.name().eq_ignore_ascii_case(subject));
                if let Some(field) = field {
                    let name = format!("{SUBJECT_PREFIX}{}", pass.subjects.len());
                    pass.subjects.insert(name.clone(), table.clone());
                    exprs.push(raw_column(field.name()).alias_qualified(Some(original_name), name));
                }
            }
        }
        Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            Arc::new(input),
        )?))
    }

    /// The masked column, of the column's own type.
    fn mask(&self, mask: Mask, column: Expr, data_type: &DataType) -> Result<Expr> {
        let call = |name: &str, args: Vec<Expr>| -> Result<Expr> {
            let udf = self
                .planner
                .scalar_functions()
                .get(name)
                .cloned()
                .ok_or_else(|| {
                    DataFusionError::Internal(format!("privacy function {name} is not registered"))
                })?;
            Ok(Expr::ScalarFunction(ScalarFunction::new_udf(udf, args)))
        };
        let masked = match mask.for_type(data_type) {
            Mask::Pseudonym => call("pseudonym", vec![column])?,
            Mask::Month => call("generalize_date", vec![column, lit("month")])?,
            Mask::Year => call("generalize_date", vec![column, lit("year")])?,
            Mask::Zip3 => call("zip3", vec![column])?,
            Mask::Redact | Mask::Generalize => lit(ScalarValue::try_from(data_type)?),
        };
        Ok(cast(masked, data_type.clone()))
    }

    /// The role's row filter on `table`, planned against the raw scan.
    fn row_filter(&self, filter: &str, table: &str, schema: &DFSchema) -> Result<Expr> {
        self.planner
            .create_logical_expr(filter, schema)
            .map_err(|e| {
                refused(format!(
                    "the row filter of role `{}` on table `{table}` does not plan: {}",
                    self.role.name,
                    crate::error::one_line(&e.to_string())
                ))
            })
    }
}

/// Aggregates whose result summarises a group's rows rather than listing or picking them.
fn is_summary(name: &str) -> bool {
    crate::incremental::split::MERGEABLE.contains(&name)
        || matches!(name, "median" | "percentile_cont" | "grouping")
}

/// Whether a plan (or one of its subqueries) already reads a scan the guard rewrote.
fn already_guarded(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if scan.table_name.catalog() == Some(GUARDED_CATALOG) {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// Whether any expression of a plan (or of its subqueries) calls the scalar function `name`.
fn calls(plan: &LogicalPlan, name: &str) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            found =
                expr.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.func.name() == name)))?;
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    Ok(found)
}

/// Subject columns of this pass in `schema`.
fn subjects_of(schema: &DFSchema, pass: &Pass) -> Vec<Column> {
    schema
        .columns()
        .into_iter()
        .filter(|c| pass.subjects.contains_key(&c.name))
        .collect()
}

fn inputs_carry_subjects(plan: &LogicalPlan, pass: &Pass) -> bool {
    plan.inputs()
        .iter()
        .any(|input| !subjects_of(input.schema(), pass).is_empty())
}

/// A union's inputs must line up column by column: give each the subject columns of all,
/// NULL where an input has none.
fn align_union(union: Union, pass: &mut Pass) -> Result<LogicalPlan> {
    let mut all: BTreeMap<String, DataType> = BTreeMap::new();
    for input in &union.inputs {
        for subject in subjects_of(input.schema(), pass) {
            let (_, field) = input.schema().qualified_field_from_column(&subject)?;
            all.insert(subject.name.clone(), field.data_type().clone());
        }
    }
    let mut inputs = Vec::with_capacity(union.inputs.len());
    for input in union.inputs {
        let own = subjects_of(input.schema(), pass);
        let mut exprs: Vec<Expr> = input
            .schema()
            .columns()
            .into_iter()
            .filter(|c| !own.contains(c))
            .map(Expr::Column)
            .collect();
        for (name, data_type) in &all {
            match own.iter().find(|c| &c.name == name) {
                Some(column) => exprs.push(Expr::Column(column.clone())),
                None => exprs.push(lit(ScalarValue::try_from(data_type)?).alias(name)),
            }
        }
        inputs.push(Arc::new(LogicalPlan::Projection(Projection::try_new(
            exprs, input,
        )?)));
    }
    Ok(LogicalPlan::Union(Union::try_new(inputs)?))
}

/// `spillway_cell_check(k, cells...)`: whether every count reaches `k`; counts the groups
/// that do not.
#[derive(Debug)]
struct CellCheck {
    signature: Signature,
    suppressed: Arc<AtomicU64>,
}

impl PartialEq for CellCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.suppressed, &other.suppressed)
    }
}
impl Eq for CellCheck {}
impl std::hash::Hash for CellCheck {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.suppressed).hash(state);
    }
}

/// The cell check counting into `suppressed` (cluster nodes register one by name).
pub(crate) fn cell_check_udf(suppressed: Arc<AtomicU64>) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(CellCheck {
        // Volatile: it counts, so it must run once per group and never be folded away.
        signature: Signature::variadic_any(Volatility::Volatile),
        suppressed,
    }))
}

impl ScalarUDFImpl for CellCheck {
    fn name(&self) -> &str {
        "spillway_cell_check"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let minimum = arrays[0].as_primitive::<Int64Type>().value(0);
        let keep: BooleanArray = (0..rows)
            .map(|row| {
                Some(arrays[1..].iter().all(|cells| {
                    let cells = cells.as_primitive::<Int64Type>();
                    !cells.is_null(row) && cells.value(row) >= minimum
                }))
            })
            .collect();
        let dropped = rows - keep.true_count();
        self.suppressed.fetch_add(dropped as u64, Ordering::Relaxed);
        Ok(ColumnarValue::Array(Arc::new(keep)))
    }
}
